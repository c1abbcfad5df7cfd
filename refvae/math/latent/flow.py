"""Planar flows stacked on the diagonal Gaussian (Rezende & Mohamed 2015, §4.1 and Appendix A.1):
the change of variables of Eq. 8.25 as a recognition model (docs/DERIVATIONS.md#planar-flows).

Selected by ``latent: "gaussian"`` with the config field ``flow_length`` = T ≥ 1
(``flow_length: 0``, the default, is the plain diagonal Gaussian). The base sample is the diagonal
Gaussian's ``z_0 = ν + υ ⊙ ε`` (Eq. 8.24); then for ``t = 1..T``

    ``z_t = z_{t−1} + û_t tanh(w_tᵀ z_{t−1} + b_t)``,   ``x = z_T``,

and by Eq. 8.25
``log q(x|y) = log N(z_0; ν, diag υ²) − Σ_t log |1 + û_tᵀ ψ_t(z_{t−1})|`` with
``ψ_t(z) = tanh'(w_tᵀ z + b_t) w_t``, so ``1 + û_tᵀ ψ_t = 1 + tanh'(a_t) m_t`` with
``m_t = w_tᵀ û_t``.

Invertibility (Rezende & Mohamed, Appendix A.1): the raw ``u_t`` is replaced by
``û_t = u_t + (m(w_tᵀ u_t) − w_tᵀ u_t) w_t / ||w_t||²`` with
``m(α) = −1 + softplus(α)``, so that ``w_tᵀ û_t = m(α) > −1`` and ``1 + tanh'(a) m > 0``:
the determinant never vanishes. It is computed as ``D = tanh²(a) + tanh'(a) softplus(α)`` (equal,
since ``tanh' = 1 − tanh²``), a sum of two non-negative terms, because ``1 + tanh'(a) m`` cancels
catastrophically when α ≪ 0 and ``a ≈ 0`` (``m`` rounds to −1); it can still underflow to 0
only where softplus(α) does (α < −745, a volume contraction beyond float64's range). (A ``w_t``
that is exactly zero leaves ``û_t`` undefined; random initialisation never produces one.)

Parameters are amortized, a choice of this library: the encoder outputs them per datum, so the
flow adds encoder heads and nothing else to the parameter layout. Besides ``mean`` and ``logvar``
there are three heads (parameter names ``encoder.<head>.weight|bias``):
``flow_u`` (T·K outputs; output ``t·K + k`` is ``u_t[k]``), ``flow_w`` (T·K, same layout) and
``flow_b`` (T outputs). A PyTorch user reshapes them with ``.view(N, T, K)`` / ``.view(N, T)``.

The KL has no closed form; per datum it is the Monte Carlo estimate over the same ``L`` samples
that estimate the reconstruction, ``(1/L) Σ_l [log q(x_l|y) − log p(x_l)]``, and its gradient is
the exact derivative of that estimate (pathwise). Every gradient goes through one hand-derived
reverse pass, :meth:`PlanarFlowGaussian.backward`. Only the ``pathwise`` estimator applies:
Price's theorem needs a Gaussian q, and the score of a planar flow needs ``z_0`` as a function of
``x`` (no closed-form inverse).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ..activations import TANH
from .gaussian import DiagonalGaussian, GaussianState, StandardNormalLatent

FLOW_HEADS = ("flow_u", "flow_w", "flow_b")


@dataclass
class PlanarFlowState:
    """The base Gaussian's state, the flow parameters per datum, and every layer's values."""

    base: GaussianState
    u: object      # (N, T, K) raw u
    w: object      # (N, T, K)
    b: object      # (N, T)
    alpha: object  # (N, T) w·u
    uhat: object   # (N, T, K)
    m: object      # (N, T) w·û = softplus(α) − 1
    sp: object     # (N, T) softplus(α)
    zs: list       # z_0..z_T, each (N, L, K)
    a: list        # pre-activations a_t = w_t·z_{t−1} + b_t, each (N, L)
    h: list        # tanh(a_t), each (N, L)
    # (N, L) Σ_t log D_t, D_t = 1 + tanh'(a_t) m_t = tanh²(a_t) + tanh'(a_t) softplus(α_t)
    log_det: object

    @property
    def x(self):
        return self.zs[-1]

    @property
    def eps(self):
        return self.base.eps


class PlanarFlowGaussian(StandardNormalLatent):
    """``latent: "gaussian"`` with ``flow_length`` = T ≥ 1 (estimator ``pathwise``)."""

    name = "planar_flow"

    def __init__(self, latent_dim: int, flow_length: int, scale_head: str = "logvar",
                 floor: float = 0.0):
        if flow_length < 1:
            raise ConfigError(f"a planar flow needs flow_length ≥ 1, got {flow_length}")
        # No closed form: the KL is the Monte Carlo estimate whatever the config's ``kl`` says.
        super().__init__(latent_dim, "monte_carlo")
        self.t = flow_length
        self.base = DiagonalGaussian(latent_dim, scale_head, floor)

    def heads(self):
        k, t = self.k, self.t
        return [*self.base.heads(), ("flow_u", t * k), ("flow_w", t * k), ("flow_b", t)]

    # ----- invertibility reparameterization (Rezende & Mohamed, Appendix A.1) ----------------
    @staticmethod
    def constrain(bk, u, w):
        """``(α, û, softplus(α))`` with ``α = wᵀu`` and
        ``û = u + (m − α) w/||w||² = u + (softplus(−α) − 1) w/||w||²``, so that
        ``wᵀû = m = softplus(α) − 1``; arrays ``(..., K)``."""
        xp = bk.xp
        alpha = (w * u).sum(axis=-1)
        c = xp.logaddexp(0.0, -alpha) - 1.0
        uhat = u + (c / (w * w).sum(axis=-1))[..., None] * w
        return alpha, uhat, xp.logaddexp(0.0, alpha)

    @staticmethod
    def constrain_backward(bk, u, w, alpha, g_uhat, g_m):
        """Reverse of :meth:`constrain`: upstream ``∂J/∂û`` ``(..., K)`` and ``∂J/∂m``
        ``(...)`` -> ``(∂J/∂u, ∂J/∂w)``. With ``c(α) = softplus(−α) − 1``,
        ``c' = −σ(−α)``, ``m' = σ(α)``, ``s = ||w||²``, ``p = ∂J/∂û · w``:
        ``∂J/∂u = ∂J/∂û + (p c'/s + ∂J/∂m σ(α)) w`` and
        ``∂J/∂w = (c/s) ∂J/∂û − (2 c p/s²) w + (p c'/s + ∂J/∂m σ(α)) u``."""
        xp, expit = bk.xp, bk.special.expit
        s = (w * w).sum(axis=-1)
        c = xp.logaddexp(0.0, -alpha) - 1.0
        p = (g_uhat * w).sum(axis=-1)
        through_alpha = -p * expit(-alpha) / s + g_m * expit(alpha)
        g_u = g_uhat + through_alpha[..., None] * w
        g_w = (c / s)[..., None] * g_uhat - (2.0 * c * p / (s * s))[..., None] * w \
            + through_alpha[..., None] * u
        return g_u, g_w

    # ----- forward ---------------------------------------------------------------------------
    def _flow_params(self, heads):
        n = heads["mean"].shape[0]
        return (heads["flow_u"].reshape(n, self.t, self.k),
                heads["flow_w"].reshape(n, self.t, self.k),
                heads["flow_b"].reshape(n, self.t))

    def sample(self, bk, heads: dict, eps, estimator=None, temperature=None) -> PlanarFlowState:
        """Eq. 8.24 for ``z_0``, then the T planar layers; accumulates ``Σ_t log D_t`` (Eq.
        8.25)."""
        base = self.base.sample(bk, heads, eps)
        u, w, b = self._flow_params(heads)
        alpha, uhat, sp = self.constrain(bk, u, w)
        zs, pre, hs, log_det = self._layers(bk, base.x, uhat, w, b, sp)
        return PlanarFlowState(base, u, w, b, alpha, uhat, sp - 1.0, sp, zs, pre, hs, log_det)

    def _layers(self, bk, z0, uhat, w, b, sp):
        """The T planar layers applied to ``z0`` ``(N, L, K)``: every ``z_t``, ``a_t``,
        ``tanh(a_t)`` and ``Σ_t log D_t`` with
        ``D_t = tanh²(a_t) + tanh'(a_t) softplus(α_t)``."""
        xp = bk.xp
        zs, pre, hs = [z0], [], []
        log_det = xp.zeros(z0.shape[:2], dtype=z0.dtype)
        for t in range(self.t):
            z = zs[-1]
            a = (z * w[:, None, t, :]).sum(axis=-1) + b[:, None, t]
            h = TANH.value(bk, a)
            zs.append(z + uhat[:, None, t, :] * h[..., None])
            log_det = log_det + xp.log(h * h + TANH.d1(bk, a, h) * sp[:, None, t])
            pre.append(a)
            hs.append(h)
        return zs, pre, hs, log_det

    def backward(self, bk, state: PlanarFlowState, g_x, gamma: float = 0.0) -> dict:
        """Reverse pass of ``J = Σ_{n,l} [g_x · x + γ Σ_t log(1 + tanh'(a_t) m_t)]`` (``g_x``
        ``(N, L, K)`` the upstream gradient on ``x = z_T``, ``γ`` a weight on the log-determinant),
        returning ``∂J/∂(head)`` for every head, summed over the samples.

        Per layer, with ``h' = tanh'(a)``, ``h'' = tanh''(a)``, ``D = 1 + h' m`` (computed as
        ``h² + h' softplus(α)``) and ``G = ∂J/∂z_t``:
        ``δ_a = (G·û) h' + γ h'' m / D``; ``∂J/∂z_{t−1} = G + δ_a w``;
        ``∂J/∂û = Σ_l G h``; ``∂J/∂m = Σ_l γ h'/D``; ``∂J/∂w = Σ_l δ_a z_{t−1}``
        (plus the route through û and m, :meth:`constrain_backward`); ``∂J/∂b = Σ_l δ_a``.
        The base Gaussian's pathwise rule then maps ``∂J/∂z_0`` onto ``ν`` and ``ℓ`` (Eq.
        8.24).
        """
        xp = bk.xp
        n = state.base.nu.shape[0]
        g_u = xp.zeros_like(state.u)
        g_w = xp.zeros_like(state.w)
        g_b = xp.zeros_like(state.b)
        grad = g_x
        for t in range(self.t - 1, -1, -1):
            a, h, z_prev = state.a[t], state.h[t], state.zs[t]
            uhat_t, w_t, m_t = (state.uhat[:, None, t, :], state.w[:, None, t, :],
                                state.m[:, None, t])
            d1 = TANH.d1(bk, a, h)
            d2 = TANH.d2(bk, a, h)
            denom = h * h + d1 * state.sp[:, None, t]
            delta = (grad * uhat_t).sum(axis=-1) * d1 + gamma * d2 * m_t / denom
            g_uhat = (grad * h[..., None]).sum(axis=1)
            g_m = (gamma * d1 / denom).sum(axis=1)
            g_w[:, t] = (delta[..., None] * z_prev).sum(axis=1)
            g_b[:, t] = delta.sum(axis=1)
            gu_t, gw_t = self.constrain_backward(bk, state.u[:, t], state.w[:, t],
                                                 state.alpha[:, t],
                                                 g_uhat, g_m)
            g_u[:, t] = gu_t
            g_w[:, t] = g_w[:, t] + gw_t
            grad = grad + delta[..., None] * w_t
        out = self.base.pathwise(bk, state.base, grad)
        out.update({"flow_u": g_u.reshape(n, -1), "flow_w": g_w.reshape(n, -1), "flow_b": g_b})
        return out

    # ----- objective pieces ------------------------------------------------------------------
    def kl_grads(self, bk, state: PlanarFlowState) -> dict:
        """Exact gradient of the Monte Carlo KL (:meth:`StandardNormalLatent.kl`, the same
        estimate as the Gaussian latents' ``kl: "monte_carlo"``) at fixed ε: ``log p`` contributes
        ``−x/L`` upstream on ``x`` (negated: ``+x/L``), the log-determinant enters with weight
        ``γ = −1/L``, and ``log N(z_0; ν, υ²) = −½ Σ_k (ε_k² + 2 log υ_k + log 2π)``
        gives ``−d log υ/dh`` directly (``−½`` for ℓ;
        :meth:`DiagonalGaussian.log_q_direct`)."""
        samples = state.x.shape[1]
        out = self.backward(bk, state, state.x / samples, gamma=-1.0 / samples)
        direct = self.base.log_q_direct(bk, state.base)
        out["logvar"] = out["logvar"] + direct["logvar"]
        return out

    def pathwise(self, bk, state: PlanarFlowState, g) -> dict:
        """Reparameterization gradients of the reconstruction term through the flow (Eqs. 8.24,
        8.25); ``g`` ``(N, L, K)`` is ∂f/∂x already weighted by 1/L and the batch reduction."""
        return self.backward(bk, state, g)

    def mean(self, bk, state: PlanarFlowState):
        """A deterministic location of q (used for active units): E_q[x] has no closed form under a
        flow, so this is the flow's image of the base mean, ``f_T ∘ … ∘ f_1(ν)`` (E_q[x]
        itself when the flow is linear over q's support, e.g. the identity). Unlike a sample mean it
        carries no posterior noise, so a collapsed unit (ν and the flow independent of y) stays
        inactive."""
        zs, _, _, _ = self._layers(bk, state.base.nu[:, None, :], state.uhat, state.w, state.b,
                                   state.sp)
        return zs[-1][:, 0]

    def log_q(self, bk, state: PlanarFlowState):
        """Eq. 8.25:
        ``log q(x_T|y) = −½ Σ_k (ε_k² + ℓ_k + log 2π) − Σ_t log(1 + tanh'(a_t) m_t)``,
        ``(N, L)``."""
        return self.base.log_q(bk, state.base) - state.log_det

    def price(self, bk, state: PlanarFlowState, g, hessian) -> dict:
        raise ConfigError("estimator 'price' needs a Gaussian q (Eq. 8.17); a planar-flow "
                          "posterior "
                          "is not Gaussian: use estimator 'pathwise'")

    def score(self, bk, state: PlanarFlowState) -> dict:
        raise ConfigError("the score of a planar-flow posterior needs the flow's inverse, which "
                          "has no "
                          "closed form: use estimator 'pathwise'")

    def log_q_cross(self, bk, heads: dict, x):
        raise ConfigError("the density of a planar-flow posterior at arbitrary points needs the "
                          "flow's "
                          "inverse, which has no closed form; ELBO surgery is available for "
                          "flow_length 0 only")
