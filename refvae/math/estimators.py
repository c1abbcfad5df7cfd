"""Gradient estimators: decoder signals + recognition state -> gradients of the reconstruction term
with respect to the recognition outputs (the encoder heads).

The model (:mod:`refvae.math.vae`) runs the decoder and emission, then hands the estimator a
:class:`DecoderSignals`; the KL gradient is added by the model, not here. Every estimator has one
signature, ``estimate(bk, latent, state, signals) -> {head: gradient}``
(:class:`~refvae.math.protocols.Estimator`), and one registry, :data:`REGISTRY`, maps a latent's
name and an estimator's name to it. The generative gradients never depend on the estimator: they
are ordinary backpropagation of ``f`` (Eq. 8.19).

Weights: the batch loss is ``scale · Σ_n [KL_n + (1/L) Σ_l f_nl]`` with ``scale`` = 1/N (mean) or
1 (sum), so every per-sample quantity enters with the weight ``w = scale / L``; ``g`` and the
Hessian arrive already multiplied by ``w``, ``f`` does not.

- ``pathwise`` — reparameterization (Eqs. 8.16, 8.24; docs/DERIVATIONS.md#pathwise-gradient):
  :meth:`latent.pathwise`. For a categorical latent the same chain rule runs through the relaxed
  sample of Eq. 8.29: ``gumbel-softmax`` (the decoder saw ``Y``) and ``straight-through`` (it saw
  the one-hot sample, docs/DERIVATIONS.md#straight-through).
- ``price`` — Bonnet's and Price's theorems (Eqs. 8.16–8.17;
  docs/DERIVATIONS.md#bonnet-and-price): :meth:`latent.price`, from the exact Hessian
  ``H = ∂²f/∂x∂xᵀ`` at the samples; no ``g zᵀ`` term.
- the score-function estimator of §8.2.1 on the reconstruction term (KL analytic, added by the
  model), ``w Σ_l (f_l − β_l) s_l`` with the score ``s_l = ∂ log q(x_l|y)/∂head``
  (:meth:`latent.score`, :func:`score_function`) and a control variate β selected by name
  (docs/DERIVATIONS.md#score-function-and-control-variates). For a sample ``l`` of datum ``n``:

  - ``score`` — β = 0. Unbiased.
  - ``score-loo`` — β_l = the mean of f over the other L − 1 samples of datum n
    (:func:`leave_one_out_mean`). Independent of sample l, so unbiased. Needs L ≥ 2. A categorical
    latent's ``score`` estimator is this one (docs/DERIVATIONS.md#categorical-score-estimator).
  - ``score-running`` — β = an exponential running mean of the batch-mean f over earlier steps
    (decay ``state["score_running_decay"]``, default :data:`RUNNING_DECAY`; β = 0 on the first
    step), fixed before this step's samples are drawn: unbiased. The state holds plain floats
    (``score_running_mean``, ``score_running_steps``), so it survives a JSON checkpoint.
  - ``score-optimal`` — per gradient component j the variance-minimising coefficient
    ``β_j = E[s_j² f]/E[s_j²]`` of the control variate ``s_j`` (E[s_j] = 0), estimated on the
    other half of datum n's samples: samples ``0..⌊L/2⌋−1`` use the coefficient from samples
    ``⌊L/2⌋..L−1`` and vice versa. The halves are independent draws, so β_lj is independent
    of sample l: unbiased (estimating it from the same samples would not be). Needs L ≥ 2.

Each is unbiased for the gradient of the expected loss under its own hypotheses:

- ``pathwise``: ``f`` (decoder + emission) almost-everywhere differentiable and locally
  Lipschitz in ``x`` with Gaussian-integrable derivative (relu decoders qualify);
- ``price``: ``f`` twice differentiable (C²), since the Hessian is taken pointwise; with relu the
  true second derivative has a Dirac term at each kink that the pointwise Hessian misses, so
  :meth:`refvae.math.vae.VAE.check_estimator` refuses ``price`` on such decoders;
- the score-function variants: ``f`` integrable under q and ``log q`` differentiable in the heads
  with the support of q not depending on them (true of every latent here).

``planar_flow`` has ``pathwise`` only (:mod:`refvae.math.latent.flow`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError


# The estimators that are the latent's pathwise gradient (its sampling transform's chain rule):
# the model calls latent.pathwise (and latent.price) directly; the registry names them.
PATHWISE = ("pathwise", "gumbel-softmax", "straight-through")

# Estimators whose state couples steps through a statistic of the whole batch (the running mean of
# the batch-mean f): a batch split into shards (refvae.fast.parallel) must reach them in one piece.
STATEFUL = frozenset({"score-running"})


@dataclass
class DecoderSignals:
    """What the decoder pass offers an estimator.

    ``g`` — ``w · ∂f/∂x`` at the samples, ``(N, L, K_in)``; ``f`` — the surprisal per
    sample ``(N, L)``, unweighted; ``weight`` — ``w``; ``hessian(full)`` —
    ``w · ∂²f/∂x∂xᵀ`` (diagonal ``(N, L, K)`` or full ``(N, L, K, K)``), computed on
    demand by forward-mode Jacobians; ``state`` — a caller-owned dict kept across steps
    (running-mean control variates).
    """

    g: object
    f: object
    weight: float
    hessian: Callable | None = None
    state: dict = field(default_factory=dict)


def pathwise(bk, latent, state, signals: DecoderSignals) -> dict:
    """Reparameterization (Eqs. 8.16, 8.24): :meth:`latent.pathwise` of ``g``."""
    return latent.pathwise(bk, state, signals.g)


def price(bk, latent, state, signals: DecoderSignals) -> dict:
    """Bonnet's and Price's theorems (Eqs. 8.16–8.17): :meth:`latent.price` of ``g`` and the
    Hessian (formed in the shape the latent's covariance needs)."""
    return latent.price(bk, state, signals.g, signals.hessian)


# ----- score function with control variates ------------------------------------------------
RUNNING_DECAY = 0.9


def _baseline_none(bk, s, f, store):
    return 0.0


def leave_one_out_mean(f):
    """``β_l = (Σ_{l'} f_{l'} − f_l)/(L − 1)`` over the samples axis 1 of ``f`` ``(N, L)``:
    the mean of the other samples of the same datum, independent of sample ``l``."""
    samples = f.shape[1]
    return (f.sum(axis=1, keepdims=True) - f) / (samples - 1)


def _baseline_loo(bk, s, f, store):
    return leave_one_out_mean(f)[..., None]


def _baseline_running(bk, s, f, store):
    """The running mean of ``f`` from earlier steps (0 on the first step); updated afterwards."""
    return store.get("score_running_mean", 0.0) if store.get("score_running_steps", 0) else 0.0


def _baseline_optimal(bk, s, f, store):
    """Per component ``j`` the variance-minimising ``β_j = E[s_j² f]/E[s_j²]`` (for the estimator
    ``s (f − β)``, with ``E[s] = 0``), estimated on the other half of the samples: samples
    ``0..h−1`` (``h = ⌊L/2⌋``) get the coefficient estimated from samples ``h..L−1`` and
    vice versa."""
    xp = bk.xp
    half = f.shape[1] // 2
    s2f = s * s * f[..., None]

    def coef(part):
        return s2f[:, part].sum(axis=1) / (s[:, part] ** 2).sum(axis=1)

    first, second = slice(0, half), slice(half, f.shape[1])
    beta = xp.empty_like(s)
    beta[:, first] = coef(second)[:, None, :]
    beta[:, second] = coef(first)[:, None, :]
    return beta


def score_function(bk, scores: dict, f, weight: float, baseline) -> dict:
    """Score-function estimator of the recognition gradient of the reconstruction term (§8.2.1,
    with a control variate): for every head, ``w Σ_l (f_l − β_l) s_l`` with
    ``s_l = ∂ log q(x_l|y)/∂head`` ``(N, L, P)``; ``β`` broadcasts against ``s`` (a scalar,
    ``(N, L, 1)`` or ``(N, L, P)``). The expected score is zero, so the estimate is unbiased
    whenever ``β_l`` is independent of sample ``l``
    (docs/DERIVATIONS.md#score-function-and-control-variates)."""
    out = {}
    for head, s in scores.items():
        beta = baseline(s)
        out[head] = weight * ((f[..., None] - beta) * s).sum(axis=1)
    return out


# name -> (baseline, minimum number of samples L); the module docstring says why each is unbiased.
CONTROL_VARIATES = {
    "score": (_baseline_none, 1),
    "score-loo": (_baseline_loo, 2),
    "score-running": (_baseline_running, 1),
    "score-optimal": (_baseline_optimal, 2),
}


def _update_running(bk, f, store: dict) -> None:
    decay = float(store.get("score_running_decay", RUNNING_DECAY))
    batch_mean = bk.to_float(f.mean())
    steps = int(store.get("score_running_steps", 0))
    old = float(store.get("score_running_mean", 0.0))
    store["score_running_mean"] = (batch_mean if steps == 0 else decay * old + (1.0 - decay)
                                   * batch_mean)
    store["score_running_steps"] = steps + 1


def score_estimator(name: str, control_variate: str):
    """The score-function estimator called ``name`` with the control variate ``control_variate``
    (a key of :data:`CONTROL_VARIATES`), on :meth:`latent.score`."""
    baseline, min_samples = CONTROL_VARIATES[control_variate]

    def estimate(bk, latent, state, signals: DecoderSignals) -> dict:
        samples = signals.f.shape[1]
        if samples < min_samples:
            raise ConfigError(f"estimator {name!r} needs at least {min_samples} samples per datum "
                              f"(L ≥ {min_samples}), got L = {samples}")
        out = score_function(bk, latent.score(bk, state), signals.f, signals.weight,
                             lambda s: baseline(bk, s, signals.f, signals.state))
        if control_variate == "score-running":
            _update_running(bk, signals.f, signals.state)
        return out

    estimate.__name__ = f"{name.replace('-', '_')}_estimator"
    estimate.__doc__ = (f"Score-function estimator ``{name}`` (§8.2.1) with the control variate "
                        f"``{control_variate}``: see :func:`score_function` and the module "
                        "docstring.")
    return estimate


_GAUSSIAN = {"pathwise": pathwise, "price": price,
             **{name: score_estimator(name, name) for name in CONTROL_VARIATES}}

# latent name -> estimator name -> estimator: every estimator of every recognition model.
REGISTRY: dict[str, dict[str, Callable]] = {
    "gaussian": _GAUSSIAN,
    "gaussian_full": _GAUSSIAN,
    "planar_flow": {"pathwise": pathwise},
    "categorical": {"gumbel-softmax": pathwise, "straight-through": pathwise,
                    "score": score_estimator("score", "score-loo")},
}


def estimators_for(latent: str) -> list[str]:
    """The estimator names of the latent called ``latent`` (empty for an unknown name)."""
    return list(REGISTRY.get(latent, ()))


def get_estimator(latent: str, name: str) -> Callable:
    """The estimator ``name`` of the latent called ``latent``; ConfigError listing the choices."""
    try:
        return REGISTRY[latent][name]
    except KeyError:
        raise ConfigError(f"unknown estimator {name!r} for latent {latent!r}; choose one of "
                          f"{', '.join(estimators_for(latent)) or '(none)'}") from None
