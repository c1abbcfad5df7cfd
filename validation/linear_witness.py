"""The PyTorch witness of claim 6: a linear VAE with a learned isotropic Gaussian emission, written
from Lucas et al. (2019), not from refvae.

Encoder heads ``ν = W_ν y + b_ν``, ``ℓ = W_ℓ y + b_ℓ`` (log-variances), sample
``x = ν + exp(ℓ/2) ε``, decoder mean ``W x + b``, emission ``N(W x + b, α I)`` with ``log α``
learned. Per datum the loss is ``KL(N(ν, diag e^ℓ) ‖ N(0, I))`` (``torch.distributions``) plus
the mean over the L samples of ``−log N(y; W x + b, α I)``; the batch loss is its mean over the
batch. Parameters are held in a dict with refvae's ``state_dict`` names; gradients come from
autograd, Adam from ``torch.optim``. torch is imported inside the functions, so that the claim runs
(reporting the refvae side) without it.
"""
from __future__ import annotations

import math

import numpy as np

from refvae.witness import torch_or_none


def _loss(torch, p: dict, y, eps):
    dist = torch.distributions
    mu = y @ p["encoder.mean.weight"].T + p["encoder.mean.bias"]
    logvar = y @ p["encoder.logvar.weight"].T + p["encoder.logvar.bias"]
    std = (0.5 * logvar).exp()
    kl = dist.kl_divergence(dist.Normal(mu, std),
                            dist.Normal(torch.zeros_like(mu), torch.ones_like(std))).sum(-1)
    x = mu[:, None, :] + std[:, None, :] * eps
    mean = x @ p["decoder.out.weight"].T + p["decoder.out.bias"]
    scale = (0.5 * p["decoder.log_alpha"]).exp()
    rec = -dist.Normal(mean, scale).log_prob(y[:, None, :]).sum(-1).mean(1)
    return (kl + rec).mean()


def gradients(params: dict, y, eps) -> dict:
    """Autograd's gradient of the batch loss at refvae's parameters and noise (teacher forcing)."""
    torch = torch_or_none()
    p = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k,
         v in params.items()}
    _loss(torch, p, torch.as_tensor(np.asarray(y)), torch.as_tensor(np.asarray(eps))).backward()
    return {k: v.grad.numpy() for k, v in p.items()}


class FreeRunning:
    """The witness trained on its own: ``step(y, eps, lr)`` is one Adam step (``torch.optim.Adam``)
    on the batch ``y`` with noise ``eps``; ``params()`` the current values as NumPy arrays."""

    def __init__(self, params: dict, lr: float):
        self.torch = torch = torch_or_none()
        self.p = {k: torch.tensor(np.array(v, dtype=np.float64), requires_grad=True) for k,
                  v in params.items()}
        self.opt = torch.optim.Adam(list(self.p.values()), lr=lr)

    def step(self, y, eps, lr: float) -> float:
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad()
        loss = _loss(self.torch, self.p, self.torch.as_tensor(np.asarray(y)),
                     self.torch.as_tensor(np.asarray(eps)))
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def params(self) -> dict:
        return {k: v.detach().numpy().copy() for k, v in self.p.items()}


def warmup_cosine(step: int, lr: float, warmup: int, total: int, min_lr: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine annealing to ``min_lr`` at ``total`` steps
    (Goyal et al. 2017; Loshchilov & Hutter 2017), written here for the witness's own loop."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(step - warmup, total - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / (total - warmup)))


def train_minibatch(params: dict, y, epochs: int, batch_size: int, lr: float, samples: int,
                    seed: int) -> dict:
    """What ``refvae train --optimizer adam --schedule cosine`` does, in the witness: every epoch a
    fresh shuffle, minibatches of ``batch_size``, ``samples`` noise draws per datum, Adam with a
    cosine schedule from ``lr`` to 0 over the whole run; its own generator (an independent run)."""
    rng = np.random.default_rng(seed)
    n, k = y.shape[0], params["encoder.mean.bias"].shape[0]
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    model = FreeRunning(params, lr)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for b in range(per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            model.step(y[idx], rng.standard_normal((len(idx), samples, k)),
                       0.5 * lr * (1.0 + math.cos(math.pi * min(step, total) / total)))
            step += 1
    return model.params()
