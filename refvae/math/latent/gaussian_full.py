"""Full-covariance Gaussian recognition model q(x|y) = N(ν, Υ), Υ = R Rᵀ (Eq. 8.12;
docs/DERIVATIONS.md#full-covariance-gaussian-recognition), with ``R`` lower triangular and positive
diagonal.

The encoder emits ``ν`` (head ``mean``, K entries) and the raw lower triangle of ``R`` (head
``scale_tril``, K(K+1)/2 entries in ``numpy.tril_indices(K)`` order: (0,0), (1,0), (1,1), (2,0),
…); off-diagonal entries are used as they are, diagonal entries through exp
(``R_kk = exp(r_kk)``), as ORACLE.md specifies. The sampling transform (Eq. 8.24) is
``x = ν + R z`` with the caller's base noise ``z`` ~ N(0, I) of shape ``(N, L, K)``.

Gradients with respect to ``R`` are lower-triangular matrices; :func:`_tril_to_raw` maps them onto
the ``scale_tril`` head by the chain rule (``∂/∂r_kk = R_kk ∂/∂R_kk`` on the diagonal).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..emission import LOG_2PI
from .gaussian import StandardNormalLatent


@dataclass
class FullGaussianState:
    """What the forward pass keeps: the heads, the matrix ``R``, the noise and the sample."""

    nu: object   # (N, K)
    raw: object  # (N, K(K+1)/2) the scale_tril head
    R: object    # (N, K, K) lower triangular, positive diagonal
    eps: object  # (N, L, K)
    x: object    # (N, L, K)


class FullCovarianceGaussian(StandardNormalLatent):
    """``latent: "gaussian_full"``: sampling, closed-form KL, log-density, score, and the
    recognition gradients of the reconstruction term by the pathwise route (``tril(⟨g zᵀ⟩)``)
    and by Price's theorem (``tril(2 G R)``, Eq. 8.17). Its estimators are listed in
    :mod:`refvae.math.estimators`."""

    name = "gaussian_full"

    def __init__(self, latent_dim: int, kl: str = "analytic"):
        super().__init__(latent_dim, kl)
        k = latent_dim
        # numpy.tril_indices(k) order, written out so that this module needs no array library.
        self.rows = [i for i in range(k) for _ in range(i + 1)]
        self.cols = [j for i in range(k) for j in range(i + 1)]
        self.diag_pos = [i * (i + 1) // 2 + i for i in range(k)]

    @property
    def n_tril(self) -> int:
        return self.k * (self.k + 1) // 2

    def heads(self):
        return [("mean", self.k), ("scale_tril", self.n_tril)]

    # ----- the parameterization of R --------------------------------------------------------
    def scale_tril(self, bk, raw):
        """Head ``(N, K(K+1)/2)`` -> ``R`` ``(N, K, K)``: lower triangle in ``tril_indices`` order,
        diagonal through exp."""
        xp = bk.xp
        n = raw.shape[0]
        r = xp.zeros((n, self.k, self.k), dtype=raw.dtype)
        r[:, self.rows, self.cols] = raw
        d = list(range(self.k))
        r[:, d, d] = xp.exp(raw[:, self.diag_pos])
        return r

    def _tril_to_raw(self, bk, grad_r, r):
        """Chain rule from ``∂/∂R`` ``(N, K, K)`` (only its lower triangle is read) to
        ``∂/∂r`` ``(N, K(K+1)/2)``: off-diagonal entries pass through, diagonal ones are
        multiplied by ``R_kk`` (the derivative of exp)."""
        out = grad_r[:, self.rows, self.cols]
        d = list(range(self.k))
        out[:, self.diag_pos] = out[:, self.diag_pos] * r[:, d, d]
        return out

    # ----- forward ---------------------------------------------------------------------------
    def sample(self, bk, heads: dict, eps, estimator=None, temperature=None) -> FullGaussianState:
        """Eq. 8.24 with ``Σ^{1/2} = R``: ``x = ν + R z`` per sample."""
        nu, raw = heads["mean"], heads["scale_tril"]
        r = self.scale_tril(bk, raw)
        x = nu[:, None, :] + eps @ r.transpose(0, 2, 1)
        return FullGaussianState(nu, raw, r, eps, x)

    def analytic_kl(self, bk, state: FullGaussianState):
        """KL(N(ν, RRᵀ) || N(0, I)) = ½ (tr Υ + νᵀν − K − log|Υ|) with
        ``tr Υ = ||R||_F²`` and ``log|Υ| = 2 Σ_k log R_kk = 2 Σ_k r_kk``
        (docs/DERIVATIONS.md#the-objective), per datum."""
        r, nu = state.R, state.nu
        log_det = 2.0 * state.raw[:, self.diag_pos].sum(axis=-1)
        return 0.5 * ((r * r).sum(axis=(-2, -1)) + (nu * nu).sum(axis=-1) - self.k - log_det)

    def analytic_kl_grads(self, bk, state: FullGaussianState) -> dict:
        """``∂KL/∂ν = ν``; ``∂KL/∂R = tril(R) − diag(1/R_kk)`` (= tril((I − Υ⁻¹)
        R), the KL part of Eq. 8.17), so on the head: ``R_ij`` off the diagonal and ``R_kk² − 1``
        on it."""
        g = state.raw.copy()
        g[:, self.diag_pos] = bk.xp.expm1(2.0 * state.raw[:, self.diag_pos])
        return {"mean": state.nu, "scale_tril": g}

    def log_q_direct(self, bk, state: FullGaussianState) -> dict:
        """``∂ log q(x|y)/∂head`` at fixed base noise ``z``:
        ``log q = −½ zᵀz − Σ_k r_kk − (K/2) log 2π`` gives ``−1`` on the head's
        diagonal entries and ``0`` elsewhere
        (docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning)."""
        d = bk.xp.zeros_like(state.raw)
        d[:, self.diag_pos] = -1.0
        return {"mean": bk.xp.zeros_like(state.nu), "scale_tril": d}

    # ----- recognition gradients of the reconstruction term ---------------------------------
    def pathwise(self, bk, state: FullGaussianState, g) -> dict:
        """Reparameterization with ``x = ν + R z`` (Eq. 8.24, the chapter's O(K²) route, its ref.
        [41]; docs/DERIVATIONS.md#pathwise-gradient):
        ``∂/∂ν = Σ_l g_l``, ``∂/∂R = tril(Σ_l g_l z_lᵀ)``; ``g`` ``(N, L, K)`` is
        ∂f/∂x already weighted by 1/L and the batch reduction."""
        grad_r = g.transpose(0, 2, 1) @ state.eps
        return {"mean": g.sum(axis=1), "scale_tril": self._tril_to_raw(bk, grad_r, state.R)}

    def price(self, bk, state: FullGaussianState, g, hessian) -> dict:
        """Bonnet's and Price's theorems (Eqs. 8.16–8.17; docs/DERIVATIONS.md#bonnet-and-price):
        ``∂/∂ν = Σ_l g_l`` and, with the
        reconstruction part of ``G = ∂F/∂Υ``, ``G_rec = ½ Σ_l H_l``,
        ``∂/∂R = tril(2 G_rec R)`` (Υ = RRᵀ and G symmetric give
        ``dF = tr(G dΥ) = 2 tr(G R dRᵀ)``). ``hessian(full=True)`` ``(N, L, K, K)`` is the exact
        Hessian ∂²f/∂x∂xᵀ at the samples, weighted like ``g``. No ``g zᵀ`` term."""
        grad_r = hessian(full=True).sum(axis=1) @ state.R
        return {"mean": g.sum(axis=1), "scale_tril": self._tril_to_raw(bk, grad_r, state.R)}

    def score(self, bk, state: FullGaussianState) -> dict:
        """Score ``∂ log q(x|y)/∂(heads)`` at fixed ``x``, per sample ``(N, L, ·)``
        (score-function estimator, §8.2.1;
        docs/DERIVATIONS.md#score-function-and-control-variates). With ``z = R⁻¹(x − ν)`` and
        ``log q = −½ zᵀz − Σ_k log R_kk + c``: ``∂/∂ν = R⁻ᵀ z`` and
        ``∂/∂R = tril(R⁻ᵀ (z zᵀ − I))``; since ``R⁻ᵀ`` is upper triangular with
        diagonal ``1/R_kk``,
        the lower-triangle entries are ``a_i z_j − δ_ij / R_ii`` with ``a = R⁻ᵀ z``, and on
        the head's diagonal ``R_ii a_i z_i − 1``."""
        xp = bk.xp
        a = xp.linalg.solve(
            state.R.transpose(0, 2, 1), state.eps.transpose(0, 2, 1)).transpose(0, 2, 1)
        s = a[..., self.rows] * state.eps[..., self.cols]
        d = list(range(self.k))
        r_diag = state.R[:, d, d][:, None, :]
        s[..., self.diag_pos] = r_diag * s[..., self.diag_pos] - 1.0
        return {"mean": a, "scale_tril": s}

    # ----- densities -------------------------------------------------------------------------
    def mean(self, bk, state: FullGaussianState):
        """E_q[x] = ν."""
        return state.nu

    def log_q(self, bk, state: FullGaussianState):
        """``log q(x|y) = −½ Σ_k (z_k² + log 2π) − Σ_k log R_kk`` at the drawn samples,
        ``(N, L)`` (docs/DERIVATIONS.md#full-covariance-gaussian-recognition)."""
        log_det_r = state.raw[:, self.diag_pos].sum(axis=-1)
        return -0.5 * (state.eps ** 2 + LOG_2PI).sum(axis=-1) - log_det_r[:, None]

    def log_q_cross(self, bk, heads: dict, x):
        """``log q(x_m | y_n)`` for every point ``x`` ``(M, K)`` and every datum's heads, ``(M, N)``
        (the aggregated posterior of Eq. 8.21)."""
        r = self.scale_tril(bk, heads["scale_tril"])
        diff = (x[None, :, :] - heads["mean"][:, None, :]).transpose(0, 2, 1)  # (N, K, M)
        z = bk.xp.linalg.solve(r, diff)
        log_det_r = heads["scale_tril"][:, self.diag_pos].sum(axis=-1)
        out = -0.5 * (z * z).sum(axis=1) - 0.5 * self.k * LOG_2PI - log_det_r[:, None]
        return out.T
