"""Paths that the quick claims once never took (issue 23), each tested against a reference computed
another way: three shards, an IWAE bound over several chunks, SGD dampening in the plain and the
fast rule, a resume mid-run with a step schedule, dynamic binarisation, the oracle's sampler
hint."""
import math

import numpy as np
import pytest
from scipy.special import logsumexp

from refvae import NoiseSource, oracle
from refvae.data.load import Dataset
from refvae.fast import optim as fast_optim
from refvae.fast import parallel
from refvae.math import objectives
from refvae.math.config import VAEConfig
from refvae.math.vae import VAE
from refvae.optim import rules
from refvae.train.loop import TrainOptions, train

torch = pytest.importorskip("torch")


def small_vae(seed=0, n=11):
    vae = VAE(dict(data_dim=5, latent_dim=2, encoder_hidden=[4], decoder_hidden=[4],
                   emission="bernoulli", activation="tanh"))
    noise = NoiseSource(seed)
    params = vae.init_params(noise)
    y = (np.random.default_rng(seed).random((n, 5)) < 0.5).astype(float)
    return vae, noise, params, y


def test_three_shards_count_every_shard():
    vae, noise, params, y = small_vae()
    eps = vae.draw_noise(noise, len(y), 2)
    one = vae.loss_and_grads(params, y, eps)
    with parallel.Workers(3) as workers:
        assert len(workers.split(len(y))) == 3
        got = parallel.loss_and_grads(vae, workers, params, y, eps)
    assert got.loss == pytest.approx(one.loss, rel=1e-12)
    for name, g in one.grads.items():
        np.testing.assert_allclose(got.grads[name], g, rtol=1e-10, atol=1e-14, err_msg=name)


def test_iwae_over_several_chunks_is_one_logsumexp_over_the_same_draws(monkeypatch):
    vae, _, params, y = small_vae(n=4)
    k, per_chunk = 10, 3
    elements = per_chunk * len(y) * objectives._widest(vae)
    monkeypatch.setattr(objectives, "_ELEMENTS_PER_CHUNK", elements)
    got = objectives.iwae_bound(vae, params, y, NoiseSource(1), k=k)
    noise = NoiseSource(1)
    eps = np.concatenate([vae.draw_noise(noise, len(y), m) for m in (3, 3, 3, 1)], axis=1)
    want = logsumexp(objectives.log_weights(vae, params, y, eps), axis=1) - math.log(k)
    np.testing.assert_allclose(got, want, rtol=1e-13)


@pytest.mark.parametrize("make", [rules.make_optimizer, fast_optim.make_optimizer],
                         ids=["plain", "fast"])
def test_sgd_with_dampening_is_torchs(make):
    rng = np.random.default_rng(0)
    p0, grads = rng.normal(size=5), [rng.normal(size=5) for _ in range(3)]
    kw = dict(lr=0.1, momentum=0.9, dampening=0.4)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    topt = torch.optim.SGD([tp], **kw)
    flat = rules.FlatParams.from_dict(VAE(dict(data_dim=1, latent_dim=1)).bk, {"p": p0.copy()})
    opt = make("sgd", flat.bk, flat.size, **kw)
    for g in grads:
        tp.grad = torch.tensor(g)
        topt.step()
        flat.set_grads({"p": g})
        opt.step(flat)
    np.testing.assert_allclose(flat.params["p"], tp.detach().numpy(), rtol=1e-13)


def grey(n=24, d=5, seed=2):
    rng = np.random.default_rng(seed)
    return Dataset("grey", rng.random((n, d)), rng.random((6, d)))


CONFIG = VAEConfig(data_dim=5, latent_dim=2, encoder_hidden=[3], decoder_hidden=[3],
                   emission="bernoulli")


def test_resume_mid_run_restores_the_step_of_the_schedule(tmp_path):
    opts = dict(batch_size=8, seed=1, schedule="step", lr=0.01, lr_gamma=0.5, lr_step_size=2,
                progress=False)
    whole = train(CONFIG, TrainOptions(epochs=3, **opts), grey(), tmp_path / "a")
    train(CONFIG, TrainOptions(epochs=1, **opts), grey(), tmp_path / "b")
    resumed = train(CONFIG, TrainOptions(epochs=3, **opts), grey(), tmp_path / "b", resume=True)
    strip = [[{k: v for k, v in m.items() if k != "seconds"} for m in h] for h in (whole, resumed)]
    assert strip[0] == strip[1]
    assert [m["step"] for m in whole] == [3, 6, 9]


def test_dynamic_binarisation_draws_anew_every_epoch(monkeypatch, tmp_path):
    seen, inner = [], parallel.loss_and_grads

    def spy(model, workers, params, yb, *a, **kw):
        seen.append(np.array(yb))
        return inner(model, workers, params, yb, *a, **kw)

    monkeypatch.setattr(parallel, "loss_and_grads", spy)
    data = grey(n=40)
    train(CONFIG, TrainOptions(epochs=3, batch_size=40, binarize="dynamic", progress=False), data,
          tmp_path)
    assert len(seen) == 3 and all(np.isin(s, (0.0, 1.0)).all() for s in seen)
    sums = [s.sum(0) for s in seen]       # each epoch's draw, whatever the order of its rows
    assert not any(np.array_equal(sums[i], sums[j]) for i in range(3) for j in range(i))


def test_the_sampler_hint_names_the_variance_used_as_the_scale():
    cfg = {"format": oracle.FORMAT, "data_dim": 4, "latent_dim": 2, "encoder_hidden": [],
           "decoder_hidden": [3], "activation": "tanh", "latent": "gaussian",
           "emission": "bernoulli"}
    vae = VAE(cfg)
    noise = NoiseSource(0)
    params = {k: np.asarray(v) for k, v in vae.init_params(noise).items()}
    params["encoder.logvar.bias"] = params["encoder.logvar.bias"] + 0.7   # scale ≠ variance
    y = (np.random.default_rng(0).random((3, 4)) < 0.5).astype(float)
    batch = {"y": y, "eps": np.asarray(vae.draw_noise(noise, 3, 1))}
    ours = oracle.compute(cfg, params, batch)
    forward = ours.intermediates()
    nu, lv = forward["heads/mean"][:, None], forward["heads/logvar"][:, None]
    theirs = {**ours.arrays(), **forward, "x": nu + np.exp(lv) * batch["eps"]}
    report = oracle.compare(theirs, ours)
    assert not report.passed
    assert "exp(logvar), the variance, as the standard deviation" in report.hints[0], str(report)
