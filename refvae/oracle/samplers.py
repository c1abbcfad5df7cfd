"""Mistaken samplers of Gaussian latents, for the named hypotheses (:mod:`.hypotheses`): each a
latent whose sample is the mistaken one, with its own hand-derived pathwise derivative, the KL
reading the heads right.

* diagonal Gaussian, every ``scale_head`` (:class:`MistakenSampler`): ``x = a + b ⊙ ε`` with
  ``a``, ``b`` functions of ν and the head h whose partial derivatives are written out from
  :class:`~refvae.math.latent.gaussian.Scale` (``dυ/dh = υ·dlog``, ``dυ²/dh = 2υ²·dlog``):
  the variance used as the standard deviation, the head itself as the standard deviation, the
  noise unscaled or not added, the scale detached, the heads read the other way round;
* full covariance (:class:`MistakenFullSampler`): ``x = ν + M ε`` with M = Rᵀ (the transpose),
  R with its diagonal not exponentiated, I (unscaled), 0 (no noise) or R detached.
"""
from __future__ import annotations

from ..math.latent.gaussian import DiagonalGaussian, GaussianState, scale_from_head
from ..math.latent.gaussian_full import FullCovarianceGaussian, FullGaussianState

CORRECT = {"logvar": "x = ν + exp(ℓ/2)·ε (Eq. 8.24)",
           "log_std": "x = ν + exp(h)·ε with h = log υ (Eq. 8.24)",
           "softplus_std": "x = ν + (softplus(h) + floor)·ε (Eq. 8.24)",
           "softplus_var": "x = ν + √(softplus(h) + floor)·ε (Eq. 8.24)",
           "full": "x = ν + R ε, R lower triangular with R_kk = exp(r_kk) (Eq. 8.24)"}
# what "the variance as the standard deviation" and "the head itself" are under each scale head
VARIANCE = {"log_std": "std = exp(2h)",
            "softplus_std": "std = (softplus(h) + floor)²",
            "softplus_var": "std = softplus(h) + floor: the square root is missing"}
RAW = {"log_std": "std = h, the log standard deviation: "
       "the exp is missing", "softplus_std": "std = h: the softplus is missing",
       "softplus_var": "std = h: the softplus and the square root are missing"}


def correct(config) -> str:
    """refvae's sampling transform for this latent, in words (Gaussian latents; others: Eq. 8.24
    in general)."""
    if config.latent == "gaussian_full":
        return CORRECT["full"]
    return CORRECT[config.scale_head] if config.latent == "gaussian" else "Eq. 8.24"


class MistakenSampler(DiagonalGaussian):
    """A diagonal Gaussian whose sample is ``x = a(ν, h) + b(ν, h) ⊙ ε``;
    ``loc``/``scale`` ``(bk, ν, h, Scale of h) -> (value, ∂/∂ν, ∂/∂h)``
    elementwise, which give the hand-derived pathwise gradient
    ``∂/∂ν = Σ_l g (∂a/∂ν + ε ∂b/∂ν)`` (the same for h). KL unchanged."""

    def __init__(self, latent, loc, scale):
        super().__init__(latent.k, latent.scale_head, latent.floor, latent.kl_form)
        self.loc, self.scale = loc, scale

    def sample(self, bk, heads, eps, estimator=None, temperature=None) -> GaussianState:
        nu, h = heads["mean"], heads["logvar"]
        right = scale_from_head(bk, self.scale_head, h, self.floor)   # the KL reads it right
        a, b = self.loc(bk, nu, h, right)[0], self.scale(bk, nu, h, right)[0]
        return GaussianState(nu, h, right.std, eps, a[:, None, :] + b[:, None, :] * eps, right)

    def pathwise(self, bk, state, g) -> dict:
        args = (bk, state.nu, state.logvar, state.scale)
        _, a_nu, a_h = self.loc(*args)
        _, b_nu, b_h = self.scale(*args)
        gs, ge = g.sum(axis=1), (g * state.eps).sum(axis=1)
        return {"mean": a_nu * gs + b_nu * ge, "logvar": a_h * gs + b_h * ge}


def _mean(bk, nu, h, sc):
    return nu, 1.0, 0.0


def _swapped_scale(latent):
    def scale(bk, nu, h, sc):   # υ from the mean head through the head's map
        other = scale_from_head(bk, latent.scale_head, nu, latent.floor)
        return other.std, other.std * other.dlog, 0.0
    return scale


def diagonal_mistakes(latent, logvar_grads: str) -> list:
    """``(key, hint, loc, scale)`` for a diagonal Gaussian ``latent``; the logvar head keeps its
    historical keys ``sampler:exp`` and ``sampler:logvar``."""
    form, right = latent.scale_head, CORRECT[latent.scale_head]
    if form == "logvar":
        keys = ("sampler:exp", "sampler:logvar")
        texts = ("your sampler uses exp(logvar), the variance, as the standard deviation "
                 f"(std = exp(ℓ)); the scale is exp(logvar/2): {right}",
                 "your sampler uses logvar itself as the standard deviation "
                 f"(std = ℓ): {right}")
    else:
        keys = ("sampler:var-as-std", "sampler:raw-head")
        texts = (f"your sampler uses the variance as the standard deviation ({VARIANCE[form]}): "
                 f"{right}", "your sampler uses the scale head itself as the standard deviation "
                 f"({RAW[form]}): {right}")
    return [
        (keys[0], texts[0], _mean, lambda bk, nu, h, sc: (sc.var, 0.0, 2.0 * sc.var * sc.dlog)),
        (keys[1], texts[1], _mean, lambda bk, nu, h, sc: (h, 0.0, 1.0)),
        ("sampler:unscaled", f"your sampler adds the noise unscaled (x = ν + ε): {right}",
         _mean, lambda bk, nu, h, sc: (1.0 + 0 * h, 0.0, 0.0)),
        ("sampler:no-noise", f"your sample is the mean alone: the noise is not added: {right}",
         _mean, lambda bk, nu, h, sc: (0 * h, 0.0, 0.0)),
        ("sampler:detached", "no gradient flows through the standard deviation of your sample "
         "(a .detach(), .data, stop_gradient or no_grad in the sampler): the scale head's "
         f"gradients ({logvar_grads}) are the KL's alone", _mean,
         lambda bk, nu, h, sc: (sc.std, 0.0, 0.0)),
        ("sampler:swapped", "your sampler takes the mean from the scale head and the scale from "
         f"the mean head (the KL reads them right): {right}",
         lambda bk, nu, h, sc: (h, 0.0, 1.0), _swapped_scale(latent)),
    ]


# ----- full covariance ---------------------------------------------------------------------------
class MistakenFullSampler(FullCovarianceGaussian):
    """A full-covariance Gaussian whose sample is ``x = ν + M ε``: ``mistake`` is ``transposed``
    (M = Rᵀ: ``∂/∂R = tril(Σ_l ε_l g_lᵀ)``), ``raw-diagonal`` (M = R with the raw
    diagonal r_kk: ``∂/∂r = tril(Σ_l g_l ε_lᵀ)`` without the factor R_kk),
    ``unscaled`` (M = I), ``no-noise``
    (M = 0) or ``detached`` (M = R without gradient); the last three give the scale head no
    gradient but the KL's. KL unchanged."""

    def __init__(self, latent, mistake: str):
        super().__init__(latent.k, latent.kl_form)
        self.mistake = mistake

    def sample(self, bk, heads, eps, estimator=None, temperature=None) -> FullGaussianState:
        state = super().sample(bk, heads, eps, estimator, temperature)
        nu, xp = heads["mean"][:, None, :], bk.xp
        if self.mistake == "transposed":
            x = nu + eps @ state.R
        elif self.mistake == "raw-diagonal":
            raw = xp.zeros_like(state.R)
            raw[:, self.rows, self.cols] = heads["scale_tril"]
            x = nu + eps @ raw.transpose(0, 2, 1)
        elif self.mistake == "unscaled":
            x = nu + eps
        elif self.mistake == "no-noise":
            x = nu + 0 * eps
        else:
            x = state.x
        return FullGaussianState(state.nu, state.raw, state.R, eps, x)

    def pathwise(self, bk, state, g) -> dict:
        out = {"mean": g.sum(axis=1), "scale_tril": bk.xp.zeros_like(state.raw)}
        if self.mistake == "transposed":
            out["scale_tril"] = self._tril_to_raw(bk, state.eps.transpose(0, 2, 1) @ g, state.R)
        elif self.mistake == "raw-diagonal":
            out["scale_tril"] = (g.transpose(0, 2, 1) @ state.eps)[:, self.rows, self.cols]
        return out


FULL_MISTAKES = {
    "transposed": "your sampler multiplies the noise by Rᵀ, not R (x = ν + Rᵀε: "
                  "an upper-triangular factor, or ε @ R where ε @ Rᵀ is meant)",
    "raw-diagonal": "your sampler uses the raw diagonal of the scale_tril head: the exp of "
                    "R_kk = exp(r_kk) is missing",
    "unscaled": "your sampler adds the noise unscaled (x = ν + ε)",
    "no-noise": "your sample is the mean alone: the noise is not added",
    "detached": "no gradient flows through R in your sample (a .detach(), stop_gradient or "
                "no_grad in the sampler): the scale_tril head's gradients are the KL's alone",
}
