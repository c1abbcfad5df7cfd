"""Moved to :mod:`refvae.math.latent.flow`; this old module path stays importable (the same module object)."""
import sys

from ..math.latent import flow as _moved

sys.modules[__name__] = _moved
