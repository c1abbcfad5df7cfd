"""First-order optimizers over one flat parameter buffer, and learning-rate schedules.

All parameters live in one contiguous vector (:class:`FlatParams`) with a per-parameter view in
``state_dict`` order, and so does their gradient (docs/DERIVATIONS.md#optimizers). An optimizer then
updates one vector in place with a handful of whole-buffer operations, writing intermediate results
into scratch buffers allocated once, so a step allocates no new arrays.

The update rules follow PyTorch's ``torch.optim`` exactly (the tests compare with it in float64):

* :class:`SGD` — stochastic gradient descent (Robbins & Monro 1951) with heavy-ball momentum
  (Polyak 1964) or Nesterov momentum in the form of Sutskever et al. (2013), ICML.
* :class:`Adam` — Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization", ICLR,
  Algorithm 1 with the bias corrections folded into the step size; ``decoupled=True`` gives AdamW
  (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", ICLR, Algorithm 2).
* :class:`Adagrad` — Duchi, Hazan & Singer (2011), "Adaptive Subgradient Methods for Online
  Learning and Stochastic Optimization", JMLR 12, diagonal form; the optimizer used by Kingma &
  Welling (2014), "Auto-Encoding Variational Bayes", ICLR, section 5.

``weight_decay`` is an L2 penalty added to the gradient (``g + λθ``), as in PyTorch, except in
AdamW where the parameters are shrunk directly (``θ ← (1 − ηλ) θ``).

Optimizer state round-trips through :meth:`Optimizer.state_dict` as host NumPy arrays and Python
numbers only, so it can be stored in an ``.npz`` without pickle and restored bit for bit.

This module does not import NumPy: it uses ``bk.xp`` of the :class:`~refvae.backend.Backend` that
owns the buffers.
"""
from __future__ import annotations

import inspect
import math
import threading
from typing import Callable

from .backend import Backend
from .errors import CheckpointError, ConfigError, ShapeError, name_mismatch


# ---------------------------------------------------------------------------------------------
# The flat parameter buffer
# ---------------------------------------------------------------------------------------------
# Values per update pass on the CPU (0.5 MB per float32 buffer): few passes stay in cache, few calls.
BLOCK = 131072


class FlatParams:
    """All parameters in one contiguous vector, with a view per parameter, and the same for grads.

    ``shapes`` gives the names and shapes in ``state_dict`` order; the buffers are laid out in that
    order. ``params[name]`` and ``grads[name]`` are views: writing through them changes ``data`` and
    ``grad``, and the optimizer's in-place updates of ``data`` are seen through them.
    """

    def __init__(self, bk: Backend, shapes: dict):
        self.bk = bk
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.slices: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, shape in shapes.items():
            shape = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
            if any(d < 0 for d in shape):
                raise ShapeError(f"parameter {name!r} has a negative dimension in shape {shape}; "
                                 "give non-negative sizes")
            n = math.prod(shape)
            self.shapes[str(name)] = shape
            self.slices[str(name)] = (offset, offset + n)
            offset += n
        self.size = offset
        self.data = bk.xp.zeros(offset, dtype=bk.dtype)
        self.grad = bk.xp.zeros(offset, dtype=bk.dtype)
        self.params = self._views(self.data)
        self.grads = self._views(self.grad)

    @classmethod
    def from_dict(cls, bk: Backend, params: dict) -> "FlatParams":
        """A buffer laid out like ``params`` (in its iteration order), holding a copy of its values."""
        shapes = {name: tuple(getattr(a, "shape", ())) for name, a in params.items()}
        flat = cls(bk, shapes)
        flat.load(params)
        return flat

    @property
    def names(self) -> list[str]:
        return list(self.shapes)

    @property
    def dtype(self):
        return self.data.dtype

    def _views(self, buf) -> dict:
        return {name: buf[a:b].reshape(self.shapes[name]) for name, (a, b) in self.slices.items()}

    def _copy_in(self, values: dict, views: dict, what: str) -> None:
        missing = [n for n in self.shapes if n not in values]
        extra = [n for n in values if n not in self.shapes]
        if missing or extra:
            raise ShapeError(f"{what} do not match the parameter layout ({name_mismatch(missing, extra)}); "
                             "pass exactly one array per parameter")
        for name, value in values.items():
            a = self.bk.asarray(value, dtype=self.data.dtype)
            if tuple(a.shape) != self.shapes[name]:
                raise ShapeError(f"{what[:-1]} {name!r} has shape {tuple(a.shape)}, expected "
                                 f"{self.shapes[name]}; pass arrays in state_dict layout")
            views[name][...] = a

    def load(self, params: dict) -> None:
        """Copy parameter values into the buffer (every name, matching shapes)."""
        self._copy_in(params, self.params, "parameters")

    def set_grads(self, grads: dict) -> None:
        """Copy gradients into the gradient buffer (every name, matching shapes)."""
        self._copy_in(grads, self.grads, "gradients")

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def to_dict(self, copy: bool = True) -> dict:
        """The parameters as a dict in layout order: copies (default) or the live views."""
        return {n: (v.copy() if copy else v) for n, v in self.params.items()}

    def to_numpy(self) -> dict:
        """Host NumPy copies of the parameters (for checkpoints and interchange)."""
        return {n: self.bk.to_numpy(v).copy() for n, v in self.params.items()}

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"FlatParams({len(self.shapes)} tensors, {self.size} values, {self.bk!r})"


# ---------------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------------
def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


class Optimizer:
    """Common machinery: lazily allocated state and scratch buffers, state_dict round trip.

    Subclasses define ``name``, ``_HYPER`` (hyperparameter names: floats, or ints for flags),
    ``_BUFFERS`` (state buffer names) and :meth:`_update`.
    """

    name = "optimizer"
    _HYPER: tuple[str, ...] = ()
    _FLAGS: tuple[str, ...] = ()  # hyperparameters stored as 0/1 ints
    _BUFFERS: tuple[str, ...] = ()

    def __init__(self, bk: Backend | None = None, size: int | None = None):
        self.t = 0                 # number of steps taken
        self._bk = bk
        self._size = None if size is None else int(size)
        self._dtype = None
        self._state: dict = {}     # buffer name -> device array
        self._pending: dict = {}   # loaded host buffers waiting for the first step's backend
        self._local = threading.local()  # scratch buffers, one set per thread (Workers)
        if bk is not None and size is not None:
            self._allocate(bk, self._size, bk.dtype)

    # ----- state -------------------------------------------------------------------------------
    def _active_buffers(self) -> tuple[str, ...]:
        return self._BUFFERS

    def _init_value(self, name: str) -> float:
        return 0.0

    def _allocate(self, bk: Backend, size: int, dtype) -> None:
        self._bk, self._size, self._dtype = bk, size, dtype
        self._state = {}
        for name in self._active_buffers():
            buf = bk.xp.zeros(size, dtype=dtype)
            v = self._init_value(name)
            if v:
                buf.fill(v)
            self._state[name] = buf
        self._local = threading.local()

    def _ensure(self, flat: FlatParams) -> None:
        """Bind the state to ``flat``'s backend, size and dtype (allocating or moving it once)."""
        bk, size, dtype = flat.bk, flat.size, flat.data.dtype
        if self._state and self._size != size:
            raise ShapeError(f"{self.name} state holds {self._size} values but the parameters "
                             f"have {size}; use a fresh optimizer for a different model")
        if (self._bk != bk or self._size != size or self._dtype != dtype
                or len(self._state) != len(self._active_buffers())):
            host = {k: self._bk.to_numpy(v) for k, v in self._state.items()}
            self._allocate(bk, size, dtype)
            for k, v in host.items():
                self._state[k][...] = bk.asarray(v, dtype=dtype)
        if self._pending:
            for k, v in self._pending.items():
                if tuple(v.shape) != (size,):
                    raise CheckpointError(f"{self.name} state {k!r} has {v.shape[0]} values but "
                                          f"the parameters have {size}; load the state of the "
                                          "same model")
                self._state[k][...] = bk.asarray(v, dtype=dtype)
            self._pending = {}

    def _block(self) -> int:
        """Values updated per pass: blocks on the CPU, so that a dozen passes over the buffers do not
        each stream them through memory (Adam on the 650k float64 values of the pytorch/examples
        VAE: 7.5 → 5.8 ms on one core); one block on a GPU, where every pass is a kernel launch."""
        return self._size if self._bk.name == "cupy" else min(self._size, BLOCK)

    def _tmp(self, k: int, n: int):
        """The first ``n`` values of this thread's scratch buffer ``k`` (allocated once, one block long)."""
        if not hasattr(self._local, "buffers"):
            self._local.buffers = []
        scratch = self._local.buffers
        while len(scratch) <= k:
            scratch.append(self._bk.xp.empty(self._block(), dtype=self._dtype))
        return scratch[k][:n]

    def _decayed_grad(self, p, g, weight_decay: float):
        """``g + λθ`` (L2 penalty as a gradient term) in a scratch buffer, or ``g`` when ``λ = 0``."""
        if not weight_decay:
            return g
        G = self._tmp(0, p.size)
        self._bk.xp.multiply(p, weight_decay, out=G)
        G += g
        return G

    # ----- public interface ------------------------------------------------------------------
    def step(self, flat: FlatParams, lr: float | None = None, workers=None) -> None:
        """One update of ``flat.data`` in place from ``flat.grad``; ``lr`` overrides the base rate.

        ``workers`` (:class:`refvae.parallel.Workers`) splits the update into contiguous parts run on
        its threads (CPU only); every value gets the same arithmetic either way.
        """
        self._ensure(flat)
        self.t += 1
        lr = float(self.lr if lr is None else lr)
        block = self._block()

        def run(part: slice) -> None:
            for a in range(part.start, part.stop, block):
                b = min(a + block, part.stop)
                self._update(flat.data[a:b], flat.grad[a:b], lr, {k: v[a:b] for k, v in self._state.items()})

        if workers is None or self._bk.name == "cupy":
            run(slice(0, self._size))
        else:
            workers.map(run, workers.split(self._size))

    def _update(self, p, g, lr: float, state: dict) -> None:  # pragma: no cover - abstract
        """Update one block ``p`` in place from ``g``; ``state`` holds the same block of each buffer."""
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        return {k: (int(getattr(self, k)) if k in self._FLAGS else float(getattr(self, k)))
                for k in self._HYPER}

    def state_dict(self) -> dict:
        """Step count, hyperparameters and state buffers as Python numbers and host NumPy copies."""
        d: dict = {"step": int(self.t)}
        d.update(self.hyperparameters())
        for k, v in self._state.items():
            d[k] = self._bk.to_numpy(v).copy()
        for k, v in self._pending.items():
            d[k] = v.copy()
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore a :meth:`state_dict` (values may be Python numbers or 0-d arrays, e.g. from npz).

        The step count, the hyperparameters and the buffers are all restored; on any mismatch a
        :class:`~refvae.errors.CheckpointError` is raised and the optimizer is left unchanged.
        """
        missing = sorted({"step", *self._HYPER} - set(d))
        if missing:
            raise CheckpointError(f"{self.name} state does not match (missing {', '.join(missing)}); "
                                  f"load a state saved by {self.name}")
        try:
            step = int(d["step"])
            hyper = {k: float(d[k]) for k in self._HYPER}
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.name} state has a non-numeric step or hyperparameter "
                                  f"({exc}); the state is corrupt") from exc
        for k in self._FLAGS:
            hyper[k] = bool(hyper[k])
        old = {k: getattr(self, k) for k in self._HYPER}
        for k, v in hyper.items():
            setattr(self, k, v)
        try:
            pending = self._check_loaded_buffers(d, step)
        except (CheckpointError, ConfigError) as exc:
            for k, v in old.items():
                setattr(self, k, v)
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(str(exc)) from exc
        self.t = step
        if self._size is not None and self._bk is not None:
            self._allocate(self._bk, self._size, self._dtype or self._bk.dtype)
            for k, v in pending.items():
                self._state[k][...] = self._bk.asarray(v, dtype=self._dtype)
            self._pending = {}
        else:
            self._state, self._pending = {}, pending

    def _check_loaded_buffers(self, d: dict, step: int) -> dict:
        """Validate a loaded state against the (new) hyperparameters; return its buffers."""
        active = self._active_buffers()
        extra = sorted(set(d) - {"step", *self._HYPER, *active})
        if extra:
            raise CheckpointError(f"{self.name} state does not match (unexpected {', '.join(extra)}); "
                                  f"load a state saved by {self.name}")
        self._validate()
        absent = [k for k in active if k not in d]
        if step < 0 or (step > 0 and absent):
            raise CheckpointError(f"{self.name} state at step {step} lacks {', '.join(absent)}; "
                                  "the state is incomplete")
        pending = {}
        for k in active:
            if k not in d:
                continue
            v = d[k]
            shape = tuple(getattr(v, "shape", ()))
            if len(shape) != 1:
                raise CheckpointError(f"{self.name} state {k!r} has shape {shape}, expected a "
                                      "flat vector; the state is corrupt")
            if self._size is not None and shape != (self._size,):
                raise CheckpointError(f"{self.name} state {k!r} has {shape[0]} values but the "
                                      f"parameters have {self._size}; load the state of the "
                                      "same model")
            pending[k] = v
        return pending

    def _validate(self) -> None:
        _check(self.lr >= 0 and math.isfinite(self.lr),
               f"{self.name}: lr must be a finite number >= 0, got {self.lr}; pass a valid lr")
        _check(self.weight_decay >= 0, f"{self.name}: weight_decay must be >= 0, got "
               f"{self.weight_decay}; pass a non-negative weight_decay")

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        args = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    With momentum μ and dampening τ: ``b ← g`` on the first step, then ``b ← μb + (1 − τ)g``;
    the step direction is ``b`` (heavy ball, Polyak 1964) or ``g + μb`` (Nesterov, in the form of
    Sutskever et al. 2013); ``θ ← θ − η·direction``. ``g`` includes the L2 term ``λθ``.
    """

    name = "sgd"
    _HYPER = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
    _FLAGS = ("nesterov",)

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, dampening: float = 0.0, *, bk: Backend | None = None,
                 size: int | None = None):
        self.lr, self.momentum, self.dampening = float(lr), float(momentum), float(dampening)
        self.nesterov, self.weight_decay = bool(nesterov), float(weight_decay)
        self._validate()
        super().__init__(bk, size)

    def _validate(self) -> None:
        super()._validate()
        _check(self.momentum >= 0, f"sgd: momentum must be >= 0, got {self.momentum}")
        _check(not self.nesterov or (self.momentum > 0 and self.dampening == 0),
               "sgd: nesterov needs momentum > 0 and dampening 0; set momentum or drop nesterov")

    def _active_buffers(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum else ()

    def _update(self, p, g, lr, state):
        xp = self._bk.xp
        g = self._decayed_grad(p, g, self.weight_decay)
        if self.momentum:
            b = state["momentum_buffer"]
            if self.t == 1:
                b[...] = g
            else:
                b *= self.momentum
                if self.dampening:
                    T = self._tmp(1, p.size)
                    xp.multiply(g, 1.0 - self.dampening, out=T)
                    b += T
                else:
                    b += g
            if self.nesterov:
                T = self._tmp(1, p.size)
                xp.multiply(b, self.momentum, out=T)
                T += g
                g = T
            else:
                g = b
        T = self._tmp(1, p.size)
        xp.multiply(g, lr, out=T)
        p -= T


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1), as ``torch.optim.Adam``; AdamW with ``decoupled``.

    ``m ← β₁m + (1 − β₁)g``, ``v ← β₂v + (1 − β₂)g²``, then
    ``θ ← θ − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)`` (ε added after the bias correction, as
    PyTorch does). Weight decay: ``g ← g + λθ`` (Adam), or ``θ ← (1 − ηλ)θ`` before the update
    (AdamW, Loshchilov & Hutter 2019).
    """

    name = "adam"
    _HYPER = ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled")
    _FLAGS = ("decoupled",)
    _BUFFERS = ("exp_avg", "exp_avg_sq")

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False, *, bk: Backend | None = None,
                 size: int | None = None):
        try:
            b1, b2 = betas
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"adam: betas must be a pair (beta1, beta2), got {betas!r}") from exc
        self.lr, self.beta1, self.beta2, self.eps = float(lr), float(b1), float(b2), float(eps)
        self.weight_decay, self.decoupled = float(weight_decay), bool(decoupled)
        self._validate()
        super().__init__(bk, size)

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    def _validate(self) -> None:
        super()._validate()
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
               f"adam: betas must lie in [0, 1), got ({self.beta1}, {self.beta2}); e.g. (0.9, 0.999)")
        _check(self.eps >= 0, f"adam: eps must be >= 0, got {self.eps}; e.g. 1e-8")

    def _update(self, p, g, lr, state):
        xp = self._bk.xp
        if self.decoupled:
            if self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
        else:
            g = self._decayed_grad(p, g, self.weight_decay)
        m, v, T = state["exp_avg"], state["exp_avg_sq"], self._tmp(1, p.size)
        # m ← m + (1 − β₁)(g − m);  v ← β₂v + (1 − β₂)g²
        xp.subtract(g, m, out=T)
        T *= 1.0 - self.beta1
        m += T
        v *= self.beta2
        xp.multiply(g, 1.0 - self.beta2, out=T)
        T *= g
        v += T
        # θ ← θ − η/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε), with √(1 − β₂ᵗ) moved to the numerator
        bc2_sqrt = math.sqrt(1.0 - self.beta2 ** self.t)
        xp.sqrt(v, out=T)
        T += self.eps * bc2_sqrt
        xp.divide(m, T, out=T)
        T *= lr * bc2_sqrt / (1.0 - self.beta1 ** self.t)
        p -= T


class Adagrad(Optimizer):
    """Diagonal Adagrad (Duchi, Hazan & Singer 2011), as ``torch.optim.Adagrad``.

    ``s ← s + g²`` (``s`` starts at ``initial_accumulator``), then
    ``θ ← θ − η_t · g / (√s + ε)`` with ``η_t = η / (1 + (t − 1)·lr_decay)``. This is the optimizer
    of Kingma & Welling (2014), section 5.
    """

    name = "adagrad"
    _HYPER = ("lr", "lr_decay", "eps", "initial_accumulator", "weight_decay")
    _BUFFERS = ("sum",)

    def __init__(self, lr: float = 1e-2, eps: float = 1e-10, initial_accumulator: float = 0.0,
                 weight_decay: float = 0.0, lr_decay: float = 0.0, *, bk: Backend | None = None,
                 size: int | None = None):
        self.lr, self.eps = float(lr), float(eps)
        self.initial_accumulator, self.weight_decay = float(initial_accumulator), float(weight_decay)
        self.lr_decay = float(lr_decay)
        self._validate()
        super().__init__(bk, size)

    def _validate(self) -> None:
        super()._validate()
        _check(self.eps >= 0, f"adagrad: eps must be >= 0, got {self.eps}; e.g. 1e-10")
        _check(self.initial_accumulator >= 0, "adagrad: initial_accumulator must be >= 0, got "
               f"{self.initial_accumulator}")
        _check(self.lr_decay >= 0, f"adagrad: lr_decay must be >= 0, got {self.lr_decay}")

    def _init_value(self, name: str) -> float:
        return self.initial_accumulator

    def _update(self, p, g, lr, state):
        xp = self._bk.xp
        g = self._decayed_grad(p, g, self.weight_decay)
        s, T = state["sum"], self._tmp(1, p.size)
        clr = lr / (1.0 + (self.t - 1) * self.lr_decay)
        xp.multiply(g, g, out=T)
        s += T
        xp.sqrt(s, out=T)
        T += self.eps
        xp.divide(g, T, out=T)
        T *= clr
        p -= T


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": Adam, "adagrad": Adagrad}


def make_optimizer(name: str, bk: Backend | None = None, size: int | None = None, **kw) -> Optimizer:
    """The optimizer called ``name`` (sgd, adam, adamw, adagrad) with state for ``size`` values.

    ``adamw`` is :class:`Adam` with ``decoupled=True``. Unknown names or options raise
    :class:`~refvae.errors.ConfigError`.
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[key]
    if key == "adamw":
        kw.setdefault("decoupled", True)
    allowed = [p.name for p in inspect.signature(cls.__init__).parameters.values()
               if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]
    bad = [k for k in kw if k not in allowed]
    if bad:
        raise ConfigError(f"optimizer {key!r} has no option {', '.join(map(repr, bad))}; "
                          f"its options are {', '.join(allowed)}")
    required = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"]
    absent = [k for k in required if k not in kw]
    if absent:
        raise ConfigError(f"optimizer {key!r} needs {', '.join(absent)}; pass it (e.g. lr=0.01)")
    return cls(**kw, bk=bk, size=size)


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules: callables step -> lr (step = number of steps or epochs already taken)
# ---------------------------------------------------------------------------------------------
class Schedule:
    """A learning rate as a function of the step count ``t = 0, 1, 2, …``."""

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _step_arg(step) -> int:
    step = int(step)
    if step < 0:
        raise ConfigError(f"schedule step must be >= 0, got {step}; count steps from 0")
    return step


class ConstantLR(Schedule):
    """``η_t = η``."""

    def __init__(self, base_lr: float):
        self.base_lr = float(base_lr)

    def __call__(self, step):
        _step_arg(step)
        return self.base_lr


class StepLR(Schedule):
    """Step decay: ``η_t = η · γ^⌊t / step_size⌋`` (as ``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, base_lr: float, step_size: int, gamma: float = 0.1):
        _check(int(step_size) >= 1, f"step schedule: step_size must be >= 1, got {step_size}")
        self.base_lr, self.step_size, self.gamma = float(base_lr), int(step_size), float(gamma)

    def __call__(self, step):
        return self.base_lr * self.gamma ** (_step_arg(step) // self.step_size)


class ExponentialLR(Schedule):
    """Exponential decay: ``η_t = η · γ^t``."""

    def __init__(self, base_lr: float, gamma: float):
        _check(float(gamma) > 0, f"exponential schedule: gamma must be > 0, got {gamma}")
        self.base_lr, self.gamma = float(base_lr), float(gamma)

    def __call__(self, step):
        return self.base_lr * self.gamma ** _step_arg(step)


class CosineLR(Schedule):
    """Cosine annealing without restarts (Loshchilov & Hutter 2017, "SGDR", ICLR, Eq. 5):
    ``η_t = η_min + (η − η_min)(1 + cos(π·min(t, T)/T))/2``, constant at ``η_min`` after ``T``."""

    def __init__(self, base_lr: float, total_steps: int, min_lr: float = 0.0):
        _check(int(total_steps) >= 1, f"cosine schedule: total_steps must be >= 1, got {total_steps}")
        self.base_lr, self.total_steps, self.min_lr = float(base_lr), int(total_steps), float(min_lr)

    def __call__(self, step):
        t = min(_step_arg(step), self.total_steps)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / self.total_steps))


class LinearWarmup(Schedule):
    """Linear warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 2.2):
    ``η_t = η·(t + 1)/W`` for ``t < W``, then ``after(t − W)`` (or ``η`` when ``after`` is None)."""

    def __init__(self, base_lr: float, warmup_steps: int, after: Callable[[int], float] | None = None):
        _check(int(warmup_steps) >= 1, f"warmup: warmup_steps must be >= 1, got {warmup_steps}")
        self.base_lr, self.warmup_steps, self.after = float(base_lr), int(warmup_steps), after

    def __call__(self, step):
        step = _step_arg(step)
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        return self.base_lr if self.after is None else float(self.after(step - self.warmup_steps))


SCHEDULES = {"constant": ConstantLR, "step": StepLR, "exponential": ExponentialLR,
             "cosine": CosineLR, "warmup": LinearWarmup}


def make_schedule(name: str, base_lr: float, warmup_steps: int = 0, **kw) -> Schedule:
    """The schedule called ``name`` (constant, step, exponential, cosine, warmup).

    ``warmup_steps > 0`` prefixes any schedule with a linear warmup (the wrapped schedule then
    starts counting after the warmup); ``"warmup"`` alone is warmup then constant. Options:
    step: ``step_size``, ``gamma``; exponential: ``gamma``; cosine: ``total_steps``, ``min_lr``.
    """
    key = str(name).lower()
    if key not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if key == "warmup":
        _check(not kw, f"schedule 'warmup' takes only warmup_steps, got {', '.join(kw)}")
        return LinearWarmup(base_lr, warmup_steps or 1)
    try:
        inner = SCHEDULES[key](base_lr, **kw)
    except TypeError as exc:
        raise ConfigError(f"schedule {key!r}: bad or missing option ({exc}); see make_schedule's "
                          "docstring for its options") from exc
    return LinearWarmup(base_lr, warmup_steps, inner) if warmup_steps else inner
