"""The optimizers' fast path (refvae.fast.optim) against the plain update rules (refvae.optim.rules):
bit-identical over hypothesis-drawn parameters, gradients, states, step counts and hyperparameters,
in one block or many, on one thread or several."""
from unittest import mock

import pytest

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refvae.backend import get_backend
from refvae.fast import optim as fast_optim
from refvae.fast.parallel import Workers
from refvae.fast.optim import make_optimizer as make_fast_optimizer
from refvae.optim.rules import FlatParams, make_optimizer

BK = get_backend("numpy", "float64")
EXTREMES = [0.0, -0.0, 50.0, -50.0, 1e-300, -1e-300, 1e300, -1e300, 5e-324]

values = st.one_of(st.floats(-50, 50), st.sampled_from(EXTREMES))
rates = st.floats(0, 1, exclude_max=True)
OPTIONS = {
    "sgd": st.fixed_dictionaries({"lr": st.floats(0, 10), "momentum": st.sampled_from([0.0, 0.5, 0.9]),
                                  "dampening": st.sampled_from([0.0, 0.3]),
                                  "weight_decay": st.sampled_from([0.0, 0.01, 3.0])}),
    "adam": st.fixed_dictionaries({"lr": st.floats(0, 10), "betas": st.tuples(rates, rates),
                                   "eps": st.sampled_from([0.0, 1e-8, 1.0]),
                                   "weight_decay": st.sampled_from([0.0, 0.01, 3.0]),
                                   "decoupled": st.booleans()}),
    "adagrad": st.fixed_dictionaries({"lr": st.floats(0, 10), "eps": st.sampled_from([0.0, 1e-10, 1.0]),
                                      "initial_accumulator": st.sampled_from([0.0, 0.1]),
                                      "weight_decay": st.sampled_from([0.0, 0.01, 3.0]),
                                      "lr_decay": st.sampled_from([0.0, 0.05])}),
}


@st.composite
def cases(draw):
    name = draw(st.sampled_from(sorted(OPTIONS)))
    kw = draw(OPTIONS[name])
    if name == "sgd" and kw["momentum"] and not kw["dampening"]:
        kw["nesterov"] = draw(st.booleans())
    n = draw(st.integers(1, 300))
    arrays = st.lists(values, min_size=n, max_size=n).map(np.array)
    return name, kw, draw(st.integers(0, 20)), draw(arrays), draw(arrays), draw(arrays), draw(arrays)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow at the extremes, in both paths alike
@settings(max_examples=150, deadline=None)
@given(case=cases(), block=st.sampled_from([7, 64, fast_optim.BLOCK]), threads=st.sampled_from([1, 3]))
def test_fast_step_is_bit_identical_to_the_plain_rule(case, block, threads):
    name, kw, t, theta, g, a, b = case
    runs = []
    for fast in (False, True):
        opt = (make_fast_optimizer if fast else make_optimizer)(name, BK, theta.size, **kw)
        state = {k: v for k, v in opt.state_dict().items() if not isinstance(v, np.ndarray)}
        buffers = dict(zip(opt._active_buffers(), (np.abs(a), np.abs(b)) if name != "sgd" else (a,)))
        opt.load_state_dict({**state, "step": t, **(buffers if t else {})})
        flat = FlatParams(BK, {"w": theta.shape})
        flat.data[...], flat.grad[...] = theta, g
        with np.errstate(all="ignore"), mock.patch.object(fast_optim, "BLOCK", block), Workers(threads) as w:
            opt.step(flat, workers=w if threads > 1 else None)
        runs.append((flat.data.copy(), opt.state_dict()))
    (plain, plain_state), (fused, fused_state) = runs
    np.testing.assert_array_equal(fused, plain)
    assert plain_state.keys() == fused_state.keys()
    for k, v in plain_state.items():
        np.testing.assert_array_equal(fused_state[k], v, err_msg=k)


def test_make_optimizer_gives_the_fast_path_unless_asked_for_the_plain_rule():
    for name in ("sgd", "adam", "adamw", "adagrad"):
        fast, plain = make_fast_optimizer(name, lr=0.1), make_optimizer(name, lr=0.1)
        assert type(fast) is fast_optim.FAST[type(plain)]
        assert isinstance(fast, type(plain)) and fast.state_dict() == plain.state_dict()
