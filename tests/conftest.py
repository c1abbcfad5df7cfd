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


# ----- the fast default selection and a short summary of the skips --------------------------
def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="run the whole suite: also the tests marked slow (CI runs it so)")


# Whole modules that are slow: end-to-end training in processes, kill loops, fuzzing.
SLOW_MODULES = {"test_kill_during_training", "test_fuzz_cli", "test_fuzz_readers",
                "test_on_strict_cupy", "test_mutations"}
# Tests (every parameter) of 2.5 s or more on a loaded two-core machine; with these left out the
# default selection takes about two minutes there (README.md, Quick start).
SLOW_TESTS = {
    "test_bench::test_a_row_per_case_with_the_peer_beside_it",
    "test_bonnet_price::test_bonnet_and_price_under_quadrature",
    "test_categorical_cli::test_train_anneals_the_temperature_and_draws_figures",
    "test_categorical_enumeration::"
    "test_true_elbo_and_importance_weighted_bound_with_categorical_proposal",
    "test_cli_gradcheck::test_real_process_unknown_activation_has_no_traceback",
    "test_estimators_closed_form::test_estimator_mean_matches_exact_gradient",
    "test_fast_kernels::test_fast_bernoulli_equals_the_plain_emission",
    "test_fast_kernels::test_log1p_exp_neg_abs_and_softplus_equal_the_plain_functions",
    "test_fast_optim::test_fast_step_is_bit_identical_to_the_plain_rule",
    "test_figures::test_figures_every_writes_snapshots",
    "test_hostile_faults::test_a_fifo_is_refused_at_once_not_read_forever",
    "test_hostile_faults::test_an_out_name_that_is_not_utf8",
    "test_hostile_faults::test_sigterm_prints_one_line_and_leaves_a_resumable_run",
    "test_io::test_sigkill_during_writes_leaves_a_loadable_file",
    "test_newcomer::test_bench_warns_once_about_few_steps_and_not_without_a_ratio",
    "test_newcomer::test_bench_warns_once_when_the_machine_is_busy",
    "test_oracle_check_torch::test_examples_vae_passes_unchanged",
    "test_oracle_check_torch::test_injected_bug_is_named",
    "test_oracle_check_torch::test_state_is_left_as_found",
    "test_oracle_fixes::test_a_closed_pipe_is_not_a_traceback_and_the_status_is_the_comparison",
    "test_oracle_torch::test_readme_exporter_and_compare_command_run",
    "test_oracle_unbiased::test_cubature_is_the_expectation",
    "test_oracle_unbiased::test_enumeration_is_the_expectation_of_the_score_estimator",
    "test_oracle_unbiased::test_gumbel_softmax_is_biased_for_the_hard_elbo",
    "test_oracle_unbiased::test_power_a_bias_of_the_stated_size_is_detected",
    "test_oracle_unbiased::test_score_with_a_baseline_from_its_own_sample_is_flagged",
    "test_oracle_unbiased::test_score_with_leave_one_out_baseline_passes",
    "test_rundir::test_resume_evaluate_sample_need_only_the_run",
}


def pytest_collection_modifyitems(config, items):
    """Without ``--full`` (or an explicit ``-m``), the tests marked ``slow`` (and those of
    :data:`SLOW_MODULES` and :data:`SLOW_TESTS`) are deselected."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in SLOW_MODULES or f"{module}::{item.originalname}" in SLOW_TESTS:
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
    after the test). Each elementwise kernel of :mod:`refvae.fast` runs there as its NumPy
    formula (the stand-in cannot compile CUDA C)."""
    for kernel in KERNELS.values():
        strict_cupy.register(kernel.name, kernel.cuda, functools.partial(kernel.numpy, np))
    strict_cupy.register(_backend.PROBE_NAME, _backend.PROBE_CUDA, lambda x, y: np.add(x, x, out=y))
    for name, module in strict_cupy.MODULES.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(_backend, "_CACHE",
                        {k: v for k, v in _backend._CACHE.items() if k[0] != "cupy"})


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
