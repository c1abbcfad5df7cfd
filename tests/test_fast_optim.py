"""The optimizers' fast path (refvae.fast.optim) against the plain update rules
(refvae.optim.rules): bit-identical over hypothesis-drawn parameters, gradients, states, step counts
and hyperparameters, in one block or many, on one thread or several."""
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
    "sgd": st.fixed_dictionaries({"lr": st.floats(0, 10),
                                  "momentum": st.sampled_from([0.0, 0.5, 0.9]),
                                  "dampening": st.sampled_from([0.0, 0.3]),
                                  "weight_decay": st.sampled_from([0.0, 0.01, 3.0])}),
    "adam": st.fixed_dictionaries({"lr": st.floats(0, 10), "betas": st.tuples(rates, rates),
                                   "eps": st.sampled_from([0.0, 1e-8, 1.0]),
                                   "weight_decay": st.sampled_from([0.0, 0.01, 3.0]),
                                   "decoupled": st.booleans()}),
    "adagrad": st.fixed_dictionaries({"lr": st.floats(0, 10),
                                      "eps": st.sampled_from([0.0, 1e-10, 1.0]),
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
    return name, kw, draw(st.integers(0,
                                      20)), draw(arrays), draw(arrays), draw(arrays), draw(arrays)


# overflow at the extremes, in both paths alike
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=150, deadline=None)
@given(case=cases(), block=st.sampled_from([7, 64, fast_optim.BLOCK]),
       threads=st.sampled_from([1, 3]))
def test_fast_step_is_bit_identical_to_the_plain_rule(case, block, threads):
    name, kw, t, theta, g, a, b = case
    runs = []
    for fast in (False, True):
        opt = (make_fast_optimizer if fast else make_optimizer)(name, BK, theta.size, **kw)
        state = {k: v for k, v in opt.state_dict().items() if not isinstance(v, np.ndarray)}
        buffers = dict(zip(opt._active_buffers(),
                           (np.abs(a), np.abs(b)) if name != "sgd" else (a,)))
        opt.load_state_dict({**state, "step": t, **(buffers if t else {})})
        flat = FlatParams(BK, {"w": theta.shape})
        flat.data[...], flat.grad[...] = theta, g
        with np.errstate(all="ignore"), mock.patch.object(fast_optim, "BLOCK",
                                                          block), Workers(threads) as w:
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


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kw", [{}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "decoupled": True},
                                {"betas": (0.5, 0.75), "eps": 1.0}])
def test_adam_on_the_device_is_one_kernel_equal_to_the_plain_rule(bk, kw):
    """On CuPy the update is one elementwise kernel (the stand-in runs its NumPy formula: bit for
    bit the plain rule's; a GPU is checked by validation/gpu_check.sh)."""
    import strict_cupy  # noqa: PLC0415

    rng = np.random.default_rng(1)
    theta = np.concatenate([rng.normal(size=40), EXTREMES])
    plain = make_optimizer("adam", BK, theta.size, lr=0.01, **kw)
    fast = make_fast_optimizer("adam", bk, theta.size, lr=0.01, **kw)
    flats = [FlatParams(b, {"w": theta.shape}) for b in (BK, bk)]
    for t in range(3):
        g = rng.normal(size=theta.size) * 10.0 ** rng.integers(-3, 3, theta.size)
        for flat in flats:
            flat.data[...] = flat.bk.asarray(theta) if t == 0 else flat.data
            flat.grad[...] = flat.bk.asarray(g)
        plain.step(flats[0])
        before = strict_cupy.STATE.ops
        fast.step(flats[1])
        if bk.xp is strict_cupy.MODULE:
            assert strict_cupy.STATE.ops - before == 1
        got = bk.to_numpy(flats[1].data)
        if bk.name == "numpy" or bk.xp is strict_cupy.MODULE:
            np.testing.assert_array_equal(got, flats[0].data)
        else:
            np.testing.assert_allclose(got, flats[0].data, rtol=1e-12, atol=0)
