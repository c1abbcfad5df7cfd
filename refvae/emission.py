"""Moved to :mod:`refvae.math.emission`; this old module path stays importable (the same module object)."""
import sys

from .math import emission as _moved

sys.modules[__name__] = _moved
