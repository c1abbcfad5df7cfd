"""Emission models p(y|x): the reconstruction surprisal f = −log p(y|x), its gradient with respect
to the decoder output, and its curvature (for the Hessian of Eq. 8.17).

docs/DERIVATIONS.md#emissions: ``gaussian`` N(μ, αI) with α fixed or learned as ``log α`` (Eq.
8.26), ``gaussian_diag`` N(μ, diag σ²) with heads μ and s = log σ² (Eq. 8.15), and
``bernoulli`` with logits λ. Every surprisal keeps its normalizer (erratum E6: Eq. 8.18's
``E_emiss`` alone is not enough once Σ depends on x or θ).

Shapes: the decoder output ``o`` is ``(..., P)``; ``y`` broadcasts against ``o``'s data dimension
(``(N, 1, D)`` against ``(N, L, P)``). ``f`` is summed over the D observation dimensions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from .activations import softplus

LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class EmissionTerms:
    """``f`` ``(...)``; ``df_do`` ``(..., P)``; ``df_dlog_alpha`` ``(...)`` (learned α only)."""

    f: object
    df_do: object
    df_dlog_alpha: object = None


class Bernoulli:
    """``f = Σ_d softplus(λ_d) − y_d λ_d``; ``∂f/∂λ = σ(λ) − y``;
    ``∂²f/∂λ² = σ(λ)σ(−λ)`` (docs/DERIVATIONS.md#emissions).

    Written for ``y ∈ [0, 1]`` as ``(1 − y) softplus(λ) + y softplus(−λ)`` and
    ``(1 − y) σ(λ) − y σ(−λ)`` (since ``softplus(λ) − λ = softplus(−λ)`` and
    ``σ(λ) − 1 = −σ(−λ)``): no term cancels against ``λ`` when ``y`` is 0 or 1, so binary
    data keep full relative precision at any |λ|. :class:`refvae.fast.kernels.FastBernoulli`
    computes the same in fewer passes.
    """

    name = "bernoulli"
    curvature_form = "diag"

    def heads(self, data_dim: int):
        return [("out", data_dim)]

    def terms(self, bk, o, y, log_alpha=None) -> EmissionTerms:
        """``f``, ``∂f/∂o`` (and ``∂f/∂ log α``) as in the class docstring
        (docs/DERIVATIONS.md#emissions)."""
        expit = bk.special.expit
        f = ((1.0 - y) * softplus(bk, o) + y * softplus(bk, -o)).sum(axis=-1)
        return EmissionTerms(f, (1.0 - y) * expit(o) - y * expit(-o))

    def curvature(self, bk, o, y, log_alpha=None):
        """``∂²f/∂o∂oᵀ`` in the form :attr:`curvature_form`
        (docs/DERIVATIONS.md#mlp-input-hessians)."""
        return bk.special.expit(o) * bk.special.expit(-o)

    def mean(self, bk, o):
        """E[y|x] = σ(λ): what sample grids and reconstructions show."""
        return bk.special.expit(o)


class Gaussian:
    """Isotropic ``N(μ, αI)`` (Eq. 8.26; E2: the normalizer counts D, not K):
    ``f = ||y − μ||² / (2α) + (D/2) log(2πα)``, with ``a = log α``:
    ``∂f/∂μ = (μ − y)/α``, ``∂f/∂a = D/2 − ||y − μ||²/(2α)``,
    ``∂²f/∂μ∂μᵀ = I/α``.
    """

    name = "gaussian"
    curvature_form = "diag"

    def __init__(self, alpha: float = 1.0):
        self.log_alpha_fixed = math.log(alpha)

    def heads(self, data_dim: int):
        return [("out", data_dim)]

    def _log_alpha(self, log_alpha):
        return self.log_alpha_fixed if log_alpha is None else log_alpha

    def terms(self, bk, o, y, log_alpha=None) -> EmissionTerms:
        """``f``, ``∂f/∂o`` (and ``∂f/∂ log α``) as in the class docstring
        (docs/DERIVATIONS.md#emissions)."""
        xp = bk.xp
        la = self._log_alpha(log_alpha)
        inv_alpha = xp.exp(-la) if log_alpha is not None else math.exp(-la)
        r = o - y
        sq = 0.5 * (r * r).sum(axis=-1)
        d = o.shape[-1]
        f = sq * inv_alpha + 0.5 * d * (LOG_2PI + la)
        df_dla = (0.5 * d - sq * inv_alpha) if log_alpha is not None else None
        return EmissionTerms(f, r * inv_alpha, df_dla)

    def curvature(self, bk, o, y, log_alpha=None):
        """``∂²f/∂o∂oᵀ`` in the form :attr:`curvature_form`
        (docs/DERIVATIONS.md#mlp-input-hessians)."""
        la = self._log_alpha(log_alpha)
        return bk.xp.exp(-la) if log_alpha is not None else math.exp(-la)

    def mean(self, bk, o):
        return o


class GaussianDiag:
    """Heteroscedastic ``N(μ, diag e^s)`` with heads μ (``decoder.out``) and s
    (``decoder.logvar``): ``f = ½ Σ_d [(y_d − μ_d)² e^{−s_d} + s_d + log 2π]``;
    ``∂f/∂μ = (μ − y) e^{−s}``, ``∂f/∂s = ½ (1 − (y − μ)² e^{−s})``;
    curvature per d, over (μ_d, s_d):
    ``[[e^{−s}, (y − μ) e^{−s}], [(y − μ) e^{−s}, ½ (y − μ)² e^{−s}]]``.

    The off-diagonal entry is
    ``∂/∂s [(μ − y) e^{−s}] = −(μ − y) e^{−s} = (y − μ) e^{−s}``
    (docs/DERIVATIONS.md#errata: the sign, checked against PyTorch's Hessian in
    tests/test_emission.py).
    """

    name = "gaussian_diag"
    curvature_form = "block2"

    def heads(self, data_dim: int):
        return [("out", data_dim), ("logvar", data_dim)]

    def _split(self, o):
        d = o.shape[-1] // 2
        return o[..., :d], o[..., d:]

    def terms(self, bk, o, y, log_alpha=None) -> EmissionTerms:
        """``f``, ``∂f/∂o`` (and ``∂f/∂ log α``) as in the class docstring
        (docs/DERIVATIONS.md#emissions)."""
        xp = bk.xp
        mu, s = self._split(o)
        r = mu - y
        prec = xp.exp(-s)
        rp = r * prec
        f = 0.5 * (r * rp + s + LOG_2PI).sum(axis=-1)
        return EmissionTerms(f, xp.concatenate([rp, 0.5 - 0.5 * r * rp], axis=-1))

    def curvature(self, bk, o, y, log_alpha=None):
        """``∂²f/∂o∂oᵀ`` in the form :attr:`curvature_form`
        (docs/DERIVATIONS.md#mlp-input-hessians)."""
        xp = bk.xp
        mu, s = self._split(o)
        r = mu - y
        prec = xp.broadcast_to(xp.exp(-s), r.shape)
        cross = -r * prec
        return xp.stack([xp.stack([prec, cross], axis=-1),
                         xp.stack([cross, 0.5 * r * r * prec], axis=-1)], axis=-2)

    def mean(self, bk, o):
        return self._split(o)[0]


EMISSIONS = ("bernoulli", "gaussian", "gaussian_diag")


def make_emission(name: str, alpha: float = 1.0):
    """The emission called ``name`` (``alpha`` is the fixed variance of ``gaussian``)."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(alpha)
    if name == "gaussian_diag":
        return GaussianDiag()
    raise ConfigError(f"unknown emission {name!r}; choose one of {', '.join(EMISSIONS)}")
