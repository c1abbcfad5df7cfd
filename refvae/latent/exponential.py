"""Moved to :mod:`refvae.math.latent.exponential`; this old module path stays importable (the same module object)."""
import sys

from ..math.latent import exponential as _moved

sys.modules[__name__] = _moved
