"""Moved to :mod:`refvae.math.activations`; this old module path stays importable (the same module object)."""
import sys

from ..math import activations as _moved

sys.modules[__name__] = _moved
