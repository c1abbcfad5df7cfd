"""Moved to :mod:`refvae.math.vae`; this old module path stays importable (the same module object)."""
import sys

from .math import vae as _moved

sys.modules[__name__] = _moved
