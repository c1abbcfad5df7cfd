"""Moved to :mod:`refvae.math.objectives`; this old module path stays importable (the same module object)."""
import sys

from .math import objectives as _moved

sys.modules[__name__] = _moved
