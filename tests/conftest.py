"""Shared fixtures: computational tests run once per available backend.

``bk`` is parametrized over NumPy (float64) and CuPy (float64), the CuPy case skipping cleanly
when CuPy or a GPU is absent. Tests that need PyTorch use ``torch = pytest.importorskip("torch")``.
"""
import pytest

from refvae.backend import get_backend
from refvae.errors import BackendError


def _cupy_or_skip():
    try:
        return get_backend("cupy", "float64")
    except BackendError as exc:
        pytest.skip(f"CuPy backend unavailable: {exc}")


@pytest.fixture(params=["numpy", "cupy"])
def bk(request):
    """The backend under test (float64)."""
    if request.param == "cupy":
        return _cupy_or_skip()
    return get_backend("numpy", "float64")


@pytest.fixture
def np_bk():
    """NumPy float64, for tests that are about host-side logic only."""
    return get_backend("numpy", "float64")
