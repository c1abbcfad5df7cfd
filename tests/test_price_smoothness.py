"""Price's theorem needs a twice-differentiable decoder; refvae refuses it on a relu decoder.

With relu, φ'' is a Dirac delta at 0 in the distributional sense. The pointwise Hessian that
refvae computes omits it, so Eq. 8.17 evaluated with it is biased, while the pathwise estimator
(which needs only Lipschitz f) is not. The first test measures that bias against the exact
gradient, so that the refusal tested after it cannot be removed by mistake.
"""
import numpy as np
import pytest

from refvae.backend import NoiseSource
from refvae.errors import ConfigError
from refvae.math.latent.gaussian import DiagonalGaussian
from refvae.math.mlp import MLP
from refvae.math.vae import VAE



def _nodes(kinks_x, heads):
    """Standard-normal nodes and weights, Gauss–Legendre on each piece of [−12, 12] between the
    decoder's kinks (mapped to z = (x − ν)/σ): the integrand is smooth on each piece, so the
    rule is exact to rounding and moves smoothly with the heads (finite differences stay exact)."""
    nu, sigma = heads["mean"][0, 0], np.exp(0.5 * heads["logvar"][0, 0])
    cuts = np.sort(np.clip((kinks_x - nu) / sigma, -12.0, 12.0))
    edges = np.concatenate([[-12.0], cuts, [12.0]])
    t, w = np.polynomial.legendre.leggauss(60)
    z = np.concatenate([0.5 * (b - a) * t + 0.5 * (a + b) for a, b in zip(edges, edges[1:])])
    wz = np.concatenate([0.5 * (b - a) * w for a, b in zip(edges, edges[1:])])
    return z, wz * np.exp(-0.5 * z ** 2) / np.sqrt(2 * np.pi)


def _decoder_problem(np_bk, activation):
    """``f(x) = ½||MLP(x) − c||²`` of a 1-D latent through a K-8-3 decoder, and a head (ν,
    ℓ)."""
    mlp = MLP.build("decoder", 1, (8,), [("out", 3)], activation)
    params = mlp.init_params(NoiseSource(5), np_bk)
    params["decoder.0.weight"] = params["decoder.0.weight"] * 3.0   # kinks inside the bulk
    c = np.array([0.3, -0.2, 0.5])

    def derivs(x):
        o, cache = mlp.forward(np_bk, params, x)
        back = mlp.backward(np_bk, params, cache, o - c)
        hess = mlp.input_hessian(np_bk, params, cache, back, 1.0)
        return 0.5 * ((o - c) ** 2).sum(-1), back.d_input, hess

    heads = {"mean": np.array([[0.1]]), "logvar": np.array([[-0.4]])}
    kinks = -params["decoder.0.bias"] / params["decoder.0.weight"][:, 0]
    return derivs, heads, kinks


def _estimates(np_bk, activation):
    """Exact ∂E[f]/∂head (central differences of the integral), and the pathwise and Price
    estimates with the nodes of :func:`_nodes` as samples and their weights as sample weights."""
    derivs, heads, kinks = _decoder_problem(np_bk, activation)
    latent = DiagonalGaussian(1)

    def value(hd):
        z, w = _nodes(kinks, hd)
        return float(w @ derivs(latent.sample(np_bk, hd, z[None, :, None]).x[0])[0])

    step, exact = 1e-5, {}
    for name in heads:
        plus = {**heads, name: heads[name] + step}
        minus = {**heads, name: heads[name] - step}
        exact[name] = (value(plus) - value(minus)) / (2 * step)
    z, weights = _nodes(kinks, heads)
    state = latent.sample(np_bk, heads, z[None, :, None])
    _, g, hess = derivs(state.x[0])
    g_w, hess_w = (weights[:, None] * g)[None], (weights[:, None] * hess)[None]
    pathwise = latent.pathwise(np_bk, state, g_w)
    price = latent.price(np_bk, state, g_w, lambda full=False: hess_w)
    return exact, {k: float(v[0, 0]) for k, v in pathwise.items()}, \
        {k: float(v[0, 0]) for k, v in price.items()}


def test_price_is_biased_on_relu_and_exact_on_a_smooth_decoder(np_bk):
    exact, pathwise, price = _estimates(np_bk, "relu")
    for name in exact:
        assert pathwise[name] == pytest.approx(exact[name], rel=1e-8, abs=1e-10), name
    assert price["mean"] == pytest.approx(exact["mean"], rel=1e-8)          # Bonnet holds (φ' ok)
    bias = abs(price["logvar"] - exact["logvar"]) / abs(exact["logvar"])
    assert bias > 0.05, f"Price on relu agreed with the exact gradient ({bias:.2e}): recheck"
    exact, pathwise, price = _estimates(np_bk, "softplus")
    for name in exact:
        assert pathwise[name] == pytest.approx(exact[name], rel=1e-8, abs=1e-10), name
        assert price[name] == pytest.approx(exact[name], rel=1e-8, abs=1e-10), name


@pytest.mark.parametrize("latent", ["gaussian", "gaussian_full"])
def test_price_refused_on_a_relu_decoder(np_bk, latent):
    vae = VAE({"data_dim": 4, "latent_dim": 2, "encoder_hidden": [5], "decoder_hidden": [5],
               "activation": "relu", "latent": latent})
    params = vae.init_params(0)
    y = (np.arange(12).reshape(3, 4) % 2).astype(float)
    eps = vae.draw_noise(NoiseSource(1), 3)
    with pytest.raises(ConfigError, match="estimator 'price' needs a twice-differentiable decoder"):
        vae.loss_and_grads(params, y, eps, estimator="price")
    vae.loss_and_grads(params, y, eps, estimator="pathwise")


@pytest.mark.parametrize("activation,hidden", [("tanh", [5]), ("relu", [])])
def test_price_accepted_where_the_decoder_is_smooth(np_bk, activation, hidden):
    """A smooth activation, or a relu model whose decoder has no hidden layer (a linear map)."""
    vae = VAE({"data_dim": 4, "latent_dim": 2, "encoder_hidden": [5], "decoder_hidden": hidden,
               "activation": activation})
    y = (np.arange(12).reshape(3, 4) % 2).astype(float)
    res = vae.loss_and_grads(vae.init_params(0), y, vae.draw_noise(NoiseSource(1), 3),
                             estimator="price")
    assert np.isfinite(res.loss)


def test_cli_refuses_price_on_relu_in_one_line(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from refvae.cli.main import main
    out = tmp_path / "run"
    code = main(["train", "--estimator", "price", "--activation", "relu", "--epochs", "1",
                 "--no-figures", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert err == ["refvae: error: estimator 'price' needs a twice-differentiable decoder (Price's "
                   "theorem, Eq. 8.17), and activation 'relu' is not: use estimator 'pathwise', "
                   "or a smooth activation (tanh, softplus, silu, sigmoid)"]
