"""PyTorch twins of the models of claims 9 and 10, written from the papers, not from refvae.

- pytorch/examples' ``vae/main.py``: 784-400-20, ReLU, Bernoulli decoder on greyscale MNIST, loss
  summed over the batch (binary cross-entropy plus KL), Adam 1e-3, batch 128; its test loss is
  the one-sample negative ELBO summed over the test set and divided by its size.
- Kingma & Welling (2014), Frey Face: tanh, 200 hidden units, a Gaussian decoder with a mean and
  a log-variance per pixel (their appendix C.2), Adagrad, minibatch 100.

The layers are ``nn.Linear`` modules named like refvae's parameters (``encoder.0``,
``encoder.mean``, ``encoder.logvar``, ``decoder.0``, ``decoder.out``, ``decoder.logvar``), so
``state_dict()`` has refvae's names and layout: a twin starts either from torch's own
initialisation (an independent run) or from refvae's initial parameters. Densities and KL come
from ``torch.distributions``; gradients from autograd. torch is imported lazily, so that the claims
can report the refvae side (and skip the comparison) where it is absent.
"""
from __future__ import annotations

import numpy as np


def torch_or_none():
    """The ``torch`` module, or ``None`` when it is not installed."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    return torch


def _activation(name: str):
    torch = torch_or_none()
    return {"relu": torch.relu, "tanh": torch.tanh}[name]


def make_twin(data_dim: int, latent_dim: int, hidden: int, activation: str, emission: str,
              dtype=None, seed: int | None = None):
    """A one-hidden-layer VAE (encoder and decoder) as an ``nn.Module``; ``seed`` seeds torch's
    default initialisation (``nn.Linear``: Kaiming-uniform weights, uniform biases)."""
    torch = torch_or_none()
    nn, dist = torch.nn, torch.distributions
    dtype = dtype or torch.float64
    act = _activation(activation)
    if emission not in ("bernoulli", "gaussian_diag"):
        raise ValueError(f"the twin has no {emission!r} emission")

    class TwinVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.ModuleDict({"0": nn.Linear(data_dim, hidden), "mean": nn.Linear(hidden, latent_dim),
                                          "logvar": nn.Linear(hidden, latent_dim)})
            dec = {"0": nn.Linear(latent_dim, hidden), "out": nn.Linear(hidden, data_dim)}
            if emission == "gaussian_diag":
                dec["logvar"] = nn.Linear(hidden, data_dim)
            self.decoder = nn.ModuleDict(dec)

        def encode(self, y):
            h = act(self.encoder["0"](y))
            return self.encoder["mean"](h), self.encoder["logvar"](h)

        def surprisal(self, x, y):
            """``−log p(y|x)`` summed over the D pixels. Bernoulli: pytorch/examples' binary
            cross-entropy ``−[y log p + (1 − y) log(1 − p)]`` (greyscale targets allowed), from
            logits; Gaussian: ``torch.distributions.Normal`` with the decoder's log-variance."""
            h = act(self.decoder["0"](x))
            if emission == "bernoulli":
                return nn.functional.binary_cross_entropy_with_logits(self.decoder["out"](h), y,
                                                                      reduction="none").sum(-1)
            std = (0.5 * self.decoder["logvar"](h)).exp()
            return -dist.Normal(self.decoder["out"](h), std).log_prob(y).sum(-1)

        def neg_elbo(self, y, eps):
            """Per datum: KL(q(x|y) || N(0, I)) and ``−log p(y|x)`` at ``x = μ + σ ε`` (one ε per datum)."""
            mu, logvar = self.encode(y)
            std = (0.5 * logvar).exp()
            q = dist.Normal(mu, std)
            kl = dist.kl_divergence(q, dist.Normal(torch.zeros_like(mu), torch.ones_like(std))).sum(-1)
            return kl, self.surprisal(mu + std * eps, y)

    if seed is not None:
        torch.manual_seed(seed)
    return TwinVAE().to(dtype)


def load_refvae_params(twin, params: dict) -> None:
    """Copy refvae's parameters (host arrays) into the twin: the names and layouts are the same."""
    torch = torch_or_none()
    state = twin.state_dict()
    missing = sorted(set(state) ^ set(params))
    if missing:
        raise KeyError(f"twin and refvae parameter names differ: {missing}")
    twin.load_state_dict({k: torch.as_tensor(np.asarray(params[k]), dtype=state[k].dtype) for k in state})


def state_numpy(twin) -> dict:
    return {k: v.detach().cpu().double().numpy() for k, v in twin.state_dict().items()}


def mean_neg_elbo(twin, y, eps) -> float:
    """The one-sample negative ELBO summed over ``y`` and divided by its size (pytorch/examples'
    test loss), with the given noise ``eps`` ``(N, K)``."""
    torch = torch_or_none()
    with torch.no_grad():
        kl, rec = twin.neg_elbo(y, eps)
    return float((kl + rec).sum()) / y.shape[0]


def fit_examples(twin, y_train, y_test, epochs: int, batch_size: int = 128, lr: float = 1e-3,
                 seed: int = 0) -> list[float]:
    """pytorch/examples' training loop: shuffle each epoch, summed loss, Adam; after each epoch the
    test loss (fresh noise). Returns the test loss per epoch. Its own ``torch.Generator``."""
    torch = torch_or_none()
    gen = torch.Generator().manual_seed(seed)
    dtype = next(twin.parameters()).dtype
    y_train = torch.as_tensor(y_train, dtype=dtype)
    y_test = torch.as_tensor(y_test, dtype=dtype)
    k = twin.encoder["mean"].out_features
    opt = torch.optim.Adam(twin.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        for idx in torch.randperm(len(y_train), generator=gen).split(batch_size):
            yb = y_train[idx]
            kl, rec = twin.neg_elbo(yb, torch.randn(len(idx), k, generator=gen, dtype=dtype))
            opt.zero_grad()
            (kl + rec).sum().backward()
            opt.step()
        losses.append(mean_neg_elbo(twin, y_test, torch.randn(len(y_test), k, generator=gen, dtype=dtype)))
    return losses


def grads_at(twin, params: dict, y, eps):
    """Autograd at refvae's parameters: load ``params`` into ``twin``, return the batch-mean loss and
    the gradient of every parameter (host arrays under refvae's names). ``eps`` is refvae's
    ``(B, 1, K)`` noise: one draw per datum."""
    torch = torch_or_none()
    load_refvae_params(twin, params)
    dtype = next(twin.parameters()).dtype
    kl, rec = twin.neg_elbo(torch.as_tensor(y, dtype=dtype), torch.as_tensor(eps, dtype=dtype).reshape(len(y), -1))
    loss = (kl + rec).mean()
    twin.zero_grad()
    loss.backward()
    return float(loss.detach()), {k: v.grad.detach().numpy() for k, v in twin.named_parameters()}


class PlanTrainer:
    """Steps a twin on given minibatches and noise (the ones refvae gets) with a ``torch.optim``
    optimizer and the batch mean of the loss, as refvae's ``loss_and_grads`` does."""

    def __init__(self, twin, optimizer: str, lr: float):
        torch = torch_or_none()
        self.twin = twin
        self.dtype = next(twin.parameters()).dtype
        self.opt = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}[optimizer](twin.parameters(), lr=lr)

    def step(self, y, eps) -> float:
        torch = torch_or_none()
        kl, rec = self.twin.neg_elbo(torch.as_tensor(y, dtype=self.dtype),
                                     torch.as_tensor(eps, dtype=self.dtype).reshape(len(y), -1))
        loss = (kl + rec).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def bound(self, y, eps) -> float:
        """The one-sample lower bound per datum, ``−mean(KL + f)``, at ``eps`` ``(N, 1, K)``."""
        torch = torch_or_none()
        with torch.no_grad():
            kl, rec = self.twin.neg_elbo(torch.as_tensor(y, dtype=self.dtype),
                                         torch.as_tensor(eps, dtype=self.dtype).reshape(len(y), -1))
        return -float((kl + rec).mean())
