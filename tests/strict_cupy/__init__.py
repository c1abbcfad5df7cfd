"""A strict stand-in for CuPy built on NumPy, for the test suite only (not a user backend).

It behaves as CuPy does where CuPy differs from NumPy (see :mod:`strict_cupy.core` and
:mod:`strict_cupy.api`), so that code which would fail on a GPU fails on the CPU too. The
``strict`` parameter of the ``bk`` fixture puts its modules in ``sys.modules`` under the names
``cupy`` and ``cupyx`` for one test, and ``refvae.backend.get_backend("cupy")`` then runs on it.

:data:`STATE` counts device operations (``ops``: kernels and copies), device→host
synchronisations (``syncs``) and, with ``ulps`` > 0 (or the
environment variable ``REFVAE_STRICT_ULPS``), moves inexact results by up to that many units in
the last place, to find tests that depend on NumPy's exact rounding.
"""
from .api import MODULE, MODULES, register
from .core import STATE, ndarray

# How far a GPU's result of one transcendental function (exp, log, tanh, ...) may be from NumPy's,
# in units in the last place: CUDA's math library documents at most 1-2 ulps for these in double
# precision and NumPy's own are within 1. Tests that compare device results with NumPy's (or with
# exact values) per operation allow this much; the suite passes with REFVAE_STRICT_ULPS=3.
DEVICE_ULPS = 3

__all__ = ["DEVICE_ULPS", "MODULE", "MODULES", "STATE", "ndarray", "register"]
