"""Central finite differences for gradients and Hessians, with readable mismatch reports.

Public and meant for users' own code as much as for refvae's tests::

    from refvae import assert_gradients
    assert_gradients(loss_fn, params, my_grads)          # raises GradcheckError with a table

``loss_fn`` takes a dict of arrays (the parameters) and returns a scalar. Differences are taken
in float64: every array is copied to float64 before it is perturbed, so a float32 function is
evaluated on float64 inputs (it may cast them back; the tolerances for the *analytic* dtype
account for that). Entries pass when ``|analytic − numeric| ≤ atol + rtol·|numeric|``.

A finite-difference check confirms that code differentiates the function it computes. It cannot
catch a self-consistent mistake in the function itself (a standard deviation used where a variance
was meant): pair it with a closed form or an independent engine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .backend import array_module, to_host
from .errors import ConfigError, DataError, GradcheckError, ShapeError, name_mismatch
from .util.budget import check as check_budget
from .util.checked import checked

# Default step and tolerances by the dtype of the analytic derivative. float64: the central
# difference error is O(eps²·f''') + O(ulp·|f|/eps) ≈ 1e-10 relative at eps = 1e-6; float32
# analytic values carry ~1e-7 relative rounding through deep sums, hence the looser band.
TOLERANCES = {
    "float64": {"eps": 1e-6, "rtol": 1e-6, "atol": 1e-8, "hess_eps": 1e-5, "hess_rtol": 1e-5,
                "hess_atol": 1e-7},
    "float32": {"eps": 1e-6, "rtol": 2e-3, "atol": 1e-4, "hess_eps": 1e-5, "hess_rtol": 1e-2,
                "hess_atol": 1e-3},
}


def tolerances_for(dtype) -> dict:
    """The default ``eps``/``rtol``/``atol`` for analytic derivatives of this dtype."""
    name = getattr(dtype, "name", str(dtype))
    return TOLERANCES.get(name, TOLERANCES["float64"])


@dataclass
class TensorCheck:
    """One tensor's comparison: errors, pass/fail, and the worst entries."""

    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    passed: bool
    worst: list = field(default_factory=list)  # (index, analytic, numeric)
    # max |a − n| / (atol + rtol·|n|): the error in units of the tolerance, ≤ 1 where it passes
    of_tol: float = 0.0
    # max |a − n| over the entries whose reference n is exactly 0 (no relative error there)
    abs_at_zero: float = 0.0


@dataclass
class CheckList:
    """Per-tensor checks with the tolerances they were judged by (gradcheck's and the oracle's
    reports both are one)."""

    checks: list
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        """Every tensor agrees, and at least one entry was compared (a check of nothing fails)."""
        return self.checked > 0 and all(c.passed for c in self.checks)

    @property
    def checked(self) -> int:
        """How many entries the tensors hold together."""
        return sum(math.prod(c.shape) for c in self.checks)

    def failures(self) -> list:
        return [c for c in self.checks if not c.passed]


@dataclass
class GradcheckReport(CheckList):
    """All tensors of one check; ``str(report)`` is the table printed on failure."""

    eps: float = 0.0
    title: str = "gradient check"

    def __str__(self) -> str:
        head = (f"{self.title}: {'PASS' if self.passed else 'FAIL'} (central differences, "
                f"eps={self.eps:g}; "
                f"pass when |a−n| ≤ {self.atol:g} + {self.rtol:g}·|n|)"
                + ("; nothing was checked (no entries)" if not self.checked else ""))
        return "\n".join([head] + table_lines(self.checks, ("analytic", "numeric")))


def table_lines(checks: list, labels=("analytic", "numeric")) -> list[str]:
    """One row per :class:`TensorCheck` (shape, max abs and rel error, ok/FAIL), then the worst
    entries of each failing tensor as ``index: <labels[0]> vs <labels[1]>``. Shared by gradcheck's
    and the oracle's reports. The relative error is taken over the entries whose reference is not
    0; where it is 0 the absolute error is shown apart, and ``err/tol`` (≤ 1 passes) is the error
    in units of the tolerance the row was judged by (float32's for a float32 model)."""
    width = max([len(c.name) for c in checks] + [6])
    lines = [f"{'tensor':<{width}}  {'shape':<14} {'max abs err':>12} {'max rel err':>12} "
             f"{'err/tol':>9}  result"]
    for c in checks:
        zero = f"  (abs err {c.abs_at_zero:.3e} where the reference is 0)" if c.abs_at_zero else ""
        lines.append(f"{c.name:<{width}}  {str(c.shape):<14} {c.max_abs:12.3e} {c.max_rel:12.3e} "
                     f"{c.of_tol:9.2g}  {'ok' if c.passed else 'FAIL'}{zero}")
    for c in checks:
        if not c.passed:
            lines.append(f"worst entries of {c.name} (index: {labels[0]} vs {labels[1]}):")
            for idx, a, n in c.worst:
                lines.append(f"  {idx}: {a:.10g} vs {n:.10g}  (abs err {abs(a - n):.3e})")
    return lines


def compare_arrays(name, analytic, numeric, rtol, atol, n_worst: int = 5) -> TensorCheck:
    """Compare two arrays entrywise on the host (device arrays are copied there first: the
    report's indices and numbers are host values); used by gradcheck and by the oracle's reports."""
    a = np.asarray(to_host(analytic), dtype=float)
    n = np.asarray(to_host(numeric), dtype=float)
    if a.shape != n.shape:
        raise ShapeError(f"{name}: analytic shape {a.shape} differs from numeric shape {n.shape}")
    if a.size == 0:
        return TensorCheck(name, a.shape, 0.0, 0.0, True)
    err = np.abs(a - n)
    tol = atol + rtol * np.abs(n)
    excess = np.nan_to_num(err - tol, nan=np.inf)  # NaN is the worst
    bad = excess > 0
    zero = n == 0
    rel = err[~zero] / np.abs(n[~zero])
    at_zero = err[zero]
    order = [int(j) for j in np.argsort(excess.ravel())[::-1][:n_worst]]
    if bool(bad.any()):  # list only failing entries when there are any
        order = [j for j in order if bool(excess.ravel()[j] > 0)]
    worst = [(tuple(int(i) for i in np.unravel_index(int(j), a.shape)), float(a.ravel()[j]),
              float(n.ravel()[j])) for j in order]
    with np.errstate(divide="ignore", invalid="ignore"):
        of_tol = np.where(err == 0, 0.0, err / tol)      # 0 tolerance: any error is inf
    return TensorCheck(name, tuple(a.shape), _nanmax(np, err),
                       _nanmax(np, rel) if rel.size else 0.0, not bool(bad.any()), worst,
                       _nanmax(np, np.nan_to_num(of_tol, nan=np.inf)),
                       _nanmax(np, at_zero) if at_zero.size else 0.0)


def _nanmax(xp, a) -> float:
    return float("nan") if bool(xp.isnan(a).any()) else float(a.max())


def _as_float64(params: dict) -> dict:
    return {k: array_module(v).array(v, dtype="float64") for k, v in params.items()}


def _arrays(d, what: str) -> dict:
    """``d`` (a dict of name → array of real numbers) with its values as arrays, or a one-line
    refvae error naming ``what`` and the entry."""
    if not isinstance(d, dict):
        raise ShapeError(f"{what} must be a dict of name → array, got {type(d).__name__}; pass "
                         "one")
    out = {}
    for k, v in d.items():
        if not isinstance(k, str):
            raise ShapeError(f"{what} has a name {k!r} that is not a string; name every tensor")
        try:
            a = v if hasattr(v, "__array__") and hasattr(v, "dtype") else np.asarray(v)
            kind = np.dtype(a.dtype).kind
        except (TypeError, ValueError):
            kind = "O"
        if kind not in "biuf":
            raise DataError(f"{what} {k!r} is not an array of real numbers; pass numbers")
        out[k] = a
    return out


def _value(f: Callable, p: dict) -> float:
    """``f(p)`` as a float, or a DataError saying what the function returned instead."""
    try:
        return float(f(p))
    except (TypeError, ValueError) as exc:
        raise DataError(f"the function checked must return a real scalar ({exc}); return one "
                        "number") from None


def _check_setup(f, params, analytic, mode, n_directions, eps, rtol, atol, seed):
    if not callable(f):
        raise ConfigError(f"the function checked must be callable, got {type(f).__name__}")
    params, analytic = _arrays(params, "params"), _arrays(analytic, "analytic gradients")
    missing = [k for k in params if k not in analytic]
    extra = [k for k in analytic if k not in params]
    if missing or extra:  # a wrong gradient under a name params lacks must not pass unseen
        raise ShapeError(f"analytic gradients do not match params: {name_mismatch(missing, extra)}"
                         "; give one gradient per parameter, under the same names")
    if mode not in ("full", "directions"):
        raise ConfigError(f"unknown gradcheck mode {mode!r}; choose 'full' or 'directions'")
    checked(n_directions, "n_directions", integer=True, minimum=1)
    checked(seed, "seed", integer=True, minimum=0)
    checked(eps, "eps", minimum=0, open_min=True, none=True)
    checked(rtol, "rtol", minimum=0, none=True)
    checked(atol, "atol", minimum=0, none=True)
    entries = sum(int(np.prod(np.shape(v))) for v in params.values())
    check_budget("gradcheck's float64 copies of params", 8 * 4 * entries,
                 "check fewer or smaller tensors")
    return params, analytic


def numerical_gradient(f: Callable, params: dict, eps: float = 1e-6, names=None) -> dict:
    """Central differences ``(f(p + eps e_i) − f(p − eps e_i)) / 2eps`` for every entry of the
    named tensors (all by default), in float64. Costs two evaluations per entry."""
    base = _as_float64(params)
    out = {}
    for name in (list(base) if names is None else names):
        arr = base[name]
        grad = array_module(arr).zeros_like(arr)
        flat, gflat = arr.reshape(-1), grad.reshape(-1)
        for i in range(flat.size):
            old = float(flat[i])
            flat[i] = old + eps
            f_plus = _value(f, base)
            flat[i] = old - eps
            f_minus = _value(f, base)
            flat[i] = old
            gflat[i] = (f_plus - f_minus) / (2.0 * eps)
        out[name] = grad
    return out


def check_gradients(f: Callable, params: dict, analytic: dict, *, mode: str = "full",
                    n_directions: int = 6, eps: float | None = None, rtol: float | None = None,
                    atol: float | None = None, seed: int = 0) -> GradcheckReport:
    """Compare ``analytic`` (a dict with the keys of ``params``) with central differences of ``f``.

    ``mode="full"`` differences every entry; ``mode="directions"`` compares directional
    derivatives along ``n_directions`` random unit directions spanning all tensors at once
    (two evaluations per direction: the choice for large models).
    """
    params, analytic = _check_setup(f, params, analytic, mode, n_directions, eps, rtol, atol, seed)
    if not analytic:
        return GradcheckReport([], 0.0, 0.0, 0.0)  # a check of nothing fails (passed is False)
    first = next(iter(analytic.values()))
    tol = tolerances_for(first.dtype)
    eps = tol["eps"] if eps is None else eps
    rtol = tol["rtol"] if rtol is None else rtol
    atol = tol["atol"] if atol is None else atol
    if mode == "full":
        numeric = numerical_gradient(f, params, eps)
        checks = [compare_arrays(k, analytic[k], numeric[k], rtol, atol) for k in params]
        return GradcheckReport(checks, rtol, atol, eps)
    base = _as_float64(params)
    xp = array_module(first)
    rng = xp.random.default_rng(seed) if hasattr(xp.random, "default_rng") else xp.random
    checks = []
    for d in range(n_directions):
        dirs = {k: rng.standard_normal(v.shape) for k, v in base.items()}
        norm = float(sum(float((v * v).sum()) for v in dirs.values())) ** 0.5
        plus = {k: base[k] + eps * dirs[k] / norm for k in base}
        minus = {k: base[k] - eps * dirs[k] / norm for k in base}
        numeric = (_value(f, plus) - _value(f, minus)) / (2.0 * eps)
        exact = sum(float((xp.asarray(analytic[k], dtype=float) * dirs[k]).sum()) for k
                    in base) / norm
        checks.append(compare_arrays(f"direction {d}", xp.asarray([exact]), xp.asarray([numeric]),
                                     rtol, atol))
    return GradcheckReport(checks, rtol, atol, eps, title="directional gradient check")


def assert_gradients(f: Callable, params: dict, analytic: dict, **kwargs) -> GradcheckReport:
    """:func:`check_gradients`, raising :class:`GradcheckError` (an ``AssertionError``) with the
    report when any tensor fails; returns the report when all pass."""
    report = check_gradients(f, params, analytic, **kwargs)
    if not report.passed:
        raise GradcheckError(str(report))
    return report


def numerical_hessian(grad_fn: Callable, x, eps: float = 1e-5):
    """Hessian by central differences of a gradient: ``x`` is ``(*B, K)`` and ``grad_fn(x)``
    returns ``∂f/∂x`` of the same shape, where ``f`` is a sum over the batch rows ``B`` of
    functions of one row each. Column ``k`` of every row's Hessian comes from perturbing
    coordinate ``k`` of all rows at once (valid because rows do not interact): ``2K`` calls.
    Returns ``(*B, K, K)``."""
    xp = array_module(x)
    x = xp.array(x, dtype="float64")
    k = x.shape[-1]
    cols = []
    for j in range(k):
        old = x[..., j].copy()
        x[..., j] = old + eps
        g_plus = xp.asarray(grad_fn(x), dtype=float)
        x[..., j] = old - eps
        g_minus = xp.asarray(grad_fn(x), dtype=float)
        x[..., j] = old
        cols.append((g_plus - g_minus) / (2.0 * eps))
    return xp.stack(cols, axis=-1)


def check_hessian(grad_fn: Callable, x, analytic, *, eps: float | None = None,
                  rtol: float | None = None, atol: float | None = None,
                  name: str = "hessian") -> GradcheckReport:
    """Compare an analytic Hessian — full ``(*B, K, K)`` or its diagonal ``(*B, K)`` — with
    :func:`numerical_hessian` of ``grad_fn`` at ``x``."""
    tol = tolerances_for(analytic.dtype)
    eps = tol["hess_eps"] if eps is None else eps
    rtol = tol["hess_rtol"] if rtol is None else rtol
    atol = tol["hess_atol"] if atol is None else atol
    numeric = numerical_hessian(grad_fn, x, eps)
    if analytic.shape == x.shape:
        numeric = array_module(numeric).diagonal(numeric, axis1=-2, axis2=-1)
    if analytic.shape != numeric.shape:
        raise ShapeError(f"{name}: analytic Hessian has shape {tuple(analytic.shape)}; expected "
                         f"{tuple(numeric.shape)} (full) or {tuple(x.shape)} (diagonal)")
    check = compare_arrays(name, analytic, numeric, rtol, atol)
    return GradcheckReport([check], rtol, atol, eps, title="Hessian check")


def assert_hessian(grad_fn: Callable, x, analytic, **kwargs) -> GradcheckReport:
    """:func:`check_hessian`, raising :class:`GradcheckError` with the report on failure."""
    report = check_hessian(grad_fn, x, analytic, **kwargs)
    if not report.passed:
        raise GradcheckError(str(report))
    return report
