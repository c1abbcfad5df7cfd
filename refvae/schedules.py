"""Temperature schedule of the Gumbel-softmax relaxation (Jang et al. 2017, "Categorical
Reparameterization with Gumbel-Softmax", ICLR, the VAE experiments; EQUATIONS.md):
``s_t = max(s_min, s_0 · exp(−r · t_n))`` where ``t_n = n ⌊t/n⌋`` is the last step at which the
temperature was updated (every ``n`` steps). Jang et al. use ``s_0 = 1``, ``s_min = 0.5``,
``r ∈ {1e-5, 1e-4}`` and ``n ∈ {500, 1000}``.

The schedule is a small object with one piece of state, the step count ``t``; its
:meth:`~TemperatureSchedule.state_dict` is JSON-ready (numbers only) so a checkpoint can store it
and :meth:`~TemperatureSchedule.from_state_dict` rebuilds the same schedule at the same step.
"""
from __future__ import annotations

import math

from .errors import CheckpointError
from .numbers import checked

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
        """The schedule saved by :meth:`state_dict`; a missing or unknown field is a CheckpointError."""
        if not isinstance(d, dict) or set(d) != set(_FIELDS):
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise CheckpointError(f"temperature schedule state must have the fields {', '.join(_FIELDS)}; "
                                  f"got {got}")
        return cls(**{k: d[k] for k in _FIELDS})

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return (f"TemperatureSchedule(initial={self.initial}, rate={self.rate}, minimum={self.minimum}, "
                f"every={self.every}, step={self.step_count})")


def _positive(name: str, value) -> float:
    return checked(value, f"temperature schedule: {name}", minimum=0, open_min=True)


def _count(name: str, value, minimum: int) -> int:
    return checked(value, f"temperature schedule: {name}", integer=True, minimum=minimum)
