"""refvae.backend: backend selection and errors, NoiseSource, dtype discipline, and the same
results on every available backend."""
import builtins
import json
import math
import sys
import types

import numpy as np
import pytest

import refvae.backend as backend_mod
from refvae.backend import (BACKENDS, Backend, NoiseSource, array_module, available_backends,
                            get_backend)
from refvae.errors import BackendError, ConfigError, RefvaeError
from refvae.math.mlp import MLP


# ----------------------------------------------------------------------------------------------
# get_backend
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, np_dtype", [("float64", np.float64), ("float32", np.float32)])
def test_numpy_backend_names_and_dtypes(dtype, np_dtype):
    bk = get_backend("numpy", dtype)
    assert isinstance(bk, Backend)
    assert bk.name == "numpy" and bk.xp is np
    assert bk.dtype == np_dtype and bk.dtype_name == dtype
    for fn in ("expit", "logsumexp", "gammaln", "ndtr"):
        assert callable(getattr(bk.special, fn))
    assert bk.asarray([1, 2]).dtype == np_dtype
    assert bk.asarray([1, 2], dtype=np.int64).dtype == np.int64


def test_defaults_and_caching():
    bk = get_backend()
    assert (bk.name, bk.dtype_name) == ("numpy", "float64")
    assert get_backend("numpy", "float64") is bk
    assert get_backend(bk) is bk  # a Backend passes through unchanged
    assert get_backend("numpy", np.float32) is get_backend("numpy", "float32")
    assert get_backend("numpy", np.dtype("float32")) is get_backend("numpy", "float32")
    assert BACKENDS == ("numpy", "cupy")


@pytest.mark.parametrize("name", ["jax", "torch", "NumPy", "", "gpu"])
def test_unknown_backend_is_config_error(name):
    with pytest.raises(ConfigError) as info:
        get_backend(name)
    msg = str(info.value)
    assert f"unknown backend {name!r}" in msg
    assert "numpy" in msg and "cupy" in msg and "\n" not in msg
    assert isinstance(info.value, RefvaeError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("dtype", ["float16", "int32", "double", np.float16, "bfloat16"])
def test_unknown_dtype_is_config_error(dtype):
    with pytest.raises(ConfigError) as info:
        get_backend("numpy", dtype)
    msg = str(info.value)
    assert "unknown dtype" in msg and "float64" in msg and "float32" in msg and "\n" not in msg


def _block_cupy_import(monkeypatch):
    """Make ``import cupy`` / ``import cupyx...`` fail as if CuPy were not installed, and forget
    any cached CuPy backend (works whether or not CuPy is really installed)."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cupy" or name.startswith(("cupy.", "cupyx")):
            raise ImportError(f"No module named {name!r} (blocked by test)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(backend_mod, "_CACHE", {})


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_unavailable_is_backend_error(monkeypatch, dtype):
    _block_cupy_import(monkeypatch)
    with pytest.raises(BackendError) as info:
        get_backend("cupy", dtype)
    msg = str(info.value)
    assert "CuPy is not installed" in msg and "--backend numpy" in msg and "pip install" in msg
    assert "\n" not in msg
    assert isinstance(info.value, RefvaeError)
    assert available_backends() == ["numpy"]
    assert get_backend("numpy").name == "numpy"  # numpy unaffected


def _fake_cupy(monkeypatch, count):
    """Install a fake ``cupy`` whose device count is ``count`` (or raises when ``count`` is an
    exception), with a ``cupyx.scipy.special`` module."""
    def get_device_count():
        if isinstance(count, Exception):
            raise count
        return count

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    cupyx = types.ModuleType("cupyx")
    cupyx_scipy = types.ModuleType("cupyx.scipy")
    special = types.ModuleType("cupyx.scipy.special")
    for fn in ("expit", "logsumexp", "gammaln", "ndtr"):
        setattr(special, fn, lambda *a, _fn=fn: _fn)
    cupyx.scipy, cupyx_scipy.special = cupyx_scipy, special
    for name, mod in (("cupy", cupy), ("cupyx", cupyx), ("cupyx.scipy", cupyx_scipy),
                      ("cupyx.scipy.special", special)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(backend_mod, "_CACHE", {})
    return cupy


def test_cupy_without_gpu_is_backend_error(monkeypatch):
    _fake_cupy(monkeypatch, 0)
    with pytest.raises(BackendError, match="no GPU is visible"):
        get_backend("cupy")
    assert available_backends() == ["numpy"]


def test_cupy_with_broken_driver_is_backend_error(monkeypatch):
    _fake_cupy(monkeypatch, RuntimeError("cudaErrorInsufficientDriver"))
    with pytest.raises(BackendError, match="no usable GPU.*cudaErrorInsufficientDriver"):
        get_backend("cupy")


def test_cupy_with_gpu_is_wired_to_cupy_modules(monkeypatch):
    cupy = _fake_cupy(monkeypatch, 1)
    monkeypatch.setattr(backend_mod, "_probe", lambda cupy: None)  # the fake has no arrays
    bk = get_backend("cupy", "float32")
    assert bk.name == "cupy" and bk.xp is cupy and bk.dtype == np.float32
    assert bk.special.expit() == "expit" and bk.special.ndtr() == "ndtr"
    assert get_backend("cupy", "float32") is bk
    assert available_backends() == ["numpy", "cupy"]


def test_get_backend_cupy_runs_a_kernel_a_product_and_a_copy_back(strict_cupy_bk, monkeypatch):
    """The probe on the strict stand-in: one elementwise kernel, one matrix product, one copy."""
    import strict_cupy  # noqa: PLC0415

    monkeypatch.setattr(backend_mod, "_CACHE", {})
    ops, syncs = strict_cupy.STATE.ops, strict_cupy.STATE.syncs
    assert get_backend("cupy").xp is strict_cupy.MODULE
    # a copy to the device, the kernel, the product; one copy back
    assert strict_cupy.STATE.ops - ops == 3 and strict_cupy.STATE.syncs - syncs == 1


@pytest.mark.parametrize("where,error", [
    ("ElementwiseKernel", RuntimeError("nvrtc: error: failed to open libnvrtc-builtins.so.12\n"
                                       "Make sure that libnvrtc-builtins.so.12 is installed")),
    ("matmul", OSError("libcublas.so.12: cannot open shared object file")),
    ("matmul", None),  # a product that runs and gives a wrong answer
])
def test_a_cupy_that_cannot_run_is_one_line_backend_error(strict_cupy_bk, monkeypatch, where,
                                                           error):
    import strict_cupy  # noqa: PLC0415

    if error is None:
        real = strict_cupy.MODULE.ndarray.__matmul__
        monkeypatch.setattr(strict_cupy.MODULE.ndarray, "__matmul__", lambda a, b: real(a, b) + 1)
    elif where == "matmul":
        monkeypatch.setattr(strict_cupy.MODULE.ndarray, "__matmul__",
                            lambda a, b: (_ for _ in ()).throw(error))
    else:
        monkeypatch.setattr(strict_cupy.MODULE, where, lambda *a, **k: (_ for _ in ()).throw(error))
    monkeypatch.setattr(backend_mod, "_CACHE", {})
    with pytest.raises(BackendError) as info:
        get_backend("cupy")
    msg = str(info.value)
    assert "\n" not in msg and "CuPy cannot run" in msg and "refvae[gpu]" in msg
    assert "--backend numpy" in msg
    wanted = ("libnvrtc",) if where == "ElementwiseKernel" else ("cublas", "2x2")
    assert any(w in msg for w in wanted)
    assert available_backends() == ["numpy"]


def test_available_backends_real():
    names = available_backends()
    assert names[0] == "numpy" and set(names) <= {"numpy", "cupy"}
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert names == ["numpy"]


def test_host_device_helpers(bk):
    a = bk.asarray([[1.5, -2.0]])
    assert array_module(a) is bk.xp
    h = bk.to_numpy(a)
    assert isinstance(h, np.ndarray) and h.dtype == np.float64
    np.testing.assert_array_equal(h, [[1.5, -2.0]])
    assert bk.to_float(a.sum()) == -0.5 and isinstance(bk.to_float(a.sum()), float)
    bk.synchronize()
    assert array_module(np.zeros(2)) is np


# ----------------------------------------------------------------------------------------------
# NoiseSource
# ----------------------------------------------------------------------------------------------
def _draws(noise):
    return [noise.normal((3, 4)), noise.uniform((5,)), noise.gumbel((2, 2)),
            noise.integers(10, size=6), noise.permutation(7),
            noise.binomial_like(np.full(8, 0.5))]


def test_same_seed_same_numbers_different_seed_different():
    a, b, c = _draws(NoiseSource(42)), _draws(NoiseSource(42)), _draws(NoiseSource(43))
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))


def test_state_round_trip_through_json():
    noise = NoiseSource(5)
    noise.normal((10,))
    state = noise.state()
    assert isinstance(state, str)
    json.loads(state)  # plain JSON, no pickle
    first = _draws(noise)
    noise.set_state(state)
    again = _draws(noise)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    other = NoiseSource(999)  # a different generator takes the state over completely
    other.set_state(json.dumps(json.loads(state)))
    for x, y in zip(first, _draws(other)):
        np.testing.assert_array_equal(x, y)


def test_uniform_is_in_open_unit_interval():
    u = NoiseSource(0).uniform((200_000,))
    assert u.dtype == np.float64
    assert u.min() > 0.0 and u.max() < 1.0
    # mean ½ and variance 1/12, within 5 standard errors (sd of the mean √(1/12/n))
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)


def test_uniform_maps_exact_zero_to_smallest_positive():
    noise = NoiseSource(0)

    class ZeroGen:  # a generator that returns exact zeros, the case NumPy's [0, 1) allows
        def random(self, shape):
            return np.zeros(shape)

    noise._gen = ZeroGen()
    u = noise.uniform((3,))
    assert np.all(u > 0.0) and np.all(u == np.nextafter(0.0, 1.0))
    assert np.all(np.isfinite(-np.log(u)))


def test_gumbel_moments():
    """Standard Gumbel: mean γ (Euler–Mascheroni), variance π²/6, P(G ≤ 0) = e^{−1}.

    Tolerances: n = 200 000 draws; sd of the sample mean √(π²/6/n) ≈ 2.9e-3, of the sample
    variance σ²√((κ − 1)/n) with kurtosis κ = 5.4 ≈ 7.7e-3, of the fraction
    √(p(1−p)/n) ≈ 1.1e-3. Each check allows 5 standard errors (two-sided false-alarm rate ≈
    6e-7 for a random seed; the seed is fixed, so the test is deterministic). A sign error (−γ),
    a wrong scale or the maximum-vs-minimum Gumbel are each off by tens of standard errors.
    """
    g = NoiseSource(2024).gumbel((200_000,))
    n = g.size
    gamma = 0.5772156649015329
    var = math.pi ** 2 / 6
    assert abs(g.mean() - gamma) < 5 * math.sqrt(var / n)
    assert abs(g.var() - var) < 5 * var * math.sqrt(4.4 / n)
    p = math.exp(-1.0)
    assert abs((g <= 0).mean() - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert np.all(np.isfinite(g))


def test_normal_moments():
    z = NoiseSource(7).normal((200_000,))
    assert abs(z.mean()) < 5 / math.sqrt(z.size)
    assert abs(z.var() - 1.0) < 5 * math.sqrt(2 / z.size)


def test_noise_on_a_backend_has_its_dtype_and_the_host_numbers(bk):
    a = NoiseSource(3).normal((4, 2), bk)
    b = NoiseSource(3).normal((4, 2))
    assert array_module(a) is bk.xp and a.dtype == np.float64
    np.testing.assert_array_equal(bk.to_numpy(a), b)  # bit-identical base noise


def test_noise_on_float32_backend_is_float32():
    bk32 = get_backend("numpy", "float32")
    n = NoiseSource(0)
    for x in (n.normal((3,), bk32), n.uniform((3,), bk32), n.gumbel((3,), bk32)):
        assert x.dtype == np.float32


# ----------------------------------------------------------------------------------------------
# float32 end to end
# ----------------------------------------------------------------------------------------------
def _float32_run(bk, act):
    mlp = MLP.build("decoder", 3, [6, 5], [("mean", 2), ("logvar", 2)], act)
    noise = NoiseSource(11)
    params = mlp.init_params(noise, bk)
    x = noise.normal((4, 2, 3), bk)
    o, cache = mlp.forward(bk, params, x)
    d_out = bk.asarray(bk.to_numpy(o) - 0.3)
    back = mlp.backward(bk, params, cache, d_out)
    jac = mlp.input_jacobians(bk, params, cache)
    c_diag = bk.asarray(np.linspace(0.5, 1.5, 4))
    c_block = bk.asarray(np.tile([[1.0, 0.2], [0.2, 0.5]], (2, 1, 1)))
    c_full = bk.asarray(np.eye(4) + 0.1)
    hess = {(form, full): mlp.input_hessian(bk, params, cache, back, c, form=form, full=full)
            for form, c in (("diag", c_diag), ("block2", c_block), ("full", c_full))
            for full in (False, True)}
    hess[("diag_f32_scalar", True)] = mlp.input_hessian(bk, params, cache, back, np.float32(2.0),
                                                        full=True)
    return mlp, params, x, o, cache, back, jac, hess


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "softplus", "relu", "identity", "silu"])
def test_float32_backend_stays_float32(bk32, act):
    mlp, params, x, o, cache, back, jac, hess = _float32_run(bk32, act)
    f32 = np.float32
    assert all(v.dtype == f32 for v in params.values())
    assert x.dtype == f32 and o.dtype == f32
    assert all(a.dtype == f32 for a in cache["a"]) and all(h.dtype == f32 for h in cache["h"])
    assert all(g.dtype == f32 for g in back.grads.values()), {k: g.dtype for k,
                                                              g in back.grads.items()}
    assert back.d_input.dtype == f32
    assert all(u.dtype == f32 for u in back.upstream)
    assert all(j.dtype == f32 for j in jac)
    for key, h in hess.items():
        assert h.dtype == f32, (key, h.dtype)
    # and the float32 numbers are the float64 numbers to float32 precision
    bk64 = get_backend(bk32.name, "float64")
    ref = _float32_run(bk64, act)
    for got, want in ((o, ref[3]), (back.d_input, ref[5].d_input)):
        np.testing.assert_allclose(bk32.to_numpy(got), bk64.to_numpy(want), rtol=1e-4, atol=1e-5)
    for k in back.grads:
        np.testing.assert_allclose(bk32.to_numpy(back.grads[k]), bk64.to_numpy(ref[5].grads[k]),
                                   rtol=1e-4, atol=1e-5)
    for key in hess:
        np.testing.assert_allclose(bk32.to_numpy(hess[key]), bk64.to_numpy(ref[7][key]),
                                   rtol=1e-4, atol=1e-5)


def test_float32_hessian_with_python_scalar_curvature(bk32):
    """A Python float curvature (1/α, the gaussian emission) must not upcast the Hessian: NumPy
    treats ``broadcast_to(1/α)`` as float64 unless it is cast to the working dtype."""
    mlp = MLP.build("decoder", 3, [6], [("out", 2)], "tanh")
    noise = NoiseSource(1)
    params = mlp.init_params(noise, bk32)
    x = noise.normal((4, 3), bk32)
    o, cache = mlp.forward(bk32, params, x)
    back = mlp.backward(bk32, params, cache, o)
    for form, curv in (("diag", 1.0 / 0.7), ("diag", np.float64(1.0 / 0.7)),
                       ("full", np.eye(2) / 0.7)):
        for full in (False, True):
            h = mlp.input_hessian(bk32, params, cache, back, curv, form=form, full=full)
            assert h.dtype == np.float32, (form, type(curv), full, h.dtype)


# ----------------------------------------------------------------------------------------------
# Same results on every available backend
# ----------------------------------------------------------------------------------------------
def _mlp_everything(bk, act):
    """Forward, backward, Jacobians and Hessians (all forms) of one fixed problem on ``bk``;
    everything returned as host float64 arrays."""
    mlp = MLP.build("decoder", 3, [5, 4], [("mean", 2), ("logvar", 2)], act)
    noise = NoiseSource(21)
    params = mlp.init_params(noise, bk)
    x = noise.normal((3, 2, 3), bk)
    rng = np.random.default_rng(0)
    o, cache = mlp.forward(bk, params, x)
    d_out = bk.asarray(bk.to_numpy(o) - rng.standard_normal((3, 2, 4)))
    back = mlp.backward(bk, params, cache, d_out)
    out = {"o": o, "d_input": back.d_input}
    out.update({f"grad {k}": v for k, v in back.grads.items()})
    for l, j in enumerate(mlp.input_jacobians(bk, params, cache)):
        out[f"A_{l + 1}"] = j
    curvs = {"diag": bk.asarray(rng.uniform(0.5, 1.5, (3, 2, 4))),
             "block2": bk.asarray(np.tile([[1.0, 0.3], [0.3, 0.4]], (3, 2, 2, 1, 1))),
             "full": bk.asarray(np.eye(4) + 0.2)}
    for form, c in curvs.items():
        for full in (False, True):
            out[f"H {form} full={full}"] = mlp.input_hessian(bk, params, cache, back, c,
                                                              form=form, full=full)
    return {k: bk.to_numpy(v) for k, v in out.items()}


@pytest.mark.parametrize("act", ["tanh", "softplus", "relu", "silu"])
def test_same_results_on_every_backend(bk, act):
    """The MLP's forward/backward/Hessian on ``bk`` match NumPy's (float64)."""
    got = _mlp_everything(bk, act)
    ref = _mlp_everything(get_backend("numpy", "float64"), act)
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape, k
        scale = max(np.abs(ref[k]).max(), 1e-300)
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-12 * scale, err_msg=k)


def test_every_available_backend_is_exercised():
    """The per-backend tests above run on each name available_backends() reports."""
    for name in available_backends():
        bk = get_backend(name, "float64")
        got = _mlp_everything(bk, "tanh")
        assert all(np.all(np.isfinite(v)) for v in got.values())


@pytest.mark.parametrize("rows,row_size", [(1, 10), (1024, 784), (7, 100000), (333, 97), (0, 5)])
def test_row_blocks_cover_rows_in_order_and_fit_the_block(rows, row_size):
    from refvae.fast.kernels import ELEMENTWISE_BLOCK, row_blocks  # noqa: PLC0415
    blocks = row_blocks(get_backend("numpy"), rows, row_size)
    covered = [i for b in blocks for i in range(b.start, b.stop)]
    assert covered == list(range(rows))
    for b in blocks:
        assert b.stop - b.start == 1 or (b.stop - b.start) * row_size <= ELEMENTWISE_BLOCK
