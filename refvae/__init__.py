"""refvae: reference variational autoencoders with every gradient derived by hand.

NumPy on the CPU, CuPy on the GPU, through one backend seam (:mod:`refvae.backend`). The
mathematics is section 8.2 of the chapter (:mod:`refvae.math`), derived in ``docs/DERIVATIONS.md``.
What a user reaches for first is here: the model (:class:`VAE`, :class:`VAEConfig`), the noise
(:class:`NoiseSource`), the backend (:func:`get_backend`), the error types, and the
finite-difference checks (:func:`check_gradients`, :func:`assert_gradients`). The oracle that
checks another implementation is :mod:`refvae.oracle`.
"""
from .backend import Backend, NoiseSource, available_backends, get_backend
from .errors import (BackendError, CheckpointError, ConfigError, DataError, GradcheckError,
                     NonFiniteError, RefvaeError, ShapeError)
from .math.config import VAEConfig
from .math.vae import VAE
from .gradcheck import assert_gradients, check_gradients

__version__ = "0.1.0"

__all__ = [
    "VAE", "VAEConfig", "Backend", "NoiseSource", "available_backends", "get_backend",
    "check_gradients", "assert_gradients",
    "RefvaeError", "ConfigError", "ShapeError", "DataError", "CheckpointError", "BackendError",
    "NonFiniteError", "GradcheckError", "__version__",
]
