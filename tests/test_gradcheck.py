"""refvae.gradcheck: passes correct derivatives, fails wrong ones with a readable report.

The functions here have gradients and Hessians known in closed form, so the checker itself is
tested, not the MLP.
"""
import numpy as np
import pytest

from refvae.errors import GradcheckError, ShapeError
from refvae.gradcheck import (TOLERANCES, GradcheckReport, assert_gradients, assert_hessian,
                                     check_gradients, check_hessian, compare_arrays,
                                     numerical_gradient, numerical_hessian, tolerances_for)


def _params(bk, dtype=None):
    rng = np.random.default_rng(0)
    return {"layer.weight": bk.asarray(rng.standard_normal((3, 4)), dtype),
            "layer.bias": bk.asarray(rng.standard_normal(3), dtype)}


def _f(bk):
    """f(W, b) = Σ sin(W)·W² + Σ exp(b/2) ... with gradients cos(W)W² + 2W sin(W),
    ½exp(b/2)."""
    xp = bk.xp

    def f(p):
        w, b = p["layer.weight"], p["layer.bias"]
        return float(bk.to_float((xp.sin(w) * w * w).sum() + xp.exp(0.5 * b).sum()))
    return f


def _grad(bk, p):
    xp = bk.xp
    w, b = p["layer.weight"], p["layer.bias"]
    return {"layer.weight": xp.cos(w) * w * w + 2 * w * xp.sin(w),
            "layer.bias": 0.5 * xp.exp(0.5 * b)}


def test_passes_on_correct_gradients(bk):
    p = _params(bk)
    report = assert_gradients(_f(bk), p, _grad(bk, p))
    assert isinstance(report, GradcheckReport) and report.passed
    assert [c.name for c in report.checks] == ["layer.weight", "layer.bias"]
    assert all(c.max_abs < 1e-8 for c in report.checks)
    text = str(report)
    assert "PASS" in text and "FAIL" not in text
    assert "layer.weight" in text and "(3, 4)" in text


def test_numerical_gradient_matches_closed_form(bk):
    p = _params(bk)
    num = numerical_gradient(_f(bk), p)
    exact = _grad(bk, p)
    for k in p:
        np.testing.assert_allclose(bk.to_numpy(num[k]), bk.to_numpy(exact[k]), rtol=1e-8,
                                   atol=1e-9)
    # the parameters are not modified by the perturbations
    p2 = _params(bk)
    for k in p:
        np.testing.assert_array_equal(bk.to_numpy(p[k]), bk.to_numpy(p2[k]))


@pytest.mark.parametrize("name, index", [("layer.weight", (1, 2)), ("layer.bias", (2,))])
def test_fails_on_perturbed_entry_and_names_it(bk, name, index):
    p = _params(bk)
    g = _grad(bk, p)
    g[name][index] += 1e-3
    with pytest.raises(GradcheckError) as info:
        assert_gradients(_f(bk), p, g)
    assert isinstance(info.value, AssertionError)  # pytest shows it as a failed assertion
    msg = str(info.value)
    assert "FAIL" in msg
    assert f"worst entries of {name}" in msg
    assert str(index) in msg
    other = "layer.bias" if name == "layer.weight" else "layer.weight"
    assert f"worst entries of {other}" not in msg  # only the failing tensor is detailed
    report = check_gradients(_f(bk), p, g)
    assert not report.passed
    (bad,) = report.failures()
    assert bad.name == name
    assert [w[0] for w in bad.worst] == [index]  # only the failing entry is listed
    assert abs(bad.worst[0][1] - bad.worst[0][2] - 1e-3) < 1e-7


def test_tiny_perturbation_below_tolerance_passes(bk):
    p = _params(bk)
    g = _grad(bk, p)
    g["layer.bias"][0] += 1e-12
    assert check_gradients(_f(bk), p, g).passed


def test_nan_in_analytic_gradient_fails(np_bk):
    p = _params(np_bk)
    g = _grad(np_bk, p)
    g["layer.weight"][0, 0] = np.nan
    report = check_gradients(_f(np_bk), p, g)
    assert not report.passed
    assert report.failures()[0].worst[0][0] == (0, 0)


def test_missing_analytic_tensor_is_shape_error(np_bk):
    p = _params(np_bk)
    g = _grad(np_bk, p)
    del g["layer.bias"]
    with pytest.raises(ShapeError, match="layer.bias"):
        check_gradients(_f(np_bk), p, g)


def test_shape_mismatch_is_shape_error(np_bk):
    p = _params(np_bk)
    g = _grad(np_bk, p)
    g["layer.bias"] = g["layer.bias"][:2]
    with pytest.raises(ShapeError, match="layer.bias"):
        check_gradients(_f(np_bk), p, g)


# ----------------------------------------------------------------------------------------------
# Directions mode
# ----------------------------------------------------------------------------------------------
def test_directions_mode_passes_on_correct_gradients(bk):
    p = _params(bk)
    report = check_gradients(_f(bk), p, _grad(bk, p), mode="directions", n_directions=5)
    assert report.passed
    assert len(report.checks) == 5
    assert "directional" in str(report)


def test_directions_mode_fails_on_wrong_gradient(bk):
    p = _params(bk)
    g = _grad(bk, p)
    g["layer.weight"][2, 3] += 0.05
    with pytest.raises(GradcheckError, match="direction"):
        assert_gradients(_f(bk), p, g, mode="directions", n_directions=4)


def test_directions_mode_is_seeded(np_bk):
    p = _params(np_bk)
    g = _grad(np_bk, p)
    g["layer.weight"][0, 1] += 0.05
    a = check_gradients(_f(np_bk), p, g, mode="directions", seed=3)
    b = check_gradients(_f(np_bk), p, g, mode="directions", seed=3)
    assert [c.max_abs for c in a.checks] == [c.max_abs for c in b.checks]


def test_unknown_mode_is_value_error(np_bk):
    p = _params(np_bk)
    with pytest.raises(ValueError, match="unknown gradcheck mode"):
        check_gradients(_f(np_bk), p, _grad(np_bk, p), mode="random")


# ----------------------------------------------------------------------------------------------
# Hessians
# ----------------------------------------------------------------------------------------------
A = np.array([[2.0, 0.5, -0.3], [0.5, 1.0, 0.2], [-0.3, 0.2, 3.0]])


def _row_grad(x):
    """f(x) = Σ_rows ½ xᵀAx + Σ sin x: ∂f/∂x = Ax + cos x, H = A − diag(sin x) per
    row."""
    return x @ A.T + np.cos(x)


def _row_hess(x):
    return A - np.sin(x)[..., None] * np.eye(3)


@pytest.mark.parametrize("batch", [(4,), (2, 3)])
def test_hessian_check_full_and_diagonal_pass(batch):
    x = np.random.default_rng(1).standard_normal((*batch, 3))
    full = _row_hess(x)
    num = numerical_hessian(_row_grad, x)
    assert num.shape == (*batch, 3, 3)
    np.testing.assert_allclose(num, full, rtol=1e-8, atol=1e-9)
    assert assert_hessian(_row_grad, x, full).passed
    assert assert_hessian(_row_grad, x, np.diagonal(full, axis1=-2, axis2=-1)).passed


def test_hessian_check_fails_on_wrong_entry():
    x = np.random.default_rng(2).standard_normal((4, 3))
    full = _row_hess(x)
    full[2, 0, 1] += 1e-2
    with pytest.raises(GradcheckError) as info:
        assert_hessian(_row_grad, x, full, name="my hessian")
    assert "my hessian" in str(info.value) and "(2, 0, 1)" in str(info.value)
    diag = np.diagonal(_row_hess(x), axis1=-2, axis2=-1).copy()
    diag[3, 2] -= 1e-2
    report = check_hessian(_row_grad, x, diag, name="diag")
    assert not report.passed and report.checks[0].worst[0][0] == (3, 2)


def test_hessian_shape_mismatch_is_shape_error():
    x = np.zeros((4, 3))
    with pytest.raises(ShapeError, match="analytic Hessian has shape"):
        check_hessian(_row_grad, x, np.zeros((4, 2)))


def test_hessian_check_does_not_modify_input():
    x = np.random.default_rng(3).standard_normal((2, 3))
    x0 = x.copy()
    check_hessian(_row_grad, x, _row_hess(x))
    np.testing.assert_array_equal(x, x0)


# ----------------------------------------------------------------------------------------------
# Tolerances by dtype
# ----------------------------------------------------------------------------------------------
def test_tolerances_for_dtypes():
    assert tolerances_for(np.dtype("float64")) is TOLERANCES["float64"]
    assert tolerances_for(np.dtype("float32")) is TOLERANCES["float32"]
    assert tolerances_for(np.float32(0).dtype)["rtol"] > tolerances_for(np.dtype("float64"))["rtol"]
    assert tolerances_for("float16") is TOLERANCES["float64"]  # unknown: the strict defaults


def test_float32_analytic_uses_float32_tolerances(np_bk):
    """A float32 gradient carries ~1e-7 relative rounding: it passes with the float32 band and
    the report says which band was used; the same numbers judged as float64 fail."""
    p = _params(np_bk)
    g64 = _grad(np_bk, p)
    # a gradient computed in float32 plus a rounding-size error (3e-5 relative)
    g32 = {k: (v * (1 + 3e-5)).astype(np.float32) for k, v in g64.items()}
    report = check_gradients(_f(np_bk), p, g32)
    assert report.passed
    assert report.rtol == TOLERANCES["float32"]["rtol"]
    strict = check_gradients(_f(np_bk), p, g32, rtol=1e-6, atol=1e-8)
    assert not strict.passed
    # a real mistake is still caught in float32
    g32["layer.bias"][1] += 0.1
    assert not check_gradients(_f(np_bk), p, g32).passed


def test_float32_parameters_are_differenced_in_float64():
    """Parameters given in float32 are copied to float64 before being perturbed (an eps of 1e-6
    would be lost in float32 rounding)."""
    seen = []

    def f(p):
        seen.append(p["w"].dtype)
        return float((p["w"] ** 3).sum())

    w = np.array([0.5, -1.25, 2.0], dtype=np.float32)
    num = numerical_gradient(f, {"w": w})
    assert set(seen) == {np.dtype("float64")}
    np.testing.assert_allclose(num["w"], 3 * w.astype(np.float64) ** 2, rtol=1e-8)


def test_float32_hessian_uses_float32_tolerances():
    x = np.random.default_rng(4).standard_normal((3, 3))
    h32 = (_row_hess(x) * (1 + 1e-4)).astype(np.float32)
    report = check_hessian(_row_grad, x, h32)
    assert report.passed and report.rtol == TOLERANCES["float32"]["hess_rtol"]
    assert not check_hessian(_row_grad, x, h32.astype(np.float64)).passed


# ----------------------------------------------------------------------------------------------
# compare_arrays
# ----------------------------------------------------------------------------------------------
def test_compare_arrays_edge_cases():
    ok = compare_arrays("empty", np.zeros((0, 3)), np.zeros((0, 3)), 1e-6, 1e-8)
    assert ok.passed and ok.shape == (0, 3)
    with pytest.raises(ShapeError, match="t: analytic shape"):
        compare_arrays("t", np.zeros(3), np.zeros(4), 1e-6, 1e-8)
    c = compare_arrays("t", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 3.0]), 1e-6, 1e-8)
    assert not c.passed and c.worst == [((1,), 2.0, 2.5)]
    assert c.max_abs == pytest.approx(0.5) and c.max_rel == pytest.approx(0.2)
    c = compare_arrays("t", np.array([np.inf]), np.array([1.0]), 1e-6, 1e-8)
    assert not c.passed
