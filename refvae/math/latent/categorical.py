"""Categorical recognition model with the Gumbel-max and Gumbel-softmax tricks (Eqs. 8.27–8.29;
docs/DERIVATIONS.md#gumbel-max-and-gumbel-softmax).

``K`` independent categorical variables of ``C`` classes each (Jang et al. 2017, "Categorical
Reparameterization with Gumbel-Softmax", ICLR; Maddison et al. 2017, "The Concrete Distribution",
ICLR). The encoder head ``encoder.logits`` emits ``η`` ``(N, K·C)``, read as ``(N, K, C)``, and
``π = softmax(η)`` per variable. The caller's base noise is standard Gumbel ``G0``
``(N, L, K, C)``. The decoder sees the flattened ``(N, L, K·C)`` sample:

* relaxed ``Y = softmax((η + G0)/s)`` (Eq. 8.29) for the ``gumbel-softmax`` estimator;
* the one-hot ``argmax(η + G0)`` (Eq. 8.28) for ``straight-through`` (whose backward pass uses the
  relaxed sample's derivative), ``score`` and the evaluation mode ``hard``.

Which bound is optimised. With hard samples the loss ``KL(q(c)||p(c)) + E_q f(c)`` with the
analytic categorical KL is the negative ELBO of the discrete model, a true bound. With relaxed
samples the decoder defines a different, continuous latent model whose prior must be a density on
the simplex; the only KL that makes the loss a true bound on *its* log-likelihood is the relaxed
one, ``E_q[log q(Y) − log p(Y)]`` with concrete densities (``kl="relaxed"``, Maddison et al.). The
analytic categorical KL next to a relaxed reconstruction (``kl="analytic"``, Jang et al.'s choice
and the default) mixes two models and is a bound on neither; it is a good training objective, and
the true ELBO is then reported with hard samples. Accordingly :meth:`Categorical.kl`,
:meth:`Categorical.log_q` and :meth:`Categorical.log_prior` always describe what the decoder saw:
the categorical model for hard states, the concrete model for relaxed ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ConfigError, DataError
from ...util.checked import checked
from ..estimators import estimators_for

HARD_MODES = ("straight-through", "score", "hard")
RELAXED_MODES = ("gumbel-softmax",)
NEEDS_TEMPERATURE = ("gumbel-softmax", "straight-through")
KL_KINDS = ("analytic", "relaxed")


# ----- base noise ------------------------------------------------------------------------------
def gumbel_from_uniform(bk, u):
    """Standard Gumbel noise ``G0 = −log(−log U)`` from ``U ~ U(0, 1)`` (the chapter's ``G0``,
    §8.2.3).

    Accurate at both ends as written, because no ``1 − U`` is ever formed: near 0, ``−log U`` is
    large and exact; near 1, ``log U`` of the exactly representable ``U`` is still correct to an
    ulp (≈ ``U − 1``), and the outer log of that small positive number is exact too, so the
    upper tail reaches ``−log(2⁻⁵³) ≈ 36.7`` instead of overflowing. ``U`` must lie in the
    open interval (0, 1); 0 and 1 would give ∓inf.
    """
    xp = bk.xp
    u = bk.asarray(u)
    if not bool(((u > 0) & (u < 1)).all()):
        raise DataError("uniform noise for Gumbel samples must lie strictly inside (0, 1)")
    return -xp.log(-xp.log(u))


# ----- the two sampling maps -------------------------------------------------------------------
def log_softmax(bk, z):
    """``z − log Σ_c exp z_c`` over the last axis, with the maximum subtracted first."""
    xp = bk.xp
    m = z.max(axis=-1, keepdims=True)
    shifted = z - m
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def gumbel_max(bk, logits, g0):
    """Eq. 8.28: the one-hot ``argmax_c (η_c + G0_c)`` (E5: over the C classes), distributed as
    ``softmax(η)``. ``logits`` ``(..., C)`` broadcasts against ``g0`` ``(..., C)``."""
    xp = bk.xp
    z = logits + g0
    idx = z.argmax(axis=-1)
    return (xp.arange(z.shape[-1]) == idx[..., None]).astype(bk.dtype)


def log_relaxed_sample(bk, logits, g0, temperature):
    """Eq. 8.29 in log space: ``log Y = log_softmax((η + G0)/s)`` (exact even where ``Y``
    underflows, which the concrete density needs at low temperature)."""
    return log_softmax(bk, (logits + g0) / temperature)


def relaxed_sample(bk, logits, g0, temperature):
    """Eq. 8.29: the relaxed (Gumbel-softmax, concrete) sample ``Y = softmax((η + G0)/s)``."""
    return bk.xp.exp(log_relaxed_sample(bk, logits, g0, temperature))


def relaxed_sample_vjp(y, upstream, temperature):
    """The derivative after Eq. 8.29 with erratum E4
    (docs/DERIVATIONS.md#gumbel-max-and-gumbel-softmax),
    ``∂Y_l/∂g_m = (1/s) Y_l (1[l=m] − Y_m)``, applied to an upstream gradient
    ``u = ∂f/∂Y``: ``∂f/∂g = (1/s) Y ⊙ (u − ⟨u, Y⟩)``. With ``g = η + G0`` this is
    also ``∂f/∂η``. Shapes ``(..., C)``."""
    return y * (upstream - (upstream * y).sum(axis=-1, keepdims=True)) / temperature


# ----- densities and KL ------------------------------------------------------------------------
def concrete_log_density(bk, log_y, logits, temperature):
    """Log-density of the concrete (Gumbel-softmax) distribution (Maddison et al. 2017, Eq. 1 in
    log form; the question the chapter leaves open after Eq. 8.29;
    docs/DERIVATIONS.md#concrete-density-and-relaxed-kl):

    ``log p(Y) = log((C−1)!) + (C−1) log s + Σ_c (log π_c − (s+1) log Y_c)``
    ``− C log Σ_c π_c Y_c^{−s}``

    with respect to Lebesgue measure on the first ``C − 1`` coordinates of the simplex. Takes
    ``log Y`` ``(..., C)`` (from :func:`log_relaxed_sample`); ``logits`` broadcast; returns
    ``(...)``.
    """
    xp = bk.xp
    c = log_y.shape[-1]
    log_pi = log_softmax(bk, logits)
    t = log_pi - temperature * log_y
    m = t.max(axis=-1, keepdims=True)
    lse = (m + xp.log(xp.exp(t - m).sum(axis=-1, keepdims=True)))[..., 0]
    return (math.lgamma(c) + (c - 1) * math.log(temperature)
            + (log_pi - (temperature + 1.0) * log_y).sum(axis=-1) - c * lse)


def concrete_log_density_grads(bk, log_y, logits, temperature):
    """Partial derivatives of :func:`concrete_log_density` with respect to ``log Y`` and ``η``
    (docs/DERIVATIONS.md#concrete-density-and-relaxed-kl).

    With ``w = softmax(log π − s log Y)`` (the weights of the last log-sum-exp):
    ``∂/∂ log Y_c = −(s+1) + C s w_c`` and ``∂/∂η_c = 1 − C w_c`` (the
    ``log Σ exp η`` terms of ``Σ log π`` and of the last term cancel). ``logits`` must have the
    shape of ``log_y``.
    """
    c = log_y.shape[-1]
    w = bk.xp.exp(log_softmax(bk, log_softmax(bk, logits) - temperature * log_y))
    return -(temperature + 1.0) + c * temperature * w, 1.0 - c * w


def categorical_kl_uniform(bk, log_pi):
    """Jang et al. 2017 (docs/DERIVATIONS.md#the-objective):
    ``KL(q || uniform) = Σ_c π_c log(C π_c)`` per variable, ``(..., C) -> (...)``."""
    c = log_pi.shape[-1]
    return (bk.xp.exp(log_pi) * (log_pi + math.log(c))).sum(axis=-1)


def categorical_kl_uniform_grad(bk, log_pi):
    """``∂/∂η_j Σ_c π_c log(C π_c) = π_j (log π_j − Σ_c π_c log π_c)``, ``(..., C)``
    (docs/DERIVATIONS.md#the-objective)."""
    pi = bk.xp.exp(log_pi)
    return pi * (log_pi - (pi * log_pi).sum(axis=-1, keepdims=True))


def relaxed_kl_sample(bk, log_y, logits, temperature, prior_temperature):
    """One-sample estimate of the relaxed KL (Maddison et al. 2017, section 5;
    docs/DERIVATIONS.md#concrete-density-and-relaxed-kl): ``log q(Y) − log p(Y)``
    at the posterior's own relaxed sample, ``q`` concrete with logits ``η`` and temperature ``s``,
    ``p`` concrete with uniform logits and temperature ``s_p``. Non-negative only in expectation."""
    zeros = bk.xp.zeros_like(log_y)
    return (concrete_log_density(bk, log_y, logits, temperature)
            - concrete_log_density(bk, log_y, zeros, prior_temperature))


def relaxed_kl_sample_grad(bk, log_y, logits, temperature, prior_temperature):
    """Pathwise derivative of :func:`relaxed_kl_sample`
    (docs/DERIVATIONS.md#concrete-density-and-relaxed-kl) with respect to ``η``, the sample moving
    with ``η`` (``log Y = log_softmax((η + G0)/s)``): the direct ``∂ log q/∂η`` plus, for
    ``v = ∂(log q − log p)/∂ log Y``, the log-softmax VJP ``(1/s)(v − Y Σ_c v_c)``."""
    zeros = bk.xp.zeros_like(log_y)
    dq_dly, dq_deta = concrete_log_density_grads(bk, log_y, logits, temperature)
    dp_dly, _ = concrete_log_density_grads(bk, log_y, zeros, prior_temperature)
    v = dq_dly - dp_dly
    y = bk.xp.exp(log_y)
    return dq_deta + (v - y * v.sum(axis=-1, keepdims=True)) / temperature


def categorical_log_pmf(onehot, log_pi):
    """``log q(c) = log π_c`` for one-hot ``c`` (Eq. 8.27), ``(..., C) -> (...)``."""
    return (onehot * log_pi).sum(axis=-1)


# ----- the latent model ------------------------------------------------------------------------
@dataclass
class CategoricalState:
    """What the forward pass keeps. Arrays are ``(N, K, C)`` (logits, log π) or ``(N, L, K, C)``;
    ``x`` is the decoder input ``(N, L, K·C)``; ``log_y``/``y`` are None when no relaxed sample
    was formed (``score``, ``hard``)."""

    mode: str
    temperature: float | None
    logits: object
    log_pi: object
    pi: object
    g0: object
    hard: object
    log_y: object
    y: object
    x: object


def check_temperature(temperature, mode: str) -> float:
    """A positive finite temperature (ConfigError otherwise) for modes that relax the sample."""
    if temperature is None:
        raise ConfigError(f"estimator {mode!r} needs a temperature s > 0 (the softness of Eq. "
                          "8.29); "
                          "pass temperature=…, e.g. 1.0, or a temperature schedule")
    return checked(temperature, "temperature", minimum=0, open_min=True)


class Categorical:
    """``latent: "categorical"``: ``K`` variables of ``C`` classes, uniform prior.

    ``kl`` is ``"analytic"`` (Jang et al.; the categorical KL, also for relaxed samples) or
    ``"relaxed"`` (Maddison et al.; concrete posterior against a concrete prior of temperature
    ``prior_temperature``, by default the posterior's, for relaxed samples). Hard samples always
    use the categorical KL: that loss is the true negative ELBO.
    """

    name = "categorical"
    noise_name = "gumbel"
    # pathwise through the relaxed sample (Eq. 8.29); the true ELBO is evaluated on hard samples.
    default_estimator = "gumbel-softmax"
    evaluation_estimator = "hard"

    def __init__(self, latent_dim: int, categories: int, kl: str = "analytic",
                 prior_temperature: float | None = None):
        if kl not in KL_KINDS:
            raise ConfigError(f"categorical kl {kl!r} is unknown; choose one "
                              f"of {', '.join(KL_KINDS)}")
        if prior_temperature is not None:
            check_temperature(prior_temperature, "prior")
        self.k, self.c = int(latent_dim), int(categories)
        self.kl_kind, self.prior_temperature = kl, prior_temperature

    def heads(self):
        return [("logits", self.k * self.c)]

    @property
    def decoder_in(self) -> int:
        return self.k * self.c

    @property
    def estimators(self) -> list[str]:
        return estimators_for(self.name)

    def noise_shape(self, n: int, samples: int):
        return (n, samples, self.k, self.c)

    def draw_noise(self, source, n: int, samples: int, bk):
        return source.gumbel(self.noise_shape(n, samples), bk)

    def sample(self, bk, heads: dict, g0, estimator=None, temperature=None) -> CategoricalState:
        """Hard (Eq. 8.28) and, for ``gumbel-softmax``/``straight-through``, relaxed (Eq. 8.29)
        samples from the same Gumbel noise; ``x`` is relaxed for ``gumbel-softmax`` and one-hot for
        ``straight-through``, ``score`` and ``hard`` (evaluation: true ELBO, importance weights)."""
        mode = self.default_estimator if estimator is None else estimator
        if mode not in RELAXED_MODES + HARD_MODES:
            raise ConfigError(f"unknown sampling mode {mode!r} for latent 'categorical'; choose "
                              "one of "
                              f"{', '.join(RELAXED_MODES + HARD_MODES)}")
        s = check_temperature(temperature, mode) if mode in NEEDS_TEMPERATURE else None
        if self.kl_kind == "relaxed" and mode == "straight-through":
            raise ConfigError("kl 'relaxed' needs the decoder to see relaxed samples: use "
                              "estimator "
                              "'gumbel-softmax' (or kl 'analytic' with straight-through)")
        n = heads["logits"].shape[0]
        logits = heads["logits"].reshape(n, self.k, self.c)
        log_pi = log_softmax(bk, logits)
        hard = gumbel_max(bk, logits[:, None], g0)
        log_y = y = None
        if s is not None:
            log_y = log_relaxed_sample(bk, logits[:, None], g0, s)
            y = bk.xp.exp(log_y)
        x = (y if mode in RELAXED_MODES else hard).reshape(n, g0.shape[1], self.k * self.c)
        return CategoricalState(mode, s, logits, log_pi, bk.xp.exp(log_pi), g0, hard, log_y, y, x)

    def _prior_s(self, state: CategoricalState) -> float:
        return state.temperature if self.prior_temperature is None else self.prior_temperature

    def _relaxed(self, state: CategoricalState) -> bool:
        return state.mode in RELAXED_MODES

    def kl(self, bk, state: CategoricalState):
        """Per datum ``(N,)``: the analytic categorical KL summed over the K variables, or (relaxed
        KL on a relaxed state) the mean over the L samples of the one-sample relaxed KL
        (docs/DERIVATIONS.md#the-objective, docs/DERIVATIONS.md#concrete-density-and-relaxed-kl)."""
        if self.kl_kind == "relaxed" and self._relaxed(state):
            per = relaxed_kl_sample(bk, state.log_y, state.logits[:, None], state.temperature,
                                    self._prior_s(state))
            return per.sum(axis=-1).mean(axis=1)
        return categorical_kl_uniform(bk, state.log_pi).sum(axis=-1)

    def kl_grads(self, bk, state: CategoricalState) -> dict:
        """``∂KL/∂η`` per datum, ``(N, K·C)``, matching :meth:`kl`."""
        n = state.logits.shape[0]
        if self.kl_kind == "relaxed" and self._relaxed(state):
            logits = bk.xp.broadcast_to(state.logits[:, None], state.log_y.shape)
            d = relaxed_kl_sample_grad(bk, state.log_y, logits, state.temperature,
                                       self._prior_s(state))
            return {"logits": d.mean(axis=1).reshape(n, -1)}
        return {"logits": categorical_kl_uniform_grad(bk, state.log_pi).reshape(n, -1)}

    def prior_sample(self, source, n: int, bk):
        """``n`` draws from the uniform prior: one-hot classes per variable, flattened
        ``(n, K·C)``."""
        classes = source.integers(self.c, size=(n, self.k))
        onehot = bk.xp.eye(self.c, dtype=bk.dtype)[bk.xp.asarray(classes)]
        return onehot.reshape(n, self.k * self.c)

    def mean(self, bk, state: CategoricalState):
        """``E_q[c] = π`` flattened ``(N, K·C)`` (used for active units)."""
        return state.pi.reshape(state.pi.shape[0], -1)

    def log_q(self, bk, state: CategoricalState):
        """``log q(x|y)`` at the samples the decoder saw, ``(N, L)``: ``Σ_k log π_{k,c_k}`` for
        hard samples (Eq. 8.27), ``Σ_k`` concrete log-densities for relaxed ones
        (docs/DERIVATIONS.md#concrete-density-and-relaxed-kl)."""
        if self._relaxed(state):
            return concrete_log_density(bk, state.log_y, state.logits[:, None],
                                        state.temperature).sum(axis=-1)
        return categorical_log_pmf(state.hard, state.log_pi[:, None]).sum(axis=-1)

    def log_q_cross(self, bk, heads: dict, x):
        """``log q(x_p | y_m)`` for one-hot points ``x`` ``(P, K·C)`` (hard samples) under every
        datum's posterior (heads over ``M`` data): ``Σ_k log π_{m,k,c_k}``, ``(P, M)``. Used for
        the aggregated posterior of Eq. 8.21."""
        m = heads["logits"].shape[0]
        log_pi = log_softmax(bk, heads["logits"].reshape(m, self.k, self.c)).reshape(m, -1)
        return x @ log_pi.T

    def log_prior(self, bk, state: CategoricalState):
        """``log p(x)``, ``(N, L)``: ``−K log C`` (uniform prior) for hard samples; for relaxed
        ones the concrete density with uniform logits at the prior temperature."""
        if self._relaxed(state):
            zeros = bk.xp.zeros_like(state.log_y)
            return concrete_log_density(bk, state.log_y, zeros, self._prior_s(state)).sum(axis=-1)
        return bk.xp.full(state.hard.shape[:2], -self.k * math.log(self.c), dtype=bk.dtype)

    # ----- recognition gradients of the reconstruction term ---------------------------------
    def pathwise(self, bk, state: CategoricalState, g) -> dict:
        """The chain rule through Eq. 8.29: ``Σ_l`` of the relaxed sample's VJP (E4) applied to
        ``g = w ∂f/∂x``, as ``(N, K·C)``. For ``gumbel-softmax`` the decoder saw ``Y``; for
        ``straight-through`` (Jang et al. 2017, section 2.2; docs/DERIVATIONS.md#straight-through)
        it saw the one-hot ``argmax(η + G0)`` and the gradient is passed back as if it had seen the
        relaxed ``Y`` of the same noise (biased by design)."""
        d = relaxed_sample_vjp(state.y, g.reshape(state.y.shape), state.temperature).sum(axis=1)
        return {"logits": d.reshape(d.shape[0], -1)}

    def price(self, bk, state: CategoricalState, g, hessian) -> dict:
        raise ConfigError("estimator 'price' needs a Gaussian q (Eq. 8.17); choose one of "
                          + ", ".join(self.estimators) + " for latent 'categorical'")

    def score(self, bk, state: CategoricalState) -> dict:
        """The REINFORCE score of Eq. 8.27 at the one-hot samples ``c_l``, ``(N, L, K·C)``:
        ``∂ log q(c)/∂η = onehot(c) − π``
        (docs/DERIVATIONS.md#categorical-score-estimator)."""
        s = state.hard - state.pi[:, None]
        return {"logits": s.reshape(s.shape[0], s.shape[1], -1)}
