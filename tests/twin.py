"""An independent PyTorch (float64) twin of refvae's VAE, written from ORACLE.md and EQUATIONS.md.

It shares nothing with refvae but the config dict and the parameter names: the forward pass is
written with torch operations and differentiated by torch.autograd. Tests compare refvae's
hand-derived numbers with it on the same parameters and noise.
"""
from __future__ import annotations

import math

import numpy as np

torch = None


def _torch():
    global torch
    if torch is None:
        import torch as _t  # noqa: PLC0415

        torch = _t
    return torch


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
    h = x
    for i in range(n_hidden):
        h = ACT[act](h @ p[f"{prefix}.{i}.weight"].T + p[f"{prefix}.{i}.bias"])
    return {name: h @ p[f"{prefix}.{name}.weight"].T + p[f"{prefix}.{name}.bias"] for name in heads}


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


def grads(cfg, params: dict, y, eps, reduction="mean"):
    """Loss, KL/reconstruction per datum and autograd gradients, all as NumPy float64."""
    t = _torch()
    p = {k: t.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in params.items()}
    loss, kl, rec = loss_fn(cfg, reduction)(p, t.tensor(np.asarray(y, dtype=np.float64)),
                                            t.tensor(np.asarray(eps, dtype=np.float64)))
    loss.backward()
    return (float(loss.detach()), kl.detach().numpy(), rec.detach().numpy(),
            {k: v.grad.numpy() for k, v in p.items()})
