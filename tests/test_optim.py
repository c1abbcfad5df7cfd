"""Flat parameter buffer, optimizers (the plain rules and the fast path, against torch.optim in
float64) and learning-rate schedules (refvae.optim.schedules, also importable from
refvae.optim.rules)."""
import math
import tracemalloc

import numpy as np
import pytest

from refvae.backend import get_backend
from refvae.errors import CheckpointError, ConfigError, ShapeError
from refvae.fast.optim import make_optimizer as make_fast_optimizer
from refvae.optim.rules import SGD, Adagrad, Adam, FlatParams, make_optimizer
from refvae.optim.schedules import (ConstantLR, CosineLR, ExponentialLR, LinearWarmup, StepLR,
                                    make_schedule)

SHAPES = {"encoder.0.weight": (4, 3), "encoder.0.bias": (4,), "decoder.out.weight": (3, 4),
          "decoder.out.bias": (3,), "decoder.log_alpha": ()}
SIZE = 12 + 4 + 12 + 3 + 1


def _random_params(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def _grads(n_steps, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(SIZE) * rng.uniform(0.1, 3.0) for _ in range(n_steps)]


# ----- FlatParams ------------------------------------------------------------------------------
def test_flat_params_layout_and_views(bk):
    params = _random_params()
    flat = FlatParams.from_dict(bk, params)
    assert flat.names == list(SHAPES) and flat.size == SIZE
    assert flat.data.dtype == bk.dtype and flat.grad.shape == (SIZE,)
    # Layout is state_dict order, row-major within each tensor.
    expected = np.concatenate([np.ravel(params[k]) for k in SHAPES])
    np.testing.assert_array_equal(bk.to_numpy(flat.data), expected)
    for k, s in SHAPES.items():
        assert flat.params[k].shape == s and flat.grads[k].shape == s
    # Writing through a view changes the buffer, and the buffer is seen through the views.
    flat.params["encoder.0.bias"][2] = 42.0
    assert float(flat.data[12 + 2]) == 42.0
    flat.data[-1] = -7.0
    assert float(flat.params["decoder.log_alpha"]) == -7.0
    flat.grads["decoder.out.weight"][...] = 1.0
    assert float(flat.grad.sum()) == 12.0
    # load / set_grads copy in place: the views stay views.
    view = flat.params["encoder.0.weight"]
    flat.load(_random_params(5))
    np.testing.assert_array_equal(bk.to_numpy(view), _random_params(5)["encoder.0.weight"])
    g = {k: np.full(s, 2.0) for k, s in SHAPES.items()}
    flat.set_grads(g)
    assert float(flat.grad.sum()) == 2.0 * SIZE
    flat.zero_grad()
    assert float(abs(flat.grad).sum()) == 0.0


def test_flat_params_views_share_memory(np_bk):
    flat = FlatParams(np_bk, SHAPES)
    for k in SHAPES:
        assert np.shares_memory(flat.params[k], flat.data)
        assert np.shares_memory(flat.grads[k], flat.grad)
    copies = flat.to_dict()
    live = flat.to_dict(copy=False)
    flat.data += 1.0
    assert all(float(v.sum()) == 0.0 for v in copies.values())
    assert all(np.shares_memory(v, flat.data) for v in live.values())
    host = flat.to_numpy()
    assert set(host) == set(SHAPES) and not np.shares_memory(host["encoder.0.weight"], flat.data)


def test_flat_params_errors(np_bk):
    flat = FlatParams(np_bk, SHAPES)
    p = _random_params()
    with pytest.raises(ShapeError, match="missing decoder.log_alpha"):
        flat.load({k: v for k, v in p.items() if k != "decoder.log_alpha"})
    with pytest.raises(ShapeError, match="unexpected extra"):
        flat.set_grads({**p, "extra": np.zeros(1)})
    with pytest.raises(ShapeError, match=r"'encoder.0.weight' has shape \(3, 4\), expected \(4, "
                                         r"3\)"):
        flat.load({**p, "encoder.0.weight": np.zeros((3, 4))})
    with pytest.raises(ShapeError, match="negative"):
        FlatParams(np_bk, {"w": (2, -1)})


# ----- optimizers against torch.optim ------------------------------------------------------------
CASES = [
    ("sgd", {"lr": 0.1}, "SGD", {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}, "SGD", {"lr": 0.05, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, "SGD",
     {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.1}, "SGD",
     {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.1}),
    ("adam", {}, "Adam", {}),
    ("adam", {"lr": 0.01, "betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.05}, "Adam",
     {"lr": 0.01, "betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.05}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}, "AdamW", {"lr": 0.01, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled": True}, "AdamW",
     {"lr": 0.01, "weight_decay": 0.1}),
    ("adagrad", {}, "Adagrad", {}),
    ("adagrad", {"lr": 0.1, "eps": 1e-6, "initial_accumulator": 0.1, "weight_decay": 0.01,
                 "lr_decay": 0.05}, "Adagrad",
     {"lr": 0.1, "eps": 1e-6, "initial_accumulator_value": 0.1, "weight_decay": 0.01,
      "lr_decay": 0.05}),
]


@pytest.mark.torch
@pytest.mark.parametrize("name,kw,tname,tkw", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("with_schedule", [False, True])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_matches_torch_optim(np_bk, name, kw, tname, tkw, with_schedule, fast):
    torch = pytest.importorskip("torch")
    n_steps = 12
    grads = _grads(n_steps)
    flat = FlatParams.from_dict(np_bk, _random_params())
    opt = (make_fast_optimizer if fast else make_optimizer)(name, np_bk, flat.size, **kw)
    tp = torch.tensor(flat.data.copy(), dtype=torch.float64, requires_grad=True)
    topt = getattr(torch.optim, tname)([tp], **tkw)
    base = opt.lr
    sched = make_schedule("cosine", base, total_steps=n_steps, warmup_steps=3)
    for t, g in enumerate(grads):
        lr = sched(t) if with_schedule else None
        if with_schedule:
            for group in topt.param_groups:
                group["lr"] = lr
        flat.grad[...] = g
        opt.step(flat, lr=lr)
        tp.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
        expected = tp.detach().numpy()
        np.testing.assert_allclose(flat.data, expected, rtol=1e-12, atol=1e-14,
                                   err_msg=f"step {t + 1}")
    assert opt.t == n_steps


@pytest.mark.torch
def test_adam_state_matches_torch(np_bk):
    torch = pytest.importorskip("torch")
    flat = FlatParams.from_dict(np_bk, _random_params())
    opt = Adam(lr=0.02)
    tp = torch.tensor(flat.data.copy(), requires_grad=True)
    topt = torch.optim.Adam([tp], lr=0.02)
    for g in _grads(5):
        flat.grad[...] = g
        opt.step(flat)
        tp.grad = torch.tensor(g)
        topt.step()
    sd, tsd = opt.state_dict(), topt.state_dict()["state"][0]
    assert sd["step"] == int(tsd["step"]) == 5
    np.testing.assert_allclose(sd["exp_avg"], tsd["exp_avg"].numpy(), rtol=1e-13)
    np.testing.assert_allclose(sd["exp_avg_sq"], tsd["exp_avg_sq"].numpy(), rtol=1e-13)


# ----- state round trip ------------------------------------------------------------------------
ROUND_TRIP = [("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}), ("sgd", {"lr": 0.1}),
              ("adam", {"lr": 0.01, "weight_decay": 0.01}), ("adamw", {"lr": 0.01}),
              ("adagrad", {"lr": 0.1, "initial_accumulator": 0.5})]


@pytest.mark.parametrize("name,kw", ROUND_TRIP,
                         ids=[c[0] + str(i) for i, c in enumerate(ROUND_TRIP)])
@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_state_dict_round_trip_is_bit_identical(bk, tmp_path, name, kw, lazy):
    grads = _grads(8, seed=3)
    flat = FlatParams.from_dict(bk, _random_params())
    opt = make_fast_optimizer(name, bk, flat.size, **kw)
    for g in grads[:4]:
        flat.grad[...] = bk.asarray(g)
        opt.step(flat)
    sd = opt.state_dict()
    for v in sd.values():
        assert isinstance(v, (int, float, np.ndarray)) and not isinstance(v, bool)
    params = flat.to_numpy()
    # Through an .npz without pickle, as a checkpoint would store it.
    np.savez(tmp_path / "opt.npz", **sd)
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}
    snapshot = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in sd.items()}
    # A fresh optimizer with other settings: the hyperparameters come from the state.
    opt2 = (make_fast_optimizer(name, None, None, lr=1.0) if lazy
            else make_fast_optimizer(name, bk, flat.size, lr=1.0))
    opt2.load_state_dict(loaded)
    flat2 = FlatParams.from_dict(bk, params)
    for g in grads[4:]:
        for f, o in ((flat, opt), (flat2, opt2)):
            f.grad[...] = bk.asarray(g)
            o.step(f)
    np.testing.assert_array_equal(bk.to_numpy(flat2.data), bk.to_numpy(flat.data))
    assert opt2.state_dict()["step"] == 8
    # The state_dict was a snapshot: later steps did not change it.
    for k, v in snapshot.items():
        np.testing.assert_array_equal(sd[k], v)


def test_load_state_dict_errors(np_bk):
    flat = FlatParams.from_dict(np_bk, _random_params())
    adam = Adam(lr=0.1)
    flat.grad[...] = 1.0
    adam.step(flat)
    sd = adam.state_dict()
    with pytest.raises(CheckpointError, match="sgd state does not match"):
        SGD(lr=0.1, momentum=0.9).load_state_dict(sd)
    with pytest.raises(CheckpointError, match="lacks exp_avg_sq"):
        Adam().load_state_dict({k: v for k, v in sd.items() if k != "exp_avg_sq"})
    bad = {**sd, "exp_avg": sd["exp_avg"][:-1], "exp_avg_sq": sd["exp_avg_sq"][:-1]}
    with pytest.raises(CheckpointError, match="values but the parameters have"):
        make_fast_optimizer("adam", np_bk, flat.size).load_state_dict(bad)
    lazy = Adam()
    lazy.load_state_dict(bad)
    with pytest.raises(CheckpointError, match="values but the parameters have"):
        lazy.step(flat)
    with pytest.raises(ShapeError, match="fresh optimizer"):
        adam.step(FlatParams(np_bk, {"w": (3,)}))


def test_float32_stays_float32():
    bk32, bk64 = get_backend("numpy", "float32"), get_backend("numpy", "float64")
    for name, kw in ROUND_TRIP:
        flats, opts = [], []
        for bk in (bk32, bk64):
            flats.append(FlatParams.from_dict(bk, _random_params()))
            opts.append(make_fast_optimizer(name, bk, SIZE, weight_decay=0.01, **kw)
                        if "weight_decay" not in kw else make_fast_optimizer(name, bk, SIZE, **kw))
        for g in _grads(6):
            for f, o in zip(flats, opts):
                f.grad[...] = g
                o.step(f, lr=0.05)
        assert flats[0].data.dtype == np.float32, name
        assert all(v.dtype == np.float32 for v in flats[0].params.values())
        for k, v in opts[0].state_dict().items():
            if isinstance(v, np.ndarray):
                assert v.dtype == np.float32, (name, k)
        np.testing.assert_allclose(flats[0].data, flats[1].data, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adam", "adagrad"])
def test_step_allocates_no_full_size_temporaries(np_bk, name):
    n = 200_000  # 1.6 MB per buffer
    flat = FlatParams(np_bk, {"w": (n,)})
    kw = {"lr": 0.01, "weight_decay": 0.01}
    if name == "sgd":
        kw["momentum"] = 0.9
    opt = make_fast_optimizer(name, np_bk, n, **kw)
    flat.grad[...] = 1.0
    opt.step(flat)  # first step allocates the scratch buffers
    tracemalloc.start()
    try:
        opt.step(flat)
        opt.step(flat)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * 8 // 4, f"{name} allocated {peak} bytes during a step"


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop")
    with pytest.raises(ConfigError, match="has no option 'momentum'"):
        make_optimizer("adam", momentum=0.9)
    with pytest.raises(ConfigError, match="nesterov"):
        SGD(lr=0.1, nesterov=True)
    with pytest.raises(ConfigError, match="betas"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(ConfigError, match="lr"):
        Adagrad(lr=-1)
    with pytest.raises(ConfigError, match="needs lr"):
        make_optimizer("sgd")
    assert make_optimizer("ADAMW").decoupled


# ----- schedules -----------------------------------------------------------------------------
def test_schedule_values():
    assert [ConstantLR(0.1)(t) for t in (0, 5, 1000)] == [0.1, 0.1, 0.1]
    s = StepLR(1.0, step_size=3, gamma=0.5)
    assert [s(t) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    e = ExponentialLR(2.0, gamma=0.9)
    assert e(0) == 2.0 and math.isclose(e(3), 2.0 * 0.9 ** 3)
    c = CosineLR(1.0, total_steps=10, min_lr=0.1)
    assert c(0) == 1.0 and math.isclose(c(5), 0.55) and math.isclose(c(10), 0.1)
    assert c(25) == c(10)
    assert all(c(t) >= c(t + 1) for t in range(12))
    w = LinearWarmup(0.4, warmup_steps=4)
    assert [w(t) for t in range(6)] == [0.1, 0.2, 0.30000000000000004, 0.4, 0.4, 0.4]


def test_make_schedule():
    assert make_schedule("constant", 0.3)(99) == 0.3
    assert make_schedule("step", 1.0, step_size=2, gamma=0.1)(4) == pytest.approx(0.01)
    assert make_schedule("exponential", 1.0, gamma=0.5)(2) == 0.25
    s = make_schedule("cosine", 1.0, total_steps=4, warmup_steps=2)
    assert [s(t) for t in range(7)] == pytest.approx([0.5, 1.0, 1.0, 0.8535533905932737, 0.5,
                                                      0.14644660940672627, 0.0])
    assert make_schedule("warmup", 1.0, warmup_steps=2)(0) == 0.5
    with pytest.raises(ConfigError, match="unknown schedule 'linear'"):
        make_schedule("linear", 1.0)
    with pytest.raises(ConfigError, match="schedule 'cosine'"):
        make_schedule("cosine", 1.0)
    with pytest.raises(ConfigError, match="step must be >= 0"):
        make_schedule("constant", 1.0)(-1)
