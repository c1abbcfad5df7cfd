"""refvae: reference variational autoencoders with every gradient derived by hand.

NumPy on the CPU, CuPy on the GPU, through one backend seam (:mod:`refvae.backend`). The
mathematics is section 8.2 of the chapter (:mod:`refvae.math`), derived in ``docs/DERIVATIONS.md``.
"""
from .backend import Backend, NoiseSource, available_backends, get_backend
from .errors import (BackendError, CheckpointError, ConfigError, DataError, GradcheckError,
                     NonFiniteError, RefvaeError, ShapeError)

__version__ = "0.1.0"

__all__ = [
    "Backend", "NoiseSource", "available_backends", "get_backend",
    "RefvaeError", "ConfigError", "ShapeError", "DataError", "CheckpointError", "BackendError",
    "NonFiniteError", "GradcheckError", "__version__",
]
