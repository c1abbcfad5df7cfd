"""Shared fixtures: computational tests run once per backend.

``bk`` is parametrized over NumPy (float64), the strict CuPy stand-in (``strict``: CuPy's
behaviour on NumPy, see ``tests/strict_cupy``) and real CuPy (float64), the last skipping cleanly
when CuPy or a GPU is absent (failing instead when ``REFVAE_REQUIRE_CUPY=1``, as
``validation/gpu_check.sh`` sets). Tests that need PyTorch use
``torch = pytest.importorskip("torch")``.
"""
import os
import sys

import pytest

import strict_cupy  # imported eagerly: an error in the stand-in fails here, never as a skip
from refvae import backend as _backend
from refvae.backend import get_backend
from refvae.errors import BackendError

BACKEND_PARAMS = ["numpy", "strict", "cupy"]


# ----- the fast default selection and a short summary of the skips --------------------------
def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="run the whole suite: also the tests marked slow (CI runs it so)")


# Whole modules that are slow: end-to-end training in processes, kill loops, fuzzing.
SLOW_MODULES = {"test_kill_during_training", "test_fuzz_cli", "test_fuzz_readers",
                "test_on_strict_cupy", "test_mutations"}


def pytest_collection_modifyitems(config, items):
    """Without ``--full`` (or an explicit ``-m``), the tests marked ``slow`` (and those of
    :data:`SLOW_MODULES`) are deselected."""
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    if config.getoption("--full") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config._refvae_slow = len(slow)


def pytest_terminal_summary(terminalreporter, config):
    """One line per reason for the skips (``-rs`` lists every test), and the way to the slow
    ones."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        if reason.startswith("CuPy backend unavailable"):
            reason = "CuPy backend unavailable (no CuPy or no GPU here)"
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"skipped {count}: {reason}")
    slow = getattr(config, "_refvae_slow", 0)
    if slow:
        terminalreporter.write_line(f"deselected {slow} slow test(s); run the whole suite with "
                                    "--full (as CI does)")


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
    after the test)."""
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
