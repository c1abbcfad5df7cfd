"""The strict CuPy stand-in itself: it must refuse what CuPy refuses (or the ``strict`` cases of
the suite prove nothing) and accept what CuPy accepts (or they fail for nothing).

Each behaviour is the one CuPy documents: no implicit host conversion (``np.asarray`` and SciPy
functions that call it raise), host arrays refused in device arithmetic, 0-d device arrays from
reductions and indexing, ufunc keywords limited to ``out``/``dtype``/``casting``, no
``__index__``, CuPy's own ``random`` and ``linalg.solve``.
"""
import builtins
import json
import math
import sys

import numpy as np
import pytest
import scipy.special

import strict_cupy
from refvae.backend import array_module, get_backend, to_host

cp = strict_cupy.MODULE


@pytest.fixture
def x():
    return cp.asarray(np.arange(6.0).reshape(2, 3))


def test_device_array_is_a_wrapper_whose_module_is_cupy(x):
    assert type(x).__module__.startswith("cupy") and type(x).__name__ == "ndarray"
    assert not isinstance(x, np.ndarray)


@pytest.mark.parametrize("convert", [np.asarray, np.array, lambda a: a.__array__(),
                                     scipy.special.logsumexp])
def test_implicit_conversion_to_numpy_is_refused(x, convert):
    with pytest.raises(TypeError):
        convert(x)


def test_explicit_copies_to_the_host_are_counted(x):
    before = strict_cupy.STATE.syncs
    host = x.get()
    assert isinstance(host, np.ndarray) and host.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert float(x[1, 2]) == 5.0 and bool(x[0, 1]) and int(x[1, 0]) == 3
    np.testing.assert_array_equal(cp.asnumpy(x), host)
    assert strict_cupy.STATE.syncs - before == 5


def test_asarray_of_device_arrays_stays_on_the_device(x):
    before = strict_cupy.STATE.syncs
    both = cp.asarray([x[0, 0], x[1, 2]])
    assert isinstance(both, strict_cupy.ndarray) and strict_cupy.STATE.syncs == before
    assert both.get().tolist() == [0.0, 5.0]


def test_asarray_copies_host_data_instead_of_aliasing_it():
    host = np.zeros(3)
    dev = cp.asarray(host)
    host[0] = 1.0
    assert dev.get()[0] == 0.0


@pytest.mark.parametrize("host", [np.ones(3), np.asarray(2.0), [1.0, 2.0, 3.0]])
def test_host_arrays_are_refused_in_arithmetic(x, host):
    for op in (lambda: x + host, lambda: host * x, lambda: cp.exp(host), lambda: cp.add(x, host)):
        with pytest.raises(TypeError):
            op()


def test_scalars_are_accepted_and_comparisons_take_a_0d_host_array(x):
    assert (x * 2.0 + np.float64(1.0) - 3).get().tolist() == [[-2, 0, 2], [4, 6, 8]]
    assert (x > np.asarray(2.0)).get().tolist() == [[False] * 3, [True] * 3]
    with pytest.raises(TypeError):
        x > np.ones(3)


def test_reductions_and_indexing_give_0d_device_arrays_not_numpy_scalars(x):
    for r in (x.sum(), x.max(), x[0, 1], cp.sum(x), x.mean(axis=None), x.argmax()):
        assert isinstance(r, strict_cupy.ndarray) and r.shape == ()
        assert not isinstance(r, (float, np.generic))
        with pytest.raises(TypeError):
            json.dumps(r)


def test_numpy_ufuncs_and_array_functions_dispatch_to_the_device(x, monkeypatch):
    monkeypatch.setattr(strict_cupy.STATE, "ulps", 0)
    for r in (np.exp(x), np.concatenate([x, x]), np.maximum(x, 1.0), np.linalg.solve(
            cp.asarray(np.eye(2)), x)):
        assert isinstance(r, strict_cupy.ndarray)
    np.testing.assert_array_equal(np.exp(x).get(), np.exp(np.arange(6.0).reshape(2, 3)))


def test_ufuncs_take_only_out_dtype_casting_and_a_device_out(x):
    out = cp.empty_like(x)
    assert cp.multiply(x, 2.0, out=out) is out and out.get()[1, 2] == 10.0
    cp.exp(x, dtype=np.float64, casting="same_kind")
    with pytest.raises(TypeError):
        cp.multiply(x, 2.0, out=np.empty((2, 3)))
    with pytest.raises(TypeError):
        cp.exp(x, where=x > 1)
    with pytest.raises(TypeError):
        np.exp(x, where=True)


def test_no_index_protocol(x):
    i = cp.asarray(1)
    with pytest.raises(TypeError):
        [10, 20, 30][i]
    with pytest.raises(TypeError):
        range(i)


def test_functions_take_a_device_array_first(x):
    for call in (lambda: cp.unravel_index(3, (2, 3)), lambda: cp.broadcast_to(1.0, (2, 3)),
                 lambda: cp.zeros_like(np.ones(3)), lambda: cp.concatenate([np.ones(2)]),
                 lambda: cp.sum([1.0, 2.0])):
        with pytest.raises(TypeError):
            call()
    assert [int(v) for v in cp.unravel_index(cp.asarray(4), (2, 3))] == [1, 1]


def test_random_is_cupys_own_stream_and_generator():
    g = cp.random.default_rng(0)
    a = g.standard_normal((4,))
    assert isinstance(a, strict_cupy.ndarray)
    assert not np.array_equal(a.get(), np.random.default_rng(0).standard_normal(4))
    for missing in ("normal", "permutation", "choice"):
        assert not hasattr(g, missing)


def test_linalg_solve_neither_broadcasts_nor_raises_on_singular():
    a = cp.asarray(np.tile(np.eye(2), (3, 1, 1)))
    assert cp.linalg.solve(a, cp.asarray(np.ones((3, 2)))).shape == (3, 2)
    assert cp.linalg.solve(a, cp.asarray(np.ones((3, 2, 4)))).shape == (3, 2, 4)
    with pytest.raises(ValueError):
        cp.linalg.solve(a, cp.asarray(np.ones(2)))  # NumPy broadcasts this one
    x = cp.linalg.solve(cp.asarray(np.zeros((2, 2))), cp.asarray(np.ones(2)))
    assert not np.isfinite(x.get()).all()


def test_no_floating_point_warnings(recwarn):
    with np.errstate(all="warn"):
        r = cp.log(cp.asarray([0.0, -1.0])) / cp.asarray([0.0, 0.0])
    assert not np.isfinite(r.get()).any() and len(recwarn) == 0


def test_module_exports_sum_any_all_like_cupy():
    assert cp.sum is not builtins.sum and cp.all is not builtins.all
    assert float(cp.sum(cp.asarray([1.0, 2.0]))) == 3.0


def test_ulp_perturbation_moves_inexact_results_by_at_most_that_many_ulps(monkeypatch):
    v = np.linspace(-3, 3, 1001)
    monkeypatch.setattr(strict_cupy.STATE, "ulps", 3)
    got = cp.exp(cp.asarray(v)).get()
    want = np.exp(v)
    moved = np.abs(got - want) / np.spacing(want)
    assert moved.max() <= 3 and (moved > 0).mean() > 0.5
    assert (cp.asarray(v) + 1.0).get().tolist() == (v + 1.0).tolist()  # exact operations stay exact
    assert cp.exp(cp.asarray([0.0])).get()[0] != 0.0


def test_the_backend_is_built_on_the_stand_in(strict_cupy_bk):
    bk = strict_cupy_bk
    assert bk.name == "cupy" and bk.xp is cp and sys.modules["cupy"] is cp
    a = bk.asarray([1.0, 2.0])
    assert array_module(a) is cp and isinstance(bk.to_numpy(a), np.ndarray)
    assert math.isclose(bk.to_float(bk.special.logsumexp(a)), np.log(np.exp(1) + np.exp(2)))
    np.testing.assert_array_equal(to_host(a), [1.0, 2.0])
    before = strict_cupy.STATE.waits
    bk.synchronize()
    assert strict_cupy.STATE.waits == before + 1


def test_the_stand_in_is_gone_after_its_test():
    assert sys.modules.get("cupy") is not cp
    assert all(k[0] != "cupy" or v.xp is not cp for k,
               v in __import__("refvae.backend").backend._CACHE.items())
    assert get_backend("numpy").xp is np
