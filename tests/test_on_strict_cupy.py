"""End to end on the strict CuPy stand-in (``backend="cupy"`` with ``tests/strict_cupy`` in place of
CuPy): training, resume, checkpoints, evaluation with IWAE, every estimator of every latent (Price
with full Hessians, flows, categorical), the oracle's CLI and Python API, and figures.

Agreement with NumPy is judged at 1e-9 relative to each tensor's largest entry: what a GPU math
library that rounds ``exp``/``log``/``tanh`` and reductions a few ulps differently from NumPy meets
(the suite passes with ``REFVAE_STRICT_ULPS=3``, which moves every transcendental result by up
to 3 ulps and adds sums and matrix products in another order).
"""
import json

import numpy as np
import pytest

import strict_cupy
from refvae import NoiseSource, oracle
from refvae.cli import main as cli
from refvae.train import loop as train_mod
from refvae.math.config import VAEConfig
from refvae.data.load import Dataset
from refvae.errors import ConfigError
from refvae.math.estimators import estimators_for
from refvae.util.files import load_npz_checked
from refvae.util.progress import Meter
from refvae.train.loop import TrainOptions, load_run, train
from refvae.math.vae import VAE

RTOL = 1e-9
BASE = dict(data_dim=6, latent_dim=3, encoder_hidden=(5,), decoder_hidden=(5,), activation="tanh",
            emission="gaussian", learn_alpha=True)
LATENTS = {"gaussian": {}, "flows": {"flow_length": 2},
           "gaussian_full": {"latent": "gaussian_full"},
           "categorical": {"latent": "categorical", "latent_dim": 2, "categories": 3}}


def assert_close(got, want, what):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, what
    scale = max(float(np.abs(want).max()), 1e-300) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def tiny_data(n=64, d=6):
    y = np.random.default_rng(101).random((n + 16, d))
    return Dataset("tiny", y[:n], y[n:], image_shape=(2, 3), kind="greyscale")


def cases():
    # registers its estimators
    VAE(VAEConfig(data_dim=2, latent_dim=1, latent="categorical", categories=2))
    for latent, extra in LATENTS.items():
        kind = extra.get("latent", "gaussian")
        for estimator in estimators_for(kind):
            yield pytest.param(latent, estimator, id=f"{latent}-{estimator}")


@pytest.mark.parametrize("latent,estimator", list(cases()))
def test_every_estimator_matches_numpy(strict_cupy_bk, latent, estimator):
    cfg = VAEConfig(**{**BASE, **LATENTS[latent]})
    temperature = 0.7 if cfg.latent == "categorical" else None
    host, dev = VAE(cfg), VAE(cfg, "cupy")
    noise = NoiseSource(3)
    params = host.init_params(noise)
    y = 1.5 * noise.normal((5, cfg.data_dim))
    eps = host.draw_noise(noise, 5, 3)
    try:
        ref = host.loss_and_grads(params, y, eps, estimator, temperature=temperature)
    except ConfigError as exc:  # a combination the library refuses is refused on the device too
        with pytest.raises(ConfigError, match=str(exc)[:30]):
            dev.loss_and_grads(params, y, eps, estimator, temperature=temperature)
        return
    res = dev.loss_and_grads({k: dev.bk.asarray(v) for k, v in params.items()}, dev.bk.asarray(y),
                             dev.bk.asarray(eps), estimator, temperature=temperature)
    assert isinstance(res.loss, float) and res.grads_finite is True
    assert_close([res.loss, res.kl, res.reconstruction], [ref.loss, ref.kl, ref.reconstruction],
                 "loss")
    assert list(res.grads) == list(ref.grads)
    for name, g in res.grads.items():
        assert type(g).__module__ == "cupy", name
        assert_close(dev.bk.to_numpy(g), ref.grads[name], name)


def test_training_makes_one_device_sync_per_step_and_matches_numpy(strict_cupy_bk, tmp_path,
                                                                   monkeypatch):
    """Per step the host reads one array (the loss, its parts and the gradients' finiteness);
    before this was measured there were 13 (three loss floats and ten per-tensor checks)."""
    marks = []
    advance = Meter.advance  # called once per training step
    monkeypatch.setattr(Meter, "advance",
                        lambda self, *a: (marks.append(strict_cupy.STATE.syncs), advance(self, *a)))
    cfg = VAEConfig(**{**BASE, "emission": "bernoulli", "learn_alpha": False})
    opts = TrainOptions(epochs=2, batch_size=16, lr=1e-2, samples=2, progress=False)
    dev_hist = train(cfg, opts, tiny_data(), tmp_path / "dev", backend="cupy")
    steps = np.diff(marks)
    assert len(steps) == 7 and (np.delete(steps, 3) == 1).all(), steps  # index 3: the epoch's end
    host_hist = train(cfg, opts, tiny_data(), tmp_path / "host")
    for a, b in zip(dev_hist, host_hist):
        assert_close([a[k] for k in a if k != "seconds"], [b[k] for k in a if k != "seconds"],
                     "history")
    dev_ckpt, dev_meta = load_npz_checked(tmp_path / "dev" / "checkpoint.npz")
    host_ckpt, host_meta = load_npz_checked(tmp_path / "host" / "checkpoint.npz")
    assert set(dev_ckpt) == set(host_ckpt) and dev_meta["step"] == host_meta["step"] == 8
    for k in host_ckpt:
        assert isinstance(dev_ckpt[k], np.ndarray)
        assert_close(dev_ckpt[k], host_ckpt[k], k)
    resumed = train(cfg, TrainOptions(epochs=3, batch_size=16, lr=1e-2, samples=2, progress=False),
                    tiny_data(), tmp_path / "dev", backend="cupy", resume=True)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    model, params, _ = load_run(tmp_path / "dev", "cupy")
    assert (model.bk.xp is strict_cupy.MODULE and type(params["decoder.out.bias"]).__module__
            == "cupy")


def test_divergence_is_caught_and_named_on_the_device(strict_cupy_bk, tmp_path):
    cfg = VAEConfig(**{**BASE, "emission": "bernoulli", "learn_alpha": False})
    with pytest.raises(train_mod.TrainingDiverged, match="NaN or inf|loss is"):
        train(cfg, TrainOptions(epochs=1, batch_size=16, lr=1e12, samples=2, progress=False,
                                optimizer="sgd"), tiny_data(), tmp_path / "nan", backend="cupy")


def test_cli_train_evaluate_iwae_and_sample_on_the_device(strict_cupy_bk, tmp_path, capsys):
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, train=rng.random((50, 12)), test=rng.random((10, 12)))
    results = {}
    for backend in ("cupy", "numpy"):
        out = tmp_path / backend
        assert cli.main(["train", "--data", str(data), "--epochs", "2", "--latent-dim", "2",
                         "--encoder-hidden", "8", "--decoder-hidden", "8", "--out", str(out),
                         "--quiet",
                         "--no-figures", "--backend", backend]) == 0
        capsys.readouterr()
        assert cli.main(["evaluate", str(out), "--iwae", "5", "--json", "--backend", backend]) == 0
        results[backend] = json.loads(capsys.readouterr().out)
    assert set(results["cupy"]) == set(results["numpy"]) and "nll_iwae" in results["cupy"]
    for k, v in results["numpy"].items():
        assert_close(results["cupy"][k], v, k)
    png = tmp_path / "s.png"
    assert cli.main(["sample", str(tmp_path / "cupy"), "--n", "4", "--image-shape", "3", "4",
                     "--out",
                     str(png), "--backend", "cupy"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_figures_from_a_device_model(strict_cupy_bk, tmp_path):
    pytest.importorskip("matplotlib")
    from refvae.train.figures import make_figures  # noqa: PLC0415 - needs matplotlib

    cfg = VAEConfig(**{**BASE, "latent_dim": 2, "emission": "bernoulli", "learn_alpha": False})
    model = VAE(cfg, "cupy")
    params = model.init_params(NoiseSource(0))
    history = [{"epoch": e, **{f"{split}_{k}": v / e for split in ("train", "test")
                               for k, v in (("loss", 5.0), ("neg_elbo", 5.0), ("kl", 1.0),
                                            ("reconstruction", 4.0))}}
               for e in (1, 2)]
    written = make_figures(model, params, tiny_data(), tmp_path, history)
    assert {p.name for p in written} == {"loss.png", "samples.png", "reconstructions.png",
                                         "latent.png",
                                         "manifold.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)


def test_oracle_cli_backend_cupy_matches_numpy(strict_cupy_bk, tmp_path, capsys):
    ex = oracle.write_example(tmp_path / "ex", latent="gaussian_full", emission="gaussian",
                              learn_alpha=True)
    outs = {}
    for backend in ("cupy", "numpy"):
        outs[backend] = tmp_path / f"{backend}.npz"
        assert cli.main(["oracle", "compute", "--config", str(ex["config"]), "--params",
                         str(ex["params"]),
                         "--batch", str(ex["batch"]), "--out", str(outs[backend]), "--backend",
                         backend]) == 0
    dev, host = oracle.load_npz(outs["cupy"]), oracle.load_npz(outs["numpy"])
    assert set(dev) == set(host)
    for k in host:
        assert_close(dev[k], host[k], k)
    assert cli.main(["oracle", "compare", "--config", str(ex["config"]), "--params",
                     str(ex["params"]),
                     "--batch", str(ex["batch"]), "--grads", str(outs["cupy"]), "--backend",
                     "cupy"]) == 0
    capsys.readouterr()


def test_oracle_python_api_takes_device_arrays(strict_cupy_bk, tmp_path):
    ex = oracle.write_example(tmp_path / "ex", emission="gaussian", learn_alpha=True)
    dev = lambda arrays: {k: strict_cupy_bk.asarray(v) for k, v in arrays.items()}  # noqa: E731
    params, batch = dev(oracle.load_npz(ex["params"])), dev(oracle.load_npz(ex["batch"]))
    theirs = dev(oracle.load_npz(ex["theirs"]))
    assert oracle.check(ex["config"], params, batch, theirs).passed
    wrong = dict(theirs)
    wrong["grad/encoder.0.bias"] = theirs["grad/encoder.0.bias"] + 1.0
    with pytest.raises(oracle.OracleMismatch, match="encoder.0.bias"):
        oracle.assert_matches(ex["config"], params, batch, wrong)


@pytest.mark.parametrize("act", ["tanh", "softplus", "silu"])
def test_gradcheck_cli_on_the_device(strict_cupy_bk, capsys, act):
    """`refvae gradcheck --backend cupy` crashed before (cupy.unravel_index given a Python int)."""
    assert cli.main(["gradcheck", "--backend", "cupy", "--activation", act, "--hidden", "4",
                     "3"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].endswith("PASS") and "FAIL" not in out
