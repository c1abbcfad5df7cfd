"""The independent PyTorch witness: refvae's models written again with torch operations and
differentiated by ``torch.autograd``, sharing nothing with refvae's code but the config dict and
the parameter names and layouts (docs/ORACLE.md). The tests, the validation claims and
``refvae bench`` compare refvae with it.

* :mod:`refvae.witness.functional` — every Gaussian recognition model (diagonal, full covariance,
  planar flows) and emission as a loss of a dict of tensors; losses and autograd gradients as NumPy.
* :mod:`refvae.witness.categorical` — the categorical VAE (Gumbel-softmax, straight-through,
  score) and its exact loss by enumeration.
* :mod:`refvae.witness.modules` — the same forward pass as an ``nn.Module`` (torch's own
  initialisation, ``torch.optim`` training loops) and the step ``refvae bench`` times.

torch is optional: these modules import it only inside their functions, so importing them never
needs it; :func:`torch_or_none` says whether it is there.
"""
from __future__ import annotations


def torch_or_none():
    """The ``torch`` module, or ``None`` when it is not installed."""
    try:
        import torch  # noqa: PLC0415 - optional: the witness only
    except ImportError:
        return None
    return torch


def require_torch():
    """The ``torch`` module; a clear ImportError when it is not installed."""
    torch = torch_or_none()
    if torch is None:
        raise ImportError("the PyTorch witness needs torch; install the CPU build, e.g. "
                          "`pip install torch --index-url https://download.pytorch.org/whl/cpu`")
    return torch
