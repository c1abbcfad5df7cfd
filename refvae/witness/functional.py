"""The witness's functional form: refvae's Gaussian VAEs as losses of a dict of tensors.

Written from docs/ORACLE.md and docs/DERIVATIONS.md with torch operations; gradients come from
torch.autograd. ``loss_fn(cfg)`` / ``latent_loss_fn(cfg)`` return ``loss(p, y, eps)`` giving
``(loss, kl per datum, reconstruction per datum)``; :func:`grads` / :func:`latent_grads` evaluate
them in float64 at NumPy parameters and return NumPy results.
"""
from __future__ import annotations

import math

import numpy as np

from . import require_torch as _torch

ACT = {
    "tanh": lambda t: t.tanh(),
    "sigmoid": lambda t: t.sigmoid(),
    "softplus": lambda t: _torch().nn.functional.softplus(t),
    "relu": lambda t: t.relu(),
    "identity": lambda t: t,
    "silu": lambda t: _torch().nn.functional.silu(t),
}


def mlp(p, prefix, n_hidden, heads, act, x):
    """Hidden layers ``{prefix}.{i}``, then each head ``{prefix}.{head}`` applied to the last layer."""
    linear = _torch().nn.functional.linear
    h = x
    for i in range(n_hidden):
        h = ACT[act](linear(h, p[f"{prefix}.{i}.weight"], p[f"{prefix}.{i}.bias"]))
    return {name: linear(h, p[f"{prefix}.{name}.weight"], p[f"{prefix}.{name}.bias"]) for name in heads}


def surprisal(cfg, dec, y, p):
    """−log p(y|x) summed over D, per sample."""
    t = _torch()
    if cfg["emission"] == "bernoulli":
        lam = dec["out"]
        return (t.nn.functional.softplus(lam) - y * lam).sum(-1)
    if cfg["emission"] == "gaussian":
        la = p["decoder.log_alpha"] if cfg.get("learn_alpha") else t.tensor(math.log(cfg.get("alpha", 1.0)),
                                                                           dtype=t.float64)
        mu = dec["out"]
        d = mu.shape[-1]
        return ((y - mu) ** 2).sum(-1) / (2 * la.exp()) + 0.5 * d * (math.log(2 * math.pi) + la)
    mu, s = dec["out"], dec["logvar"]
    return 0.5 * (((y - mu) ** 2) * (-s).exp() + s + math.log(2 * math.pi)).sum(-1)


def decoder_heads(cfg):
    return ["out", "logvar"] if cfg["emission"] == "gaussian_diag" else ["out"]


def loss_fn(cfg, reduction="mean"):
    """``loss(params: dict of tensors, y, eps) -> (loss, kl per datum, rec per datum)``
    for the diagonal Gaussian latent with the reparameterized sample."""
    t = _torch()

    def loss(p, y, eps):
        enc = mlp(p, "encoder", len(cfg["encoder_hidden"]), ["mean", "logvar"], cfg["activation"], y)
        nu, lv = enc["mean"], enc["logvar"]
        x = nu[:, None, :] + (0.5 * lv).exp()[:, None, :] * eps
        dec = mlp(p, "decoder", len(cfg["decoder_hidden"]), decoder_heads(cfg), cfg["activation"], x)
        f = surprisal(cfg, dec, y[:, None, :], p)
        kl = 0.5 * (lv.exp() + nu ** 2 - 1 - lv).sum(-1)
        rec = f.mean(1)
        total = (kl + rec).sum()
        return (total / y.shape[0] if reduction == "mean" else total), kl, rec

    return loss


def autograd(loss, params: dict, y, eps):
    """Run a twin ``loss(p, y, eps)`` in float64 and return loss, KL and reconstruction per datum and
    every parameter's autograd gradient, all as NumPy."""
    t = _torch()
    p = {k: t.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in params.items()}
    value, kl, rec = loss(p, t.tensor(np.asarray(y, dtype=np.float64)), t.tensor(np.asarray(eps, dtype=np.float64)))
    value.backward()
    return (float(value.detach()), kl.detach().numpy(), rec.detach().numpy(),
            {k: v.grad.numpy() for k, v in p.items()})


def grads(cfg, params: dict, y, eps, reduction="mean"):
    """Loss, KL/reconstruction per datum and autograd gradients of the diagonal-Gaussian twin."""
    return autograd(loss_fn(cfg, reduction), params, y, eps)


# ----- full-covariance and planar-flow recognition models (issue 4) -----------------------------
def scale_tril(raw, k):
    """Head ``(N, K(K+1)/2)`` -> ``R`` ``(N, K, K)``: ``numpy.tril_indices(K)`` order, diagonal
    through exp (ORACLE.md)."""
    t = _torch()
    rows, cols = np.tril_indices(k)
    m = t.zeros(raw.shape[0], k, k, dtype=raw.dtype)
    m[:, rows, cols] = raw
    return m.tril(-1) + t.diag_embed(m.diagonal(dim1=-2, dim2=-1).exp())


def full_latent(p, enc, eps):
    """``x = ν + R eps`` and the KL per datum from torch.distributions (independent of refvae)."""
    t = _torch()
    nu = enc["mean"]
    r = scale_tril(enc["scale_tril"], nu.shape[-1])
    x = nu[:, None, :] + t.einsum("nij,nlj->nli", r, eps)
    q = t.distributions.MultivariateNormal(nu, scale_tril=r)
    prior = t.distributions.MultivariateNormal(t.zeros_like(nu), scale_tril=t.eye(nu.shape[-1], dtype=nu.dtype))
    return x, t.distributions.kl_divergence(q, prior)


def planar_flows(z, u, w, b):
    """Rezende & Mohamed (2015) planar flows with the invertibility fix of their Appendix A.1:
    ``z ← z + û tanh(wᵀz + b)``; returns ``(z_T, Σ_t log|1 + ûᵀψ_t|)``. ``u, w`` ``(N, T, K)``,
    ``b`` ``(N, T)``, ``z`` ``(N, L, K)``."""
    t = _torch()
    log_det = t.zeros(z.shape[:2], dtype=z.dtype)
    for i in range(u.shape[1]):
        ui, wi, bi = u[:, i], w[:, i], b[:, i]
        wu = (wi * ui).sum(-1, keepdim=True)
        uhat = ui + (t.nn.functional.softplus(wu) - 1 - wu) * wi / (wi * wi).sum(-1, keepdim=True)
        a = (z * wi[:, None, :]).sum(-1) + bi[:, None]
        psi = (1 - a.tanh() ** 2)[..., None] * wi[:, None, :]
        log_det = log_det + (1 + (psi * uhat[:, None, :]).sum(-1)).abs().log()
        z = z + uhat[:, None, :] * a.tanh()[..., None]
    return z, log_det


def flow_latent(p, enc, eps):
    """Diagonal Gaussian base, planar flows from the ``flow_*`` heads, Monte Carlo KL per datum."""
    t = _torch()
    nu, lv = enc["mean"], enc["logvar"]
    n, k = nu.shape
    std = (0.5 * lv).exp()
    z0 = nu[:, None, :] + std[:, None, :] * eps
    x, log_det = planar_flows(z0, enc["flow_u"].reshape(n, -1, k), enc["flow_w"].reshape(n, -1, k),
                              enc["flow_b"].reshape(n, -1))
    log_q0 = t.distributions.Normal(nu[:, None, :], std[:, None, :]).log_prob(z0).sum(-1)
    log_p = t.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    return x, (log_q0 - log_det - log_p).mean(1)


def latent_loss_fn(cfg, reduction="mean"):
    """Like :func:`loss_fn` for every Gaussian recognition model: ``gaussian`` (diagonal; the same
    as :func:`loss_fn`), ``gaussian_full``, and ``gaussian`` with ``flow_length`` > 0."""
    if cfg.get("latent", "gaussian") == "gaussian" and not cfg.get("flow_length"):
        return loss_fn(cfg, reduction)
    if cfg.get("latent") == "gaussian_full":
        heads, sample = ["mean", "scale_tril"], full_latent
    else:
        heads, sample = ["mean", "logvar", "flow_u", "flow_w", "flow_b"], flow_latent

    def loss(p, y, eps):
        enc = mlp(p, "encoder", len(cfg["encoder_hidden"]), heads, cfg["activation"], y)
        x, kl = sample(p, enc, eps)
        dec = mlp(p, "decoder", len(cfg["decoder_hidden"]), decoder_heads(cfg), cfg["activation"], x)
        rec = surprisal(cfg, dec, y[:, None, :], p).mean(1)
        total = (kl + rec).sum()
        return (total / y.shape[0] if reduction == "mean" else total), kl, rec

    return loss


def latent_grads(cfg, params: dict, y, eps, reduction="mean"):
    """:func:`grads` for every Gaussian recognition model (:func:`latent_loss_fn`)."""
    return autograd(latent_loss_fn(cfg, reduction), params, y, eps)


def assert_matches(bk, res, twin_out, kl_rtol=1e-12):
    """refvae's :class:`LossResult` against the witness's ``(loss, kl, rec, grads)``: loss to 1e-12
    (relative, or absolute near 0) and reconstruction to 1e-12, KL to ``kl_rtol``, every gradient
    (same names, same order) to 1e-10."""
    loss, kl, rec, grads = twin_out
    assert abs(res.loss - loss) <= max(1e-12 * abs(loss), 1e-12), (res.loss, loss)
    np.testing.assert_allclose(bk.to_numpy(res.kl_per_datum), kl, rtol=kl_rtol)
    np.testing.assert_allclose(bk.to_numpy(res.reconstruction_per_datum), rec, rtol=1e-12)
    assert list(res.grads) == list(grads)
    for name, g in grads.items():
        np.testing.assert_allclose(bk.to_numpy(res.grads[name]), g, rtol=1e-10, atol=1e-12, err_msg=name)
