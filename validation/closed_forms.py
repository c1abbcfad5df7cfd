"""Closed forms of the linear Gaussian VAE, written independently of refvae's sampling code.

Model: linear encoder heads ``h = W_h y + b_h`` (no hidden layers), recognition
``q(x|y) = N(ν, Υ)`` with ``Υ = diag(exp ℓ)`` (latent ``gaussian``) or ``Υ = R Rᵀ`` (latent
``gaussian_full``: the ``scale_tril`` head holds the lower triangle of ``R`` in
``numpy.tril_indices`` order, diagonal through exp; ORACLE.md), linear decoder ``μ(x) = W x + b``
and the ``gaussian`` emission ``N(μ, αI)`` with α fixed or learned as ``decoder.log_alpha``.

Because ``μ`` is linear, ``E_q ||y − μ(x)||² = ||y − Wν − b||² + tr(W Υ Wᵀ)``, so the
expected negative ELBO per datum is exact (docs/DERIVATIONS.md#the-objective; boxed results of
§8.2.2):

    F = ½ (tr Υ + νᵀν − K − log|Υ|)
        + (||y − Wν − b||² + tr(W Υ Wᵀ)) / (2α) + (D/2) log(2πα)

and so is its gradient (:func:`expected_loss_gradient`, derived by hand below and checked against
central differences of :func:`expected_loss` by the claims that use it). ``e3_misprint=True`` gives
the loss of the chapter's misprinted sample ``Υ z + ν`` (erratum E3): its reconstruction sees the
covariance ``Υ Υᵀ = Υ²`` in place of ``Υ``; the KL is unchanged.

The batch loss is the mean over the batch (refvae's ``reduction="mean"``).
"""
from __future__ import annotations

import math

import numpy as np

COV_HEAD = {"gaussian": "logvar", "gaussian_full": "scale_tril"}


def _alpha(params: dict, alpha: float) -> float:
    return math.exp(float(params["decoder.log_alpha"])) if "decoder.log_alpha" in params else alpha


def linear_heads(latent: str, params: dict, y) -> dict:
    """Encoder heads of a linear encoder: ``{"mean": ν, <covariance head>: ...}``, each
    ``(N, ·)``."""
    return {h: y @ params[f"encoder.{h}.weight"].T + params[f"encoder.{h}.bias"]
            for h in ("mean", COV_HEAD[latent])}


def scale_matrix(raw):
    """``scale_tril`` head ``(N, K(K+1)/2)`` -> ``R`` ``(N, K, K)``, diagonal through exp."""
    n, m = raw.shape
    k = int(round((math.sqrt(8 * m + 1) - 1) / 2))
    rows, cols = np.tril_indices(k)
    r = np.zeros((n, k, k))
    r[:, rows, cols] = raw
    r[:, range(k), range(k)] = np.exp(r[:, range(k), range(k)])
    return r


def moments(latent: str, heads: dict):
    """``(ν, Υ)`` ``((N, K), (N, K, K))`` from the encoder heads."""
    nu = heads["mean"]
    if latent == "gaussian":
        return nu, np.stack([np.diag(v) for v in np.exp(heads["logvar"])])
    r = scale_matrix(heads["scale_tril"])
    return nu, r @ r.transpose(0, 2, 1)


def _recon_cov(ups, e3_misprint: bool):
    return ups @ ups if e3_misprint else ups


def expected_loss_per_datum(latent: str, params: dict, y, alpha: float = 1.0,
                            e3_misprint: bool = False):
    """``(KL, E_q f)`` per datum, ``(N,)`` each, in closed form (module docstring)."""
    nu, ups = moments(latent, linear_heads(latent, params, y))
    a = _alpha(params, alpha)
    w, b = params["decoder.out.weight"], params["decoder.out.bias"]
    resid = y - nu @ w.T - b
    trace_term = np.einsum("dk,nkj,dj->n", w, _recon_cov(ups, e3_misprint), w)
    rec = (((resid ** 2).sum(-1) + trace_term) / (2 * a) + 0.5 * y.shape[1]
           * math.log(2 * math.pi * a))
    k = nu.shape[1]
    kl = 0.5 * (np.trace(ups, axis1=1, axis2=2) + (nu ** 2).sum(-1) - k - np.linalg.slogdet(ups)[1])
    return kl, rec


def expected_loss(latent: str, params: dict, y, alpha: float = 1.0,
                  e3_misprint: bool = False) -> float:
    """Exact ``E_q[batch loss]``: the mean over the batch of ``KL + E_q f``."""
    kl, rec = expected_loss_per_datum(latent, params, y, alpha, e3_misprint)
    return float((kl + rec).mean())


def expected_loss_gradient(latent: str, params: dict, y, alpha: float = 1.0,
                           e3_misprint: bool = False) -> dict:
    """The gradient of :func:`expected_loss` for every parameter, by hand.

    With ``r = y − Wν − b`` and ``M = WᵀW``, per datum: ``∂F/∂ν = ν − Wᵀr/α``; the
    symmetric gradient ``G = ∂F/∂Υ = ½ (I − Υ⁻¹) + M/(2α)`` (misprint:
    ``(MΥ + ΥM)/(2α)`` in the second term). Heads: ``∂F/∂ℓ_k = υ_k² G_kk`` (diagonal);
    ``∂F/∂R = tril(2 G R)`` (full, from ``dF = tr(G dΥ)``, ``dΥ = dR Rᵀ + R dRᵀ``), times
    ``R_kk`` on the raw diagonal. Decoder: ``∂F/∂W = (−r νᵀ + W Υ_rec)/α``,
    ``∂F/∂b = −r/α``, ``∂F/∂log α = D/2 − (||r||² + tr(W Υ_rec Wᵀ))/(2α)``.
    Linear encoder: ``∂/∂W_h = Σ_n d_h yᵀ``, ``∂/∂b_h = Σ_n d_h``. Every term carries
    the batch mean's 1/N.
    """
    n, d = y.shape
    cov = COV_HEAD[latent]
    heads = linear_heads(latent, params, y)
    nu, ups = moments(latent, heads)
    a = _alpha(params, alpha)
    w, b = params["decoder.out.weight"], params["decoder.out.bias"]
    k = nu.shape[1]
    resid = y - nu @ w.T - b
    m = w.T @ w
    ups_rec = _recon_cov(ups, e3_misprint)
    d_nu = nu - resid @ w / a
    curv = (m @ ups + ups @ m) / (2 * a) if e3_misprint else np.broadcast_to(m / (2 * a), ups.shape)
    g = 0.5 * (np.eye(k) - np.linalg.inv(ups)) + curv
    if latent == "gaussian":
        d_cov = np.exp(heads["logvar"]) * np.diagonal(g, axis1=1, axis2=2)
    else:
        r = scale_matrix(heads["scale_tril"])
        grad_r = 2 * g @ r
        rows, cols = np.tril_indices(k)
        d_cov = grad_r[:, rows, cols]
        diag = rows == cols
        d_cov[:, diag] *= r[:, range(k), range(k)]
    grads = {}
    for head, dh in (("mean", d_nu), (cov, d_cov)):
        grads[f"encoder.{head}.weight"] = dh.T @ y / n
        grads[f"encoder.{head}.bias"] = dh.sum(0) / n
    grads["decoder.out.weight"] = (-resid.T @ nu + w @ ups_rec.sum(0)) / (a * n)
    grads["decoder.out.bias"] = -resid.sum(0) / (a * n)
    if "decoder.log_alpha" in params:
        sq = (resid ** 2).sum(-1) + np.einsum("dk,nkj,dj->n", w, ups_rec, w)
        grads["decoder.log_alpha"] = np.asarray(float((0.5 * d - sq / (2 * a)).mean()))
    return {name: grads[name] for name in params}


def exact_posterior_case(seed: int, d: int = 5, k: int = 2, alpha: float = 0.5, n: int = 20):
    """A linear-Gaussian VAE (decoder ``N(Wx + b, αI)`` with fixed α) whose diagonal encoder is
    the exact posterior, so every importance weight equals ``p(y)``. ``W`` has orthogonal columns,
    which makes the posterior covariance ``(I + WᵀW/α)⁻¹`` diagonal. Returns
    ``(config, params, y, log_p)`` with ``log_p`` the closed form ``log N(y; b, WWᵀ + αI)`` per
    datum."""
    rng = np.random.default_rng(seed)
    w = np.linalg.qr(rng.normal(size=(d, k)))[0] * np.linspace(2.0, 1.3, k)
    b = rng.normal(size=d)
    sigma = np.diag(1.0 / (1.0 + np.diag(w.T @ w) / alpha))
    config = dict(data_dim=d, latent_dim=k, encoder_hidden=[], decoder_hidden=[],
                  emission="gaussian", alpha=alpha)
    params = {"encoder.mean.weight": sigma @ w.T / alpha, "encoder.mean.bia"
                                                          "s": -sigma @ w.T @ b / alpha,
              "encoder.logvar.weight": np.zeros((k, d)),
              "encoder.logvar.bias": np.log(np.diag(sigma)),
              "decoder.out.weight": w, "decoder.out.bias": b}
    y = rng.normal(size=(n, d)) * 2.0 + b
    cov = w @ w.T + alpha * np.eye(d)
    r = y - b
    log_p = -0.5 * (d * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1]
                    + np.einsum("nd,nd->n", r, np.linalg.solve(cov, r.T).T))
    return config, params, y, log_p
