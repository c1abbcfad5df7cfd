"""Moved to :mod:`refvae.fast.parallel`; this name stays for existing imports."""
from .fast.parallel import Workers, loss_and_grads  # noqa: F401
