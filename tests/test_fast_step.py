"""The training step's fast path (refvae/fast/step.py and its kernels) against the plain model,
and its device operations counted on the strict CuPy stand-in (issue 28).

On NumPy, and on the stand-in (which runs each kernel's NumPy formula), the loss and every gradient
written into the flat buffer are bit-identical to :meth:`VAE.loss_and_grads`'s: each kernel makes
the plain operations in the plain order (the KL's halving moves before its sum, which is exact).
"""
import numpy as np
import pytest

import strict_cupy
from refvae.backend import NoiseSource, get_backend
from refvae.data.load import Dataset
from refvae.fast import parallel
from refvae.fast.kernels import activation_grad, bias_activation
from refvae.fast.model import fast_vae
from refvae.fast.step import fused, loss_and_grads_into, pack_flat
from refvae.math.activations import get_activation
from refvae.math.config import VAEConfig
from refvae.math.vae import VAE
from refvae.optim.rules import FlatParams
from refvae.train.loop import TrainOptions, train
from refvae.util.progress import Meter

EXAMPLES = dict(data_dim=784, latent_dim=20, encoder_hidden=(400,), decoder_hidden=(400,),
                emission="bernoulli")
# Device operations per training step of the examples architecture (784-400-20, bernoulli, Adam,
# one sample): 126 before issue 28 (per-tensor finiteness checks and gradient copies, a 15-pass
# Bernoulli kernel, a 12-pass Adam, a copy of the batch indices), 39 after.
EXAMPLES_OPS = {"relu": 39, "tanh": 39}
CASES = {
    "relu-bernoulli": dict(activation="relu"),
    "tanh-two-samples": dict(activation="tanh"),
    "softplus": dict(activation="softplus"),
    "gaussian-learn-alpha": dict(activation="tanh", emission="gaussian", learn_alpha=True),
    "gaussian-diag": dict(activation="silu", emission="gaussian_diag", encoder_hidden=(5, 4)),
    "categorical": dict(activation="relu", latent="categorical", categories=3),
    "flows": dict(activation="tanh", flow_length=2),
    "log-std-head": dict(activation="tanh", scale_head="log_std"),
    "softplus-var-floor": dict(activation="relu", scale_head="softplus_var", scale_floor=1e-4),
    "head-activation": dict(activation="tanh", head_activations={"mean": "tanh"}),
    "monte-carlo-kl": dict(activation="tanh", kl="monte_carlo"),
}
# The fused pass is the default forms' (logvar head, analytic KL, no head activation); the rest
# take the plain reverse pass into the flat buffer.
UNFUSED = {"categorical", "flows", "log-std-head", "softplus-var-floor", "head-activation",
           "monte-carlo-kl"}


def _case(extra, dtype="float64", backend="numpy"):
    cfg = {**dict(data_dim=6, latent_dim=2, encoder_hidden=(5,), decoder_hidden=(4,)), **extra}
    plain, fast = VAE(cfg, dtype=dtype), fast_vae(cfg, backend, dtype)
    noise = NoiseSource(7)
    params = plain.init_params(noise)
    y = noise.uniform((5, 6)) if plain.config.emission == "bernoulli" else noise.normal((5, 6))
    eps = plain.draw_noise(noise, 5, 2 if "two" in str(extra) or "categorical" in str(extra) else 1)
    return plain, fast, params, plain.bk.asarray(y), eps


def _into(model, params, y, eps, estimator=None):
    bk = model.bk
    flat = FlatParams.from_dict(bk, {k: bk.asarray(v) for k, v in params.items()})
    flat.grad.fill(np.nan)  # every entry must be written
    res = loss_and_grads_into(model, flat.params, bk.asarray(y), bk.asarray(eps), flat.grads,
                              flat.grad, estimator, temperature=0.7 if "categorical" in
                              model.config.latent else None)
    return res, {k: bk.to_numpy(v) for k, v in res.grads.items()}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_flat_buffer_step_is_bit_identical_to_the_plain_model(name, dtype):
    plain, fast, params, y, eps = _case(CASES[name], dtype)
    temperature = 0.7 if plain.config.latent == "categorical" else None
    ref = plain.loss_and_grads(params, y, eps, temperature=temperature)
    plain_fast = fast.loss_and_grads(params, y, eps, temperature=temperature)  # the fast kernels
    res, grads = _into(fast, params, y, eps)
    assert fused(fast, fast.default_estimator) == (name not in UNFUSED)
    assert (res.loss, res.kl, res.reconstruction) == (plain_fast.loss, plain_fast.kl,
                                                      plain_fast.reconstruction)
    assert res.grads_finite and list(grads) == list(ref.grads)
    for k, g in grads.items():
        np.testing.assert_array_equal(g, plain_fast.grads[k], err_msg=k)
        np.testing.assert_allclose(g, ref.grads[k], rtol=1e-4 if dtype == "float32" else 1e-12,
                                   atol=1e-6 if dtype == "float32" else 1e-14, err_msg=k)


@pytest.mark.parametrize("name", ["relu-bernoulli", "tanh-two-samples", "gaussian-learn-alpha"])
def test_the_step_on_the_stand_in_equals_numpy_bit_for_bit(strict_cupy_bk, name):
    _, host, params, y, eps = _case(CASES[name])
    _, dev, *_ = _case(CASES[name], backend="cupy")
    a, ga = _into(host, params, y, eps)
    b, gb = _into(dev, params, y.copy(), eps)
    assert (a.loss, a.kl, a.reconstruction, a.grads_finite) == (b.loss, b.kl, b.reconstruction,
                                                                b.grads_finite)
    for k in ga:
        np.testing.assert_array_equal(gb[k], ga[k], err_msg=k)


def test_a_non_finite_gradient_is_flagged_from_the_flat_buffer(bk):
    kl, f = bk.asarray(np.array([0.5, 1.0])), bk.asarray(np.array([[2.0], [4.0]]))
    for bad, finite in ((0.0, True), (np.inf, False), (np.nan, False)):
        buffer = bk.asarray(np.array([1.0, bad, 3.0]))
        res = pack_flat(bk, kl, f, 0.5, buffer, {"g": buffer})
        assert (res.loss, res.kl, res.reconstruction, res.grads_finite) == (3.75, 0.75, 3.0, finite)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_bias_activation_and_its_gradient_kernels_equal_the_plain_formulas(bk, act):
    """One kernel each on the stand-in (and a GPU), the plain operations on NumPy: equal bits."""
    phi = get_activation(act)
    rng = np.random.default_rng(0)
    a0 = np.concatenate([rng.normal(0, 30, (4, 7)), [[0.0, -0.0, 800.0, -800.0, 1e-300, np.nan,
                                                      np.inf]]])
    b, u = rng.normal(size=7), rng.normal(size=a0.shape)
    a = bk.asarray(a0.copy())
    before = strict_cupy.STATE.ops
    h = bias_activation(bk, phi, a, bk.asarray(b))
    d = activation_grad(bk, phi, bk.asarray(u), a, h)
    if bk.name == "cupy" and bk.xp is strict_cupy.MODULE:
        assert strict_cupy.STATE.ops - before == 1 + 1 + 2   # two kernels, two host copies
    host = get_backend("numpy")
    with np.errstate(all="ignore"):
        want_a = a0 + b
        want_h, want_d = phi.value(host, want_a), u * phi.d1(host, want_a, phi.value(host, want_a))
    np.testing.assert_array_equal(bk.to_numpy(a), want_a)
    tol = dict(rtol=0, atol=0) if bk.name == "numpy" or bk.xp is strict_cupy.MODULE \
        else dict(rtol=4e-16, atol=0)
    np.testing.assert_allclose(bk.to_numpy(h), want_h, **tol)
    np.testing.assert_allclose(bk.to_numpy(d), want_d, **tol)


def _tiny_mnist(n=48):
    rng = np.random.default_rng(0)
    y = (rng.random((n + 16, 784)) < 0.3).astype(float)
    return Dataset("tiny-mnist", y[:n], y[n:], image_shape=(28, 28), kind="binary")


@pytest.mark.parametrize("act", sorted(EXAMPLES_OPS))
def test_device_operations_per_training_step_on_the_stand_in(strict_cupy_bk, tmp_path,
                                                             monkeypatch, act):
    """Every device operation of a training step of the examples architecture counted (kernels,
    copies, gathers, reductions): exactly :data:`EXAMPLES_OPS`, and one device→host copy."""
    ops, syncs = [], []
    advance = Meter.advance  # called once per training step

    def mark(self, *a):
        ops.append(strict_cupy.STATE.ops)
        syncs.append(strict_cupy.STATE.syncs)
        advance(self, *a)

    monkeypatch.setattr(Meter, "advance", mark)
    cfg = VAEConfig(**EXAMPLES, activation=act)
    train(cfg, TrainOptions(epochs=1, batch_size=16, progress=False), _tiny_mnist(), tmp_path,
          backend="cupy")
    assert len(ops) == 3
    assert np.diff(ops).tolist() == [EXAMPLES_OPS[act]] * 2
    assert np.diff(syncs).tolist() == [1, 1]


def test_device_noise_is_drawn_on_the_device_and_keeps_the_count(strict_cupy_bk, tmp_path,
                                                                 monkeypatch):
    """--device-noise: one draw on the device in place of one host→device copy; NumPy runs of a
    seed are reproducible with it, and differ from the host stream's."""
    ops, kinds = [], []
    real = parallel.loss_and_grads

    def spy(model, workers, params, y, eps, *a, **kw):
        ops.append(strict_cupy.STATE.ops)
        kinds.append(type(eps).__module__)
        return real(model, workers, params, y, eps, *a, **kw)

    monkeypatch.setattr(parallel, "loss_and_grads", spy)
    cfg = VAEConfig(**EXAMPLES, activation="relu")
    opts = dict(epochs=1, batch_size=16, progress=False)
    train(cfg, TrainOptions(**opts, device_noise=True), _tiny_mnist(), tmp_path / "d", "cupy")
    assert np.diff(ops).tolist() == [EXAMPLES_OPS["relu"]] * 2 and set(kinds) == {"cupy"}
    runs = [train(cfg, TrainOptions(**opts, device_noise=dn), _tiny_mnist(), tmp_path / f"{i}")
            for i, dn in enumerate((True, True, False))]
    assert runs[0][0]["train_loss"] == runs[1][0]["train_loss"] != runs[2][0]["train_loss"]
