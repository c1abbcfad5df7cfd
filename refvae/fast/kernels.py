"""Fused elementwise kernels for the training path, each equal to a plain function of
:mod:`refvae.math` up to a few ulps (tests/test_fast_kernels.py; docs/DERIVATIONS.md#fast-kernels).

- :func:`log1p_exp_neg_abs` replaces ``bk.xp.log1p(bk.xp.exp(-|a|))`` and ``σ(−|a|)``;
- :func:`softplus` replaces :func:`refvae.math.activations.softplus`;
- :class:`FastBernoulli` replaces :class:`refvae.math.emission.Bernoulli` (same protocol,
  :class:`refvae.math.protocols.Emission`), computed in cache-sized row blocks
  (:func:`row_blocks`).
"""
from __future__ import annotations

from dataclasses import replace

from ..math.activations import SOFTPLUS
from ..math.emission import Bernoulli, EmissionTerms

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
    ``u = fl(1 + e)``, the rounding error ``r = (u − 1) − e`` is exact (Fast2Sum, ``e ≤ 1``), and
    ``log1p(e) = log u − log(1 + r/(1 + e)) = log u − r/u`` up to a term of order
    ``(r/u)² ≤ ulp²``; where ``u`` rounds to 1 this gives exactly ``e``.
    """
    xp = bk.xp
    e = xp.copysign(a, -1.0)                 # −|a| in one pass
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


class FastBernoulli(Bernoulli):
    """Replaces :meth:`refvae.math.emission.Bernoulli.terms` (``softplus(λ) − yλ`` and
    ``σ(λ) − y``) by one fused pass per cache-sized row block.

    With ``H = 1[λ ≥ 0]`` (by sign bit, so that ``−0.0`` counts as negative), ``s = σ(−|λ|)`` and
    ``e = e^{−|λ|}``: ``softplus(λ) − yλ = λ(H − y) + log1p(e)`` and ``σ(λ) − y = (H − y) −
    sign(λ) s``, exact in each branch (``y = H`` leaves ``−s`` or ``+s`` at full relative precision).
    """

    def terms(self, bk, o, y, log_alpha=None) -> EmissionTerms:
        xp = bk.xp
        y = xp.broadcast_to(y, o.shape)
        f = xp.empty(o.shape[:-1], dtype=o.dtype)
        df = xp.empty_like(o)
        blocks = row_blocks(bk, o.shape[0], o[0].size) if o.ndim > 1 else [...]
        for rows in blocks:
            self._block(bk, o[rows], y[rows], f[rows], df[rows])
        return EmissionTerms(f, df)

    @staticmethod
    def _block(bk, o, y, f_out, df_out) -> None:
        xp = bk.xp
        log1p_e, s = log1p_exp_neg_abs(bk, o)
        g = df_out
        xp.subtract(1.0, xp.signbit(o), out=g)
        g -= y                                   # H − y
        t = o * g
        t += log1p_e
        t.sum(axis=-1, out=f_out)
        xp.copysign(s, o, out=s)
        g -= s                                   # σ(λ) − y
