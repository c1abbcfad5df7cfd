"""Moved to :mod:`refvae.math.latent`; this path re-exports the public names."""
from ..math.latent import *  # noqa: F401,F403
from ..math.latent import __all__  # noqa: F401
