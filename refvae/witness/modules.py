"""The witness as an ``nn.Module``: trained by ``torch.optim``, started from torch's own
initialisation or from refvae's parameters, and the step ``refvae bench`` times.

The layers are ``nn.Linear`` modules named like refvae's parameters (``encoder.0``,
``encoder.mean``, ``encoder.logvar``, ``decoder.0``, ``decoder.out``, ``decoder.logvar``), so
``named_parameters()`` has refvae's names and layouts; the forward pass is the functional witness's
(:func:`refvae.witness.functional.loss_fn`) applied to them. Models used:

- pytorch/examples' ``vae/main.py``: 784-400-20, ReLU, Bernoulli decoder on greyscale MNIST, loss
  summed over the batch, Adam 1e-3, batch 128; its test loss is the one-sample negative ELBO
  summed over the test set and divided by its size (:func:`fit_examples`).
- Kingma & Welling (2014), Frey Face: tanh, 200 hidden units, a Gaussian decoder with a mean and a
  log-variance per pixel (their appendix C.2), Adagrad, minibatch 100 (:class:`PlanTrainer`).
"""
from __future__ import annotations

import numpy as np

from . import require_torch as _torch
from .functional import decoder_heads, loss_fn

EMISSIONS = ("bernoulli", "gaussian_diag")


def make_vae(config: dict, dtype=None, seed: int | None = None):
    """A diagonal-Gaussian VAE with refvae's ``config`` (``data_dim``, ``latent_dim``,
    ``encoder_hidden``, ``decoder_hidden``, ``activation``, ``emission``) as an ``nn.Module``;
    ``seed`` seeds torch's default initialisation (``nn.Linear``: Kaiming-uniform weights, uniform
    biases)."""
    torch = _torch()
    nn = torch.nn
    cfg = {"activation": "relu", "emission": "bernoulli", **config}
    if cfg["emission"] not in EMISSIONS:
        raise ValueError(f"the witness module has no {cfg['emission']!r} emission; use one "
                         f"of {EMISSIONS}")
    d, k = cfg["data_dim"], cfg["latent_dim"]

    def layers(widths, heads: dict) -> "nn.ModuleDict":
        hidden = {str(i): nn.Linear(a, b) for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))}
        return nn.ModuleDict({**hidden,
                              **{name: nn.Linear(widths[-1], out) for name, out in heads.items()}})

    class WitnessVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = cfg
            self.encoder = layers([d, *cfg["encoder_hidden"]], {"mean": k, "logvar": k})
            self.decoder = layers([k, *cfg["decoder_hidden"]], {h: d for h in decoder_heads(cfg)})
            self._loss = loss_fn(cfg)

        def neg_elbo(self, y, eps):
            """Per datum: KL(q(x|y) || N(0, I)) and ``−log p(y|x)`` at ``x = μ + σ ε``,
            averaged over the draws (``eps`` ``(N, K)``: one draw per datum, or ``(N, L, K)``)."""
            eps = eps[:, None, :] if eps.dim() == 2 else eps
            _, kl, rec = self._loss(dict(self.named_parameters()), y, eps)
            return kl, rec

    if seed is not None:
        torch.manual_seed(seed)
    return WitnessVAE().to(dtype or torch.float64)


def make_twin(data_dim: int, latent_dim: int, hidden: int, activation: str, emission: str,
              dtype=None, seed: int | None = None):
    """:func:`make_vae` with one hidden layer of ``hidden`` units in the encoder and the decoder."""
    return make_vae(dict(data_dim=data_dim, latent_dim=latent_dim, encoder_hidden=[hidden],
                         decoder_hidden=[hidden], activation=activation, emission=emission), dtype,
                    seed)


def load_refvae_params(twin, params: dict) -> None:
    """Copy refvae's parameters (host arrays) into the module: the names and layouts are the
    same."""
    torch = _torch()
    state = twin.state_dict()
    missing = sorted(set(state) ^ set(params))
    if missing:
        raise KeyError(f"witness and refvae parameter names differ: {missing}")
    twin.load_state_dict({k: torch.as_tensor(np.asarray(params[k]), dtype=state[k].dtype) for k
                          in state})


def state_numpy(twin) -> dict:
    return {k: v.detach().cpu().double().numpy() for k, v in twin.state_dict().items()}


def _dtype(twin):
    return next(twin.parameters()).dtype


def _as(twin, y, eps):
    """``y`` and refvae's ``(N, 1, K)`` or ``(N, K)`` noise as tensors of the module's dtype."""
    torch = _torch()
    return (torch.as_tensor(y, dtype=_dtype(twin)),
            torch.as_tensor(eps, dtype=_dtype(twin)).reshape(len(y), -1))


def mean_neg_elbo(twin, y, eps) -> float:
    """The one-sample negative ELBO summed over ``y`` and divided by its size (pytorch/examples'
    test loss), with the given noise ``eps``."""
    with _torch().no_grad():
        kl, rec = twin.neg_elbo(*_as(twin, y, eps))
    return float((kl + rec).sum()) / len(y)


def fit_examples(twin, y_train, y_test, epochs: int, batch_size: int = 128, lr: float = 1e-3,
                 seed: int = 0) -> list[float]:
    """pytorch/examples' training loop: shuffle each epoch, summed loss, Adam; after each epoch the
    test loss (fresh noise). Returns the test loss per epoch. Its own ``torch.Generator``."""
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    dtype = _dtype(twin)
    y_train = torch.as_tensor(y_train, dtype=dtype)
    y_test = torch.as_tensor(y_test, dtype=dtype)
    k = twin.encoder["mean"].out_features
    opt = torch.optim.Adam(twin.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        for idx in torch.randperm(len(y_train), generator=gen).split(batch_size):
            kl, rec = twin.neg_elbo(y_train[idx],
                                    torch.randn(len(idx), k, generator=gen, dtype=dtype))
            opt.zero_grad()
            (kl + rec).sum().backward()
            opt.step()
        losses.append(mean_neg_elbo(twin, y_test,
                                    torch.randn(len(y_test), k, generator=gen, dtype=dtype)))
    return losses


def grads_at(twin, params: dict, y, eps):
    """Autograd at refvae's parameters: load ``params`` into the module, return the batch-mean loss
    and the gradient of every parameter (host arrays under refvae's names)."""
    load_refvae_params(twin, params)
    kl, rec = twin.neg_elbo(*_as(twin, y, eps))
    loss = (kl + rec).mean()
    twin.zero_grad()
    loss.backward()
    return float(loss.detach()), {k: v.grad.detach().numpy() for k, v in twin.named_parameters()}


class PlanTrainer:
    """Steps a module on given minibatches and noise (the ones refvae gets) with a ``torch.optim``
    optimizer and the batch mean of the loss, as refvae's ``loss_and_grads`` does."""

    def __init__(self, twin, optimizer: str, lr: float):
        torch = _torch()
        self.twin = twin
        self.opt = {"adagrad": torch.optim.Adagrad,
                    "adam": torch.optim.Adam}[optimizer](twin.parameters(), lr=lr)

    def step(self, y, eps) -> float:
        kl, rec = self.twin.neg_elbo(*_as(self.twin, y, eps))
        loss = (kl + rec).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def bound(self, y, eps) -> float:
        """The one-sample lower bound per datum, ``−mean(KL + f)``."""
        with _torch().no_grad():
            kl, rec = self.twin.neg_elbo(*_as(self.twin, y, eps))
        return -float((kl + rec).mean())


def make_step(config: dict, batch: int, dtype: str = "float32", device: str = "cpu",
              samples: int = 1,
              threads: int | None = None):
    """``refvae bench``'s peer: ``(step, synchronize)`` where ``step`` is one training step (the
    batch-mean loss, backward, Adam 1e-3) of a ReLU Bernoulli VAE of ``config``'s widths on a fixed
    random batch with fresh noise (``samples`` draws per datum). ``threads``: PyTorch's intra-op CPU
    threads (default: its own)."""
    torch = _torch()
    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    model = make_vae({**config, "activation": "relu", "emission": "bernoulli"},
                     seed=0).to(device=device, dtype=dt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.rand(batch, config["data_dim"], device=device, dtype=dt)

    def step():
        opt.zero_grad(set_to_none=True)
        eps = torch.randn(batch, samples, config["latent_dim"], device=device, dtype=dt)
        kl, rec = model.neg_elbo(y, eps)
        ((kl + rec).sum() / batch).backward()
        opt.step()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return step, sync
