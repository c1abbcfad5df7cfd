"""The one seam between refvae's computation and an array library (NumPy on the CPU, CuPy on a GPU).

Computation modules never import NumPy, CuPy or SciPy: they receive a :class:`Backend` and use
``bk.xp`` (the array module) and the few special functions listed on it. Host/device copies happen
here (:meth:`Backend.asarray`, :meth:`Backend.to_numpy`) and nowhere else.

Random numbers are drawn on the host by :class:`NoiseSource` (a NumPy ``Generator``) and moved to
the device, so a seed gives bit-identical base noise on every backend and its state can be saved in
a checkpoint without pickle. :class:`DeviceNoise` draws the base noise on the device instead (no
copy per step; ``refvae train --device-noise``), at the price of another stream on each backend.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import scipy.special as _sp

from .errors import BackendError, ConfigError

BACKENDS = ("numpy", "cupy")
DTYPES = {"float64": np.float64, "float32": np.float32}


@dataclass(frozen=True)
class Backend:
    """An array module with a working dtype.

    Attributes
    ----------
    name: ``"numpy"`` or ``"cupy"``.
    xp: the array module (``numpy`` or ``cupy``).
    dtype: the floating dtype every array of the computation uses (float64 by default).
    special: ``expit``, ``logsumexp``, ``gammaln``, ``ndtr`` from SciPy or ``cupyx.scipy``.
    """

    name: str
    xp: Any
    dtype: Any
    special: Any

    @property
    def dtype_name(self) -> str:
        return np.dtype(self.dtype).name

    def asarray(self, a, dtype=None):
        """Host or device data -> a device array of the working dtype (or ``dtype``)."""
        return self.xp.asarray(a, dtype=self.dtype if dtype is None else dtype)

    def to_numpy(self, a) -> np.ndarray:
        """Device array (or scalar) -> host NumPy array."""
        if self.name == "cupy" and hasattr(a, "get"):
            return a.get()
        return np.asarray(a)

    def to_float(self, a) -> float:
        """A 0-d device array -> Python float (a device sync on CuPy)."""
        return float(self.to_numpy(a))

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on NumPy); used by benchmarks."""
        if self.name == "cupy":
            self.xp.cuda.Device().synchronize()

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"Backend({self.name!r}, {self.dtype_name!r})"


def _numpy_special():
    return SimpleNamespace(expit=_sp.expit, logsumexp=_sp.logsumexp, gammaln=_sp.gammaln,
                           ndtr=_sp.ndtr)


def _cupy_modules():
    try:
        import cupy  # noqa: PLC0415 - optional dependency, imported only on request
        import cupyx.scipy.special as cusp  # noqa: PLC0415
    except ImportError as exc:
        raise BackendError(
            "backend 'cupy' was requested but CuPy is not installed; "
            "install it with `pip install 'refvae[gpu]'` (CUDA 12) or `'refvae[gpu-cuda13]'`, "
            "or use --backend numpy") from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        raise BackendError(f"backend 'cupy' was requested but no usable GPU was found ({exc}); "
                           "use --backend numpy") from exc
    if n < 1:
        raise BackendError("backend 'cupy' was requested but no GPU is visible; use --backend "
                           "numpy")
    special = SimpleNamespace(expit=cusp.expit, logsumexp=cusp.logsumexp, gammaln=cusp.gammaln,
                              ndtr=cusp.ndtr)
    try:
        _probe(cupy)
    except Exception as exc:  # a missing CUDA library (NVRTC, cuBLAS), a driver too old: one line
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BackendError(f"backend 'cupy' was requested but CuPy cannot run on this GPU "
                           f"({type(exc).__name__}: {detail}); install the CUDA libraries with "
                           "`pip install 'refvae[gpu]'` (CUDA 12) or `'refvae[gpu-cuda13]'`, "
                           "or use --backend numpy") from exc
    return cupy, special


# The kernel get_backend("cupy") compiles and runs once (a broken NVRTC fails here, not mid-run).
PROBE_NAME, PROBE_CUDA = "refvae_probe", "y = x + x;"


def _probe(cupy) -> None:
    """Run what a training step needs once: a compiled elementwise kernel (NVRTC), a matrix
    product (cuBLAS) and a copy back to the host; raises whatever CuPy raises."""
    a = cupy.asarray([[1.0, 2.0], [3.0, 4.0]])
    twice = cupy.ElementwiseKernel("T x", "T y", PROBE_CUDA, PROBE_NAME)
    b = twice(a, cupy.empty_like(a)) @ a
    if b.get().tolist() != [[14.0, 20.0], [30.0, 44.0]]:
        raise RuntimeError(f"a 2x2 product gave {b.get().tolist()}")


_CACHE: dict[tuple[str, str], Backend] = {}


def get_backend(name: str | Backend = "numpy", dtype: str = "float64") -> Backend:
    """Return the backend called ``name`` (``numpy`` or ``cupy``) working in ``dtype``.

    A :class:`Backend` passed as ``name`` is returned unchanged. Unknown names or dtypes, and
    ``cupy`` without CuPy or without a GPU, raise :class:`~refvae.errors.BackendError` /
    :class:`~refvae.errors.ConfigError` with a message that says what to do.
    """
    if isinstance(name, Backend):
        return name
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    dtype = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    key = (name, dtype)
    if key not in _CACHE:
        if name == "numpy":
            _CACHE[key] = Backend("numpy", np, DTYPES[dtype], _numpy_special())
        else:
            xp, special = _cupy_modules()
            _CACHE[key] = Backend("cupy", xp, DTYPES[dtype], special)
    return _CACHE[key]


def available_backends() -> list[str]:
    """Names of the backends usable on this machine (``numpy`` always; ``cupy`` with a GPU)."""
    names = ["numpy"]
    try:
        get_backend("cupy")
        names.append("cupy")
    except BackendError:
        pass
    return names


def array_module(a):
    """The array module an array belongs to (used by host-side tools such as gradcheck)."""
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        import cupy  # noqa: PLC0415

        return cupy
    return np


def to_host(a) -> np.ndarray:
    """Any array -> a host NumPy array: CuPy arrays through ``.get()``, other device arrays that
    expose ``__cuda_array_interface__`` through CuPy, everything else through ``np.asarray``."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    if hasattr(a, "__cuda_array_interface__"):
        import cupy  # noqa: PLC0415

        return cupy.asarray(a).get()
    return np.asarray(a)


class NoiseSource:
    """Seeded generator of the base noises the library uses, drawn on the host.

    Standard normal ``eps`` (Gaussian latents), uniform on the open interval (0, 1) (inverse-CDF
    transforms, Eq. 8.23), and standard Gumbel (Eq. 8.28). The same seed gives the same numbers on
    every backend; :meth:`state` / :meth:`set_state` round-trip through JSON (checkpoints never
    use pickle).
    """

    def __init__(self, seed: int | None = 0):
        from .util.checked import checked  # noqa: PLC0415 - keep the import of refvae light

        if isinstance(seed, (list, tuple)):  # a sequence of entropy words (SeedSequence)
            seed = [checked(s, "seed entry", integer=True, minimum=0) for s in seed]
        else:
            seed = checked(seed, "seed", integer=True, minimum=0, none=True)
        self._gen = np.random.Generator(np.random.PCG64(seed))

    def normal(self, shape, bk: Backend | None = None):
        return self._out(self._gen.standard_normal(shape), bk)

    def uniform(self, shape, bk: Backend | None = None):
        """Uniform on (0, 1), never exactly 0 (NumPy draws [0, 1); 0 is mapped to the next float
        up)."""
        u = self._gen.random(shape)
        u[u == 0.0] = np.nextafter(0.0, 1.0)
        return self._out(u, bk)

    def gumbel(self, shape, bk: Backend | None = None):
        """Standard Gumbel as ``-log E`` with ``E`` standard exponential (exact at both tails)."""
        return self._out(-np.log(self._gen.standard_exponential(shape)), bk)

    def integers(self, high: int, size=None):
        return self._gen.integers(high, size=size)

    def permutation(self, n: int) -> np.ndarray:
        return self._gen.permutation(n)

    def binomial_like(self, p: np.ndarray) -> np.ndarray:
        """Bernoulli draws with probabilities ``p`` (dynamic binarization), on the host."""
        return (self._gen.random(p.shape) < p).astype(p.dtype)

    def state(self) -> str:
        return json.dumps(self._gen.bit_generator.state)

    def set_state(self, state: str) -> None:
        self._gen.bit_generator.state = json.loads(state)

    @staticmethod
    def _out(a: np.ndarray, bk: Backend | None):
        return a if bk is None else bk.asarray(a)


class DeviceNoise:
    """The base noises of :class:`NoiseSource` (normal, uniform on (0, 1), Gumbel) drawn on the
    device by the array library's own generator (CuPy's on a GPU, NumPy's on the CPU), seeded by
    ``seed`` (an int or a sequence of ints): no host draw and no host→device copy per step, but
    another stream than :class:`NoiseSource`'s, and another on each backend."""

    def __init__(self, bk: Backend, seed):
        self._bk = bk
        state = np.random.SeedSequence(seed).generate_state(1)[0]
        self._gen = bk.xp.random.default_rng(int(state))

    def normal(self, shape, bk: Backend | None = None):
        return self._gen.standard_normal(shape, dtype=self._bk.dtype)

    def uniform(self, shape, bk: Backend | None = None):
        """Uniform on (0, 1): a draw of 0 becomes the next float up, as in :class:`NoiseSource`."""
        u = self._gen.random(shape, dtype=self._bk.dtype)
        return self._bk.xp.maximum(u, np.nextafter(self._bk.dtype(0), self._bk.dtype(1)))

    def gumbel(self, shape, bk: Backend | None = None):
        return -self._bk.xp.log(self._gen.standard_exponential(shape, dtype=self._bk.dtype))
