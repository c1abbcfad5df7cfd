"""Shared fixtures: computational tests run once per backend.

``bk`` is parametrized over NumPy (float64), the strict CuPy stand-in (``strict``: CuPy's
behaviour on NumPy, see ``tests/strict_cupy``) and real CuPy (float64), the last skipping cleanly
when CuPy or a GPU is absent (failing instead when ``REFVAE_REQUIRE_CUPY=1``, as
``validation/gpu_check.sh`` sets). Tests that need PyTorch use
``torch = pytest.importorskip("torch")``.
"""
import functools
import os
import sys

import numpy as np

import pytest

import strict_cupy  # imported eagerly: an error in the stand-in fails here, never as a skip
from refvae import backend as _backend
from refvae.fast import optim as _fast_optim, step as _fast_step  # noqa: F401 - their kernels
from refvae.fast.elementwise import KERNELS
from refvae.backend import get_backend
from refvae.errors import BackendError

BACKEND_PARAMS = ["numpy", "strict", "cupy"]


def _cupy_or_skip(dtype: str = "float64"):
    try:
        return get_backend("cupy", dtype)
    except BackendError as exc:
        if os.environ.get("REFVAE_REQUIRE_CUPY") == "1":
            pytest.fail(f"REFVAE_REQUIRE_CUPY=1 but the CuPy backend is unavailable: {exc}")
        pytest.skip(f"CuPy backend unavailable: {exc}")


def use_strict_cupy(monkeypatch):
    """For one test: ``import cupy`` / ``cupyx.scipy.special`` give the strict stand-in and
    ``get_backend("cupy", ...)`` builds its backend on it (the real CuPy, if any, is restored
    after the test). Each elementwise kernel of :mod:`refvae.fast` runs there as its NumPy
    formula (the stand-in cannot compile CUDA C)."""
    for kernel in KERNELS.values():
        strict_cupy.register(kernel.name, kernel.cuda, functools.partial(kernel.numpy, np))
    strict_cupy.register(_backend.PROBE_NAME, _backend.PROBE_CUDA, lambda x, y: np.add(x, x, out=y))
    for name, module in strict_cupy.MODULES.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(_backend, "_CACHE", {k: v for k, v in _backend._CACHE.items() if k[0] != "cupy"})


def backend_for(request, monkeypatch, dtype: str = "float64"):
    """The backend a ``numpy``/``strict``/``cupy`` fixture parameter names."""
    if request.param == "strict":
        use_strict_cupy(monkeypatch)
        return get_backend("cupy", dtype)
    if request.param == "cupy":
        return _cupy_or_skip(dtype)
    return get_backend("numpy", dtype)


@pytest.fixture(params=BACKEND_PARAMS)
def bk(request, monkeypatch):
    """The backend under test (float64)."""
    return backend_for(request, monkeypatch)


@pytest.fixture(params=BACKEND_PARAMS)
def bk32(request, monkeypatch):
    """The backend under test in float32."""
    return backend_for(request, monkeypatch, "float32")


@pytest.fixture
def strict_cupy_bk(monkeypatch):
    """The strict CuPy stand-in's backend (float64), for end-to-end tests on it alone."""
    use_strict_cupy(monkeypatch)
    return get_backend("cupy", "float64")


@pytest.fixture
def np_bk():
    """NumPy float64, for tests that are about host-side logic only."""
    return get_backend("numpy", "float64")
