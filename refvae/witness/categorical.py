"""The witness's categorical VAE, written from docs/ORACLE.md, docs/DERIVATIONS.md and the papers
(Jang et al. 2017; Maddison et al. 2017).

It reuses the MLP and surprisal of :mod:`refvae.witness.functional` and nothing of refvae: samples
are formed with torch's softmax/argmax, straight-through with the ``hard + Y − Y.detach()`` idiom,
the score estimator with a surrogate loss, and the relaxed KL with
``torch.distributions.RelaxedOneHotCategorical.log_prob``. Gradients come from torch.autograd.
"""
from __future__ import annotations

import numpy as np

from . import require_torch as _torch
from .functional import decoder_heads, mlp, surprisal


def _relaxed_log_prob(temperature, logits, value):
    t = _torch()
    dist = t.distributions.RelaxedOneHotCategorical(t.tensor(float(temperature), dtype=t.float64),
                                                    logits=logits, validate_args=False)
    return dist.log_prob(value)


def loss_fn(cfg, estimator, temperature=None, reduction="mean", kl="analytic",
            prior_temperature=None):
    """``loss(params, y, g0) -> (loss, kl per datum, rec per datum)`` whose autograd gradient is the
    estimator's: ``gumbel-softmax``, ``straight-through`` or ``score`` (leave-one-out baseline)."""
    t = _torch()
    F = t.nn.functional
    k, c = cfg["latent_dim"], cfg["categories"]

    def loss(p, y, g0):
        n, samples = g0.shape[0], g0.shape[1]
        eta = mlp(p, "encoder", len(cfg["encoder_hidden"]), ["logits"], cfg["activation"],
                  y)["logits"]
        eta = eta.reshape(n, k, c)
        log_pi = F.log_softmax(eta, dim=-1)
        z = eta[:, None] + g0
        hard = F.one_hot(z.argmax(-1), c).to(t.float64)
        relaxed = F.softmax(z / temperature, dim=-1) if estimator != "score" else None
        if estimator == "gumbel-softmax":
            x = relaxed
        elif estimator == "straight-through":
            x = hard + relaxed - relaxed.detach()
        else:
            x = hard
        dec = mlp(p, "decoder", len(cfg["decoder_hidden"]), decoder_heads(cfg), cfg["activation"],
                  x.reshape(n, samples, k * c))
        f = surprisal(cfg, dec, y[:, None, :], p)
        if kl == "relaxed":
            s_p = temperature if prior_temperature is None else prior_temperature
            log_q = _relaxed_log_prob(temperature, eta[:, None].expand(n, samples, k, c), relaxed)
            log_p = _relaxed_log_prob(s_p, t.zeros_like(relaxed), relaxed)
            kl_per = (log_q - log_p).sum(-1).mean(1)
        else:
            kl_per = (log_pi.exp() * (log_pi + np.log(c))).sum((-1, -2))
        rec = f.mean(1)
        total = (kl_per + rec).sum()
        scale = 1.0 / n if reduction == "mean" else 1.0
        out = total * scale
        if estimator == "score":
            f_d = f.detach()
            baseline = (f_d.sum(1, keepdim=True) - f_d) / (samples - 1)
            log_q_c = (hard * log_pi[:, None]).sum((-1, -2))
            surrogate = (scale / samples) * ((f_d - baseline) * log_q_c).sum()
            out = out + surrogate - surrogate.detach()
        return out, kl_per, rec

    return loss


def grads(cfg, params: dict, y, g0, estimator, temperature=None, reduction="mean", kl="analytic",
          prior_temperature=None):
    """Loss, KL/reconstruction per datum and autograd gradients, all as NumPy float64."""
    t = _torch()
    p = {k: t.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k,
         v in params.items()}
    loss, kl_per, rec = loss_fn(cfg, estimator, temperature, reduction, kl, prior_temperature)(
        p, t.tensor(np.asarray(y, dtype=np.float64)), t.tensor(np.asarray(g0, dtype=np.float64)))
    loss.backward()
    return (float(loss.detach()), kl_per.detach().numpy(), rec.detach().numpy(),
            {k: v.grad.numpy() for k, v in p.items()})


def exact_loss(cfg, params: dict, y, reduction="mean"):
    """The expected loss under the categorical posterior by enumerating all ``C^K`` one-hot
    configurations: ``KL + Σ_c q(c|y) f(c, y)``, and its exact gradient by autograd."""
    t = _torch()
    F = t.nn.functional
    k, c = cfg["latent_dim"], cfg["categories"]
    p = {name: t.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for name,
         v in params.items()}
    yt = t.tensor(np.asarray(y, dtype=np.float64))
    n = yt.shape[0]
    eta = mlp(p, "encoder", len(cfg["encoder_hidden"]), ["logits"], cfg["activation"], yt)["logits"]
    log_pi = F.log_softmax(eta.reshape(n, k, c), dim=-1)
    configs = t.cartesian_prod(*[t.arange(c)] * k).reshape(-1, k)          # (C^K, K)
    onehots = F.one_hot(configs, c).to(t.float64)                          # (C^K, K, C)
    log_q = (onehots[None] * log_pi[:, None]).sum((-1, -2))                # (N, C^K)
    dec = mlp(p, "decoder", len(cfg["decoder_hidden"]), decoder_heads(cfg), cfg["activation"],
              onehots.reshape(1, -1, k * c).expand(n, -1, -1))
    f = surprisal(cfg, dec, yt[:, None, :], p)                             # (N, C^K)
    kl_per = (log_pi.exp() * (log_pi + np.log(c))).sum((-1, -2))
    total = (kl_per + (log_q.exp() * f).sum(1)).sum()
    loss = total / n if reduction == "mean" else total
    loss.backward()
    log_marginal = t.logsumexp(-f - k * np.log(c), dim=1)                  # log p(y) exactly
    return float(loss.detach()), {name: v.grad.numpy() for name, v in p.items()}, \
        log_marginal.detach().numpy()
