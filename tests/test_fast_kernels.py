"""Every kernel of refvae/fast/kernels.py equals the plain function of refvae/math/ it replaces, to
a few ulps, over hypothesis-drawn inputs that include ±50, ±700, signed zeros and the extremes of
each dtype (docs/DERIVATIONS.md#fast-kernels).

An ulp here is ``numpy.spacing`` of a *scale* at which both formulas are exact to rounding:

- ``log1p(e^{−|a|})``, ``σ(−|a|)``, softplus and the Bernoulli surprisal are sums of
  non-negative terms in both forms (``λ(H − y) ≥ 0``), so the scale is the result itself: a
  relative bound. Each side makes at most four roundings (exp, add, log, the Fast2Sum correction,
  whose own error is of order ulp²; NumPy/SciPy's log1p, expit and logaddexp are within an ulp or
  two), so :data:`ULPS` = 4 ulps.
- the Bernoulli gradient ``σ(λ) − y`` is a difference: fast
  ``(H − y) − sign(λ) σ(−|λ|)``, plain ``(1 − y) σ(λ) − y σ(−λ)``. Both cancel by
  the same amount, so the scale is the larger term, ``max(|H − y|, σ(−|λ|))``; where ``y = H``
  (binary data on the likely side) no cancellation happens and the bound is relative to the result.

Below the smallest normal number (``finfo.tiny``) the bound is absolute, ``tiny``: SciPy's
``expit(x) = 1/(1 + e^{−x})`` flushes to 0 once ``e^{−x}`` overflows (x < −709.8 in float64,
−88.7 in float32) while the true value is still subnormal, which the fast kernel keeps.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refvae.backend import get_backend
from refvae.fast.kernels import FastBernoulli, log1p_exp_neg_abs, softplus
from refvae.fast.model import fast_vae
from refvae.math.activations import SOFTPLUS
from refvae.math.emission import Bernoulli
from refvae.math.vae import VAE

ULPS = 4
DTYPES = ["float64", "float32"]


def _special(dtype):
    info = np.finfo(dtype)
    return [0.0, -0.0, 50.0, -50.0, 700.0, -700.0, 1.0, -1.0, float(info.max), -float(info.max),
            float(info.tiny), -float(info.tiny), float(info.smallest_subnormal), 36.7, -36.7, 88.7,
            -88.7]


def logits(dtype, shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=7)):
    width = 64 if dtype == "float64" else 32
    elements = st.one_of(st.sampled_from(_special(dtype)),
                         st.floats(allow_nan=False, allow_infinity=False, width=width),
                         st.floats(-800, 800, width=width))
    return hnp.arrays(np.dtype(dtype), shape, elements=elements)


def assert_ulps(fast, plain, scale, dtype, ulps=ULPS):
    """``|fast − plain| ≤ max(ulps · spacing(scale), tiny)``; equal infinities count as
    equal."""
    fast, plain = np.asarray(fast), np.asarray(plain)
    assert fast.dtype == plain.dtype == np.dtype(dtype)
    both_inf = np.isinf(fast) & (fast == plain)
    # inf − inf (equal infinities, masked below) and the spacing of an infinite scale are expected
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(fast.astype(float) - plain.astype(float))
        bound = np.maximum(ulps * np.spacing(np.abs(np.asarray(scale, dtype=dtype))).astype(float),
                           float(np.finfo(dtype).tiny))
        worst = np.max(np.where(both_inf, -1.0, err - bound), initial=-1.0)
    assert worst <= 0, f"max error {np.max(err)} exceeds {ulps} ulps of the scale"


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_log1p_exp_neg_abs_and_softplus_equal_the_plain_functions(dtype, data):
    bk = get_backend("numpy", dtype)
    a = data.draw(logits(dtype))
    log1p_e, s = log1p_exp_neg_abs(bk, a.copy())
    plain_log1p, plain_s = np.log1p(np.exp(-np.abs(a))), bk.special.expit(-np.abs(a))
    assert_ulps(log1p_e, plain_log1p, plain_log1p, dtype)
    assert_ulps(s, plain_s, plain_s, dtype)
    plain = SOFTPLUS.value(bk, a)
    assert_ulps(softplus(bk, a), plain, plain, dtype)


def _targets(dtype, shape):
    values = st.one_of(st.sampled_from([0.0, 1.0]),
                       st.floats(0, 1, width=64 if dtype == "float64" else 32))
    return hnp.arrays(np.dtype(dtype), shape, elements=values)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fast_bernoulli_equals_the_plain_emission(dtype, data):
    """``FastBernoulli.terms`` against ``Bernoulli.terms`` for ``o`` ``(N, L, D)`` and ``y``
    ``(N, 1, D)`` (the model's broadcast), binary and fractional targets."""
    bk = get_backend("numpy", dtype)
    o = data.draw(logits(dtype, hnp.array_shapes(min_dims=3, max_dims=3, max_side=6)))
    y = data.draw(_targets(dtype, (o.shape[0], 1, o.shape[2])))
    with np.errstate(over="ignore"):  # logits near ±800 may overflow f's sum, alike in both
        fast, plain = FastBernoulli().terms(bk, o, y), Bernoulli().terms(bk, o, y)
    # f sums D per-value terms, each within ULPS; the two forms add them up in different orders
    # (row blocks against one reduction), which may round each of the D − 1 additions apart.
    assert_ulps(fast.f, plain.f, plain.f, dtype, ulps=ULPS + o.shape[2] - 1)
    h = (~np.signbit(o)).astype(dtype)
    scale = np.maximum(np.abs(h - y), bk.special.expit(-np.abs(o)))
    assert_ulps(fast.df_do, plain.df_do, scale, dtype)
    binary = np.broadcast_to(y == h, o.shape)
    assert_ulps(fast.df_do[binary], plain.df_do[binary], plain.df_do[binary], dtype)


@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_the_training_model_runs_the_fast_kernels_and_agrees_with_the_plain_model(activation):
    """``fast_vae`` swaps exactly the Bernoulli emission and the softplus activation; its loss and
    gradients equal the plain model's to rounding."""
    cfg = dict(data_dim=6, latent_dim=2, encoder_hidden=[5], decoder_hidden=[4],
               activation=activation)
    plain, fast = VAE(cfg), fast_vae(cfg)
    assert type(plain.emission) is Bernoulli and type(fast.emission) is FastBernoulli
    assert (fast.decoder.activation.value is softplus) == (activation == "softplus")
    rng = np.random.default_rng(3)
    params = plain.init_params(1)
    y, eps = rng.random((4, 6)), rng.normal(size=(4, 3, 2))
    a, b = plain.loss_and_grads(params, y, eps), fast.loss_and_grads(params, y, eps)
    assert a.loss == pytest.approx(b.loss, rel=1e-14)
    for name in a.grads:
        np.testing.assert_allclose(b.grads[name], a.grads[name], rtol=1e-12, atol=1e-15,
                                   err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_bernoulli_kernel_on_the_device_equals_the_plain_emission(bk, dtype):
    """On CuPy (here the strict stand-in, which runs the kernel's NumPy formula; a GPU in
    validation/gpu_check.sh) one elementwise kernel and one sum: equal to the CPU's fast path bit
    for bit on the stand-in, and to the plain emission within the ulps above; ``weight`` scales
    ∂f/∂o."""
    import strict_cupy  # noqa: PLC0415

    bk = get_backend(bk.name, dtype)
    rng = np.random.default_rng(5)
    o = np.concatenate([rng.normal(0, 20, (3, 2, 9)).astype(dtype),
                        np.array(_special(dtype)[:9], dtype=dtype).reshape(1, 1, 9).repeat(2, 1)])
    y = np.concatenate([rng.random((3, 1, 9)), np.tile([[0.0, 1.0, 0.5]], (1, 1, 3))]).astype(dtype)
    before = strict_cupy.STATE.ops
    fast = FastBernoulli().terms(bk, bk.asarray(o), bk.asarray(y), weight=0.25)
    if bk.xp is strict_cupy.MODULE:
        assert strict_cupy.STATE.ops - before == 2 + 2  # two host copies, the kernel, the sum
    cpu = FastBernoulli().terms(get_backend("numpy", dtype), o, y)
    plain = Bernoulli().terms(get_backend("numpy", dtype), o, y)
    f, df = bk.to_numpy(fast.f), bk.to_numpy(fast.df_do)
    if bk.name == "numpy" or bk.xp is strict_cupy.MODULE:
        np.testing.assert_array_equal(f, cpu.f)
        np.testing.assert_array_equal(df, cpu.df_do * np.asarray(0.25, dtype))
    assert_ulps(f, plain.f, plain.f, dtype, ulps=ULPS + o.shape[2] - 1)
    scale = np.maximum(np.abs((~np.signbit(o)).astype(dtype) - y),
                       0.25 * get_backend("numpy", dtype).special.expit(-np.abs(o)))
    assert_ulps(df, plain.df_do * np.asarray(0.25, dtype), scale * np.asarray(0.25, dtype), dtype)
