"""The diagonal-Gaussian VAE: loss and gradients against PyTorch autograd, finite differences and
closed forms (docs/DERIVATIONS.md#the-objective; Eqs. 8.16, 8.19, 8.24, 8.26)."""
import math
import zlib

import numpy as np
import pytest

from refvae import ConfigError, DataError, NoiseSource, ShapeError
from refvae.errors import NonFiniteError
from refvae.gradcheck import assert_gradients
from refvae.math.activations import ACTIVATIONS
from refvae.math.vae import VAE
from refvae.witness import functional as twin

EMISSIONS = [("bernoulli", False), ("gaussian", False), ("gaussian", True),
             ("gaussian_diag", False)]
DEPTHS = [([], []), ([7], [5]), ([6, 4], [5, 3])]


def make_case(emission, learn_alpha, activation, depth, seed=0, n=4, samples=3, d=6, k=3,
              bk="numpy"):
    cfg = dict(data_dim=d, latent_dim=k, encoder_hidden=depth[0], decoder_hidden=depth[1],
               activation=activation, emission=emission, learn_alpha=learn_alpha, alpha=0.7)
    model = VAE(cfg, backend=bk)
    noise = NoiseSource(seed)
    params = model.init_params(noise)
    if learn_alpha:
        params["decoder.log_alpha"] = model.bk.asarray(-0.4)
    y = noise.uniform((n, d)) if emission == "bernoulli" else 1.5 * noise.normal((n, d))
    eps = noise.normal((n, samples, k))
    return cfg, model, params, y, eps


def rel_err(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("emission,learn_alpha", EMISSIONS)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("depth", DEPTHS, ids=["depth0", "depth1", "depth2"])
def test_loss_and_grads_match_pytorch(emission, learn_alpha, activation, depth):
    pytest.importorskip("torch")
    cfg, model, params, y, eps = make_case(emission, learn_alpha, activation, depth,
                                           seed=zlib.crc32(f"{emission}{activation}".encode())
                                           % 1000)
    res = model.loss_and_grads(params, y, eps)
    loss, kl, rec, grads = twin.grads(cfg, params, y, eps)
    assert rel_err(res.loss, loss) <= 1e-12
    assert rel_err(res.kl_per_datum, kl) <= 1e-12
    assert rel_err(res.reconstruction_per_datum, rec) <= 1e-12
    assert list(res.grads) == list(model.param_shapes())
    for name, g in grads.items():
        assert rel_err(res.grads[name], g) <= 1e-10, name


@pytest.mark.parametrize("emission,learn_alpha", EMISSIONS)
def test_gradients_match_finite_differences(emission, learn_alpha):
    _, model, params, y, eps = make_case(emission, learn_alpha, "tanh", DEPTHS[1], seed=3)
    res = model.loss_and_grads(params, y, eps)
    assert_gradients(lambda p: model.loss(p, y, eps), params, res.grads)


def test_reduction_sum_is_n_times_mean():
    _, model, params, y, eps = make_case("bernoulli", False, "softplus", DEPTHS[1], n=5)
    mean = model.loss_and_grads(params, y, eps)
    total = model.loss_and_grads(params, y, eps, reduction="sum")
    assert total.loss == pytest.approx(5 * mean.loss, rel=1e-14)
    for name in mean.grads:
        np.testing.assert_allclose(total.grads[name], 5 * mean.grads[name], rtol=1e-12, atol=1e-15)


def test_kl_matches_general_gaussian_kl():
    """Boxed KL against KL(N(ν, Σ) || N(0, I)) written with full matrices and log-determinants."""
    _, model, params, y, eps = make_case("gaussian", False, "tanh", DEPTHS[1])
    res = model.loss_and_grads(params, y, eps)
    heads, _ = model.encode(params, model.bk.asarray(y))
    for n in range(y.shape[0]):
        cov = np.diag(np.exp(heads["logvar"][n]))
        nu = heads["mean"][n]
        k = len(nu)
        expected = 0.5 * (np.trace(cov) + nu @ nu - k - np.linalg.slogdet(cov)[1])
        assert res.kl_per_datum[n] == pytest.approx(expected, rel=1e-12)


def test_linear_decoder_reconstruction_matches_closed_form():
    """Boxed reconstruction (E2, E3): with μ(x) = W x + b, E_q f = (‖y − Wν − b‖² + tr(W
    Υ Wᵀ))/(2α)
    + (D/2) log(2πα). The Monte Carlo mean over many samples must agree within 4 standard errors;
    a standard deviation used where a variance belongs (E3) or K in place of D (E2) fails."""
    cfg = dict(data_dim=5, latent_dim=3, encoder_hidden=[4], decoder_hidden=[], activation="tanh",
               emission="gaussian", alpha=0.6)
    model = VAE(cfg)
    noise = NoiseSource(11)
    params = model.init_params(noise)
    y = noise.normal((2, 5))
    samples = 200_000
    eps = noise.normal((2, samples, 3))
    fp = model.forward(params, model.bk.asarray(y), eps)
    heads = fp.heads
    w, b = params["decoder.out.weight"], params["decoder.out.bias"]
    alpha = 0.6
    for n in range(2):
        resid = y[n] - w @ heads["mean"][n] - b
        trace = np.trace(w @ np.diag(np.exp(heads["logvar"][n])) @ w.T)
        exact = (resid @ resid + trace) / (2 * alpha) + 2.5 * math.log(2 * math.pi * alpha)
        f = fp.f[n]
        assert abs(f.mean() - exact) < 4 * f.std() / math.sqrt(samples)


def test_same_numbers_on_every_backend(bk):
    _, ref_model, params, y, eps = make_case("gaussian_diag", False, "silu", DEPTHS[2])
    ref = ref_model.loss_and_grads(params, y, eps)
    _, model, _, _, _ = make_case("gaussian_diag", False, "silu", DEPTHS[2], bk=bk.name)
    res = model.loss_and_grads({k: bk.asarray(v) for k, v in params.items()}, y, eps)
    assert res.loss == pytest.approx(ref.loss, rel=1e-12)
    for name in ref.grads:
        np.testing.assert_allclose(bk.to_numpy(res.grads[name]), ref.grads[name], rtol=1e-9,
                                   atol=1e-13)


def test_float32_stays_float32():
    cfg, _, params, y, eps = make_case("bernoulli", False, "relu", DEPTHS[1])
    model = VAE(cfg, dtype="float32")
    res = model.loss_and_grads({k: v.astype(np.float32) for k, v in params.items()}, y, eps)
    assert all(g.dtype == np.float32 for g in res.grads.values())


@pytest.mark.parametrize("mutate,error,words", [
    (lambda m, p, y, e: (p, y[:, :-1], e), ShapeError, "y has shape"),
    (lambda m, p, y, e: (p, y[:0], e[:0]), DataError, "empty"),
    (lambda m, p, y, e: (p, np.where(y > 0.5, np.nan, y), e), DataError, "NaN"),
    (lambda m, p, y, e: (p, y + 1.0, e), DataError, "outside [0, 1]"),
    (lambda m, p, y, e: (p, y, e[:, :, :-1]), ShapeError, "noise 'eps' has shape"),
    (lambda m, p, y, e: (p, y, e[:, :0]), ShapeError, "noise 'eps' has shape"),
    (lambda m, p, y, e: (p, y, e * np.inf), DataError, "noise 'eps' contains NaN"),
    (lambda m, p, y, e: ({k: v for k, v in p.items() if k != "encoder.0.bias"}, y, e), ShapeError,
     "missing encoder.0.bias"),
    (lambda m, p, y, e: ({**p, "decoder.extra": p["encoder.0.bias"]}, y, e), ShapeError,
     "unexpected decoder.extra"),
    (lambda m, p, y, e: ({**p, "encoder.0.weight": p["encoder.0.weight"].T}, y, e), ShapeError,
     "transposed"),
    (lambda m, p, y, e: ({**p, "encoder.0.bias": p["encoder.0.bias"] * np.nan}, y, e),
     NonFiniteError,
     "encoder.0.bias"),
])
def test_bad_inputs_are_named(mutate, error, words):
    _, model, params, y, eps = make_case("bernoulli", False, "tanh", DEPTHS[1])
    p, yy, ee = mutate(model, params, y, eps)
    with pytest.raises(error, match=None) as info:
        model.loss_and_grads(p, yy, ee)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_estimator_and_reduction():
    _, model, params, y, eps = make_case("bernoulli", False, "tanh", DEPTHS[1])
    with pytest.raises(ConfigError, match="unknown estimator 'nope'"):
        model.loss_and_grads(params, y, eps, estimator="nope")
    with pytest.raises(ConfigError, match="unknown reduction"):
        model.loss_and_grads(params, y, eps, reduction="max")


@pytest.mark.parametrize("bad,words", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"activation": "gelu"}, "activation"),
    ({"emission": "poisson"}, "emission"),
    ({"alpha": -1.0}, "alpha"),
    ({"learn_alpha": True, "emission": "bernoulli"}, "learn_alpha"),
    ({"encoder_hidden": "400"}, "encoder_hidden"),
    ({"colour": "red"}, "unknown config field"),
    ({"format": 2}, "format"),
])
def test_config_errors(bad, words):
    cfg = dict(data_dim=4, latent_dim=2, encoder_hidden=[3], decoder_hidden=[3])
    cfg.update(bad)
    with pytest.raises(ConfigError) as info:
        VAE(cfg)
    assert words in str(info.value)


def test_missing_config_field():
    with pytest.raises(ConfigError, match="missing the field"):
        VAE({"latent_dim": 2})


@pytest.mark.parametrize("emission,learn_alpha", EMISSIONS)
@pytest.mark.parametrize("extreme", [50.0, 200.0])
def test_extreme_log_variances_and_logits_stay_finite(emission, learn_alpha, extreme):
    """Encoder log-variances and decoder outputs (logits, means, log-variances) of ±50 and ±200,
    and log α of −50 and −12.5: the mathematics is finite there, so the loss and every gradient
    must be, with no clamping anywhere. (The decoder's weights are zeroed so that its outputs are
    exactly these values: through a linear decoder a sample with υ = e^{100} would make the
    Gaussian surprisal exceed every float, which is the mathematics, not a numerical failure.)"""
    cfg, model, params, y, eps = make_case(emission, learn_alpha, "tanh", DEPTHS[0])
    params = dict(params)
    params["encoder.logvar.bias"] = np.array([extreme, -extreme, 0.0])
    params["decoder.out.weight"] = np.zeros_like(params["decoder.out.weight"])
    if emission == "gaussian_diag":
        params["decoder.logvar.weight"] = np.zeros_like(params["decoder.logvar.weight"])
    params["decoder.out.bias"] = np.linspace(-extreme, extreme, 6)
    if emission == "gaussian_diag":
        params["decoder.logvar.bias"] = np.linspace(-extreme / 4, extreme, 6)
    if learn_alpha:
        params["decoder.log_alpha"] = np.array(-extreme / 4)
    res = model.loss_and_grads(params, y, eps)
    assert math.isfinite(res.loss)
    assert all(np.isfinite(g).all() for g in res.grads.values())


def test_detect_anomaly_names_the_first_non_finite_intermediate():
    """A log-variance of 800 overflows υ = exp(ℓ/2): with anomaly detection the error names the
    sample x (the first intermediate that is not finite), not the loss."""
    _, model, params, y, eps = make_case("bernoulli", False, "tanh", DEPTHS[0])
    params = dict(params)
    params["encoder.logvar.bias"] = np.array([1600.0, 0.0, 0.0])
    with pytest.raises(NonFiniteError, match="latent sample x is the first") as info, \
            np.errstate(over="ignore", invalid="ignore"):  # the overflow is the point
        model.loss_and_grads(params, y, eps, detect_anomaly=True)
    assert "\n" not in str(info.value)
    params["encoder.logvar.bias"] = np.zeros(3)
    assert math.isfinite(model.loss_and_grads(params, y, eps, detect_anomaly=True).loss)
