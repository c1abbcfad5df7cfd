"""Schedules (docs/DERIVATIONS.md#schedules): the learning rate and the Gumbel-softmax temperature
as functions of the step count.

Learning rate: callables ``step -> lr`` (``step`` = number of steps or epochs already taken):
constant, step decay, exponential decay, cosine annealing and a linear warmup that can prefix any
of them (:func:`make_schedule`).

Temperature of the Gumbel-softmax relaxation (Jang et al. 2017, "Categorical Reparameterization
with Gumbel-Softmax", ICLR, the VAE experiments):
``s_t = max(s_min, s_0 · exp(−r · t_n))`` where ``t_n = n ⌊t/n⌋`` is the last step at which
the temperature was updated (every ``n`` steps). Jang et al. use ``s_0 = 1``, ``s_min = 0.5``,
``r ∈ {1e-5, 1e-4}`` and ``n ∈ {500, 1000}``. The schedule is a small object with one piece of
state, the step count ``t``; its :meth:`~TemperatureSchedule.state_dict` is JSON-ready (numbers
only) so a checkpoint can store it and :meth:`~TemperatureSchedule.from_state_dict` rebuilds the
same schedule at the same step.
"""
from __future__ import annotations

import math
from typing import Callable

from ..errors import CheckpointError, ConfigError, require
from ..util.checked import checked

# ---------------------------------------------------------------------------------------------
# Learning rate
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


def _decayed(base_lr: float, gamma: float, power: int, name: str) -> float:
    """``base_lr · gamma^power``, or a ConfigError when it overflows or leaves the finite
    numbers."""
    try:
        lr = base_lr * gamma ** power
    except OverflowError:
        lr = math.inf
    if not math.isfinite(lr):
        raise ConfigError(f"{name} schedule: the learning rate {base_lr:g} · {gamma:g}^{power} "
                          "overflows; use a gamma ≤ 1 (a decay) or fewer steps")
    return lr


class StepLR(Schedule):
    """Step decay: ``η_t = η · γ^⌊t / step_size⌋`` (as
    ``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, base_lr: float, step_size: int, gamma: float = 0.1):
        require(int(step_size) >= 1, f"step schedule: step_size must be >= 1, got {step_size}")
        self.base_lr, self.step_size, self.gamma = float(base_lr), int(step_size), float(gamma)

    def __call__(self, step):
        return _decayed(self.base_lr, self.gamma, _step_arg(step) // self.step_size, "step")


class ExponentialLR(Schedule):
    """Exponential decay: ``η_t = η · γ^t``."""

    def __init__(self, base_lr: float, gamma: float):
        require(float(gamma) > 0, f"exponential schedule: gamma must be > 0, got {gamma}")
        self.base_lr, self.gamma = float(base_lr), float(gamma)

    def __call__(self, step):
        return _decayed(self.base_lr, self.gamma, _step_arg(step), "exponential")


class CosineLR(Schedule):
    """Cosine annealing without restarts (Loshchilov & Hutter 2017, "SGDR", ICLR, Eq. 5):
    ``η_t = η_min + (η − η_min)(1 + cos(π·min(t, T)/T))/2``, constant at ``η_min`` after
    ``T``."""

    def __init__(self, base_lr: float, total_steps: int, min_lr: float = 0.0):
        require(int(total_steps) >= 1, "cosine schedule: total_steps must be >= 1, "
                                       f"got {total_steps}")
        self.base_lr, self.total_steps, self.min_lr = (float(base_lr), int(total_steps),
                                                       float(min_lr))

    def __call__(self, step):
        t = min(_step_arg(step), self.total_steps)
        return (self.min_lr + (self.base_lr - self.min_lr) * 0.5
                * (1.0 + math.cos(math.pi * t / self.total_steps)))


class LinearWarmup(Schedule):
    """Linear warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 2.2):
    ``η_t = η·(t + 1)/W`` for ``t < W``, then ``after(t − W)`` (or ``η`` when ``after`` is
    None)."""

    def __init__(self, base_lr: float, warmup_steps: int,
                 after: Callable[[int], float] | None = None):
        require(int(warmup_steps) >= 1, f"warmup: warmup_steps must be >= 1, got {warmup_steps}")
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
        require(not kw, f"schedule 'warmup' takes only warmup_steps, got {', '.join(kw)}")
        return LinearWarmup(base_lr, warmup_steps or 1)
    try:
        inner = SCHEDULES[key](base_lr, **kw)
    except TypeError as exc:
        raise ConfigError(f"schedule {key!r}: bad or missing option ({exc}); see make_schedule's "
                          "docstring for its options") from exc
    return LinearWarmup(base_lr, warmup_steps, inner) if warmup_steps else inner


# ---------------------------------------------------------------------------------------------
# Temperature
# ---------------------------------------------------------------------------------------------
_FIELDS = ("initial", "rate", "minimum", "every", "step")


class TemperatureSchedule:
    """``s_t = max(minimum, initial · exp(−rate · every · ⌊t / every⌋))``.

    ``schedule(t)`` is the temperature at step ``t`` (a pure function); ``schedule.temperature`` is
    the temperature at the current step ``schedule.step_count`` and :meth:`step` advances it by one
    (call it once per optimizer step, after using the temperature). ``rate = 0`` is a constant
    temperature.
    """

    def __init__(self, initial: float = 1.0, rate: float = 0.0, minimum: float = 0.5,
                 every: int = 1, step: int = 0):
        self.initial = _positive("initial", initial)
        self.minimum = _positive("minimum", minimum)
        self.rate = checked(rate, "temperature schedule: rate", minimum=0)
        self.every = _count("every", every, 1)
        self.step_count = _count("step", step, 0)

    def __call__(self, t: int) -> float:
        t = _count("step", t, 0)
        updated_at = self.every * (t // self.every)
        return max(self.minimum, self.initial * math.exp(-self.rate * updated_at))

    @property
    def temperature(self) -> float:
        """The temperature to use at the current step."""
        return self(self.step_count)

    def step(self) -> float:
        """Advance one step; returns the temperature of the new current step."""
        self.step_count += 1
        return self.temperature

    def state_dict(self) -> dict:
        """Hyperparameters and the step count, as plain numbers."""
        return {"initial": self.initial, "rate": self.rate, "minimum": self.minimum,
                "every": self.every, "step": self.step_count}

    @classmethod
    def from_state_dict(cls, d: dict) -> "TemperatureSchedule":
        """The schedule saved by :meth:`state_dict`; a missing or unknown field is a
        CheckpointError."""
        if not isinstance(d, dict) or set(d) != set(_FIELDS):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise CheckpointError("temperature schedule state must have the "
                                  f"fields {', '.join(_FIELDS)}; "
                                  f"got {got}")
        return cls(**{k: d[k] for k in _FIELDS})

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return (f"TemperatureSchedule(initial={self.initial}, rate={self.rate}, "
                f"minimum={self.minimum}, "
                f"every={self.every}, step={self.step_count})")


def _positive(name: str, value) -> float:
    return checked(value, f"temperature schedule: {name}", minimum=0, open_min=True)


def _count(name: str, value, minimum: int) -> int:
    return checked(value, f"temperature schedule: {name}", integer=True, minimum=minimum)
