"""The device array of the strict CuPy stand-in: a wrapper around a NumPy array (not a subclass)
that behaves as ``cupy.ndarray`` does where CuPy differs from NumPy.

* no implicit conversion to NumPy (``np.asarray(x)``, ``x.__array__()``: ``TypeError``); explicit
  ``.get()`` / ``cupy.asnumpy`` only;
* NumPy arrays (a 0-d one too) are refused in arithmetic with device arrays; comparisons accept a
  0-d NumPy array; NumPy and Python scalars are accepted everywhere;
* reductions and integer indexing return 0-d device arrays, never NumPy scalars;
* ``float``/``int``/``bool``/``item``/``tolist``/``repr`` work and each counts one device→host
  synchronisation (:data:`STATE`.syncs); there is no ``__index__``;
* NumPy ufuncs and array functions on device arrays dispatch to the stand-in's own
  (``__array_ufunc__``/``__array_function__``), as CuPy's do.

Everything here calls ``builtins.sum/any/all``: the stand-in's module exports those names, as
CuPy's does.
"""
from __future__ import annotations

import builtins
import os
from types import SimpleNamespace

import numpy as np

# syncs: device→host transfers (the numbers a GPU program waits for). waits: explicit
# Device().synchronize() calls. ops: device operations, each a kernel launch or copy on a GPU
# (see :func:`launch`). ulps: when > 0, a GPU's different rounding is imitated:
# transcendental results move by up to this many units in the last place (a fixed function of the
# value, as a math library's error is; exact 0 and ±1 stay), and sums and matrix products add in
# another order. REFVAE_STRICT_ULPS sets it for a whole run.
STATE = SimpleNamespace(syncs=0, waits=0, ops=0,
                        ulps=int(os.environ.get("REFVAE_STRICT_ULPS", "0")))

INEXACT = frozenset({
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "logaddexp", "logaddexp2", "power",
    "float_power", "tanh", "sinh", "cosh", "sin", "cos", "tan", "arctan", "arctanh", "arcsinh",
    "arccosh", "arcsin", "arccos", "arctan2", "cbrt", "hypot", "expit", "logit", "logsumexp",
    "gammaln", "ndtr", "log_ndtr", "erf", "erfc", "digamma", "softmax", "log_softmax", "xlogy",
    "xlog1py", "solve", "inv", "cholesky", "slogdet", "det"})
REORDERED = frozenset({"sum", "mean", "matmul"})
_MIX = {8: np.uint64(0x9E3779B97F4A7C15), 4: np.uint32(0x9E3779B1)}


def perturb(name: str, result):
    """``result`` moved by up to ``STATE.ulps`` ulps when ``name`` is an inexact operation;
    unchanged otherwise."""
    if STATE.ulps <= 0 or name not in INEXACT:
        return result
    if isinstance(result, tuple):
        return tuple(perturb(name, r) for r in result)
    arr = np.asarray(result)
    if arr.dtype.kind != "f" or arr.size == 0 or arr.dtype.itemsize not in _MIX:
        return result
    bits = arr.view(f"u{arr.dtype.itemsize}")
    with np.errstate(all="ignore"):
        hashed = (bits * _MIX[arr.dtype.itemsize]) >> np.array(arr.dtype.itemsize * 8 - 16,
                                                               bits.dtype)
        steps = (hashed % (2 * STATE.ulps + 1)).astype(arr.dtype) - STATE.ulps
        moved = arr + steps * np.spacing(np.abs(arr))
    keep = ~np.isfinite(arr) | (arr == 0) | (np.abs(arr) == 1)
    moved = np.where(keep, arr, moved).astype(arr.dtype)
    if isinstance(result, np.ndarray):
        result[...] = moved
        return result
    return moved[()]


def reordered(name: str, fn):
    """``fn`` (a NumPy sum, mean or matmul), adding in another order when ``STATE.ulps`` > 0:
    a GPU's reduction tree and cuBLAS's blocking differ from NumPy's (exact sums stay exact)."""
    if STATE.ulps <= 0 or name not in REORDERED:
        return fn
    if name == "matmul":
        def split_k(a, b, **kw):
            a, b = np.asarray(a), np.asarray(b)
            if a.ndim < 2 or b.ndim < 2 or a.shape[-1] < 2 or "out" in kw:
                return fn(a, b, **kw)
            h = a.shape[-1] // 2
            return fn(a[..., h:], b[..., h:, :], **kw) + fn(a[..., :h], b[..., :h, :], **kw)
        return split_k

    def flipped(a, *args, **kw):
        axis = kw.get("axis", args[0] if args else None)
        return fn(np.flip(np.asarray(a), axis=axis), *args, **kw)
    return flipped


def sync() -> None:
    STATE.syncs += 1


# Functions that return a view (or metadata) on CuPy: no kernel runs.
VIEWS = frozenset({"broadcast_to", "reshape", "ravel", "transpose", "swapaxes", "moveaxis",
                   "expand_dims", "squeeze", "diagonal", "shape", "ndim", "size", "atleast_1d",
                   "atleast_2d", "atleast_3d", "broadcast_arrays"})


def launch(name: str = "") -> None:
    """Count one device operation (:data:`STATE`.ops): every ufunc, operator, in-place operator,
    reduction, array function, elementwise kernel, copy, fill, gather, random draw and host→device
    copy; views, ``empty`` and device→host copies (counted as syncs) are not operations."""
    if name not in VIEWS:
        STATE.ops += 1


def wrap(r):
    """NumPy results -> device arrays (scalars become 0-d arrays); tuples element by element."""
    if isinstance(r, np.ndarray):
        return ndarray(r)
    if isinstance(r, np.generic):
        return ndarray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(wrap(x) for x in r)
    if isinstance(r, list):
        return [wrap(x) for x in r]
    return r


def unsupported(x, where: str):
    return TypeError(f"Unsupported type {type(x)} in {where}: CuPy does not convert host arrays "
                     "implicitly; move it with cupy.asarray first")


def operand(x, where: str, comparison: bool = False):
    """The NumPy value behind an operand of a device operation: device arrays, Python and NumPy
    scalars; a 0-d NumPy array in comparisons only."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        if comparison and x.ndim == 0:
            return x
        raise unsupported(x, where)
    if isinstance(x, (bool, int, float, complex, np.generic)):
        return x
    raise unsupported(x, where)


def host_args(x, where: str):
    """Device arrays inside (nested) argument lists -> NumPy; a NumPy array is refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        raise unsupported(x, where)
    if isinstance(x, (list, tuple)):
        return type(x)(host_args(v, where) for v in x)
    return x


def index_value(key):
    """An index for ``x[key]``: device arrays, NumPy index arrays, ints, slices, tuples of them."""
    if isinstance(key, ndarray):
        return key._a
    if isinstance(key, tuple):
        return tuple(index_value(k) for k in key)
    return key


def _gathers(key) -> bool:
    """Whether ``x[key]`` gathers (an index array or a boolean mask: a kernel) rather than
    slicing a view."""
    keys = key if isinstance(key, tuple) else (key,)
    return builtins.any(isinstance(k, (ndarray, np.ndarray, list)) for k in keys)


def call(name: str, fn, *args, **kwargs):
    """``fn`` on NumPy values with floating-point warnings silenced (CuPy never emits them); the
    result perturbed (when asked) and wrapped; one device operation unless it is a view."""
    launch(name)
    with np.errstate(all="ignore"):
        r = reordered(name, fn)(*args, **kwargs)
    return wrap(perturb(name, r))


def _binary(name: str, comparison: bool = False, reflected: bool = False):
    ufunc = getattr(np, name)

    def op(self, other):
        if not isinstance(other, (ndarray, np.ndarray, bool, int, float, complex, np.generic)):
            return NotImplemented
        b = operand(other, f"cupy.ndarray operator {name}", comparison)
        return call(name, ufunc, *((b, self._a) if reflected else (self._a, b)))
    return op


def _inplace(name: str):
    ufunc = getattr(np, name)

    def op(self, other):
        b = operand(other, f"cupy.ndarray in-place {name}")
        launch(name)
        with np.errstate(all="ignore"):
            ufunc(self._a, b, out=self._a)
        perturb(name, self._a)
        return self
    return op


def _unary(name: str):
    ufunc = getattr(np, name)
    return lambda self: call(name, ufunc, self._a)


def _reduction(name: str):
    method = getattr(np.ndarray, name)

    def reduce(self, *args, out=None, **kwargs):
        args = host_args(args, f"cupy.ndarray.{name}")
        kwargs = host_args(kwargs, f"cupy.ndarray.{name}")
        if out is not None:
            if not isinstance(out, ndarray):
                raise unsupported(out, f"cupy.ndarray.{name}(out=...)")
            launch(name)
            with np.errstate(all="ignore"):
                method(self._a, *args, out=out._a, **kwargs)
            perturb(name, out._a)
            return out
        return call(name, method, self._a, *args, **kwargs)
    reduce.__name__ = name
    return reduce


def _view(name: str):
    method = getattr(np.ndarray, name)

    def view(self, *args, **kwargs):
        return wrap(method(self._a, *host_args(args, name), **host_args(kwargs, name)))
    view.__name__ = name
    return view


class ndarray:  # noqa: N801 - CuPy's name
    """A device array: a NumPy array that only leaves the device through :meth:`get`."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, a: np.ndarray):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"the stand-in wraps NumPy arrays, got {type(a)}")
        self._a = a

    # ----- metadata ------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    ndim = property(lambda self: self._a.ndim)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self._a.shape, "typestr": self._a.dtype.str, "strides": self._a.strides,
                "data": (self._a.__array_interface__["data"][0], False), "version": 3}

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (ndarray(np.asarray(self._a[i])) for i in range(len(self._a)))

    # ----- the device boundary ---------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                        "to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True) -> np.ndarray:
        sync()
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None) -> None:
        if not isinstance(arr, np.ndarray) or arr.shape != self._a.shape:
            raise ValueError("set() needs a NumPy array of the same shape")
        self._a[...] = arr

    def _scalar(self, convert):
        if self._a.size != 1:
            raise TypeError("only size-1 arrays can be converted to Python scalars")
        sync()
        return convert(self._a.reshape(()).item())

    def __float__(self) -> float:
        return self._scalar(float)

    def __int__(self) -> int:
        return self._scalar(int)

    def __complex__(self) -> complex:
        return self._scalar(complex)

    def __bool__(self) -> bool:
        return self._scalar(bool)

    def item(self):
        return self._scalar(lambda v: v)

    def tolist(self):
        sync()
        return self._a.tolist()

    def __repr__(self) -> str:
        sync()
        return repr(self._a)

    def __str__(self) -> str:
        sync()
        return str(self._a)

    def __format__(self, spec: str) -> str:
        sync()
        return format(self._a.reshape(()).item() if self._a.ndim == 0 else self._a, spec)

    def __reduce__(self):
        sync()
        return (ndarray, (self._a.copy(),))

    # ----- NumPy's protocols: CuPy accepts NumPy's ufuncs and array functions --------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        from . import api  # noqa: PLC0415 - the module namespace is built on this class

        shim = getattr(api.MODULE, ufunc.__name__, None)
        if method != "__call__" or not isinstance(shim, api.ufunc):
            return NotImplemented
        return shim(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        from . import api  # noqa: PLC0415

        home = api.MODULE.linalg if func.__module__.endswith("linalg") else api.MODULE
        shim = getattr(home, func.__name__, None)
        if shim is None:
            return NotImplemented
        return shim(*args, **kwargs)

    # ----- indexing -----------------------------------------------------------------------
    def __getitem__(self, key):
        if _gathers(key):
            launch("take")
        r = self._a[index_value(key)]
        return ndarray(r if isinstance(r, np.ndarray) else np.asarray(r))

    def __setitem__(self, key, value):
        launch("setitem")
        if isinstance(value, ndarray):
            value = value._a
        self._a[index_value(key)] = value

    # ----- methods ------------------------------------------------------------------------
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if copy or np.dtype(dtype) != self._a.dtype:
            launch("astype")
        return ndarray(self._a.astype(dtype, order=order, copy=copy))

    def copy(self, order="C"):
        launch("copy")
        return ndarray(self._a.copy(order=order))

    def fill(self, value):
        launch("fill")
        self._a.fill(operand(value, "cupy.ndarray.fill"))

    def view(self, dtype=None):
        return ndarray(self._a.view() if dtype is None else self._a.view(dtype))

    def sort(self, axis=-1):
        self._a.sort(axis=axis)

    def dot(self, b, out=None):
        from . import api  # noqa: PLC0415

        return api.MODULE.dot(self, b, out=out)

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    __hash__ = None

    def __pos__(self):
        launch("copy")
        return ndarray(self._a.copy())


for _name in ("sum", "mean", "prod", "max", "min", "var", "std", "any", "all", "argmax",
              "argmin", "cumsum", "cumprod", "clip", "round", "trace", "nonzero", "argsort",
              "take", "repeat", "conj", "conjugate", "ptp"):
    if hasattr(np.ndarray, _name):
        setattr(ndarray, _name, _reduction(_name))
for _name in ("reshape", "ravel", "flatten", "transpose", "swapaxes", "squeeze", "diagonal"):
    setattr(ndarray, _name, _view(_name))
for _dunder, _uf in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"),
                     ("truediv", "divide"), ("floordiv", "floor_divide"), ("mod", "remainder"),
                     ("pow", "power"), ("matmul", "matmul"), ("and", "bitwise_and"),
                     ("or", "bitwise_or"), ("xor", "bitwise_xor"), ("lshift", "left_shift"),
                     ("rshift", "right_shift")):
    setattr(ndarray, f"__{_dunder}__", _binary(_uf))
    setattr(ndarray, f"__r{_dunder}__", _binary(_uf, reflected=True))
    setattr(ndarray, f"__i{_dunder}__", _inplace(_uf))
for _dunder, _uf in (("lt", "less"), ("le", "less_equal"), ("gt", "greater"),
                     ("ge", "greater_equal"), ("eq", "equal"), ("ne", "not_equal")):
    setattr(ndarray, f"__{_dunder}__", _binary(_uf, comparison=True))
for _dunder, _uf in (("neg", "negative"), ("abs", "absolute"), ("invert", "invert")):
    setattr(ndarray, f"__{_dunder}__", _unary(_uf))
ndarray.__module__ = "cupy"
ndarray.__qualname__ = "ndarray"
assert builtins.all(hasattr(ndarray, m) for m in ("__add__", "__radd__", "sum", "reshape"))
