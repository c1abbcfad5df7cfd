"""The ``cupy`` / ``cupyx`` modules of the strict stand-in (see :mod:`strict_cupy.core`).

* ufuncs take device arrays and scalars, and only the keywords ``out`` (a device array),
  ``dtype`` and ``casting``;
* the other functions take a device array first (or a sequence of them: ``concatenate``,
  ``stack``); a Python number or a NumPy array there is a ``TypeError``, as on CuPy;
* ``asarray``/``array`` copy host data to the device (never aliasing it); ``empty`` returns NaN,
  not zeros (uninitialised device memory);
* ``random`` is CuPy's: a different stream from NumPy's and a ``Generator`` without
  ``normal``/``permutation``/``choice``;
* ``linalg.solve`` needs ``a`` ``(..., M, M)`` and ``b`` ``(..., M)`` or ``(..., M, K)`` with the
  same batch shape (no broadcasting) and returns non-finite numbers, not an error, for a
  singular ``a``.
"""
from __future__ import annotations

import builtins
import types

import numpy as np
import scipy.special as _sp

from .core import STATE, call, host_args, launch, ndarray, operand, wrap

# Functions that do not take an array first (creation, dtype queries) or take a sequence of them.
CREATION = ("zeros", "ones", "empty", "full", "eye", "identity", "arange", "linspace", "logspace",
            "tri")
META = ("dtype", "result_type", "promote_types", "can_cast", "finfo", "iinfo", "isscalar",
        "issubdtype", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
        "uint8", "uint32", "uint64", "bool_", "complex64", "complex128", "intp", "integer",
        "floating", "number", "generic", "newaxis", "inf", "nan", "pi", "e", "euler_gamma",
        "ndindex", "ndenumerate")
SEQUENCE_FIRST = ("concatenate", "stack", "hstack", "vstack", "dstack", "column_stack",
                  "block", "broadcast_arrays", "meshgrid", "ix_", "atleast_1d", "atleast_2d",
                  "atleast_3d")
STRING_FIRST = ("einsum",)


class ufunc:  # noqa: N801 - CuPy's name
    """A CuPy universal function over the NumPy one of the same name."""

    def __init__(self, np_ufunc):
        self._f = np_ufunc
        self.__name__ = self.name = np_ufunc.__name__
        self.nin, self.nout, self.nargs = np_ufunc.nin, np_ufunc.nout, np_ufunc.nargs

    def __call__(self, *args, out=None, dtype=None, casting="same_kind"):
        where = f"cupy.{self.name}"
        values = [operand(a, where) for a in args]
        kw = {"casting": casting}
        if dtype is not None:
            kw["dtype"] = dtype
        if out is None:
            return call(self.name, self._f, *values, **kw)
        outs = out if isinstance(out, tuple) else (out,)
        if not builtins.all(isinstance(o, ndarray) for o in outs):
            raise TypeError(f"{where}: out must be a cupy.ndarray, got {[type(o) for o in outs]}")
        call(self.name, self._f, *values, out=tuple(o._a for o in outs), **kw)  # perturbs in place
        return out

    def __repr__(self) -> str:
        return f"<ufunc '{self.name}'>"


def _array_function(name: str, np_fn, first: str = "array"):
    def fn(*args, **kwargs):
        where = f"cupy.{name}"
        if first == "array" and (not args or not isinstance(args[0], ndarray)):
            got = type(args[0]).__name__ if args else "nothing"
            raise TypeError(f"{where} takes a cupy.ndarray first, got {got}")
        if first == "sequence" and not (args and isinstance(args[0], (list, tuple))
                                        and builtins.all(isinstance(a, ndarray) for a in args[0])):
            raise TypeError(f"{where} takes a sequence of cupy.ndarray first")
        return call(name, np_fn, *host_args(args, where), **host_args(kwargs, where))
    fn.__name__ = fn.__qualname__ = name
    return fn


def _device_values(obj):
    """What ``cupy.array`` reads: a device array, nested sequences of device arrays (read on the
    device), or host data (copied to the device, never aliased)."""
    if isinstance(obj, ndarray):
        return obj._a
    if isinstance(obj, (list, tuple)):
        return type(obj)(_device_values(v) for v in obj)
    return obj


def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    launch("asarray")
    return ndarray(np.array(_device_values(a), dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    launch("array")
    return ndarray(np.array(_device_values(obj), dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def empty(shape, dtype=float, order="C"):
    out = np.empty(shape, dtype=dtype, order=order)
    out.fill(np.nan if out.dtype.kind in "fc" else 0)
    return ndarray(out)


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    if not isinstance(a, ndarray):
        raise TypeError(f"cupy.empty_like takes a cupy.ndarray first, got {type(a).__name__}")
    return empty(a.shape if shape is None else shape, dtype=a.dtype if dtype is None else dtype)


def get_array_module(*args):
    return MODULE if builtins.any(isinstance(a, ndarray) for a in args) else np


def _linalg_solve(a, b):
    if not (isinstance(a, ndarray) and isinstance(b, ndarray)):
        raise TypeError("cupy.linalg.solve takes two cupy.ndarray")
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise np.linalg.LinAlgError(f"cupy.linalg.solve: a must be (..., M, M), got {a.shape}")
    if not (b.ndim in (a.ndim - 1, a.ndim) and a.shape[:-1] == b.shape[:a.ndim - 1]):
        raise ValueError("a must have (..., M, M) shape and b must have (..., M) or (..., M, K)")
    av, bv = a._a, b._a
    vector = b.ndim == a.ndim - 1
    try:
        with np.errstate(all="ignore"):
            x = np.linalg.solve(av, bv[..., None] if vector else bv)
    except np.linalg.LinAlgError:  # cuSOLVER does not raise: it returns what LU gave
        x = np.full(bv.shape + ((1,) if vector else ()), np.nan, dtype=np.result_type(av, bv))
    return call("solve", lambda v: v, x[..., 0] if vector else x)


class Generator:
    """``cupy.random.Generator``: a different stream from NumPy's, and fewer methods."""

    def __init__(self, seed=None):
        self._g = np.random.Generator(np.random.Philox(seed))

    def _draw(self, name, *args, size=None, dtype=np.float64, **kwargs):
        r = getattr(self._g, name)(*args, size=size, **kwargs)
        launch(name)
        return ndarray(np.asarray(r).astype(dtype, copy=False))

    def random(self, size=None, dtype=np.float64, out=None):
        return self._draw("random", size=size, dtype=dtype)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return self._draw("standard_normal", size=size, dtype=dtype)

    def standard_exponential(self, size=None, dtype=np.float64, method=None, out=None):
        return self._draw("standard_exponential", size=size, dtype=dtype)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        return self._draw("uniform", low, high, size=size, dtype=dtype)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return self._draw("integers", low, high, size=size, dtype=dtype, endpoint=endpoint)


# The Python equivalent of each elementwise kernel, by kernel name: ``(cuda_source, fn)`` with
# ``fn(*inputs, *outputs)`` on NumPy values writing into the outputs (see :func:`register`).
EQUIVALENTS: dict = {}


def register(name: str, cuda_source: str, fn) -> None:
    """Let :class:`ElementwiseKernel` run the kernel ``name`` whose body is ``cuda_source`` by
    calling ``fn`` (the stand-in cannot compile CUDA C)."""
    EQUIVALENTS[name] = (cuda_source, fn)


class ElementwiseKernel:
    """``cupy.ElementwiseKernel``: checks what CuPy checks of the arguments (their number, device
    arrays only, one dtype per type placeholder, outputs of the broadcast shape, given explicitly
    here) and runs the registered Python equivalent of the body as one device operation."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True,
                 options=(), preamble="", loop_prep="", after_loop="", **kwargs):
        self.params = [self._param(p, False) for p in in_params.split(",")]
        self.params += [self._param(p, True) for p in out_params.split(",")]
        self.operation, self.name, self.options = operation, name, tuple(options)

    @staticmethod
    def _param(text, out):
        words = text.split()
        if not 2 <= len(words) <= 3 or (len(words) == 3 and words[0] != "raw"):
            raise ValueError(f"cupy.ElementwiseKernel: cannot parse parameter {text!r}")
        return types.SimpleNamespace(type=words[-2], name=words[-1], out=out, raw=len(words) == 3)

    def __call__(self, *args, **kwargs):
        where = f"cupy.ElementwiseKernel {self.name!r}"
        if len(args) != len(self.params):
            raise TypeError(f"{where}: wrong number of arguments ({len(args)} for "
                            f"{len(self.params)})")
        source, fn = EQUIVALENTS.get(self.name, (None, None))
        if source != self.operation:
            raise NotImplementedError(f"{where}: the strict stand-in cannot compile CUDA C; "
                                      "register its Python equivalent (strict_cupy.api.register)")
        types_seen, values, arrays = {}, [], []
        for p, a in zip(self.params, args):
            if p.out and not isinstance(a, ndarray):
                raise TypeError(f"{where}: output {p.name} must be a cupy.ndarray")
            v = operand(a, where)
            if isinstance(a, ndarray):
                arrays.append((p, a))
                if len(p.type) == 1 and types_seen.setdefault(p.type, a.dtype) != a.dtype:
                    raise TypeError(f"{where}: type {p.type} is both {types_seen[p.type]} and "
                                    f"{a.dtype}")
            values.append(v)
        shape = np.broadcast_shapes(*(a.shape for p, a in arrays if not p.raw))
        for p, a in arrays:
            if p.out and not p.raw and a.shape != shape:
                raise ValueError(f"{where}: output {p.name} has shape {a.shape}, the arguments "
                                 f"broadcast to {shape}")
        launch(self.name)
        with np.errstate(all="ignore"):
            fn(*values)
        outs = [a for p, a in zip(self.params, args) if p.out]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _random_module():
    mod = types.ModuleType("cupy.random")
    state = {"rs": np.random.RandomState(np.random.MT19937(7))}
    mod.default_rng = lambda seed=None: Generator(seed)
    mod.Generator = Generator

    def seed(s=None):
        state["rs"] = np.random.RandomState(np.random.MT19937(s))
    mod.seed = seed
    for name in ("rand", "randn", "random", "normal", "uniform", "standard_normal", "randint",
                 "permutation", "choice", "random_sample", "gumbel", "standard_exponential"):
        mod.__dict__[name] = (lambda n: lambda *a, **k: launch(n) or wrap(np.asarray(
            getattr(state["rs"], n)(*host_args(a, n), **host_args(k, n)))))(name)
    return mod


def _special_module():
    mod = types.ModuleType("cupyx.scipy.special")
    for name in ("expit", "logit", "logsumexp", "gammaln", "ndtr", "log_ndtr", "erf", "erfc",
                 "digamma", "softmax", "log_softmax", "xlogy", "xlog1py", "gamma", "ndtri",
                 "erfinv", "polygamma", "zeta", "entr"):
        if hasattr(_sp, name):
            setattr(mod, name, _array_function(name, getattr(_sp, name)))
    return mod


class _Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def synchronize(self) -> None:
        STATE.waits += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _cuda_module():
    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = _Device
    cuda.runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"strict CuPy stand-in (NumPy)",
                                       "totalGlobalMem": 0})
    cuda.get_current_stream = lambda: types.SimpleNamespace(
        synchronize=lambda: _Device().synchronize())
    return cuda


def _build() -> types.ModuleType:
    mod = types.ModuleType("cupy")
    mod.__version__ = "strict-stand-in"
    mod.ndarray, mod.ufunc = ndarray, ufunc
    for name in dir(np):
        obj = getattr(np, name)
        if isinstance(obj, np.ufunc):
            setattr(mod, name, ufunc(obj))
    for name in META:
        setattr(mod, name, getattr(np, name))
    for name in CREATION:
        setattr(mod, name, (lambda f: lambda *a, **k: launch(f.__name__)
                            or ndarray(np.asarray(f(*a, **k))))(getattr(np, name)))
    for name in ("zeros_like", "ones_like", "full_like", "copy", "broadcast_to", "where", "diag",
                 "diagonal", "tril", "triu", "trace", "unravel_index", "ravel_multi_index",
                 "reshape", "ravel", "transpose", "swapaxes", "moveaxis", "expand_dims",
                 "squeeze", "flip", "roll", "tile", "repeat", "take", "take_along_axis", "put",
                 "argsort", "sort", "argmax", "argmin", "nonzero", "flatnonzero", "cumsum",
                 "cumprod", "diff", "clip", "round", "around", "sum", "prod", "mean", "var",
                 "std", "max", "min", "amax", "amin", "any", "all", "allclose", "isclose",
                 "array_equal", "nan_to_num", "count_nonzero", "searchsorted", "outer",
                 "inner", "dot", "vdot", "tensordot", "kron", "cross", "pad", "split",
                 "array_split", "atleast_1d", "shape", "ndim", "size", "ptp", "median",
                 "percentile", "quantile", "average", "histogram", "bincount", "unique",
                 "cov", "corrcoef", "triu_indices_from", "tril_indices_from", "fill_diagonal",
                 "select", "piecewise", "interp", "convolve", "nanmax", "nanmin", "nansum",
                 "nanmean", "logsumexp"):
        if hasattr(np, name):
            setattr(mod, name, _array_function(name, getattr(np, name)))
    for name in SEQUENCE_FIRST:
        setattr(mod, name, _array_function(name, getattr(np, name), first="sequence"))
    for name in STRING_FIRST:
        setattr(mod, name, _array_function(name, getattr(np, name), first="string"))
    for name in ("triu_indices", "tril_indices", "indices", "diag_indices"):
        setattr(mod, name, (lambda f: lambda *a, **k: wrap(f(*a, **k)))(getattr(np, name)))
    mod.asarray, mod.array, mod.asanyarray, mod.ascontiguousarray = asarray, array, asarray, asarray
    mod.asnumpy, mod.empty, mod.empty_like = asnumpy, empty, empty_like
    mod.ElementwiseKernel = ElementwiseKernel
    mod.get_array_module = get_array_module
    mod.linalg = types.ModuleType("cupy.linalg")
    mod.linalg.solve = _linalg_solve
    for name in ("inv", "cholesky", "slogdet", "det", "norm", "qr", "eigh", "svd", "eigvalsh"):
        setattr(mod.linalg, name, _array_function(name, getattr(np.linalg, name)))
    mod.random = _random_module()
    mod.cuda = _cuda_module()
    mod.__getattr__ = _missing
    return mod


def _missing(name: str):
    raise AttributeError(f"the strict CuPy stand-in has no cupy.{name}; add it to "
                         "tests/strict_cupy/api.py if CuPy has it")


MODULE = _build()
SPECIAL = _special_module()
CUPYX = types.ModuleType("cupyx")
CUPYX_SCIPY = types.ModuleType("cupyx.scipy")
CUPYX.scipy, CUPYX_SCIPY.special = CUPYX_SCIPY, SPECIAL
MODULES = {"cupy": MODULE, "cupy.random": MODULE.random, "cupy.linalg": MODULE.linalg,
           "cupy.cuda": MODULE.cuda, "cupyx": CUPYX, "cupyx.scipy": CUPYX_SCIPY,
           "cupyx.scipy.special": SPECIAL}
