"""Moved to :mod:`refvae.math.mlp`; this old module path stays importable (the same module object)."""
import sys

from ..math import mlp as _moved

sys.modules[__name__] = _moved
