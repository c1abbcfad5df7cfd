"""The model the training path runs: :class:`refvae.math.vae.VAE` with its plain kernels swapped
for the fused ones of :mod:`refvae.fast.kernels` (each proven equal in tests/test_fast_kernels.py).
The oracle and every check of the mathematics keep the plain model."""
from __future__ import annotations

from dataclasses import replace

from ..math.mlp import MLP
from ..math.vae import VAE
from .kernels import FAST_SOFTPLUS, FastBernoulli


def use_fast_kernels(model: VAE) -> VAE:
    """``model`` with the fused Bernoulli emission and softplus activation where it uses them."""
    if model.emission.name == "bernoulli":
        model.emission = FastBernoulli()
    model.encoder, model.decoder = _fast_mlp(model.encoder), _fast_mlp(model.decoder)
    return model


def _fast_mlp(net):
    """An MLP with softplus gets the fused softplus; a Sequential (format 2) runs as it is."""
    if isinstance(net, MLP) and net.activation.name == FAST_SOFTPLUS.name:
        return replace(net, activation=FAST_SOFTPLUS)
    return net


def fast_vae(config, backend="numpy", dtype: str = "float64") -> VAE:
    """``VAE(config, backend, dtype)`` running the fast kernels (the training path's model)."""
    return use_fast_kernels(VAE(config, backend, dtype))
