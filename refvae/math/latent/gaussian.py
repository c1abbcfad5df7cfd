"""Diagonal Gaussian recognition model q(x|y) = N(ν, diag υ²) (Eqs. 8.12, 8.26), with ℓ = log
υ² (docs/DERIVATIONS.md#diagonal-gaussian-recognition).

The encoder emits ``ν`` (``encoder.mean``) and ``ℓ`` (``encoder.logvar``); with the config field
``scale_head`` the head ``h`` of ``encoder.logvar`` may instead be ``log υ``, or give
``υ = softplus(h) + floor`` or ``υ² = softplus(h) + floor``: :func:`scale_from_head` maps it to
``υ``, ``log υ`` and ``d log υ/dh`` once, and the sample, KL, score and every estimator go
through that map (docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning).
The sampling transform
(Eq. 8.24, erratum E3: the scale is υ = Υ^{1/2}, not Υ) is ``x = ν + υ ⊙ z`` with the
caller's base noise ``z`` ~ N(0, I) of shape ``(N, L, K)``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..activations import softplus
from ..emission import LOG_2PI
from ...errors import ConfigError
from ..estimators import estimators_for

KL_FORMS = ("analytic", "monte_carlo")


@dataclass
class Scale:
    """The scale of a diagonal Gaussian from its head ``h`` (all ``(N, K)``): ``std`` = υ,
    ``log_std`` = log υ, ``var`` = υ², and ``dlog`` = d log υ/dh, from which the chain rule of
    every gradient follows (dυ/dh = υ·dlog, dυ²/dh = 2υ²·dlog)."""

    std: object
    log_std: object
    var: object
    dlog: object


def _scale_logvar(bk, h, floor):
    """``h = ℓ = log υ²``: ``log υ = h/2``, ``d log υ/dh = ½``."""
    log_std = 0.5 * h
    return Scale(bk.xp.exp(log_std), log_std, bk.xp.exp(h), bk.xp.full_like(h, 0.5))


def _scale_log_std(bk, h, floor):
    """``h = log υ``: ``d log υ/dh = 1``."""
    return Scale(bk.xp.exp(h), h, bk.xp.exp(2.0 * h), bk.xp.ones_like(h))


def _scale_softplus_std(bk, h, floor):
    """``υ = softplus(h) + floor``: ``d log υ/dh = σ(h)/υ`` (softplus' = the logistic σ)."""
    std = softplus(bk, h) + floor
    return Scale(std, bk.xp.log(std), std * std, bk.special.expit(h) / std)


def _scale_softplus_var(bk, h, floor):
    """``υ² = softplus(h) + floor``: ``log υ = ½ log υ²``, ``d log υ/dh = σ(h)/(2υ²)``."""
    var = softplus(bk, h) + floor
    return Scale(bk.xp.sqrt(var), 0.5 * bk.xp.log(var), var, 0.5 * bk.special.expit(h) / var)


SCALE_FORMS = {"logvar": _scale_logvar, "log_std": _scale_log_std,
               "softplus_std": _scale_softplus_std, "softplus_var": _scale_softplus_var}
SCALE_HEADS = tuple(SCALE_FORMS)


def scale_from_head(bk, form: str, h, floor: float = 0.0) -> Scale:
    """The head ``h`` ``(N, K)`` of ``encoder.logvar`` under ``scale_head = form`` -> :class:`Scale`
    (docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning)."""
    return SCALE_FORMS[form](bk, h, floor)


@dataclass
class GaussianState:
    """What the forward pass keeps: the heads (``logvar`` is the scale head ``h`` whatever its
    form), υ, the noise, the sample and the :class:`Scale`."""

    nu: object      # (N, K)
    logvar: object  # (N, K) the head h
    std: object     # (N, K)
    eps: object     # (N, L, K)
    x: object       # (N, L, K)
    scale: Scale = None


class StandardNormalLatent:
    """What every Gaussian-based recognition model shares: base noise ``z ~ N(0, I_K)`` named
    ``eps`` of shape ``(N, L, K)``, the prior ``p(x) = N(0, I_K)`` (Eq. 8.15), and a K-wide
    decoder input. Subclasses keep their sample in ``state.x``."""

    noise_name = "eps"
    default_estimator = "pathwise"
    evaluation_estimator = "pathwise"

    def __init__(self, latent_dim: int, kl: str = "analytic"):
        if kl not in KL_FORMS:
            raise ConfigError(f"unknown KL form {kl!r}; choose one of {', '.join(KL_FORMS)}")
        self.k = latent_dim
        self.kl_form = kl

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

    def kl(self, bk, state):
        """KL per datum ``(N,)``: the closed form (:meth:`analytic_kl`) or, with ``kl:
        "monte_carlo"``, ``(1/L) Σ_l [log q(x_l|y) − log p(x_l)]`` on the drawn samples
        (docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning)."""
        if self.kl_form == "analytic":
            return self.analytic_kl(bk, state)
        return (self.log_q(bk, state) - self.log_prior(bk, state)).mean(axis=1)

    def kl_grads(self, bk, state) -> dict:
        """The exact gradient of :meth:`kl` in the heads at fixed base noise: the closed form's
        (:meth:`analytic_kl_grads`) or the Monte Carlo estimate's, ``pathwise(x/L)`` (``−log p``
        has ``∂/∂x = x``) plus ``log q``'s own dependence at fixed ``z`` (:meth:`log_q_direct`)
        (docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning)."""
        if self.kl_form == "analytic":
            return self.analytic_kl_grads(bk, state)
        out = self.pathwise(bk, state, state.x / state.x.shape[1])
        return {h: out[h] + d for h, d in self.log_q_direct(bk, state).items()}


class DiagonalGaussian(StandardNormalLatent):
    """``latent: "gaussian"``; its estimators are listed in :mod:`refvae.math.estimators`.
    ``scale_head``/``floor`` choose how the head ``logvar`` gives υ (:func:`scale_from_head`)."""

    name = "gaussian"

    def __init__(self, latent_dim: int, scale_head: str = "logvar", floor: float = 0.0,
                 kl: str = "analytic"):
        if scale_head not in SCALE_FORMS:
            raise ConfigError(f"unknown scale_head {scale_head!r}; "
                              f"choose one of {', '.join(SCALE_HEADS)}")
        super().__init__(latent_dim, kl)
        self.scale_head, self.floor = scale_head, float(floor)

    def heads(self):
        return [("mean", self.k), ("logvar", self.k)]

    def sample(self, bk, heads: dict, eps, estimator=None, temperature=None) -> GaussianState:
        """Eq. 8.24: ``x = ν + υ ⊙ z`` with υ from :func:`scale_from_head` (``exp(ℓ/2)`` by
        default; ``estimator``/``temperature`` do not change it)."""
        nu, head = heads["mean"], heads["logvar"]
        scale = scale_from_head(bk, self.scale_head, head, self.floor)
        x = nu[:, None, :] + scale.std[:, None, :] * eps
        return GaussianState(nu, head, scale.std, eps, x, scale)

    def analytic_kl(self, bk, state: GaussianState):
        """Boxed result of §8.2.2 (docs/DERIVATIONS.md#the-objective):
        ``KL = ½ Σ_k (υ_k² + ν_k² − 1 − log υ_k²)`` per datum."""
        nu, sc = state.nu, state.scale
        return 0.5 * (sc.var + nu * nu - 1.0 - 2.0 * sc.log_std).sum(axis=-1)

    def analytic_kl_grads(self, bk, state: GaussianState) -> dict:
        """``∂KL/∂ν = ν``, ``∂KL/∂h = (υ² − 1) d log υ/dh`` (= ``½ (υ² − 1)``
        for ℓ; written ``expm1(2 log υ)``, exact near υ = 1) (docs/DERIVATIONS.md#the-objective,
        docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning)."""
        sc = state.scale
        return {"mean": state.nu, "logvar": bk.xp.expm1(2.0 * sc.log_std) * sc.dlog}

    def log_q_direct(self, bk, state: GaussianState) -> dict:
        """``∂ log q(x|y)/∂head`` at fixed base noise ``z``, averaged over the samples: from
        ``log q = −½ Σ_k (z_k² + 2 log υ_k + log 2π)``, ``0`` for ν and ``−d log υ/dh``
        for h."""
        return {"mean": bk.xp.zeros_like(state.nu), "logvar": -state.scale.dlog}

    def pathwise(self, bk, state: GaussianState, g) -> dict:
        """Pathwise (reparameterization) gradients of the reconstruction term (Eqs. 8.16, 8.24;
        docs/DERIVATIONS.md#pathwise-gradient):
        ``∂/∂ν = Σ_l g_l`` and ``∂/∂h_k = Σ_l g_lk z_lk · dυ_k/dh_k`` (``υ_k / 2`` for
        ℓ), where ``g`` ``(N, L, K)`` is ∂f/∂x already weighted by the Monte Carlo average
        (1/L) and the batch reduction."""
        sc = state.scale
        return {"mean": g.sum(axis=1), "logvar": sc.std * sc.dlog * (g * state.eps).sum(axis=1)}

    def price(self, bk, state: GaussianState, g, hessian) -> dict:
        """Eqs. 8.16–8.17 for diagonal Υ (docs/DERIVATIONS.md#bonnet-and-price):
        ``∂/∂ν = ⟨g⟩``
        (Bonnet) and, from ``∂F/∂Υ_kk = ½ (⟨H_kk⟩ − 1/υ_k² + 1)`` and
        ``∂Υ_kk/∂h_k = 2 υ_k² d log υ_k/dh_k`` (``υ_k²`` for ℓ), the reconstruction part
        ``∂/∂h_k = υ_k² (d log υ_k/dh_k) ⟨H_kk⟩`` (the KL part is added by the model).
        Only the Hessian's diagonal is formed (``hessian(full=False)``)."""
        sc = state.scale
        return {"mean": g.sum(axis=1), "logvar": sc.var * sc.dlog * hessian(full=False).sum(axis=1)}

    def score(self, bk, state: GaussianState) -> dict:
        """Score at fixed ``x = ν + υ ⊙ z``, per sample ``(N, L, K)``: from
        ``log q = −½ Σ_k ((x_k − ν_k)²/υ_k² + 2 log υ_k + log 2π)``,
        ``∂ log q/∂ν_k = z_k/υ_k`` and ``∂ log q/∂h_k = (z_k² − 1) d log υ_k/dh_k``
        (``(z_k² − 1)/2`` for ℓ) (docs/DERIVATIONS.md#score-function-and-control-variates)."""
        return {"mean": state.eps / state.std[:, None, :],
                "logvar": (state.eps ** 2 - 1.0) * state.scale.dlog[:, None, :]}

    def mean(self, bk, state: GaussianState):
        """E_q[x] = ν (used for active units)."""
        return state.nu

    def log_q(self, bk, state: GaussianState):
        """``log q(x|y) = −½ Σ_k (z_k² + 2 log υ_k + log 2π)`` at the drawn samples,
        ``(N, L)`` (Eq. 8.12; docs/DERIVATIONS.md#diagonal-gaussian-recognition)."""
        log_var = 2.0 * state.scale.log_std[:, None, :]
        return -0.5 * (state.eps ** 2 + log_var + LOG_2PI).sum(axis=-1)

    def log_q_cross(self, bk, heads: dict, x):
        """``log q(x_p | y_m)`` for every point ``x`` ``(P, K)`` under every datum's posterior
        (heads over ``M`` data): ``(P, M)``. Used for the aggregated posterior of Eq. 8.21."""
        nu = heads["mean"]
        logvar = 2.0 * scale_from_head(bk, self.scale_head, heads["logvar"], self.floor).log_std
        prec = bk.xp.exp(-logvar)                                     # (M, K)
        # Σ_k (x_k − ν_k)² / υ_k² expanded so that no (P, M, K) array is formed.
        quad = (x * x) @ prec.T - 2.0 * x @ (nu * prec).T + (nu * nu * prec).sum(axis=1)
        return -0.5 * (quad + logvar.sum(axis=1) + self.k * LOG_2PI)
