"""Diagonal Gaussian recognition model q(x|y) = N(ν, diag υ²) (Eqs. 8.12, 8.26), with ℓ = log υ²
(docs/DERIVATIONS.md#diagonal-gaussian-recognition).

The encoder emits ``ν`` (``encoder.mean``) and ``ℓ`` (``encoder.logvar``). The sampling transform
(Eq. 8.24, erratum E3: the scale is υ = Υ^{1/2}, not Υ) is ``x = ν + υ ⊙ z`` with the caller's base
noise ``z`` ~ N(0, I) of shape ``(N, L, K)``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..emission import LOG_2PI
from ...errors import ConfigError
from ..estimators import estimators_for


@dataclass
class GaussianState:
    """What the forward pass keeps: the heads, υ = exp(ℓ/2), the noise and the sample."""

    nu: object      # (N, K)
    logvar: object  # (N, K)
    std: object     # (N, K)
    eps: object     # (N, L, K)
    x: object       # (N, L, K)


class StandardNormalLatent:
    """What every Gaussian-based recognition model shares: base noise ``z ~ N(0, I_K)`` named
    ``eps`` of shape ``(N, L, K)``, the prior ``p(x) = N(0, I_K)`` (Eq. 8.15), and a K-wide
    decoder input. Subclasses keep their sample in ``state.x``."""

    noise_name = "eps"
    default_estimator = "pathwise"
    evaluation_estimator = "pathwise"

    def __init__(self, latent_dim: int):
        self.k = latent_dim

    @property
    def decoder_in(self) -> int:
        return self.k

    @property
    def estimators(self) -> list[str]:
        return estimators_for(self.name)

    def noise_shape(self, n: int, samples: int):
        return (n, samples, self.k)

    def draw_noise(self, source, n: int, samples: int, bk):
        return source.normal(self.noise_shape(n, samples), bk)

    def prior_sample(self, source, n: int, bk):
        """``n`` draws from the prior p(x) = N(0, I), shape ``(n, K)``."""
        return source.normal((n, self.k), bk)

    def log_prior(self, bk, state):
        """``log p(x) = −½ Σ_k (x_k² + log 2π)`` at the samples, ``(N, L)`` (Eq. 8.15)."""
        return -0.5 * (state.x ** 2 + LOG_2PI).sum(axis=-1)


class DiagonalGaussian(StandardNormalLatent):
    """``latent: "gaussian"``; its estimators are listed in :mod:`refvae.math.estimators`."""

    name = "gaussian"

    def heads(self):
        return [("mean", self.k), ("logvar", self.k)]

    def sample(self, bk, heads: dict, eps, estimator=None, temperature=None) -> GaussianState:
        """Eq. 8.24: ``x = ν + exp(ℓ/2) ⊙ z`` (``estimator``/``temperature`` do not change it)."""
        nu, logvar = heads["mean"], heads["logvar"]
        std = bk.xp.exp(0.5 * logvar)
        x = nu[:, None, :] + std[:, None, :] * eps
        return GaussianState(nu, logvar, std, eps, x)

    def kl(self, bk, state: GaussianState):
        """Boxed result of §8.2.2 (docs/DERIVATIONS.md#the-objective):
        ``KL = ½ Σ_k (υ_k² + ν_k² − 1 − log υ_k²)`` per datum."""
        nu, lv = state.nu, state.logvar
        return 0.5 * (bk.xp.exp(lv) + nu * nu - 1.0 - lv).sum(axis=-1)

    def kl_grads(self, bk, state: GaussianState) -> dict:
        """``∂KL/∂ν = ν``, ``∂KL/∂ℓ = ½ (υ² − 1)`` (docs/DERIVATIONS.md#the-objective)."""
        return {"mean": state.nu, "logvar": 0.5 * bk.xp.expm1(state.logvar)}

    def pathwise(self, bk, state: GaussianState, g) -> dict:
        """Pathwise (reparameterization) gradients of the reconstruction term (Eqs. 8.16, 8.24;
        docs/DERIVATIONS.md#pathwise-gradient):
        ``∂/∂ν = Σ_l g_l`` and ``∂/∂ℓ_k = Σ_l g_lk z_lk · υ_k / 2``, where ``g`` ``(N, L, K)`` is
        ∂f/∂x already weighted by the Monte Carlo average (1/L) and the batch reduction."""
        return {"mean": g.sum(axis=1), "logvar": 0.5 * state.std * (g * state.eps).sum(axis=1)}

    def price(self, bk, state: GaussianState, g, hessian) -> dict:
        """Eqs. 8.16–8.17 for diagonal Υ (docs/DERIVATIONS.md#bonnet-and-price): ``∂/∂ν = ⟨g⟩``
        (Bonnet) and, from ``∂F/∂Υ_kk = ½ (⟨H_kk⟩ − 1/υ_k² + 1)`` and ``∂Υ_kk/∂ℓ_k = υ_k²``, the
        reconstruction part ``∂/∂ℓ_k = ½ υ_k² ⟨H_kk⟩`` (the KL part ``½ (υ_k² − 1)`` is added by the
        model). Only the Hessian's diagonal is formed (``hessian(full=False)``)."""
        return {"mean": g.sum(axis=1),
                "logvar": 0.5 * bk.xp.exp(state.logvar) * hessian(full=False).sum(axis=1)}

    def score(self, bk, state: GaussianState) -> dict:
        """Score at fixed ``x = ν + υ ⊙ z``, per sample ``(N, L, K)``: from
        ``log q = −½ Σ_k ((x_k − ν_k)² e^{−ℓ_k} + ℓ_k + log 2π)``,
        ``∂ log q/∂ν_k = z_k/υ_k`` and ``∂ log q/∂ℓ_k = (z_k² − 1)/2``
        (docs/DERIVATIONS.md#score-function-and-control-variates)."""
        return {"mean": state.eps / state.std[:, None, :], "logvar": 0.5 * (state.eps ** 2 - 1.0)}

    def mean(self, bk, state: GaussianState):
        """E_q[x] = ν (used for active units)."""
        return state.nu

    def log_q(self, bk, state: GaussianState):
        """``log q(x|y) = −½ Σ_k (z_k² + ℓ_k + log 2π)`` at the drawn samples, ``(N, L)`` (Eq. 8.12;
        docs/DERIVATIONS.md#diagonal-gaussian-recognition)."""
        return -0.5 * (state.eps ** 2 + state.logvar[:, None, :] + LOG_2PI).sum(axis=-1)

    def log_q_cross(self, bk, heads: dict, x):
        """``log q(x_p | y_m)`` for every point ``x`` ``(P, K)`` under every datum's posterior
        (heads over ``M`` data): ``(P, M)``. Used for the aggregated posterior of Eq. 8.21."""
        nu, logvar = heads["mean"], heads["logvar"]
        prec = bk.xp.exp(-logvar)                                     # (M, K)
        # Σ_k (x_k − ν_k)² / υ_k² expanded so that no (P, M, K) array is formed.
        quad = (x * x) @ prec.T - 2.0 * x @ (nu * prec).T + (nu * nu * prec).sum(axis=1)
        return -0.5 * (quad + logvar.sum(axis=1) + self.k * LOG_2PI)
