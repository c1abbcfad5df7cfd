"""Moved to :mod:`refvae.math.latent.categorical`; this old module path stays importable (the same module object)."""
import sys

from ..math.latent import categorical as _moved

sys.modules[__name__] = _moved
