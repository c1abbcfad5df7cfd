"""Fused elementwise kernels for the training path, each equal to a plain function of
:mod:`refvae.math` up to a few ulps (tests/test_fast_kernels.py; docs/DERIVATIONS.md#fast-kernels).

- :func:`log1p_exp_neg_abs` replaces ``bk.xp.log1p(bk.xp.exp(-|a|))`` and ``σ(−|a|)``;
- :func:`softplus` replaces :func:`refvae.math.activations.softplus`;
- :class:`FastBernoulli` replaces :class:`refvae.math.emission.Bernoulli` (same protocol,
  :class:`refvae.math.protocols.Emission`), computed in cache-sized row blocks
  (:func:`row_blocks`) on the CPU and as one kernel (:data:`BERNOULLI`) on a GPU;
- :func:`bias_activation` and :func:`activation_grad` replace a hidden layer's ``a += b;
  h = φ(a)`` and ``u ⊙ φ'(a)`` (one kernel each for relu and tanh).

Each kernel is an :class:`~refvae.fast.elementwise.Elementwise`: CUDA C on a GPU, its NumPy formula
(the code below, unchanged in its operations) on the CPU.
"""
from __future__ import annotations

from dataclasses import replace

from ..math.activations import SOFTPLUS
from ..math.emission import Bernoulli, EmissionTerms
from .elementwise import Elementwise, scalar

# Values per block of a multi-pass elementwise kernel on the CPU: a dozen passes over blocks this
# size stay in a core's L2 cache instead of streaming whole arrays through memory each time.
ELEMENTWISE_BLOCK = 32768


def row_blocks(bk, rows: int, row_size: int) -> list:
    """Slices of ``range(rows)`` for kernels that make many elementwise passes: about
    :data:`ELEMENTWISE_BLOCK` values each on the CPU; one slice on a GPU, where each pass is a
    kernel launch."""
    if bk.name == "cupy" or rows * row_size <= ELEMENTWISE_BLOCK:
        return [slice(0, rows)]
    step = max(1, ELEMENTWISE_BLOCK // max(1, row_size))
    return [slice(a, min(a + step, rows)) for a in range(0, rows, step)]


def log1p_exp_neg_abs(bk, a):
    """``(log1p(e), e/(1 + e))`` for ``e = e^{−|a|}``: the pieces of ``softplus(a) = max(a, 0) +
    log1p(e)`` and of ``σ(−|a|) = e/(1 + e)``, sharing one exponential and one logarithm.

    Replaces ``xp.log1p(xp.exp(−|a|))`` (NumPy's ``log1p`` runs element by element): with
    ``u = fl(1 + e)``, the rounding error ``r = (u − 1) − e`` is exact (Fast2Sum, ``e ≤ 1``),
    and ``log1p(e) = log u − log(1 + r/(1 + e)) = log u − r/u`` up to a term of order
    ``(r/u)² ≤ ulp²``; where ``u`` rounds to 1 this gives exactly ``e``.
    """
    xp = bk.xp
    e = xp.abs(a)
    xp.negative(e, out=e)                    # −|a| (NumPy's copysign is far slower than both)
    xp.exp(e, out=e)
    u = e + 1.0
    r = u - 1.0
    r -= e
    r /= u
    log1p_e = xp.log(u)
    log1p_e -= r
    e /= u
    return log1p_e, e


def softplus(bk, a):
    """``max(a, 0) + log1p(e^{−|a|})``; replaces :func:`refvae.math.activations.softplus`."""
    out, _ = log1p_exp_neg_abs(bk, a)
    out += bk.xp.maximum(a, 0.0)
    return out


FAST_SOFTPLUS = replace(SOFTPLUS, value=softplus)


def _bernoulli_numpy(xp, o, y, w, t, df) -> None:
    """:data:`BERNOULLI` in NumPy: ``t = λ(H − y) + log1p(e)`` and ``df = w (σ(λ) − y)``.

    The sign-bit steps work on the bits (``signbit``, ``copysign`` and mixed bool/float arithmetic
    are NumPy's slowest passes here): ``1 − H`` is ``o``'s sign bit shifted down and multiplied
    by the bits of 1.0 (exactly 0.0 or 1.0), and ``copysign(s, λ)`` is ``s`` with ``λ``'s sign bit
    OR-ed in (``s ≥ 0``, so its own sign bit is clear; a NaN's sign may differ, its value not).
    """
    log1p_e, s = log1p_exp_neg_abs(_XP(xp), o)
    uint = xp.dtype(f"u{o.dtype.itemsize}")
    bits = 8 * o.dtype.itemsize
    sign = xp.bitwise_and(o.view(uint), uint.type(1 << (bits - 1)))
    not_h = t.view(uint)                     # t as scratch: the bits of 1 − H
    xp.right_shift(sign, bits - 1, out=not_h)
    not_h *= xp.array(1.0, dtype=o.dtype).view(uint)
    g = df
    xp.subtract(1.0, t, out=g)               # H, exactly 1.0 or 0.0
    g -= y                                   # H − y
    xp.multiply(o, g, out=t)
    t += log1p_e
    s_bits = s.view(uint)
    s_bits |= sign                           # copysign(s, λ)
    g -= s                                   # σ(λ) − y
    if w != 1:                               # w = 1 leaves every value as it is
        g *= w


class _XP:
    """The ``bk`` that :func:`log1p_exp_neg_abs` needs, around an array module."""

    def __init__(self, xp):
        self.xp = xp


BERNOULLI = Elementwise(
    "refvae_bernoulli", "T o, T y, T w", "T t, T df",
    """
    T e = exp(-fabs(o));
    T u = e + (T)1;
    T r = (u - (T)1) - e;
    r = r / u;
    T l = log(u) - r;
    T s = e / u;
    T g = (signbit(o) ? (T)0 : (T)1) - y;
    t = o * g + l;
    g = g - copysign(s, o);
    df = (w == (T)1) ? g : g * w;
    """, _bernoulli_numpy)


class FastBernoulli(Bernoulli):
    """Replaces :meth:`refvae.math.emission.Bernoulli.terms` (``softplus(λ) − yλ`` and
    ``σ(λ) − y``) by one fused pass per cache-sized row block (one kernel on a GPU).

    With ``H = 1[λ ≥ 0]`` (by sign bit, so that ``−0.0`` counts as negative),
    ``s = σ(−|λ|)`` and ``e = e^{−|λ|}``: ``softplus(λ) − yλ = λ(H − y) + log1p(e)``
    and ``σ(λ) − y = (H − y) − sign(λ) s``, exact in each branch (``y = H`` leaves ``−s``
    or ``+s`` at full relative precision).
    """

    def terms(self, bk, o, y, log_alpha=None, weight: float = 1.0, out=None) -> EmissionTerms:
        """:meth:`Bernoulli.terms`; ``weight`` ``w`` gives ``w ∂f/∂o`` in place of
        ``∂f/∂o``; ``out``: the arrays ``(f, df)`` to write them into."""
        xp = bk.xp
        y = xp.broadcast_to(y, o.shape)
        f, df = out if out is not None else (xp.empty(o.shape[:-1], dtype=o.dtype),
                                             xp.empty_like(o))
        w = scalar(bk, weight)
        for rows in row_blocks(bk, o.shape[0], o[0].size) if o.ndim > 1 else [...]:
            t = xp.empty_like(o[rows])
            BERNOULLI(bk, o[rows], y[rows], w, t, df[rows])
            t.sum(axis=-1, out=f[rows])
        return EmissionTerms(f, df)


# ----- hidden layers: bias, activation and its derivative ----------------------------------------
def _bias_relu_numpy(xp, b, a, h):
    a += b
    xp.maximum(a, 0.0, out=h)


def _relu_grad_numpy(xp, u, a, d):
    xp.multiply(u, (a > 0).astype(a.dtype), out=d)


def _bias_tanh_numpy(xp, b, a, h):
    a += b
    xp.tanh(a, out=h)


def _tanh_grad_numpy(xp, u, a, d):
    e = xp.exp(-2.0 * xp.abs(a))
    xp.multiply(u, 4.0 * e / (1.0 + e) ** 2, out=d)


_RELU_H = "h = (a > (T)0 || isnan(a)) ? a : (T)0;"   # NumPy's maximum(a, 0): NaN kept, −0 → +0
BIAS_ACTIVATION = {
    "relu": Elementwise("refvae_bias_relu", "T b", "T a, T h", "a = a + b; " + _RELU_H,
                        _bias_relu_numpy),
    "tanh": Elementwise("refvae_bias_tanh", "T b", "T a, T h", "a = a + b; h = tanh(a);",
                        _bias_tanh_numpy),
}
ACTIVATION_GRAD = {
    "relu": Elementwise("refvae_relu_grad", "T u, T a", "T d",
                        "d = u * (a > (T)0 ? (T)1 : (T)0);", _relu_grad_numpy),
    "tanh": Elementwise("refvae_tanh_grad", "T u, T a", "T d",
                        "T e = exp((T)-2 * fabs(a)); T q = (T)1 + e; "
                        "d = u * (((T)4 * e) / (q * q));",
                        _tanh_grad_numpy),
}


def bias_activation(bk, activation, a, b, out=None):
    """``a += b`` and ``h = φ(a)`` (returned; written into ``out`` when given), as
    :meth:`refvae.math.mlp.MLP.forward` computes them: one kernel for relu and tanh, the
    activation's own function otherwise."""
    kernel = BIAS_ACTIVATION.get(activation.name)
    if kernel is None:
        a += b
        return _into(out, activation.value(bk, a))
    h = bk.xp.empty_like(a) if out is None else out
    kernel(bk, b, a, h)
    return h


def activation_grad(bk, activation, u, a, h, out=None):
    """``u ⊙ φ'(a)`` (the reverse pass's ``δ_l``; written into ``out`` when given): one kernel
    for relu and tanh."""
    kernel = ACTIVATION_GRAD.get(activation.name)
    if kernel is None:
        return _into(out, u * activation.d1(bk, a, h))
    d = bk.xp.empty_like(u) if out is None else out
    kernel(bk, u, a, d)
    return d


def _into(out, value):
    if out is None:
        return value
    out[...] = value
    return out
