"""First-order optimizers over one flat parameter buffer (docs/DERIVATIONS.md#optimizers).

All parameters live in one contiguous vector (:class:`FlatParams`) with a per-parameter view in
``state_dict`` order, and so does their gradient. Each optimizer's :meth:`~Optimizer.update` is its
update rule, written as the formula, following PyTorch's ``torch.optim`` exactly (the tests compare
with it in float64):

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

:func:`make_optimizer` returns the plain rule; :func:`refvae.fast.optim.make_optimizer` the fast
path of the same rule (blocks, scratch buffers, threads; bit-identical, tested). Optimizer state
round-trips through :meth:`Optimizer.state_dict` as host NumPy arrays and Python numbers only, so it
can be stored in an ``.npz`` without pickle.

The learning-rate schedules live in :mod:`refvae.optim.schedules`. This module does
not import NumPy: it uses ``bk.xp`` of the :class:`~refvae.backend.Backend` that owns the buffers.
"""
from __future__ import annotations

import math

from ..backend import Backend
from ..errors import ConfigError, ShapeError, name_mismatch, require
from .state import OptimizerState


# ---------------------------------------------------------------------------------------------
# The flat parameter buffer
# ---------------------------------------------------------------------------------------------
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
        """A buffer laid out like ``params`` (in its iteration order), holding a copy of its
        values."""
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
            raise ShapeError(f"{what} do not match the parameter layout "
                             f"({name_mismatch(missing, extra)}); "
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



class Optimizer(OptimizerState):
    """An update rule over a :class:`FlatParams` buffer, with its state (:class:`OptimizerState`).

    Subclasses define ``name``, ``OPTIONS`` (constructor options; ``REQUIRED`` those without a
    default), the state's ``_HYPER``, ``_FLAGS`` and ``_BUFFERS``, and :meth:`update`.
    """

    OPTIONS: tuple[str, ...] = ()
    REQUIRED: tuple[str, ...] = ()

    def update(self, theta, g, lr: float, state: dict) -> None:  # pragma: no cover - abstract
        """The update rule: ``theta`` in place from the gradient ``g`` at step ``self.t``; ``state``
        holds the state buffers (the same slice of each as ``theta``)."""
        raise NotImplementedError

    def step(self, flat: FlatParams, lr: float | None = None, workers=None) -> None:
        """One update of ``flat.data`` in place from ``flat.grad``; ``lr`` overrides the base rate.

        The plain rule runs on the calling thread; ``workers`` is used by the fast path
        (:mod:`refvae.fast.optim`) and ignored here.
        """
        self._ensure(flat)
        self.t += 1
        self.update(flat.data, flat.grad, float(self.lr if lr is None else lr), self._state)

    def _validate(self) -> None:
        require(self.lr >= 0 and math.isfinite(self.lr),
               f"{self.name}: lr must be a finite number >= 0, got {self.lr}; pass a valid lr")
        require(self.weight_decay >= 0, f"{self.name}: weight_decay must be >= 0, got "
               f"{self.weight_decay}; pass a non-negative weight_decay")

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        args = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    With momentum μ and dampening τ: ``b ← g`` on the first step, then
    ``b ← μb + (1 − τ)g``; the step direction is ``b`` (heavy ball, Polyak 1964) or
    ``g + μb`` (Nesterov, in the form of Sutskever et al. 2013); ``θ ← θ − η·direction``.
    ``g`` includes the L2 term ``λθ``.
    """

    name = "sgd"
    OPTIONS = ("lr", "momentum", "nesterov", "weight_decay", "dampening")
    REQUIRED = ("lr",)
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
        require(self.momentum >= 0, f"sgd: momentum must be >= 0, got {self.momentum}")
        require(not self.nesterov or (self.momentum > 0 and self.dampening == 0),
               "sgd: nesterov needs momentum > 0 and dampening 0; set momentum or drop nesterov")

    def _active_buffers(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum else ()

    def update(self, theta, g, lr, state):
        if self.weight_decay:
            g = g + self.weight_decay * theta
        if self.momentum:
            b = state["momentum_buffer"]
            b[...] = g if self.t == 1 else self.momentum * b + (1.0 - self.dampening) * g
            g = g + self.momentum * b if self.nesterov else b
        theta -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1), as ``torch.optim.Adam``; AdamW with ``decoupled``.

    ``m ← β₁m + (1 − β₁)g``, ``v ← β₂v + (1 − β₂)g²``, then
    ``θ ← θ − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)`` (ε added
    after the bias correction, as PyTorch does). Weight decay: ``g ← g + λθ`` (Adam), or
    ``θ ← (1 − ηλ)θ`` before the update (AdamW, Loshchilov & Hutter 2019).
    """

    name = "adam"
    OPTIONS = ("lr", "betas", "eps", "weight_decay", "decoupled")
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
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
               f"adam: betas must lie in [0, 1), got ({self.beta1}, {self.beta2}); e.g. (0.9, "
               "0.999)")
        require(self.eps >= 0, f"adam: eps must be >= 0, got {self.eps}; e.g. 1e-8")

    def step_sizes(self, lr: float) -> tuple[float, float]:
        """``(η √(1 − β₂ᵗ)/(1 − β₁ᵗ), ε √(1 − β₂ᵗ))``: the bias
        corrections folded into two scalars."""
        bc2_sqrt = math.sqrt(1.0 - self.beta2 ** self.t)
        return lr * bc2_sqrt / (1.0 - self.beta1 ** self.t), self.eps * bc2_sqrt

    def update(self, theta, g, lr, state):
        xp = self._bk.xp
        if self.decoupled and self.weight_decay:
            theta *= 1.0 - lr * self.weight_decay
        elif self.weight_decay:
            g = g + self.weight_decay * theta
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1.0 - self.beta1) * (g - m)          # = β₁m + (1 − β₁)g, as torch's lerp
        v *= self.beta2
        v += (1.0 - self.beta2) * g * g
        scale, eps = self.step_sizes(lr)
        theta -= scale * (m / (xp.sqrt(v) + eps))


class Adagrad(Optimizer):
    """Diagonal Adagrad (Duchi, Hazan & Singer 2011), as ``torch.optim.Adagrad``.

    ``s ← s + g²`` (``s`` starts at ``initial_accumulator``), then
    ``θ ← θ − η_t · g / (√s + ε)`` with ``η_t = η / (1 + (t − 1)·lr_decay)``. This
    is the optimizer of Kingma & Welling (2014), section 5.
    """

    name = "adagrad"
    OPTIONS = ("lr", "eps", "initial_accumulator", "weight_decay", "lr_decay")
    _HYPER = ("lr", "lr_decay", "eps", "initial_accumulator", "weight_decay")
    _BUFFERS = ("sum",)

    def __init__(self, lr: float = 1e-2, eps: float = 1e-10, initial_accumulator: float = 0.0,
                 weight_decay: float = 0.0, lr_decay: float = 0.0, *, bk: Backend | None = None,
                 size: int | None = None):
        self.lr, self.eps = float(lr), float(eps)
        self.initial_accumulator, self.weight_decay = (float(initial_accumulator),
                                                       float(weight_decay))
        self.lr_decay = float(lr_decay)
        self._validate()
        super().__init__(bk, size)

    def _validate(self) -> None:
        super()._validate()
        require(self.eps >= 0, f"adagrad: eps must be >= 0, got {self.eps}; e.g. 1e-10")
        require(self.initial_accumulator >= 0, "adagrad: initial_accumulator must be >= 0, got "
               f"{self.initial_accumulator}")
        require(self.lr_decay >= 0, f"adagrad: lr_decay must be >= 0, got {self.lr_decay}")

    def _init_value(self, name: str) -> float:
        return self.initial_accumulator

    def decayed_lr(self, lr: float) -> float:
        """``η_t = η / (1 + (t − 1)·lr_decay)``."""
        return lr / (1.0 + (self.t - 1) * self.lr_decay)

    def update(self, theta, g, lr, state):
        if self.weight_decay:
            g = g + self.weight_decay * theta
        s = state["sum"]
        s += g * g
        theta -= self.decayed_lr(lr) * (g / (self._bk.xp.sqrt(s) + self.eps))


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": Adam, "adagrad": Adagrad}


def resolve(name: str, options: dict) -> tuple[type, dict]:
    """The class of the optimizer called ``name`` (sgd, adam, adamw, adagrad) and its checked
    options; ``adamw`` is :class:`Adam` with ``decoupled=True``. Unknown names or options raise
    :class:`~refvae.errors.ConfigError`."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    cls, kw = OPTIMIZERS[key], dict(options)
    if key == "adamw":
        kw.setdefault("decoupled", True)
    bad = [k for k in kw if k not in cls.OPTIONS]
    if bad:
        raise ConfigError(f"optimizer {key!r} has no option {', '.join(map(repr, bad))}; "
                          f"its options are {', '.join(cls.OPTIONS)}")
    absent = [k for k in cls.REQUIRED if k not in kw]
    if absent:
        raise ConfigError(f"optimizer {key!r} needs {', '.join(absent)}; pass it (e.g. lr=0.01)")
    return cls, kw


def make_optimizer(name: str, bk: Backend | None = None, size: int | None = None,
                   **kw) -> Optimizer:
    """The plain optimizer called ``name`` with state for ``size`` values (:func:`resolve`); the
    fast path of the same rule is :func:`refvae.fast.optim.make_optimizer`."""
    cls, kw = resolve(name, kw)
    return cls(**kw, bk=bk, size=size)
