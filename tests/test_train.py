"""Training: reproducibility, exact resume, divergence handling, and the train/evaluate/sample
CLI."""
import json
import threading

import numpy as np
import pytest

from refvae import NoiseSource
from refvae.fast.threads import blas_threads
from refvae.cli.main import main
from refvae.math.config import VAEConfig
from refvae.data.load import Dataset
from refvae.errors import CheckpointError, ConfigError
from refvae.util.files import load_npz_checked
from refvae.train.loop import TrainingDiverged, TrainOptions, load_run, train


def tiny_data(n=60, d=6, seed=1):
    rng = np.random.default_rng(seed + 100)
    y = rng.random((n + 20, d))
    return Dataset("tiny", y[:n], y[n:], image_shape=(2, 3), kind="greyscale")


CONFIG = VAEConfig(data_dim=6, latent_dim=2, encoder_hidden=(5,), decoder_hidden=(5,),
                   activation="tanh")


def run(tmp_path, name, epochs, resume=False, **kw):
    opts = TrainOptions(epochs=epochs, batch_size=16, lr=1e-2, samples=2, progress=False, **kw)
    return train(CONFIG, opts, tiny_data(), tmp_path / name, resume=resume)


def checkpoint_arrays(path):
    arrays, meta = load_npz_checked(path / "checkpoint.npz")
    meta.pop("refvae_format", None)
    return arrays, meta


def strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def assert_same_checkpoint(a_dir, b_dir):
    a_arr, a_meta = checkpoint_arrays(a_dir)
    b_arr, b_meta = checkpoint_arrays(b_dir)
    assert a_meta == b_meta
    assert set(a_arr) == set(b_arr)
    for k in a_arr:
        assert np.array_equal(a_arr[k], b_arr[k]), k


def test_same_seed_same_numbers(tmp_path):
    a = run(tmp_path, "a", 3)
    b = run(tmp_path, "b", 3)
    assert strip(a) == strip(b)
    other = run(tmp_path, "c", 3, seed=7)
    assert strip(other) != strip(a)


@pytest.mark.parametrize("binarize,threads,split_at",
                         [("none", 1, 2), ("dynamic", 1, 2), ("none", 2, 1)])
def test_resume_is_bit_identical(tmp_path, binarize, threads, split_at):
    """Also with row shards on threads: a shard's rows and the order of the sums depend on the batch
    size only, never on which thread finishes first."""
    whole = run(tmp_path, "whole", 4, binarize=binarize, threads=threads)
    run(tmp_path, "split", split_at, binarize=binarize, threads=threads)
    resumed = run(tmp_path, "split", 4, resume=True, binarize=binarize, threads=threads)
    assert strip(resumed) == strip(whole)
    assert_same_checkpoint(tmp_path / "whole", tmp_path / "split")
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3, 4]


def test_resume_without_checkpoint_or_with_other_config(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(tmp_path, "none", 1, resume=True)
    run(tmp_path, "a", 1)
    other = VAEConfig(data_dim=6, latent_dim=3, encoder_hidden=(5,), decoder_hidden=(5,))
    with pytest.raises(CheckpointError, match="another model config"):
        train(other, TrainOptions(epochs=2, progress=False), tiny_data(), tmp_path / "a",
              resume=True)
    with pytest.raises(CheckpointError, match="resume with --optimizer adam"):
        train(CONFIG, TrainOptions(epochs=2, optimizer="sgd", progress=False), tiny_data(),
              tmp_path / "a",
              resume=True)


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    """An absurd learning rate drives the loss to inf/NaN: training stops with a message naming
    the epoch, the step and what went wrong, and the previous epoch's checkpoint is untouched."""
    run(tmp_path, "d", 1)
    before = checkpoint_arrays(tmp_path / "d")
    opts = TrainOptions(epochs=50, batch_size=16, lr=1e6, progress=False)
    with pytest.raises(TrainingDiverged) as info, np.errstate(over="ignore", invalid="ignore"):
        train(CONFIG, opts, tiny_data(), tmp_path / "d", resume=True)  # overflows on purpose
    msg = str(info.value)
    assert "training stopped at epoch" in msg and "step" in msg and "checkpoint" in msg
    assert "\n" not in msg
    after = checkpoint_arrays(tmp_path / "d")
    # Training may have finished further epochs before diverging; whatever is kept must load and
    # be finite (the last good state), and it never went backwards.
    assert after[1]["epoch"] >= before[1]["epoch"]
    model, params, _ = load_run(tmp_path / "d")
    assert all(np.isfinite(v).all() for v in params.values())


def test_bad_options():
    with pytest.raises(ConfigError, match="samples"):
        TrainOptions(samples=0)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="threads must be a positive integer"):
            TrainOptions(threads=bad)
    with pytest.raises(ConfigError, match="binarization"):
        TrainOptions(binarize="sometimes")
    with pytest.raises(ConfigError, match="temperature"):
        TrainOptions(temperature=0.0)
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainOptions.from_dict({"epochz": 3})


def test_threads_agree_with_one_thread_to_rounding(tmp_path):
    """Row shards change only the order of the gradient sums: metrics and parameters after two
    epochs agree with one thread to rounding. Negative control: another seed does not."""
    def close(a_dir, a, b_dir, b):
        metrics_close = all(np.allclose([x[k] for k in sorted(x)], [y[k] for k in sorted(y)],
                                        rtol=1e-9, atol=0)
                            for x, y in zip(strip(a), strip(b), strict=True))
        pa, pb = checkpoint_arrays(a_dir)[0], checkpoint_arrays(b_dir)[0]
        params_close = all(np.allclose(pa[k], pb[k], rtol=1e-8, atol=1e-12) for k in pa
                           if k.startswith("param/"))
        return metrics_close and params_close

    one = run(tmp_path, "one", 2)
    two = run(tmp_path, "two", 2, threads=2)
    assert close(tmp_path / "one", one, tmp_path / "two", two)
    other = run(tmp_path, "other", 2, threads=2, seed=7)
    assert not close(tmp_path / "one", one, tmp_path / "other", other)


def test_running_mean_estimator_on_threads_runs_as_one_shard(tmp_path):
    """score-running keeps state from the whole batch, so it runs as one shard: with threads=2
    the run is bit-identical to one thread (the optimizer's parts are bit-identical too)."""
    one = run(tmp_path, "one", 2, estimator="score-running")
    two = run(tmp_path, "two", 2, estimator="score-running", threads=2)
    assert strip(two) == strip(one)
    assert_same_checkpoint(tmp_path / "one", tmp_path / "two")
    assert checkpoint_arrays(tmp_path / "two")[1]["estimator_state"]["score_running_steps"] == 8


# It diverges on purpose, in worker threads (np.errstate is per thread): their overflows are
# expected.
@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")
def test_pool_is_closed_when_training_raises(tmp_path):
    """A divergence inside the threaded steps still closes the pool and gives BLAS its threads
    back."""
    before = blas_threads()
    opts = TrainOptions(epochs=50, batch_size=16, lr=1e6, progress=False, threads=2)
    with pytest.raises(TrainingDiverged, match="training stopped at epoch"):
        train(CONFIG, opts, tiny_data(), tmp_path / "d")
    assert blas_threads() == before
    assert not [t for t in threading.enumerate() if t.name.startswith("refvae")]


def test_data_outside_support_is_refused(tmp_path):
    data = tiny_data()
    data.train[0, 0] = 2.0
    with pytest.raises(Exception) as info:
        train(CONFIG, TrainOptions(epochs=1, progress=False), data, tmp_path / "x")
    assert "[0, 1]" in str(info.value) or "outside" in str(info.value)


def test_cli_train_evaluate_sample(tmp_path, capsys):
    out = tmp_path / "run"
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, train=rng.random((50, 12)), test=rng.random((10, 12)))
    code = main(["train", "--data", str(data), "--epochs", "2", "--latent-dim", "2",
                 "--encoder-hidden", "8",
                 "--decoder-hidden", "8", "--out", str(out), "--quiet", "--no-figures", "--threads",
                 "2"])
    assert code == 0
    assert json.loads((out / "train.json").read_text())["options"]["threads"] == 2
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["epoch"] == 2
    assert main(["evaluate", str(out), "--iwae", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"neg_elbo", "kl", "reconstruction", "nll_iwae", "active_units", "n"} <= set(result)
    assert result["n"] == 10
    assert main(["sample", str(out), "--n", "4", "--image-shape", "3", "4", "--out",
                 str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--activation", "gelu", "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("refvae: error:") and "activation" in err and "\n" not in err
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "not a training run directory" in capsys.readouterr().err
    assert main(["train", "--threads", "0", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "refvae: error: threads must be a positive integer, got 0"
    # Not an integer at all: argparse's own error, as for every integer flag (usage, then the
    # error).
    with pytest.raises(SystemExit) as info:
        main(["train", "--threads", "x"])
    err = capsys.readouterr().err
    assert (info.value.code == 2 and "argument --threads: invalid int value: 'x'" in err
            and "Traceback" not in err)


@pytest.mark.slow
def test_default_run_learns_and_draws_figures(tmp_path, monkeypatch):
    """The README's main job, shortened: the built-in digits default improves on its first epoch
    and writes every figure."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "4", "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "default"
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["test_neg_elbo"] < lines[0]["test_neg_elbo"]
    for name in ("loss.png", "samples.png", "reconstructions.png", "latent.png", "manifold.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_misfits_fail_before_anything_is_written(tmp_path):
    """An estimator that needs L ≥ 2, or a temperature for a Gaussian latent, is refused before
    config.json or a checkpoint exists."""
    with pytest.raises(ConfigError, match="L ≥ 2"):
        train(CONFIG, TrainOptions(epochs=1, samples=1, estimator="score-loo", progress=False),
              tiny_data(),
              tmp_path / "loo")
    assert not (tmp_path / "loo" / "config.json").exists()
    with pytest.raises(ConfigError, match="only to categorical"):
        train(CONFIG, TrainOptions(epochs=1, temperature=0.5, progress=False), tiny_data(),
              tmp_path / "t")
    assert not (tmp_path / "t" / "config.json").exists()
