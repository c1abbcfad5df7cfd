"""Moved to :mod:`refvae.math.latent.gaussian_full`; this old module path stays importable (the same module object)."""
import sys

from ..math.latent import gaussian_full as _moved

sys.modules[__name__] = _moved
