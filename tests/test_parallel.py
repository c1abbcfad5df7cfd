"""Row shards on threads (refvae.fast.parallel): the sharded loss and gradients equal the one-shard
ones to rounding, state-keeping estimators see the whole batch, and the pool restores what it
changes."""
import threading
import time

import numpy as np
import pytest

from refvae import ConfigError, NoiseSource, ShapeError
from refvae.fast.threads import blas_threads
from refvae.fast.optim import make_optimizer
from refvae.optim.rules import FlatParams
from refvae.fast.parallel import Workers, loss_and_grads
from refvae.math.vae import VAE

CASES = [
    ({"latent": "gaussian", "emission": "bernoulli"}, "pathwise", 1),
    ({"latent": "gaussian", "emission": "gaussian_diag", "activation": "tanh"}, "price", 1),
    ({"latent": "gaussian_full", "emission": "gaussian", "learn_alpha": True}, "pathwise", 2),
    ({"latent": "gaussian", "emission": "bernoulli"}, "score-loo", 3),
    ({"latent": "gaussian", "emission": "gaussian", "flow_length": 2}, "pathwise", 1),
    ({"latent": "categorical", "categories": 4, "emission": "bernoulli"}, "gumbel-softmax", 2),
]


def _case(extra, n=13, samples=1, seed=0):
    cfg = {"data_dim": 9, "latent_dim": 3, "encoder_hidden": [8], "decoder_hidden": [7],
           "activation": "softplus", **extra}
    model = VAE(cfg)
    noise = NoiseSource(seed)
    params = model.init_params(noise)
    y = noise.uniform((n, 9))
    if cfg["emission"] != "bernoulli":
        y = 2.0 * y - 1.0
    return model, params, y, model.draw_noise(noise, n, samples)


@pytest.mark.parametrize("extra,estimator,samples", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_shards_agree_with_one_batch(extra, estimator, samples, threads, reduction):
    model, params, y, eps = _case(extra, samples=samples)
    temperature = 0.7 if extra["latent"] == "categorical" else None
    one = model.loss_and_grads(params, y, eps, estimator, reduction, temperature=temperature)
    with Workers(threads) as workers:
        got = loss_and_grads(model, workers, params, y, eps, estimator, reduction,
                             temperature=temperature)
    assert got.loss == pytest.approx(one.loss, rel=1e-13)
    assert got.kl == pytest.approx(one.kl, rel=1e-13)
    assert got.reconstruction == pytest.approx(one.reconstruction, rel=1e-13)
    np.testing.assert_allclose(got.kl_per_datum, one.kl_per_datum, rtol=1e-13)
    np.testing.assert_allclose(got.reconstruction_per_datum, one.reconstruction_per_datum,
                               rtol=1e-13)
    assert list(got.grads) == list(one.grads)
    for name, g in one.grads.items():
        np.testing.assert_allclose(got.grads[name], g, rtol=1e-11, atol=1e-14 * np.abs(g).max(),
                                   err_msg=name)


def test_each_shard_carries_its_share_of_the_mean():
    """Negative control: without ``batch_size`` every shard would divide by its own size, and the
    summed gradient would be ``threads`` times too large."""
    model, params, y, eps = _case(CASES[0][0])
    half = model.loss_and_grads(params, y[:6], eps[:6], batch_size=13)
    alone = model.loss_and_grads(params, y[:6], eps[:6])
    assert half.loss == pytest.approx(alone.loss * 6 / 13, rel=1e-14)
    with pytest.raises(ConfigError, match="batch_size"):
        model.loss_and_grads(params, y[:6], eps[:6], batch_size=5)


def test_gradients_land_in_grads_out():
    model, params, y, eps = _case(CASES[0][0])
    flat = FlatParams.from_dict(model.bk, params)
    with Workers(2) as workers:
        res = loss_and_grads(model, workers, flat.params, y, eps, grads_out=flat.grads)
    for name, g in res.grads.items():
        assert np.shares_memory(g, flat.grad), name
    one = model.loss_and_grads(params, y, eps)
    np.testing.assert_allclose(flat.grad, np.concatenate([g.ravel() for g in one.grads.values()]),
                               rtol=1e-11, atol=1e-15)


def test_running_mean_control_variate_sees_the_whole_batch():
    """score-running keeps the running mean of the batch-mean f: with shards it would be updated
    once per shard from part of the batch. It runs as one shard: state and gradients bit-equal."""
    model, params, y, eps = _case(CASES[0][0], samples=2)
    state_one, state_par = {}, {}
    for _ in range(3):
        one = model.loss_and_grads(params, y, eps, "score-running", estimator_state=state_one)
        with Workers(2) as workers:
            par = loss_and_grads(model, workers, params, y, eps, "score-running",
                                 estimator_state=state_par)
    assert state_par == state_one and state_one["score_running_steps"] == 3
    for name, g in one.grads.items():
        np.testing.assert_array_equal(par.grads[name], g)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "adagrad"])
def test_optimizer_parts_on_threads_are_bit_identical(name, monkeypatch):
    """Each value's update is elementwise, so splitting the buffer over threads changes nothing;
    small blocks make the one-thread path cross many block boundaries (threads take whole
    parts)."""
    monkeypatch.setattr("refvae.fast.optim.BLOCK", 1000)
    rng = np.random.default_rng(1)
    shapes = {"a": (37, 61), "b": (61,), "c": (5000,)}
    kw = {"weight_decay": 0.01} | ({"momentum": 0.9, "nesterov": True} if name == "sgd" else {})
    runs = []
    for threads in (1, 3):
        bk = VAE(dict(data_dim=2, latent_dim=1)).bk
        flat = FlatParams(bk, shapes)
        flat.data[...] = rng.normal(size=flat.size) if threads == 1 else runs[0][0]
        opt = make_optimizer(name, bk, flat.size, lr=1e-2, **kw)
        grads = np.random.default_rng(2).normal(size=(4, flat.size))
        start = flat.data.copy()
        with Workers(threads) as workers:
            for g in grads:
                flat.grad[...] = g
                opt.step(flat, workers=workers if threads > 1 else None)
        runs.append((start, flat.data.copy()))
    np.testing.assert_array_equal(runs[1][1], runs[0][1])
    assert not np.array_equal(runs[0][1], runs[0][0])


@pytest.mark.parametrize("n,threads", [(1, 2), (2, 2), (13, 2), (13, 3), (5, 8), (1000, 3)])
def test_split_is_contiguous_nonempty_and_balanced(n, threads):
    parts = Workers(threads).split(n)
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
    sizes = [p.stop - p.start for p in parts]
    assert len(parts) == min(n, threads) and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_map_runs_on_the_pool_and_the_caller_and_reraises():
    names = set()
    started = threading.Barrier(3, timeout=5)   # three items at once: three threads took them

    def fn(i):
        names.add(threading.current_thread().name)
        if i < 3:
            started.wait()
        if i == 3:
            raise ValueError("item 3")
        return i * i

    with Workers(3) as workers:
        assert workers.map(fn, [0, 1, 2]) == [0, 1, 4]
        started.reset()
        with pytest.raises(ValueError, match="item 3"):
            workers.map(fn, range(5))
    me = threading.current_thread().name
    assert me in names and len(names) == 3
    assert all(n.startswith("refvae") for n in names - {me})


def test_map_raises_only_after_every_item_has_finished():
    done = []

    def fn(i):
        if i == 0:
            raise ValueError("first item")
        time.sleep(0.05)
        done.append(i)

    with Workers(2) as workers:
        with pytest.raises(ValueError, match="first item"):
            workers.map(fn, [0, 1])
        assert done == [1]   # before the pool's shutdown, which would wait for it anyway


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        Workers(bad)


def test_blas_threads_are_one_inside_and_restored_after():
    before = blas_threads()
    if before is None:
        pytest.skip("no OpenBLAS found in this process (another BLAS): nothing to set")
    with Workers(2):
        assert blas_threads() == 1
    assert blas_threads() == before
    with Workers(1):
        assert blas_threads() == before


def test_a_gpu_backend_runs_one_shard(monkeypatch):
    """On CuPy one shard fills the device: the batch is not split (a Backend named "cupy" backed by
    NumPy stands in for the GPU here)."""
    from refvae.backend import Backend, get_backend  # noqa: PLC0415
    host = get_backend()
    fake_gpu = Backend("cupy", host.xp, host.dtype, host.special)
    model = VAE({"data_dim": 9, "latent_dim": 3, "encoder_hidden": [8], "decoder_hidden": [7]},
                backend=fake_gpu)
    noise = NoiseSource(0)
    params, y = model.init_params(noise), noise.uniform((10, 9))
    eps = model.draw_noise(noise, 10)
    rows = []
    real = model.loss_and_grads
    monkeypatch.setattr(model, "loss_and_grads", lambda p, yy, *a,
                        **k: rows.append(len(yy)) or real(p, yy, *a, **k))
    with Workers(2) as workers:
        loss_and_grads(model, workers, params, y, eps)
    assert rows == [10]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("extra,samples", [
    ({"activation": "relu", "emission": "bernoulli"}, 1),
    ({"activation": "tanh", "emission": "bernoulli", "decoder_hidden": [70, 66]}, 2),
    ({"activation": "softplus", "emission": "gaussian", "learn_alpha": True}, 3),
], ids=["relu", "tanh-deep-two-samples", "softplus-gaussian-alpha"])
def test_the_fused_pass_split_over_threads_agrees_with_the_plain_model(extra, samples, threads):
    """The fused pass (refvae.fast.fused_pass) on ``threads`` threads: rows split into shards and
    the weight gradients by output units (widths ≥ 2 × MIN_SPLIT_UNITS, so they are split), every
    gradient written once into the flat buffer."""
    from refvae.fast.fused_pass import MIN_SPLIT_UNITS, FusedPass
    from refvae.fast.model import fast_vae
    from refvae.fast.step import fused

    cfg = {"data_dim": 97, "latent_dim": 3, "encoder_hidden": [72], "decoder_hidden": [68],
           **extra}
    model, plain = fast_vae(cfg), VAE(cfg)
    noise = NoiseSource(5)
    params = plain.init_params(noise)
    y = noise.uniform((29, 97))
    eps = plain.draw_noise(noise, 29, samples)
    assert fused(model, "pathwise")
    flat = FlatParams.from_dict(model.bk, params)
    flat.grad.fill(np.nan)                               # every entry must be written
    fp = FusedPass(model, flat.params, y, eps, 1.0, flat.grads)
    split = [job[3] for job in fp.weight_jobs(threads) if job[3] != slice(0, job[0].shape[1])]
    assert len(split) >= threads and min(s.stop - s.start for s in split) >= MIN_SPLIT_UNITS // 2
    with Workers(threads) as workers:
        got = loss_and_grads(model, workers, flat.params, y, eps, grads_out=flat.grads,
                             grad_buffer=flat.grad)
    one = plain.loss_and_grads(params, y, eps)
    assert got.loss == pytest.approx(one.loss, rel=1e-13)
    np.testing.assert_allclose(got.kl_per_datum, one.kl_per_datum, rtol=1e-13)
    np.testing.assert_allclose(got.reconstruction_per_datum, one.reconstruction_per_datum,
                               rtol=1e-13)
    for name, g in one.grads.items():
        assert np.shares_memory(got.grads[name], flat.grad), name
        np.testing.assert_allclose(got.grads[name], g, rtol=1e-11, atol=1e-14 * np.abs(g).max(),
                                   err_msg=name)


@pytest.mark.parametrize("into", [False, True], ids=["shards", "flat-buffer"])
def test_a_conditional_vae_splits_its_condition_with_the_rows(into):
    cfg = {"data_dim": 9, "latent_dim": 3, "encoder_hidden": [8], "decoder_hidden": [7],
           "activation": "tanh", "condition_dim": 4}
    model = VAE(cfg)
    noise = NoiseSource(2)
    params = model.init_params(noise)
    y, c = noise.uniform((13, 9)), noise.normal((13, 4))
    eps = model.draw_noise(noise, 13, 1)
    one = model.loss_and_grads(params, y, eps, condition=c)
    flat = FlatParams.from_dict(model.bk, params)
    out = dict(grads_out=flat.grads, grad_buffer=flat.grad) if into else {}
    with Workers(2) as workers:
        got = loss_and_grads(model, workers, flat.params, y, eps, condition=c, **out)
        other = loss_and_grads(model, workers, flat.params, y, eps, condition=c[::-1].copy())
    assert got.loss == pytest.approx(one.loss, rel=1e-13)
    assert other.loss != pytest.approx(one.loss, rel=1e-6)     # the condition is used
    for name, g in one.grads.items():
        np.testing.assert_allclose(got.grads[name], g, rtol=1e-11, atol=1e-14 * np.abs(g).max(),
                                   err_msg=name)
    with pytest.raises(ShapeError, match="condition"):
        loss_and_grads(model, Workers(1), flat.params, y, eps)
