"""Training and sampling conditional VAEs (issue 25): the data set's condition (labels one-hot or
an .npz's vectors), ``refvae train --condition``, ``refvae sample --condition``, exact resume, and
every bad input as one line with exit code 2."""
import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from refvae import NoiseSource
from refvae.cli.main import main
from refvae.data.load import load_dataset
from refvae.math.config import VAEConfig
from refvae.math.vae import VAE
from refvae.train.loop import TrainOptions, train
from refvae.util.files import load_npz_checked

N, D, CLASSES = 40, 6, 3
TINY = ("--encoder-hidden", "5", "--decoder-hidden", "5", "--latent-dim", "2", "--epochs", "2",
        "--batch-size", "16", "--threads", "1", "--quiet")


def _npz(path, **extra):
    rng = np.random.default_rng(0)
    arrays = {"y": rng.uniform(0.05, 0.95, (N, D)), "labels": np.arange(N) % CLASSES, **extra}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _idx(path, a):
    a = np.asarray(a, dtype=np.uint8)
    head = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(">" + "I" * a.ndim, *a.shape)
    path.write_bytes(gzip.compress(head + a.tobytes()))


def _mnist_dir(d, n_train=20, n_test=10):
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(d / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 4, 3)))
        _idx(d / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return d


def cli(*argv):
    """``refvae ARGV`` in-process: its exit code (argparse's usage errors included)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A conditional and an unconditional run of the labelled .npz, trained from another folder."""
    root = tmp_path_factory.mktemp("runs")
    data = _npz(root / "labelled.npz")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)
        assert cli("train", "--data", data, "--condition", "labels", *TINY, "--no-figures",
                   "--out", "cond") == 0
        assert cli("train", "--data", data, *TINY, "--no-figures", "--out", "plain") == 0
    return {"data": data, "cond": elsewhere / "cond", "plain": elsewhere / "plain"}


def test_cli_trains_on_labels_one_hot(runs):
    run = runs["cond"]
    assert json.loads((run / "config.json").read_text())["condition_dim"] == CLASSES
    info = json.loads((run / "train.json").read_text())
    assert info["data"]["condition"] == "labels"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(np.isfinite(r["test_neg_elbo"]) for r in records)
    plain = json.loads((runs["plain"] / "config.json").read_text())
    assert plain.get("condition_dim", 0) == 0 and "condition" not in json.loads(
        (runs["plain"] / "train.json").read_text())["data"]


def test_cli_trains_on_an_mnist_dir_with_labels(tmp_path, monkeypatch, capsys):
    data = _mnist_dir(tmp_path / "mnist")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert cli("train", "--data", data, "--condition", "labels", *TINY[:-1], "--out", "run") == 0
    err = capsys.readouterr().err
    assert "condition: labels (C=10, one-hot)" in err
    run = tmp_path / "cwd" / "run"
    assert json.loads((run / "config.json").read_text())["condition_dim"] == 10
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()
    assert not (run / "manifold.png").exists()  # no single manifold for a conditional model
    assert cli("evaluate", run, "--json", "--iwae", "3") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 10 and np.isfinite(result["nll_iwae"])


def test_npz_labels_and_vectors_follow_their_rows(tmp_path):
    cond = np.random.default_rng(2).normal(size=(N, 2))
    path = _npz(tmp_path / "d.npz", condition=cond)
    by_labels = load_dataset(path, condition="labels")
    assert by_labels.condition_dim == CLASSES and by_labels.condition_source == "labels"
    labels = np.arange(N) % CLASSES
    both = np.concatenate([by_labels.train_condition, by_labels.test_condition])
    assert np.array_equal(both.argmax(axis=1), labels) and np.array_equal(both.sum(axis=1),
                                                                          np.ones(N))
    by_vectors = load_dataset(path, condition="vectors")
    assert np.array_equal(np.concatenate([by_vectors.train_condition,
                                          by_vectors.test_condition]), cond)
    assert by_vectors.n_train == len(by_vectors.train_condition)
    np.savez(tmp_path / "split.npz", train=np.ones((5, 2)) / 2, test=np.ones((2, 2)) / 2,
             train_labels=[0, 1, 2, 3, 4], test_labels=[4, 0])
    split = load_dataset(tmp_path / "split.npz", condition="labels")
    assert split.condition_dim == 5 and split.test_condition.argmax(axis=1).tolist() == [4, 0]


CONFIG = VAEConfig.from_dict({"data_dim": D, "latent_dim": 2, "encoder_hidden": [5],
                              "decoder_hidden": [5], "activation": "tanh",
                              "condition_dim": CLASSES})


def test_the_step_is_the_models_loss_with_the_condition(tmp_path):
    """One SGD step over the whole training split: the loss the loop records and the parameters it
    writes are VAE.loss_and_grads(..., condition=c) of the same batch and noise, by hand; with the
    conditions shuffled among the rows, the numbers differ (the condition is used)."""
    data = load_dataset(_npz(tmp_path / "d.npz"), condition="labels")
    n, lr = data.n_train, 0.5
    options = TrainOptions(epochs=1, batch_size=n, optimizer="sgd", lr=lr, progress=False)
    record = train(CONFIG, options, data, tmp_path / "run")[0]
    noise = NoiseSource(options.seed)
    model = VAE(CONFIG)
    params = model.init_params(noise)
    order = noise.permutation(n)
    eps = model.draw_noise(noise, n, 1)
    res = model.loss_and_grads(params, data.train[order], eps,
                               condition=data.train_condition[order])
    assert record["train_loss"] == pytest.approx(res.loss, rel=1e-12)
    arrays, _ = load_npz_checked(tmp_path / "run" / "checkpoint.npz")
    for name, p in params.items():
        np.testing.assert_allclose(arrays[f"param/{name}"], p - lr * res.grads[name], rtol=1e-10,
                                   atol=1e-13)
    shuffled = data.train_condition[np.roll(order, 1)]
    other = model.loss_and_grads(params, data.train[order], eps, condition=shuffled)
    assert abs(other.loss - res.loss) > 1e-6
    from dataclasses import replace

    moved = replace(data, train_condition=data.train_condition[::-1].copy())
    again = train(CONFIG, options, moved, tmp_path / "moved")[0]
    assert abs(again["train_loss"] - record["train_loss"]) > 1e-6


def test_conditional_resume_is_bit_identical(tmp_path):
    data = load_dataset(_npz(tmp_path / "d.npz"), condition="labels")

    def run(name, epochs, resume=False):
        options = TrainOptions(epochs=epochs, batch_size=16, progress=False)
        return [{k: v for k, v in r.items() if k != "seconds"}
                for r in train(CONFIG, options, data, tmp_path / name, resume=resume)]

    whole = run("whole", 3)
    run("split", 1)
    assert run("split", 3, resume=True) == whole
    a, meta_a = load_npz_checked(tmp_path / "whole" / "checkpoint.npz")
    b, meta_b = load_npz_checked(tmp_path / "split" / "checkpoint.npz")
    assert meta_a == meta_b and set(a) == set(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_cli_resume_of_a_conditional_run(runs, tmp_path):
    out = tmp_path / "run"
    assert cli("train", "--data", runs["data"], "--condition", "labels", *TINY, "--no-figures",
               "--out", out, "--epochs", "1") == 0
    assert cli("train", "--out", out, "--resume", "--epochs", "2", "--quiet",
               "--no-figures") == 0
    whole = [json.loads(x) for x in (runs["cond"] / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in whole]


def _samples(run, path, *flags):
    assert cli("sample", run, "--n", 6, "--out", path, *flags) == 0
    return np.load(path, allow_pickle=False)


def test_sample_given_a_condition(runs, tmp_path):
    a = _samples(runs["cond"], tmp_path / "a.npy", "--condition", 0)
    b = _samples(runs["cond"], tmp_path / "b.npy", "--condition", 2)
    same = _samples(runs["cond"], tmp_path / "c.npy", "--condition-vector", "1,0,0")
    assert a.shape == b.shape == (6, D)
    assert np.array_equal(a, same) and not np.allclose(a, b)
    assert cli("sample", runs["cond"], "--n", 4, "--image-shape", 2, 3, "--condition", 1,
               "--out", tmp_path / "grid.png") == 0
    assert (tmp_path / "grid.png").stat().st_size > 0


BAD_RUNS = {
    "labels missing": ({"labels": None}, ["--condition", "labels"], "has no labels"),
    "labels rows": ({"labels": np.arange(N - 1)}, [], "'labels' has 39 labels but the data"),
    "labels negative": ({"labels": -np.ones(N)}, [], "negative class"),
    "labels fractional": ({"labels": np.full(N, 0.5)}, [], "not whole numbers"),
    "vectors missing": ({}, ["--condition", "vectors"], "carries no condition vectors"),
    "vectors nan": ({"condition": np.full((N, 2), np.nan)}, [], "holds NaN or inf"),
    "vectors 1-D": ({"condition": np.ones(N)}, [], "give (N, C)"),
    "unknown source": ({}, ["--condition", "classes"], "invalid choice: 'classes'"),
    "config width": ({}, ["--condition", "labels", "--config", "cfg5"],
                     "has 3 values per datum but the model's condition_dim is 5"),
    "no condition": ({}, ["--config", "cfg5"], "carries no condition; train with --condition"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_training_inputs_are_one_line(case, tmp_path, capsys):
    extra, flags, words = BAD_RUNS[case]
    data = _npz(tmp_path / "d.npz", **extra)
    (tmp_path / "cfg5").write_text(json.dumps({"condition_dim": 5}))
    flags = [str(tmp_path / f) if f == "cfg5" else f for f in flags]
    code = cli("train", "--data", data, *flags, *TINY, "--no-figures", "--out", tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


BAD_SAMPLES = {
    "unconditional run": ("plain", ["--condition", "1"], "the run is not conditional"),
    "vector on unconditional": ("plain", ["--condition-vector", "1"], "not conditional"),
    "none given": ("cond", [], "pass --condition CLASS (0..2, one-hot)"),
    "class too large": ("cond", ["--condition", "3"], "give a class 0..2"),
    "class not a number": ("cond", ["--condition", "two"], "give a class 0..2"),
    "vector length": ("cond", ["--condition-vector", "1,0"], "give 3 finite"),
    "vector nan": ("cond", ["--condition-vector", "1,nan,0"], "give 3 finite"),
    "vector text": ("cond", ["--condition-vector", "a,b,c"], "give 3 finite"),
    "both": ("cond", ["--condition", "1", "--condition-vector", "0,1,0"], "give one of them"),
}


@pytest.mark.parametrize("case", list(BAD_SAMPLES))
def test_bad_sample_conditions_are_one_line(case, runs, tmp_path, capsys):
    run, flags, words = BAD_SAMPLES[case]
    code = cli("sample", runs[run], *flags, "--out", tmp_path / "s.npy")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert words in err and not (tmp_path / "s.npy").exists()


def test_resume_with_another_condition_is_refused(runs, capsys):
    code = cli("train", "--out", runs["cond"], "--resume", "--condition", "vectors", "--quiet")
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--condition vectors (run: labels) would change it" in err


def test_unconditional_runs_ignore_a_carried_condition(tmp_path):
    """An .npz with condition vectors still trains an unconditional model as before."""
    data = load_dataset(_npz(tmp_path / "d.npz", condition=np.ones((N, 2))))
    config = VAEConfig.from_dict({**CONFIG.to_dict(), "condition_dim": 0})
    plain = load_dataset(_npz(tmp_path / "p.npz"))
    options = TrainOptions(epochs=1, batch_size=16, progress=False)
    assert data.condition_dim == 2 and plain.condition_dim == 0
    a = train(config, options, data, tmp_path / "a")[0]
    b = train(config, options, plain, tmp_path / "b")[0]
    assert a["train_loss"] == b["train_loss"] and Path(tmp_path / "a" / "checkpoint.npz").exists()
