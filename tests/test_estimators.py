"""Price and score-function estimators for Gaussian latents, checked for a fixed noise.

Evidence: PyTorch float64 on the same parameters and noise. For ``price`` the test takes the exact
Hessian of the surprisal from ``torch.autograd.functional.hessian`` and plugs it into Eqs.
8.16–8.17 as printed (``⟨g⟩ + ν``, ``G = ½(⟨H⟩ − Υ⁻¹ + I)``,
``∂F/∂ℓ_k = G_kk υ_k²`` or ``∂F/∂R = tril(2GR)``), then backpropagates those head
gradients through the encoder with autograd. For the score estimators the test takes the score from
autograd of ``torch.distributions`` log-densities and forms each control variate by its definition,
sample by sample. Agreement is ≤ 1e-10 relative.
"""
import json

import numpy as np
import pytest

from refvae.math import estimators
from refvae.backend import NoiseSource
from refvae.errors import ConfigError
from refvae.math.vae import VAE
from refvae.witness import functional as twin

EMISSIONS = [
    dict(emission="gaussian", activation="tanh", alpha=0.7),
    dict(emission="bernoulli", activation="softplus"),
    dict(emission="gaussian_diag", activation="sigmoid"),
    dict(emission="gaussian", activation="silu", learn_alpha=True, alpha=1.3),
]
SCORE_NAMES = ["score", "score-loo", "score-running", "score-optimal"]


def _model(bk, latent, extra, n=3, samples=4, k=3, seed=0):
    cfg = dict(data_dim=4, latent_dim=k, encoder_hidden=[5], decoder_hidden=[6], latent=latent,
               **extra)
    vae = VAE(cfg, backend=bk)
    src = NoiseSource(seed)
    params = vae.init_params(src)
    y = src.uniform((n, 4)) if cfg["emission"] == "bernoulli" else src.normal((n, 4))
    return cfg, vae, params, y, vae.draw_noise(src, n, samples)


def _reference(cfg, params, y, eps, reduction, head_grads, hessian=False):
    """Gradients of every parameter when the encoder heads receive ``head_grads(ctx)`` (the full
    ∂(batch loss)/∂head, KL included) and the decoder is backpropagated as usual (Eq. 8.19).

    ``ctx`` offers, per datum n and sample l (torch float64): ``f``, ``g = ∂f/∂x``,
    ``H = ∂²f/∂x∂xᵀ`` (autograd.functional.hessian; only with ``hessian=True``),
    ``score[head]`` (autograd of the log-density at fixed x), the heads and the KL gradient of each
    head (autograd of the twin's closed-form KL)."""
    torch = pytest.importorskip("torch")
    full = cfg["latent"] == "gaussian_full"
    head_names = ["mean", "scale_tril"] if full else ["mean", "logvar"]
    p = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
    y_t, eps_t = torch.tensor(np.asarray(y)), torch.tensor(np.asarray(eps))
    n, samples, k = eps_t.shape
    scale = 1.0 / n if reduction == "mean" else 1.0
    enc = twin.mlp(p, "encoder", len(cfg["encoder_hidden"]), head_names, cfg["activation"], y_t)

    def dist(h):
        if full:
            return torch.distributions.MultivariateNormal(
                h["mean"], scale_tril=twin.scale_tril(h["scale_tril"], k))
        return torch.distributions.Normal(h["mean"], (0.5 * h["logvar"]).exp())

    def log_q(h, x):
        lp = dist(h).log_prob(x)
        return lp if full else lp.sum(-1)

    heads = {h: enc[h].detach() for h in head_names}
    leaf = {h: v.clone().requires_grad_() for h, v in heads.items()}
    prior = torch.distributions.Normal(torch.zeros(k, dtype=torch.float64), 1.0)
    kl = torch.distributions.kl_divergence(dist(leaf), prior).sum() if not full else \
        torch.distributions.kl_divergence(dist(leaf), torch.distributions.MultivariateNormal(
            torch.zeros(k, dtype=torch.float64),
            scale_tril=torch.eye(k, dtype=torch.float64))).sum()
    kl_grad = dict(zip(head_names, torch.autograd.grad(kl, [leaf[h] for h in head_names])))
    q = dist(heads)
    x = (heads["mean"][:, None, :]
         + torch.einsum("nij,nlj->nli", q.scale_tril, eps_t)) if full else \
        heads["mean"][:, None, :] + q.scale[:, None, :] * eps_t
    dec_p = {name: v.detach() for name, v in p.items()}

    def surprisal(xx, yy, pp=dec_p):
        dec = twin.mlp(pp, "decoder", len(cfg["decoder_hidden"]), twin.decoder_heads(cfg),
                       cfg["activation"], xx)
        return twin.surprisal(cfg, dec, yy, pp)

    f = surprisal(x, y_t[:, None, :])
    g, hess, score = torch.zeros_like(x), torch.zeros(n, samples, k, k, dtype=torch.float64), {}
    for h in head_names:
        score[h] = torch.zeros(n, samples, heads[h].shape[-1], dtype=torch.float64)
    for i in range(n):
        for j in range(samples):
            xx = x[i, j].clone().requires_grad_()
            g[i, j] = torch.autograd.grad(surprisal(xx, y_t[i]), xx)[0]
            if hessian:
                hess[i, j] = torch.autograd.functional.hessian(lambda v: surprisal(v, y_t[i]),
                                                               x[i, j])
            one = {h: heads[h][i].clone().requires_grad_() for h in head_names}
            grads = torch.autograd.grad(log_q({h: v[None] for h, v in one.items()},
                                              x[i, j][None]).sum(),
                                        [one[h] for h in head_names])
            for h, gh in zip(head_names, grads):
                score[h][i, j] = gh
    ctx = dict(f=f, g=g, H=hess, score=score, heads=heads, kl_grad=kl_grad, scale=scale, q=q, k=k)
    d_heads = head_grads(ctx)
    enc_params = [v for name, v in p.items() if name.startswith("encoder.")]
    enc_grads = torch.autograd.grad([enc[h] for h in head_names], enc_params,
                                    grad_outputs=[d_heads[h] for h in head_names])
    rec = surprisal(x, y_t[:, None, :], p).mean(1).sum() * scale   # decoder gradients, Eq. 8.19
    dec_names = [name for name in p if not name.startswith("encoder.")]
    dec_grads = torch.autograd.grad(rec, [p[name] for name in dec_names])
    out = {name: gr.numpy() for name,
           gr in zip([nm for nm in p if nm.startswith("encoder.")], enc_grads)}
    out.update({name: gr.numpy() for name, gr in zip(dec_names, dec_grads)})
    return out


def _price_heads(ctx):
    """Eqs. 8.16 and 8.17 as printed, with the exact Hessian from autograd."""
    torch = pytest.importorskip("torch")
    s, q, k = ctx["scale"], ctx["q"], ctx["k"]
    mean_grad = s * (ctx["g"].mean(1) + ctx["heads"]["mean"])
    eye = torch.eye(k, dtype=torch.float64)
    if "scale_tril" in ctx["heads"]:
        r = q.scale_tril
        big_g = 0.5 * (ctx["H"].mean(1) - torch.linalg.inv(r @ r.transpose(1, 2)) + eye)
        d_r = torch.tril(2.0 * big_g @ r) * s
        rows, cols = np.tril_indices(k)
        d_raw = d_r[:, rows, cols] * torch.where(torch.tensor(rows == cols), r[:, rows, cols], 1.0)
        return {"mean": mean_grad, "scale_tril": d_raw}
    var = q.scale ** 2
    big_g_diag = 0.5 * (ctx["H"].diagonal(dim1=-2, dim2=-1).mean(1) - 1.0 / var + 1.0)
    return {"mean": mean_grad, "logvar": s * big_g_diag * var}


def _assert_grads_equal(bk, res, expected):
    assert set(res.grads) == set(expected)
    for name, g in expected.items():
        np.testing.assert_allclose(bk.to_numpy(res.grads[name]), g, rtol=1e-10, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("latent", ["gaussian", "gaussian_full"])
@pytest.mark.parametrize("extra", EMISSIONS, ids=lambda c: f"{c['emission']}-{c['activation']}")
def test_price_equals_eq_8_17_with_torch_hessian(bk, latent, extra):
    cfg, vae, params, y, eps = _model(bk, latent, extra)
    res = vae.loss_and_grads(params, y, eps, estimator="price")
    host = {k: bk.to_numpy(v) for k, v in params.items()}
    _assert_grads_equal(bk, res, _reference(cfg, host, bk.to_numpy(y), bk.to_numpy(eps), "mean",
                                            _price_heads,
                                             hessian=True))


def test_price_with_sum_reduction(np_bk):
    cfg, vae, params, y, eps = _model(np_bk, "gaussian_full", EMISSIONS[2])
    res = vae.loss_and_grads(params, y, eps, estimator="price", reduction="sum")
    _assert_grads_equal(np_bk, res,
                        _reference(cfg, params, y, eps, "sum", _price_heads, hessian=True))


def _score_heads(name):
    def heads(ctx):
        torch = pytest.importorskip("torch")
        f, s = ctx["f"], ctx["scale"]
        n, samples = f.shape
        out = {}
        for h, sc in ctx["score"].items():
            beta = torch.zeros_like(sc)
            for i in range(n):
                for j in range(samples):
                    others = [m for m in range(samples) if m != j]
                    if name == "score-loo":
                        beta[i, j] = f[i, others].mean()
                    elif name == "score-optimal":
                        half = samples // 2
                        part = range(half, samples) if j < half else range(0, half)
                        sp = sc[i, list(part)]
                        beta[i, j] = (sp ** 2 * f[i, list(part)][:, None]).sum(0) / (sp ** 2).sum(0)
            out[h] = s * (((f[..., None] - beta) * sc).mean(1) + ctx["kl_grad"][h])
        return out

    return heads


@pytest.mark.parametrize("latent", ["gaussian", "gaussian_full"])
@pytest.mark.parametrize("name", SCORE_NAMES)
def test_score_estimators_match_their_definition(bk, latent, name):
    """First step of ``score-running`` has no history, so its β is 0, like ``score``."""
    cfg, vae, params, y, eps = _model(bk, latent, EMISSIONS[1], samples=5)
    res = vae.loss_and_grads(params, y, eps, estimator=name, estimator_state={})
    host = {k: bk.to_numpy(v) for k, v in params.items()}
    _assert_grads_equal(bk, res, _reference(cfg, host, bk.to_numpy(y), bk.to_numpy(eps), "mean",
                                            _score_heads(name)))


def test_running_mean_baseline_is_carried_across_steps_as_plain_floats(np_bk):
    cfg, vae, params, y, eps = _model(np_bk, "gaussian", EMISSIONS[0])
    state = {"score_running_decay": 0.5}
    first = vae.loss_and_grads(params, y, eps, estimator="score-running", estimator_state=state)
    f1 = first.reconstruction_per_datum.mean()
    assert (state["score_running_steps"] == 1 and state["score_running_mean"]
            == pytest.approx(f1, rel=1e-14))
    eps2 = vae.draw_noise(NoiseSource(9), y.shape[0], eps.shape[1])
    second = vae.loss_and_grads(params, y, eps2, estimator="score-running", estimator_state=state)
    f2 = second.reconstruction_per_datum.mean()
    assert state["score_running_mean"] == pytest.approx(0.5 * f1 + 0.5 * f2, rel=1e-14)
    assert json.loads(json.dumps(state)) == state                     # checkpointable

    # The second step used β = f1 (the mean before the step): compare with its definition.
    def heads(ctx):
        return {h: ctx["scale"] * (((ctx["f"][..., None] - f1) * sc).mean(1) + ctx["kl_grad"][h])
                for h, sc in ctx["score"].items()}

    _assert_grads_equal(np_bk, second, _reference(cfg, params, y, eps2, "mean", heads))


@pytest.mark.parametrize("name", ["score-loo", "score-optimal"])
def test_baselines_needing_two_samples_say_so(np_bk, name):
    _, vae, params, y, eps = _model(np_bk, "gaussian", EMISSIONS[0], samples=1)
    with pytest.raises(ConfigError, match=rf"'{name}' needs at least 2 samples per datum \(L ≥ "
                                          r"2\), got L = 1"):
        vae.loss_and_grads(params, y, eps, estimator=name)


def test_price_covariance_gradient_does_not_use_g_times_z(np_bk):
    """Eq. 8.17 needs no pathwise term: with ``g`` replaced by NaN the covariance gradients are
    unchanged (and the mean gradient, which is ⟨g⟩ by Bonnet's theorem, becomes NaN)."""
    for latent, cov in (("gaussian", "logvar"), ("gaussian_full", "scale_tril")):
        _, vae, params, y, eps = _model(np_bk, latent, EMISSIONS[2])
        fp = vae.forward(params, y, eps)
        w = 1.0 / (y.shape[0] * eps.shape[1])
        d_out = fp.terms.df_do * w
        back = vae.decoder.backward(np_bk, params, fp.dec_cache, d_out)

        def hessian(full=False):
            c = vae.emission.curvature(np_bk, fp.dec_out, y[:, None, :])
            return vae.decoder.input_hessian(np_bk, params, fp.dec_cache, back, c * w,
                                             form=vae.emission.curvature_form, full=full)

        price = estimators.get_estimator(latent, "price")
        good = price(np_bk, vae.latent, fp.state,
                     estimators.DecoderSignals(back.d_input, fp.f, w, hessian))
        nan_g = np.full_like(back.d_input, np.nan)
        bad = price(np_bk, vae.latent, fp.state, estimators.DecoderSignals(nan_g, fp.f, w, hessian))
        np.testing.assert_array_equal(bad[cov], good[cov])
        assert np.isnan(bad["mean"]).all()


def test_registry_names_and_unknown_estimator_message():
    names = ["pathwise", "price", *SCORE_NAMES]
    assert sorted(estimators.estimators_for("gaussian")) == sorted(names)
    assert sorted(estimators.estimators_for("gaussian_full")) == sorted(names)
    assert estimators.estimators_for("planar_flow") == ["pathwise"]
    with pytest.raises(ConfigError, match="unknown estimator 'reinforce' for latent 'gaussian'; "
                                          "choose one of"):
        estimators.get_estimator("gaussian", "reinforce")
    with pytest.raises(ConfigError, match="unknown estimator 'price' for latent 'planar_flow'"):
        estimators.get_estimator("planar_flow", "price")
