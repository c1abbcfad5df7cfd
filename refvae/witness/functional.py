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
    """Hidden layers ``{prefix}.{i}``, then each head ``{prefix}.{head}`` applied to the last
    layer."""
    linear = _torch().nn.functional.linear
    h = x
    for i in range(n_hidden):
        h = ACT[act](linear(h, p[f"{prefix}.{i}.weight"], p[f"{prefix}.{i}.bias"]))
    return {name: linear(h, p[f"{prefix}.{name}.weight"], p[f"{prefix}.{name}.bia"
                                                            "s"]) for name in heads}


def surprisal(cfg, dec, y, p):
    """−log p(y|x) summed over D, per sample."""
    t = _torch()
    if cfg["emission"] == "bernoulli":
        lam = dec["out"]
        return (t.nn.functional.softplus(lam) - y * lam).sum(-1)
    if cfg["emission"] == "gaussian":
        la = p["decoder.log_alpha"] if cfg.get(
            "learn_alpha") else t.tensor(math.log(cfg.get("alpha", 1.0)),
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
        enc = mlp(p, "encoder", len(cfg["encoder_hidden"]), ["mean", "logvar"], cfg["activation"],
                  y)
        nu, lv = enc["mean"], enc["logvar"]
        x = nu[:, None, :] + (0.5 * lv).exp()[:, None, :] * eps
        dec = mlp(p, "decoder", len(cfg["decoder_hidden"]), decoder_heads(cfg), cfg["activation"],
                  x)
        f = surprisal(cfg, dec, y[:, None, :], p)
        kl = 0.5 * (lv.exp() + nu ** 2 - 1 - lv).sum(-1)
        rec = f.mean(1)
        total = (kl + rec).sum()
        return (total / y.shape[0] if reduction == "mean" else total), kl, rec

    return loss


def autograd(loss, params: dict, y, eps):
    """Run a twin ``loss(p, y, eps)`` in float64 and return loss, KL and reconstruction per datum
    and every parameter's autograd gradient, all as NumPy."""
    t = _torch()
    p = {k: t.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k,
         v in params.items()}
    value, kl, rec = loss(p, t.tensor(np.asarray(y, dtype=np.float64)),
                          t.tensor(np.asarray(eps, dtype=np.float64)))
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
    prior = t.distributions.MultivariateNormal(t.zeros_like(nu),
                                               scale_tril=t.eye(nu.shape[-1], dtype=nu.dtype))
    return x, t.distributions.kl_divergence(q, prior)


def planar_flows(z, u, w, b):
    """Rezende & Mohamed (2015) planar flows with the invertibility fix of their Appendix A.1:
    ``z ← z + û tanh(wᵀz + b)``; returns ``(z_T, Σ_t log|1 + ûᵀψ_t|)``. ``u, w``
    ``(N, T, K)``, ``b`` ``(N, T)``, ``z`` ``(N, L, K)``."""
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
        dec = mlp(p, "decoder", len(cfg["decoder_hidden"]), decoder_heads(cfg), cfg["activation"],
                  x)
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
        np.testing.assert_allclose(bk.to_numpy(res.grads[name]), g, rtol=1e-10, atol=1e-12,
                                   err_msg=name)


# ----- model forms (issue 25): scale heads, head activations, KL forms, conditioning, scale ------
def scale_std(cfg, h):
    """υ from the head ``encoder.logvar`` under ``cfg["scale_head"]`` (torch, independently of
    refvae)."""
    t, floor = _torch(), cfg.get("scale_floor", 0.0)
    form = cfg.get("scale_head", "logvar")
    if form == "logvar":
        return (0.5 * h).exp()
    if form == "log_std":
        return h.exp()
    if form == "softplus_std":
        return t.nn.functional.softplus(h) + floor
    return (t.nn.functional.softplus(h) + floor).sqrt()


def _forms_heads(cfg):
    if cfg.get("latent") == "gaussian_full":
        return ["mean", "scale_tril"]
    flow = ["flow_u", "flow_w", "flow_b"] if cfg.get("flow_length") else []
    return ["mean", "logvar", *flow]


def per_sample(d, x):
    """``log d(x)`` ``(N, L)`` for a distribution with batch shape ``(N,)`` and samples
    ``(N, L, K)``."""
    return d.log_prob(x.transpose(0, 1)).T


def _forms_pieces(cfg, p, y, eps, c):
    """Encoder on ``[y, c]`` with its head activations, q as a torch distribution, the sample,
    ``log q − log p`` per sample (a flow's through its layers) and the analytic KL (None for a
    flow)."""
    t = _torch()
    dist = t.distributions
    inp = y if c is None else t.cat([y, c], -1)
    enc = mlp(p, "encoder", len(cfg["encoder_hidden"]), _forms_heads(cfg), cfg["activation"], inp)
    for h, a in dict(cfg.get("head_activations", {})).items():
        enc[h] = ACT[a](enc[h])
    nu, k = enc["mean"], enc["mean"].shape[-1]
    prior = dist.Independent(dist.Normal(t.zeros_like(nu), t.ones_like(nu)), 1)
    if cfg.get("latent") == "gaussian_full":
        q = dist.MultivariateNormal(nu, scale_tril=scale_tril(enc["scale_tril"], k))
        x = nu[:, None, :] + t.einsum("nij,nlj->nli", q.scale_tril, eps)
    else:
        q = dist.Independent(dist.Normal(nu, scale_std(cfg, enc["logvar"])), 1)
        x = nu[:, None, :] + q.base_dist.scale[:, None, :] * eps
    if cfg.get("flow_length"):
        n = nu.shape[0]
        z0 = x
        x, log_det = planar_flows(z0, enc["flow_u"].reshape(n, -1, k),
                                  enc["flow_w"].reshape(n, -1, k), enc["flow_b"].reshape(n, -1))
        return enc, q, x, per_sample(q, z0) - log_det - per_sample(prior, x), None
    if cfg.get("latent") == "gaussian_full":
        eye = t.diag_embed(t.ones_like(nu))
        prior_full = dist.MultivariateNormal(t.zeros_like(nu), scale_tril=eye)
        return enc, q, x, per_sample(q, x) - per_sample(prior, x), dist.kl_divergence(q, prior_full)
    return enc, q, x, per_sample(q, x) - per_sample(prior, x), dist.kl_divergence(q, prior)


def forms_loss_fn(cfg, estimator="pathwise", reduction="mean", scale=1.0):
    """``loss(p, y, eps, c) -> (surrogate, loss, kl per datum, rec per datum)``: the batch loss
    ``scale · Σ_n [KL_n + ⟨f⟩_n]`` (÷ N for ``mean``) with every model form, and a surrogate
    whose autograd gradient is the estimator's: the loss itself (``pathwise``); with ``score``,
    ``⟨f⟩ + ⟨f̄ log q(x̄)⟩`` at detached samples (a Monte Carlo KL joins ``f̄``); with
    ``price``, Eqs. 8.16–8.17 as ``ν·⟨ḡ⟩ + ½ Σ_ij ⟨H̄⟩_ij Υ_ij`` with autograd's g
    and Hessian (bars: detached)."""
    t = _torch()

    def loss(p, y, eps, c=None):
        enc, q, x, log_ratio, kl_exact = _forms_pieces(cfg, p, y, eps, c)
        mc = cfg.get("kl", "analytic") == "monte_carlo" or kl_exact is None
        kl = log_ratio.mean(1) if mc else kl_exact
        xd = x.detach().requires_grad_()

        def surprisal_at(xx):
            inp = xx if c is None else t.cat([xx, c[:, None, :].expand(*xx.shape[:2], -1)], -1)
            dec = mlp(p, "decoder", len(cfg["decoder_hidden"]), decoder_heads(cfg),
                      cfg["activation"], inp)
            return surprisal(cfg, dec, y[:, None, :], p)

        f = surprisal_at(x if estimator == "pathwise" else xd)
        rec = f.mean(1)
        weight = scale / y.shape[0] if reduction == "mean" else scale
        value = weight * (kl + rec).sum()
        if estimator == "pathwise":
            return value, value, kl, rec
        if estimator == "score":
            log_q = per_sample(q, xd.detach())
            signal = f + (log_ratio if mc else 0.0)
            sur = rec + (signal.detach() * log_q).mean(1) + (0.0 if mc else kl)
            return weight * sur.sum(), value, kl, rec
        g = t.autograd.grad(f.sum(), xd, create_graph=True)[0]
        hess = t.stack([t.autograd.grad(g[..., i].sum(), xd, retain_graph=True)[0]
                        for i in range(g.shape[-1])], -2).mean(1).detach()
        full = cfg.get("latent") == "gaussian_full"
        cov = q.covariance_matrix if full else t.diag_embed(q.variance)
        bonnet = (enc["mean"] * g.mean(1).detach()).sum(-1)
        sur = rec + bonnet + 0.5 * (hess * cov).sum((-2, -1)) + kl
        return weight * sur.sum(), value, kl, rec

    return loss


def forms_grads(cfg, params: dict, y, eps, condition=None, estimator="pathwise", reduction="mean",
                scale=1.0):
    """Loss, KL/reconstruction per datum and autograd gradients (of :func:`forms_loss_fn`'s
    surrogate) in float64, as NumPy."""
    t = _torch()
    p = {k: t.tensor(np.asarray(v, dtype=np.float64), requires_grad=True)
         for k, v in params.items()}
    c = None if condition is None else t.tensor(np.asarray(condition, dtype=np.float64))
    y_t, eps_t = (t.tensor(np.asarray(a, dtype=np.float64)) for a in (y, eps))
    sur, value, kl, rec = forms_loss_fn(cfg, estimator, reduction, scale)(p, y_t, eps_t, c)
    grads = t.autograd.grad(sur, list(p.values()), allow_unused=True)
    return (float(value.detach()), kl.detach().numpy(), rec.detach().numpy(),
            {k: (t.zeros_like(v) if gr is None else gr).numpy()
             for (k, v), gr in zip(p.items(), grads)})
