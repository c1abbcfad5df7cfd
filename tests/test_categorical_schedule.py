"""The temperature schedule ``s_t = max(s_min, s_0 exp(−r · n⌊t/n⌋))``
(refvae.optim.schedules)."""
import json
import math

import numpy as np
import pytest

from refvae.errors import CheckpointError, ConfigError
from refvae.optim.schedules import TemperatureSchedule


def test_values_follow_the_formula_and_update_every_n_steps():
    sched = TemperatureSchedule(initial=1.0, rate=1e-3, minimum=0.5, every=100)
    for t in [0, 1, 99, 100, 101, 250, 693, 700, 5000]:
        expected = max(0.5, math.exp(-1e-3 * 100 * (t // 100)))
        assert sched(t) == expected
    assert sched(0) == sched(99) == 1.0 and sched(100) == math.exp(-0.1)
    assert sched(700) == 0.5 and sched(10**9) == 0.5          # floored at s_min
    assert TemperatureSchedule(initial=2.0, rate=0.0, minimum=0.1)(12345) == 2.0   # constant


def test_stepping_and_state_round_trip():
    sched = TemperatureSchedule(initial=1.0, rate=1e-2, minimum=0.3, every=3)
    seen = [sched.temperature]
    for _ in range(10):
        seen.append(sched.step())
    assert seen == [sched(t) for t in range(11)] and sched.step_count == 10
    state = json.loads(json.dumps(sched.state_dict()))         # plain numbers, JSON-safe
    again = TemperatureSchedule.from_state_dict(state)
    assert again.temperature == sched.temperature and again.state_dict() == sched.state_dict()
    assert again.step() == sched.step()
    assert TemperatureSchedule(step=np.int64(4), every=np.int64(2))(np.int64(5)) == 1.0


@pytest.mark.parametrize("kwargs", [dict(initial=0.0), dict(initial=-1.0), dict(minimum=0.0),
                                    dict(minimum=float("nan")), dict(rate=-1e-5),
                                    dict(rate=float("inf")),
                                    dict(every=0), dict(every=2.5), dict(step=-1),
                                    dict(initial=True)])
def test_bad_hyperparameters_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="temperature schedule"):
        TemperatureSchedule(**kwargs)


def test_bad_step_and_bad_state():
    with pytest.raises(ConfigError, match="step"):
        TemperatureSchedule()(-1)
    with pytest.raises(CheckpointError, match="fields"):
        TemperatureSchedule.from_state_dict({"initial": 1.0})
    with pytest.raises(CheckpointError, match="fields"):
        TemperatureSchedule.from_state_dict([1, 2])
