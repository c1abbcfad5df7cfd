"""The PyTorch peer of ``refvae bench``: the same VAE step (encoder, reparameterized sample,
decoder, Bernoulli surprisal + closed-form KL, backward, Adam) written the usual PyTorch way.

Loaded by file path from ``refvae/bench.py`` so that no autograd framework is imported inside
``refvae/``. ``make_step`` returns ``(step, synchronize)``.
"""
from __future__ import annotations

import torch


class _PeerVAE(torch.nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        d, k = config["data_dim"], config["latent_dim"]
        enc = [d, *config["encoder_hidden"]]
        dec = [k, *config["decoder_hidden"]]
        self.enc = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(enc[:-1], enc[1:]))
        self.mean = torch.nn.Linear(enc[-1], k)
        self.logvar = torch.nn.Linear(enc[-1], k)
        self.dec = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dec[:-1], dec[1:]))
        self.out = torch.nn.Linear(dec[-1], d)

    def loss(self, y, eps):
        h = y
        for layer in self.enc:
            h = torch.relu(layer(h))
        mu, lv = self.mean(h), self.logvar(h)
        x = mu + (0.5 * lv).exp() * eps
        for layer in self.dec:
            x = torch.relu(layer(x))
        logits = self.out(x)
        rec = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        kl = 0.5 * (lv.exp() + mu ** 2 - 1 - lv).sum()
        return (rec + kl) / y.shape[0]


def make_step(config: dict, batch: int, dtype: str = "float32", device: str = "cpu", samples: int = 1,
              threads: int | None = None):
    """``threads``: PyTorch's intra-op CPU threads (default: PyTorch's own choice)."""
    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    model = _PeerVAE(config).to(device=device, dtype=dt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.rand(batch, config["data_dim"], device=device, dtype=dt)

    def step():
        opt.zero_grad(set_to_none=True)
        eps = torch.randn(batch, config["latent_dim"], device=device, dtype=dt)
        model.loss(y, eps).backward()
        opt.step()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return step, sync
