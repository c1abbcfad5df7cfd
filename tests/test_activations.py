"""Activations φ, φ', φ'' (refvae.math.activations) against independent references, in float64.

Four independent witnesses, each used where it is meaningful:

* closed forms evaluated to 40 digits with mpmath (every input, ±50, ±800 and beyond): the exact
  answer, so the implementation must keep *relative* precision wherever the true value is a normal
  float — the point of the stable forms (``sech² a`` instead of ``1 − tanh² a``);
* different closed forms written here in NumPy (``1/cosh²``, ``1/(2(1 + cosh a))``, …), |a| ≤
  700;
* central differences in float64, with an error budget of truncation (relative, ~h²) plus
  rounding (``ε·|φ|/h``, absolute); at ±50 the difference of the *first derivative* still
  resolves φ'' to relative precision because φ' itself is exact there;
* PyTorch autograd double-backward in float64 (|a| ≤ 4, where torch's own ``1 − y²``-style
  backward formulas are still accurate).
"""
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from refvae.errors import ConfigError
from refvae.math.activations import ACTIVATIONS, get_activation

NAMES = ["tanh", "sigmoid", "softplus", "relu", "identity", "silu"]
SMOOTH = ["tanh", "sigmoid", "softplus", "silu"]
# Inputs everyone must handle: zero, tiny, the roots of silu' and silu'', moderate, ±50 (where the
# derivatives are ~1e-22..1e-43 and must keep relative precision), ±354 (exp(−2|a|) near the
# subnormal range), ±800 (exp(|a|) overflows), and huge magnitudes.
GRID = np.array([0.0, 5e-324, -1e-300, 1e-8, -1e-8, 0.5, -0.5, 1.0, -1.0, -1.2784645427610738,
                 2.399357280515467, -2.399357280515467, 3.0, -3.0, 7.5, -7.5, 20.0, -20.0, 36.7,
                 -36.7, 50.0, -50.0, 100.0, -100.0, 354.0, -354.0, 700.0, -700.0, 800.0, -800.0,
                 710.0, -710.0, -745.0, 1e4, -1e4, 1e300, -1e300])

finite_inputs = st.lists(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False,
                                   allow_infinity=False), min_size=1, max_size=12)
moderate_inputs = st.lists(st.floats(min_value=-4.0, max_value=4.0, allow_nan=False,
                                     allow_infinity=False), min_size=1, max_size=12)
# The backend fixtures are immutable, so sharing them across generated examples is safe.
FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _eval(bk, name, a_host):
    """value, d1, d2 of activation ``name`` at host array ``a_host``, back on the host."""
    act = get_activation(name)
    a = bk.asarray(np.asarray(a_host, dtype=np.float64))
    h = act.value(bk, a)
    return (bk.to_numpy(h), bk.to_numpy(act.d1(bk, a, h)), bk.to_numpy(act.d2(bk, a, h)))


# ----------------------------------------------------------------------------------------------
# mpmath: exact closed forms (and a scale for each, used where the stable form has a cancellation)
# ----------------------------------------------------------------------------------------------
def _mp_forms(mp, name, a):
    """(value, d1, d2, scale1, scale2) at the float ``a`` to 40 digits.

    ``scale`` is the sum of the magnitudes of the terms a float evaluation must add; it equals
    |d| except for silu, whose φ' = σ(1 + aσ(−a)) and φ'' = σσ(−a)(2 − a tanh(a/2))
    have roots (a ≈ −1.278 and a ≈ ±2.399) where only absolute precision relative to the
    terms is possible.
    """
    a = mp.mpf(a)
    sig = 1 / (1 + mp.exp(-a))
    sigm = 1 / (1 + mp.exp(a))
    one_m_2sig = mp.tanh(-a / 2)  # σ(−a) − σ(a), exact even for tiny |a| (no cancellation)
    if name == "tanh":
        t, s2 = mp.tanh(a), mp.sech(a) ** 2
        v, d1, d2 = t, s2, -2 * t * s2
        return v, d1, d2, abs(d1), abs(d2)
    if name == "sigmoid":
        v, d1, d2 = sig, sig * sigm, sig * sigm * one_m_2sig
        return v, d1, d2, abs(d1), abs(d2)
    if name == "softplus":
        v = mp.log1p(mp.exp(a))
        return v, sig, sig * sigm, abs(sig), abs(sig * sigm)
    if name == "silu":
        d1 = sig + a * sig * sigm
        d2 = 2 * sig * sigm + a * sig * sigm * one_m_2sig
        return (a * sig, d1, d2, abs(sig) + abs(a * sig * sigm),
                2 * sig * sigm + abs(a * sig * sigm * one_m_2sig))
    if name == "relu":
        return max(a, mp.mpf(0)), mp.mpf(1 if a > 0 else 0), mp.mpf(0), mp.mpf(1), mp.mpf(0)
    if name == "identity":
        return a, mp.mpf(1), mp.mpf(0), mp.mpf(1), mp.mpf(0)
    raise AssertionError(name)


def _check_against_mpmath(bk, name, a_host, rtol=1e-12, tiny=1e-300):
    """|got − exact| ≤ rtol·scale + tiny: relative precision wherever the exact value is a
    normal float (tiny only forgives results deep in the subnormal range, where no float has 12
    digits)."""
    mp = pytest.importorskip("mpmath")
    got = _eval(bk, name, a_host)
    with mp.workdps(50):
        for i, a in enumerate(np.asarray(a_host, dtype=np.float64).ravel()):
            v, d1, d2, s1, s2 = _mp_forms(mp, name, float(a))
            sv = abs(v)
            for label, g, ref, scale in (("value", got[0].ravel()[i], v, sv),
                                         ("d1", got[1].ravel()[i], d1, s1),
                                         ("d2", got[2].ravel()[i], d2, s2)):
                assert np.isfinite(g), f"{name} {label}({a!r}) = {g!r} is not finite"
                err = abs(mp.mpf(float(g)) - ref)
                bound = rtol * scale + tiny
                assert err <= bound, (f"{name} {label}({a!r}) = {float(g)!r}, exact "
                                      f"{mp.nstr(ref, 17)} (abs err {mp.nstr(err, 3)})")


@pytest.mark.parametrize("name", NAMES)
def test_grid_against_exact_closed_forms(bk, name):
    _check_against_mpmath(bk, name, GRID)


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(a=finite_inputs)
@example(a=[50.0, -50.0, 800.0, -800.0])
@example(a=[51.3, -49.7, 123.0, -123.0, 1e4, -1e4])
def test_hypothesis_against_exact_closed_forms(np_bk, name, a):
    _check_against_mpmath(np_bk, name, a)


# ----------------------------------------------------------------------------------------------
# NumPy closed forms written differently from the implementation (cosh/sinh based)
# ----------------------------------------------------------------------------------------------
def _numpy_forms(name, a):
    """d1, d2 via cosh/sinh identities, valid for |a| ≤ 700 (cosh overflows beyond ~710)."""
    with np.errstate(over="ignore"):
        if name == "tanh":  # sech² a, −2 tanh a sech² a
            s2 = (1.0 / np.cosh(a)) ** 2
            return s2, -2.0 * np.tanh(a) * s2
        one_p_cosh = 1.0 + np.cosh(a)
        sp = 1.0 / (2.0 * one_p_cosh)                      # σ'(a) = 1/(2(1 + cosh a))
        spp = -(np.sinh(a) / one_p_cosh) * sp              # σ''(a) = −sinh a/(2(1 + cosh a)²)
        sig = np.exp(0.5 * a) / (2.0 * np.cosh(0.5 * a))    # σ(a)
        if name == "sigmoid":
            return sp, spp
        if name == "softplus":
            return sig, sp
        if name == "silu":  # (aσ)' = σ + aσ', (aσ)'' = 2σ' + aσ''
            return sig + a * sp, 2.0 * sp + a * spp
        if name == "relu":
            return (a > 0).astype(float), np.zeros_like(a)
        if name == "identity":
            return np.ones_like(a), np.zeros_like(a)
    raise AssertionError(name)


def _numpy_scales(name, a):
    d1, d2 = _numpy_forms(name, a)
    if name != "silu":
        return np.abs(d1), np.abs(d2)
    sp = 1.0 / (2.0 * (1.0 + np.cosh(a)))
    sig = np.exp(0.5 * a) / (2.0 * np.cosh(0.5 * a))
    return sig + np.abs(a) * sp, 2.0 * sp + np.abs(a * np.sinh(a) / (1.0 + np.cosh(a))) * sp


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(a=st.lists(st.floats(min_value=-700.0, max_value=700.0, allow_nan=False), min_size=1,
                  max_size=12))
@example(a=[50.0, -50.0, 0.0, 700.0, -700.0])
def test_against_numpy_closed_forms(bk, name, a):
    a = np.asarray(a, dtype=np.float64)
    _, d1, d2 = _eval(bk, name, a)
    r1, r2 = _numpy_forms(name, a)
    s1, s2 = _numpy_scales(name, a)
    # 1e-12 relative to the terms' scale, plus 1e-300 for results in the subnormal range.
    np.testing.assert_array_less(np.abs(d1 - r1), 1e-12 * s1 + 1e-300, err_msg=f"{name} d1 at {a}")
    np.testing.assert_array_less(np.abs(d2 - r2), 1e-12 * s2 + 1e-300, err_msg=f"{name} d2 at {a}")


def test_stable_forms_keep_relative_precision_at_50(np_bk):
    """The values the naive forms get wrong: 1 − tanh²(50) and σ(50)(1 − σ(50)) are exactly
    0."""
    _, d1, d2 = _eval(np_bk, "tanh", [50.0, -50.0])
    exact = 4.0 * math.exp(-100.0) / (1.0 + math.exp(-100.0)) ** 2  # sech²(50) ≈ 1.49e-43
    np.testing.assert_allclose(d1, [exact, exact], rtol=1e-14)
    np.testing.assert_allclose(d2, [-2.0 * exact, 2.0 * exact], rtol=1e-14)
    _, d1, d2 = _eval(np_bk, "sigmoid", [50.0, -50.0])
    s = 1.0 / (1.0 + math.exp(50.0))  # σ(−50) ≈ 1.93e-22; σ'(±50) = σ(50)σ(−50)
    np.testing.assert_allclose(d1, [s * (1 - s), s * (1 - s)], rtol=1e-14)
    np.testing.assert_allclose(d2, [-s * (1 - s) * (1 - 2 * s), s * (1 - s) * (1 - 2 * s)],
                               rtol=1e-14)
    _, d1, d2 = _eval(np_bk, "softplus", [50.0, -50.0])
    np.testing.assert_allclose(d1, [1.0 - s, s], rtol=1e-14)
    np.testing.assert_allclose(d2, [s * (1 - s), s * (1 - s)], rtol=1e-14)
    _, d1, d2 = _eval(np_bk, "silu", [-50.0])
    np.testing.assert_allclose(d1, [s * (1 - 50.0 * (1 - s))], rtol=1e-14)
    np.testing.assert_allclose(d2, [s * (1 - s) * (2 - 50.0 * math.tanh(25.0))], rtol=1e-14)


# ----------------------------------------------------------------------------------------------
# Central differences (float64)
# ----------------------------------------------------------------------------------------------
H = 1e-5
ROOTS = {"silu": [-1.2784645427610738, 2.399357280515467, -2.399357280515467]}


def _central_difference_check(bk, name, a):
    """φ' against the central difference of φ, φ'' against that of φ'.

    Error budget per entry: 1e-6·|exact| (truncation is h²·|φ'''/φ'|/6 ≈ 1e-10 relative for
    these functions, including their exponential tails) + 8ε·max|f(a ± h)| / (2h) (rounding of
    the two evaluations) + 1e-300 (subnormal results). Points within 1e-3 of a root of the
    derivative being checked (silu) are left to the closed-form tests: near a root only absolute
    accuracy is possible. relu is not checked within 2h of its kink.
    """
    a = np.asarray(a, dtype=np.float64)
    keep = np.ones(a.shape, bool)
    if name == "relu":
        keep &= np.abs(a) > 2 * H
    ap, am = a + H, a - H
    two_h = ap - am  # the step actually taken, after rounding a ± h
    f0, d10, d20 = _eval(bk, name, a)
    fp, d1p, _ = _eval(bk, name, ap)
    fm, d1m, _ = _eval(bk, name, am)
    eps = np.finfo(np.float64).eps
    for label, exact, plus, minus, roots in (("d1", d10, fp, fm, ROOTS.get(name, [])[:1]),
                                             ("d2", d20, d1p, d1m, ROOTS.get(name, [])[1:])):
        with np.errstate(invalid="ignore", over="ignore"):
            numeric = (plus - minus) / two_h
            budget = (1e-6 * np.abs(exact) + 8 * eps * np.maximum(np.abs(plus), np.abs(minus))
                      / two_h
                      + 1e-300)  # results in the subnormal range (e.g. σ(−710)) have no digits
        ok = keep.copy()
        for r in roots:
            ok &= np.abs(a - r) > 1e-3
        bad = ok & ~(np.abs(numeric - exact) <= budget)
        assert not bad.any(), (f"{name} {label}: at a={a[bad]} analytic {exact[bad]} vs central "
                               f"difference {numeric[bad]}")


@pytest.mark.parametrize("name", NAMES)
def test_grid_against_central_differences(bk, name):
    _central_difference_check(bk, name, GRID[np.abs(GRID) < 1e5])


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(a=finite_inputs)
@example(a=[50.0, -50.0, 800.0, -800.0, 36.7, -36.7])
def test_hypothesis_against_central_differences(np_bk, name, a):
    _central_difference_check(np_bk, name, a)


# ----------------------------------------------------------------------------------------------
# PyTorch autograd, double backward, float64
# ----------------------------------------------------------------------------------------------
def _torch_fn(torch, name):
    return {"tanh": torch.tanh, "sigmoid": torch.sigmoid,
            "softplus": lambda t: torch.logaddexp(t, torch.zeros_like(t)),
            "relu": torch.relu, "identity": lambda t: t * 1.0,
            "silu": torch.nn.functional.silu}[name]


def _torch_derivs(torch, name, a):
    x = torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)
    y = _torch_fn(torch, name)(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    if g.requires_grad:
        (g2,) = torch.autograd.grad(g.sum(), x, allow_unused=True)
        g2 = torch.zeros_like(x) if g2 is None else g2
    else:  # φ' does not depend on a (relu, identity)
        g2 = torch.zeros_like(x)
    return y.detach().numpy(), g.detach().numpy(), g2.numpy()


@pytest.mark.torch
@pytest.mark.parametrize("name", NAMES)
@FAST
@given(a=moderate_inputs)
@example(a=[0.0, 1.0, -1.0, 3.5, -3.5, -1.2784645427610738])
def test_against_torch_double_backward(np_bk, name, a):
    torch = pytest.importorskip("torch")
    got = _eval(np_bk, name, a)
    ref = _torch_derivs(torch, name, a)
    for label, g, r in zip(("value", "d1", "d2"), got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-13, err_msg=f"{name} {label} at {a}")


@pytest.mark.torch
def test_relu_at_zero_follows_pytorch(np_bk):
    torch = pytest.importorskip("torch")
    v, d1, d2 = _eval(np_bk, "relu", [0.0, -0.0, 1e-300, -1e-300])
    _, t1, _ = _torch_derivs(torch, "relu", [0.0, -0.0, 1e-300, -1e-300])
    np.testing.assert_array_equal(d1, t1)
    np.testing.assert_array_equal(d1, [0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(d2, [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(v, [0.0, 0.0, 1e-300, 0.0])


def test_relu_derivative_at_zero_is_zero_without_torch(np_bk):
    _, d1, d2 = _eval(np_bk, "relu", [0.0])
    assert d1[0] == 0.0 and d2[0] == 0.0


# ----------------------------------------------------------------------------------------------
# Value-level checks at the extremes
# ----------------------------------------------------------------------------------------------
def _quiet_eval(bk, name, a):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            return _eval(bk, name, a)


def test_softplus_values_at_extremes(bk):
    v, d1, d2 = _quiet_eval(bk, "softplus", [50.0, -50.0, 800.0, -800.0])
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(d1)) and np.all(np.isfinite(d2))
    e50 = math.exp(-50.0)
    np.testing.assert_allclose(v[0], 50.0 + math.log1p(e50), rtol=1e-15)
    np.testing.assert_allclose(v[1], math.log1p(e50), rtol=1e-14)  # ≈ 1.93e-22, not 0
    assert v[1] > 0
    assert v[2] == 800.0
    assert v[3] == 0.0  # exp(−800) ≈ 3.7e-348 rounds to 0 in float64
    np.testing.assert_allclose(d1, [1.0, 1.0 / (1.0 + math.exp(50.0)), 1.0, 0.0], rtol=1e-14)


def test_sigmoid_values_at_extremes(bk):
    v, d1, d2 = _quiet_eval(bk, "sigmoid", [800.0, -800.0, 50.0, -50.0])
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(d1)) and np.all(np.isfinite(d2))
    assert v[0] == 1.0 and v[1] == 0.0
    np.testing.assert_allclose(v[3], 1.0 / (1.0 + math.exp(50.0)), rtol=1e-14)
    assert d1[0] == 0.0 and d1[1] == 0.0  # σ'(±800) ≈ 3.7e-348 underflows: 0, not NaN
    assert d2[0] == 0.0 and d2[1] == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_everything_finite_and_warning_free_at_huge_inputs(bk, name):
    for out in _quiet_eval(bk, name, [800.0, -800.0, 1e4, -1e4, 1e300, -1e300]):
        assert np.all(np.isfinite(out)), (name, out)
    with np.errstate(all="ignore"):  # −2|a| overflows near the top of the range: harmless
        for out in _eval(bk, name, [1.7e308, -1.7e308]):
            assert np.all(np.isfinite(out)), (name, out)


def test_tanh_and_silu_values_at_extremes(bk):
    v, _, _ = _quiet_eval(bk, "tanh", [800.0, -800.0, 50.0])
    np.testing.assert_array_equal(v, [1.0, -1.0, 1.0])
    v, d1, _ = _quiet_eval(bk, "silu", [800.0, -800.0])
    np.testing.assert_array_equal(v, [800.0, 0.0])
    np.testing.assert_array_equal(d1, [1.0, 0.0])


# ----------------------------------------------------------------------------------------------
# Registry, flags, dtypes
# ----------------------------------------------------------------------------------------------
def test_registry_names_and_flags():
    assert sorted(ACTIVATIONS) == sorted(NAMES)
    for name in NAMES:
        act = get_activation(name)
        assert act.name == name
        assert act.piecewise_linear == (name in ("relu", "identity"))


@pytest.mark.parametrize("bad", ["gelu", "Tanh", "", None, 3])
def test_unknown_activation_is_config_error(bad):
    with pytest.raises(ConfigError) as info:
        get_activation(bad)
    msg = str(info.value)
    assert "unknown activation" in msg and "\n" not in msg
    for name in NAMES:
        assert name in msg  # the message lists the choices


@pytest.mark.parametrize("name", NAMES)
def test_float32_in_float32_out(name):
    from refvae.backend import get_backend

    bk32 = get_backend("numpy", "float32")
    act = get_activation(name)
    a = bk32.asarray([-60.0, -2.0, -0.1, 0.0, 0.3, 4.0, 60.0])
    h = act.value(bk32, a)
    d1, d2 = act.d1(bk32, a, h), act.d2(bk32, a, h)
    assert h.dtype == d1.dtype == d2.dtype == np.float32
    # float32 results agree with float64 to float32 precision (relative to each function's scale)
    r = _eval(get_backend("numpy", "float64"), name, bk32.to_numpy(a).astype(np.float64))
    for g, ref in zip((h, d1, d2), r):
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
