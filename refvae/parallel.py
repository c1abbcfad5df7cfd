"""Moved to :mod:`refvae.fast.parallel` (and :func:`usable_cores` to :mod:`refvae.fast.threads`);
these names stay for existing imports."""
from .fast.parallel import Workers, loss_and_grads  # noqa: F401
from .fast.threads import usable_cores  # noqa: F401
