"""Moved to :mod:`refvae.math.estimators`; this old module path stays importable (the same module object)."""
import sys

from .math import estimators as _moved

sys.modules[__name__] = _moved
