"""Moved to :mod:`refvae.math.latent.gaussian`; this old module path stays importable (the same module object)."""
import sys

from ..math.latent import gaussian as _moved

sys.modules[__name__] = _moved
