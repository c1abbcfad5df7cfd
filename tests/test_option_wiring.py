"""Every option of ``refvae train`` reaches what it configures (issue 23).

:data:`CHECKS` maps each field of :class:`~refvae.train.loop.TrainOptions` to a check that trains a
tiny model through the CLI entry point, in-process, with a value other than both defaults (the
library's and the CLI's), and then looks where the option should have arrived: the recorded
``lr``/``temperature``/``step`` of ``metrics.jsonl`` against the schedules' formulas written out
here, the arguments the loop hands to the loss, the optimizer, the worker pool and the evaluation
(spies that call through to the real functions), the stderr lines, or the parameters themselves.
A new option without a check fails :func:`test_every_option_has_a_check`.
"""
import json
import math
import re
from dataclasses import fields

import numpy as np
import pytest

from refvae import NoiseSource
from refvae.cli.main import main
from refvae.cli.train_args import OPTION_FLAGS
from refvae.fast import parallel
from refvae.fast.model import fast_vae
from refvae.math.objectives import neg_elbo_terms
from refvae.optim.rules import SGD, Adagrad, Adam
from refvae.train import loop
from refvae.train.loop import TrainOptions, load_run
from refvae.util.files import load_npz_checked

N_TRAIN, N_TEST, D = 32, 8, 8
TINY = ("--encoder-hidden", "4", "--decoder-hidden", "4", "--latent-dim", "2", "--epochs", "2",
        "--batch-size", "16", "--threads", "1", "--no-figures")


class Run:
    """One check's runs: the data file, the spies, and ``train(*flags)`` -> metrics records."""

    def __init__(self, tmp_path, monkeypatch, capsys):
        self.tmp, self.capsys, self.count = tmp_path, capsys, 0
        rng = np.random.default_rng(0)  # greyscale values: binarization has something to do
        self.data = tmp_path / "data.npz"
        self.test = rng.uniform(0.05, 0.95, (N_TEST, D))
        np.savez(self.data, train=rng.uniform(0.05, 0.95, (N_TRAIN, D)), test=self.test)
        self.losses, self.optimizers, self.step_lrs, self.pools = [], [], [], []
        self.shards, self.evals = [], []
        real_loss, real_make = parallel.loss_and_grads, loop.make_optimizer
        real_workers, real_eval = parallel.Workers, loop.neg_elbo_terms

        def loss_spy(model, workers, params, y, eps, estimator=None, **kw):
            self.losses.append({"y": np.array(y), "eps": eps.shape, "estimator": estimator,
                                "temperature": kw.get("temperature"),
                                "detect_anomaly": kw.get("detect_anomaly")})
            return real_loss(model, workers, params, y, eps, estimator, **kw)

        def make_spy(name, bk=None, size=None, **kw):
            opt = real_make(name, bk, size, **kw)
            self.optimizers.append((name, kw, opt))
            real_step = opt.step

            def step(flat, lr=None, workers=None):
                self.step_lrs.append(lr)
                return real_step(flat, lr=lr, workers=workers)

            opt.step = step
            return opt

        class WorkersSpy(real_workers):
            def __init__(pool, threads=1):
                self.pools.append(threads)
                super().__init__(threads)

            def map(pool, fn, items):
                items = list(items)
                self.shards.append(len(items))
                return super().map(fn, items)

        def eval_spy(model, params, y, noise, samples=1, **kw):
            self.evals.append(samples)
            return real_eval(model, params, y, noise, samples, **kw)

        monkeypatch.setattr(parallel, "loss_and_grads", loss_spy)
        monkeypatch.setattr(loop, "make_optimizer", make_spy)
        monkeypatch.setattr(parallel, "Workers", WorkersSpy)
        monkeypatch.setattr(loop, "neg_elbo_terms", eval_spy)

    def train(self, *flags, quiet=True, out=None) -> list[dict]:
        """``refvae train`` on the tiny model with ``flags`` (a later flag overrides TINY's)."""
        self.count += 1
        self.out = self.tmp / (out or f"run{self.count}")
        self.capsys.readouterr()
        args = ["train", "--data", str(self.data), "--out", str(self.out), *TINY, *flags]
        assert main(args + (["--quiet"] if quiet else [])) == 0
        self.stderr = self.capsys.readouterr().err
        return metrics(self.out)


def metrics(out) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(s).items() if k != "seconds"} for s in lines]


def checkpoint(out):
    return load_npz_checked(out / "checkpoint.npz")


# ----- learning rate: the formulas, written out here ---------------------------------------------
LR, GAMMA, STEP_SIZE, BATCH = 0.01, 0.8, 3, 8  # 4 steps per epoch, 8 in all
LR_FORMULAS = {
    "step": lambda t, total: LR * GAMMA ** (t // STEP_SIZE),
    "exponential": lambda t, total: LR * GAMMA ** t,
    "cosine": lambda t, total: LR * 0.5 * (1 + math.cos(math.pi * min(t, total) / total)),
}


def _lr_follows(run, schedule):
    # each schedule's own flags only: one that does not apply is refused
    own = {"step": ("--lr-gamma", str(GAMMA), "--lr-step-size", str(STEP_SIZE)),
           "exponential": ("--lr-gamma", str(GAMMA))}.get(schedule, ())
    recs = run.train("--schedule", schedule, "--lr", str(LR), *own, "--batch-size", str(BATCH))
    total = 2 * N_TRAIN // BATCH
    formula = LR_FORMULAS[schedule]
    assert [r["step"] for r in recs] == [total // 2, total]
    assert [r["lr"] for r in recs] == pytest.approx([formula(r["step"], total) for r in recs],
                                                    rel=1e-12)
    assert run.step_lrs == pytest.approx([formula(t, total) for t in range(total)], rel=1e-12)
    assert len(set(run.step_lrs)) > 1, f"{schedule}: the learning rate never changed"


def check_lr(run):
    recs = run.train("--lr", "0.0123")
    assert [r["lr"] for r in recs] == [0.0123, 0.0123]
    assert run.step_lrs == [0.0123] * 4 and run.optimizers[0][1]["lr"] == 0.0123


def check_schedule(run):
    for schedule in LR_FORMULAS:
        run.step_lrs.clear()
        _lr_follows(run, schedule)


def check_lr_gamma(run):
    _lr_follows(run, "exponential")


def check_lr_step_size(run):
    _lr_follows(run, "step")


# ----- optimizer ---------------------------------------------------------------------------------
def check_optimizer(run):
    expected = {"sgd": (SGD, {}), "adagrad": (Adagrad, {}), "adamw": (Adam, {"decoupled": True})}
    for name, (cls, attrs) in expected.items():
        run.train("--optimizer", name)
        got, _, opt = run.optimizers[-1]
        assert got == name and isinstance(opt, cls), (name, type(opt))
        assert all(getattr(opt, k) == v for k, v in attrs.items()), name
        assert checkpoint(run.out)[1]["optimizer"] == opt.name
        assert json.loads((run.out / "train.json").read_text())["options"]["optimizer"] == name


def check_weight_decay(run):
    """One SGD step on the whole batch: θ₁ = θ₀ − η(g + λθ₀), so the run with λ
    differs from the run without by −ηλθ₀, θ₀ being the seed's initial parameters."""
    lr, decay = 0.1, 0.25
    flags = ("--optimizer", "sgd", "--lr", str(lr), "--epochs", "1", "--batch-size", str(N_TRAIN))
    run.train(*flags, "--weight-decay", "0")
    plain = checkpoint(run.out)[0]
    run.train(*flags, "--weight-decay", str(decay))
    decayed = checkpoint(run.out)[0]
    assert run.optimizers[-1][1]["weight_decay"] == decay
    model, _, _ = load_run(run.out)
    theta0 = fast_vae(model.config, "numpy", "float64").init_params(NoiseSource(0))
    for name, t0 in theta0.items():
        diff = decayed[f"param/{name}"] - plain[f"param/{name}"]
        np.testing.assert_allclose(diff, -lr * decay * np.asarray(t0), rtol=1e-9, atol=1e-15)


# ----- the loss: samples, estimator, seed, binarization, anomaly checks --------------------------
def check_samples(run):
    run.train("--samples", "3")
    assert run.losses and all(c["eps"] == (16, 3, 2) for c in run.losses)


def check_estimator(run):
    run.train("--estimator", "score")
    assert run.losses and all(c["estimator"] == "score" for c in run.losses)


def check_detect_anomaly(run):
    run.train("--detect-anomaly")
    assert run.losses and all(c["detect_anomaly"] is True for c in run.losses)
    run.losses.clear()
    run.train()
    assert all(c["detect_anomaly"] is False for c in run.losses)


def check_seed(run):
    a, b, c = run.train("--seed", "5"), run.train("--seed", "5"), run.train()
    assert a == b and a != c
    first = checkpoint(run.tmp / "run1")[0]
    assert all(np.array_equal(v, checkpoint(run.tmp / "run2")[0][k]) for k, v in first.items())
    assert not all(np.array_equal(v, checkpoint(run.out)[0][k]) for k, v in first.items())


def _epoch_data(run, per_epoch=2):
    """The training rows seen in each epoch, sorted (the batches' order undone)."""
    ys = [c["y"] for c in run.losses]
    return [np.sort(np.concatenate(ys[i:i + per_epoch]), axis=0)
            for i in range(0, len(ys), per_epoch)]


def check_binarize(run):
    run.train()
    grey = _epoch_data(run)
    assert not np.isin(grey[0], (0.0, 1.0)).all()
    for mode in ("static", "dynamic"):
        run.losses.clear()
        run.train("--binarize", mode)
        seen = _epoch_data(run)
        assert all(np.isin(y, (0.0, 1.0)).all() for y in seen), mode
        assert np.array_equal(seen[0], seen[1]) == (mode == "static"), mode


# ----- temperature -------------------------------------------------------------------------------
T0, RATE, T_MIN, EVERY = 2.0, 0.05, 1.5, 2  # the floor is reached at step 6 of 8


def temperature_formula(t):
    return max(min(T_MIN, T0), T0 * math.exp(-RATE * EVERY * (t // EVERY)))


def check_temperature(run):
    recs = run.train("--latent", "categorical", "--categories", "3", "--batch-size", str(BATCH),
                     "--temperature", str(T0), "--temperature-rate", str(RATE),
                     "--temperature-min", str(T_MIN), "--temperature-every", str(EVERY))
    assert [r["step"] for r in recs] == [4, 8]
    assert [r["temperature"] for r in recs] == pytest.approx(
        [temperature_formula(r["step"]) for r in recs], rel=1e-12)
    used = [c["temperature"] for c in run.losses]
    assert used == pytest.approx([temperature_formula(t) for t in range(8)], rel=1e-12)
    assert len(set(used)) == 4  # decays in pairs of steps, then holds at the floor


check_temperature_rate = check_temperature_min = check_temperature_every = check_temperature


# ----- evaluation, run length, threads, progress -------------------------------------------------
def check_eval_samples(run):
    """The recorded test bound is the seed's epoch-1 evaluation with 3 samples per datum."""
    rec, = run.train("--eval-samples", "3", "--epochs", "1")
    assert run.evals == [3]
    model, params, _ = load_run(run.out)

    def bound(samples):
        kl, r = neg_elbo_terms(model, params, run.test, NoiseSource([0, 1, 1]), samples)
        return float((kl + r).mean())

    assert rec["test_neg_elbo"] == bound(3) != bound(1)


def check_epochs(run):
    recs = run.train("--epochs", "3")
    assert [r["epoch"] for r in recs] == [1, 2, 3] and checkpoint(run.out)[1]["epoch"] == 3


def check_batch_size(run):
    recs = run.train("--batch-size", "8")
    assert [r["step"] for r in recs] == [4, 8]
    assert [c["y"].shape[0] for c in run.losses] == [8] * 8


def check_threads(run):
    run.train("--threads", "2")
    assert run.pools == [2, 2] and 2 in run.shards  # the batch in two row shards
    assert json.loads((run.out / "train.json").read_text())["options"]["threads"] == 2


EPOCH_LINE = re.compile(r"^epoch (\d)/2  train ", re.MULTILINE)
STEP_LINE = re.compile(r"^epoch (\d)/2 (\d+)/4 ", re.MULTILINE)


def check_progress(run):
    run.train(quiet=False)
    assert EPOCH_LINE.findall(run.stderr) == ["1", "2"]
    run.train()
    assert run.stderr == ""


def check_log_interval(run):
    run.train("--batch-size", "8", "--log-interval", "2", quiet=False)
    assert STEP_LINE.findall(run.stderr) == [("1", "2"), ("1", "4"), ("2", "2"), ("2", "4")]
    run.train("--batch-size", "8", quiet=False)
    assert STEP_LINE.findall(run.stderr) == []


def check_device_noise(run):
    """The base noise drawn on the device: reproducible for a seed, another stream than the host's,
    recorded for --resume."""
    a, b, c = run.train("--device-noise"), run.train("--device-noise"), run.train()
    assert a == b and a != c
    recorded = json.loads((run.tmp / "run1" / "train.json").read_text())["options"]
    assert recorded["device_noise"] is True


CHECKS = {
    "epochs": check_epochs, "batch_size": check_batch_size, "lr": check_lr,
    "optimizer": check_optimizer, "weight_decay": check_weight_decay,
    "schedule": check_schedule, "lr_gamma": check_lr_gamma, "lr_step_size": check_lr_step_size,
    "samples": check_samples, "seed": check_seed, "estimator": check_estimator,
    "binarize": check_binarize, "temperature": check_temperature,
    "temperature_rate": check_temperature_rate, "temperature_min": check_temperature_min,
    "temperature_every": check_temperature_every, "eval_samples": check_eval_samples,
    "progress": check_progress, "detect_anomaly": check_detect_anomaly,
    "threads": check_threads, "log_interval": check_log_interval,
    "device_noise": check_device_noise,
}


def test_every_option_has_a_check():
    assert set(CHECKS) == {f.name for f in fields(TrainOptions)}


def test_every_option_has_a_flag():
    """The CLI sets every option: the OPTION_FLAGS, and progress/detect_anomaly/log_interval."""
    cli = set(OPTION_FLAGS) | {"progress", "detect_anomaly", "log_interval"}
    assert cli == {f.name for f in fields(TrainOptions)}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_option_reaches_its_target(name, tmp_path, monkeypatch, capsys):
    CHECKS[name](Run(tmp_path, monkeypatch, capsys))


# ----- resume mid-run ----------------------------------------------------------------------------
RESUMED = {
    "gaussian": ("--samples", "2", "--schedule", "exponential", "--lr-gamma", "0.9",
                 "--binarize", "dynamic", "--eval-samples", "2", "--batch-size", "12"),
    "categorical": ("--latent", "categorical", "--categories", "3", "--optimizer", "adagrad",
                    "--temperature", "2", "--temperature-rate", "0.05", "--temperature-every", "3",
                    "--schedule", "step", "--lr-step-size", "5", "--lr-gamma", "0.5"),
}


@pytest.mark.parametrize("case", sorted(RESUMED))
def test_resume_mid_run_is_bit_identical(case, tmp_path, monkeypatch, capsys):
    run = Run(tmp_path, monkeypatch, capsys)
    whole = run.train(*RESUMED[case], "--epochs", "4", out="whole")
    run.train(*RESUMED[case], "--epochs", "2", out="split")
    args = ["train", "--out", str(tmp_path / "split"), "--resume", "--epochs", "4", "--quiet",
            "--no-figures"]
    assert main(args) == 0
    assert metrics(tmp_path / "split") == whole and len(whole) == 4
    (a, meta_a), (b, meta_b) = checkpoint(tmp_path / "whole"), checkpoint(tmp_path / "split")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    meta_a.pop("config"), meta_b.pop("config")
    assert meta_a == meta_b
