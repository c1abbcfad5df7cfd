"""Hostile round 3b (issue 26, the remaining defects): flags that do not apply, the budget of each
latent and estimator, mount points and read-only parents, tracebacks from odd sizes and odd API
arguments, and small CLI edges."""
import errno
import json
import os

import numpy as np
import pytest

from hostile import one_line
from refvae.cli.main import main
from refvae.errors import RefvaeError
from refvae.train import rundir

SMALL = ["--epochs", "1", "--batch-size", "16", "--latent-dim", "2", "--encoder-hidden", "4",
         "--decoder-hidden", "4", "--no-figures", "--quiet", "--threads", "1"]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train=rng.random((32, 6)), test=rng.random((8, 6)), image_shape=np.array([2, 3]))
    return path


def run_cli(capsys, *args):
    """``main(args)`` in-process: (exit code, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


# ----- 1. every flag that does not apply to the model is refused --------------------------------
@pytest.mark.parametrize("flags, named", [
    (["--temperature-rate", "0.1"], "--temperature-rate"),
    (["--temperature-min", "0.3"], "--temperature-min"),
    (["--temperature-every", "5"], "--temperature-every"),
    (["--temperature-every", "1"], "--temperature-every"),   # even the default value
    (["--alpha", "2"], "--alpha"),
    (["--alpha", "1"], "--alpha"),
    (["--lr-gamma", "0.5"], "--lr-gamma"),
    (["--lr-step-size", "10"], "--lr-step-size"),
    (["--schedule", "exponential", "--lr-step-size", "10"], "--lr-step-size"),
    (["--schedule", "cosine", "--lr-gamma", "0.5"], "--lr-gamma"),
    (["--latent", "categorical", "--categories", "3", "--flow-length", "0"], "--flow-length"),
    (["--binarize", "static", "--emission", "gaussian"], "--binarize"),
])
def test_a_flag_that_does_not_apply_is_refused(tmp_path, data, capsys, flags, named):
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", tmp_path / "run", *flags)
    line = one_line(code, err)
    assert named in line and "applies only to" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [
    ["--schedule", "step", "--lr-gamma", "0.5", "--lr-step-size", "10"],
    ["--schedule", "exponential", "--lr-gamma", "0.9"],
    ["--latent", "categorical", "--categories", "3", "--temperature-rate", "0.01",
     "--temperature-min", "0.2", "--temperature-every", "2"],
    ["--emission", "gaussian", "--alpha", "0.5"],
])
def test_flags_that_apply_are_accepted(tmp_path, data, capsys, flags):
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", tmp_path / "run", *flags)
    assert code == 0, err


def test_the_api_refuses_options_and_fields_that_do_not_apply(data):
    from refvae.data.load import load_dataset
    from refvae.math.config import VAEConfig
    from refvae.train.loop import TrainOptions, train

    with pytest.raises(RefvaeError, match="config field 'alpha' applies only to emission"):
        VAEConfig(data_dim=6, latent_dim=2, alpha=2.0)
    cfg = VAEConfig(data_dim=6, latent_dim=2, encoder_hidden=[4], decoder_hidden=[4])
    with pytest.raises(RefvaeError, match="option 'lr_gamma' applies only to"):
        train(cfg, TrainOptions(epochs=1, lr_gamma=0.5, progress=False), load_dataset(str(data)),
              data.parent / "run")


# ----- 2. the budget of every latent, estimator and evaluation ----------------------------------
def test_full_covariance_k_by_k_terms_are_budgeted(tmp_path, data, capsys):
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", tmp_path / "run",
                        "--latent", "gaussian_full", "--latent-dim", "1000", "--max-memory", "256M")
    line = one_line(code, err)
    assert "memory budget" in line and "K×K" in line, line
    assert not (tmp_path / "run").exists()


def test_price_hessians_per_sample_are_budgeted():
    from refvae.errors import BudgetError
    from refvae.math.config import VAEConfig
    from refvae.util import budget

    cfg = VAEConfig(data_dim=6, latent_dim=150, encoder_hidden=[4], decoder_hidden=[4],
                    latent="gaussian_full", activation="tanh")
    with budget.limited("256M"):
        cfg.check_batch("batch_size × samples", 16, 64, "pathwise")
        with pytest.raises(BudgetError, match="memory budget"):
            cfg.check_batch("batch_size × samples", 16, 64, "price")


def test_iwae_chunks_fit_the_budget():
    from refvae.math.config import VAEConfig
    from refvae.math.objectives import _budget_chunk, _budget_rows
    from refvae.math.vae import VAE
    from refvae.util import budget

    vae = VAE(VAEConfig(data_dim=784, latent_dim=200, latent="gaussian_full"))
    with budget.limited("64M"):
        rows = _budget_rows(vae, 100)
        chunk = _budget_chunk(vae, rows)
        assert 0 < rows < 100 and 0 < chunk
        assert vae.config.batch_bytes(rows, chunk) <= budget.limit()


def test_text_amat_is_budgeted_by_its_parsed_size(tmp_path):
    from refvae.data.formats import read_amat
    from refvae.errors import BudgetError
    from refvae.util import budget

    path = tmp_path / "binarized_mnist_train.amat"
    np.savetxt(path, (np.random.default_rng(0).random((300, 784)) < 0.5).astype(int), fmt="%d")
    size = path.stat().st_size
    with budget.limited(2 * size):  # the file passes the size gate, its parsed array would not
        with pytest.raises(BudgetError, match="parsed as text"):
            read_amat(path)
    with budget.limited(6 * size):
        assert read_amat(path).shape == (300, 784)


# ----- 3. mount points and read-only parents: written in place, each file atomically ------------
def _busy(*args, **kwargs):
    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))


def _config(run):
    return json.loads((run / "config.json").read_text())


@pytest.mark.parametrize("start", ["empty", "run"])
def test_a_mount_point_out_is_written_in_place(tmp_path, data, capsys, monkeypatch, start):
    out = tmp_path / "mnt"
    out.mkdir()
    extra = []
    if start == "run":
        assert main(["train", "--data", str(data), *SMALL, "--out", str(out)]) == 0
        (out / "old-figure.png").write_bytes(b"old run's")  # part of the old run: replaced
        extra = ["--overwrite"]
    monkeypatch.setattr(rundir, "_move_dir", _busy)   # rename(2) of a mount point: EBUSY
    monkeypatch.setattr(rundir, "_exchange", _busy)
    args = [a for a in SMALL if a != "--quiet"]
    code, err = run_cli(capsys, "train", "--data", data, *args, "--out", out, "--latent-dim", "3",
                        "--epochs", "2", *extra)
    assert code == 0, err
    assert "written in place" in err and "Device or resource busy" not in err
    assert rundir.classify(out) == "run" and _config(out)["latent_dim"] == 3
    assert not (out / "old-figure.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main(["evaluate", "--quiet", str(out)]) == 0


def test_a_read_only_parent_keeps_the_lock_and_staging_inside_out(tmp_path, data, capsys,
                                                                 monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    real_open, real_mkdir = rundir._open_lock, rundir._mkdir

    def no_write_in_parent(real):
        def wrapped(path, *a):
            if os.path.dirname(os.fspath(path)) == str(tmp_path):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *a)
        return wrapped
    monkeypatch.setattr(rundir, "_open_lock", no_write_in_parent(real_open))
    monkeypatch.setattr(rundir, "_mkdir", no_write_in_parent(real_mkdir))
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", out)
    assert code == 0, err
    assert rundir.classify(out) == "run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "run"]
    assert not [n for n in os.listdir(out) if n.startswith(".refvae")]
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", out, "--overwrite",
                        "--latent-dim", "3")
    assert code == 0, err
    assert _config(out)["latent_dim"] == 3
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet",
                 "--no-figures"]) == 0


def test_an_in_place_staging_folder_left_by_a_kill_is_removed_and_counts_as_empty(tmp_path):
    out = tmp_path / "run"
    (out / f"{rundir._NEW}123-deadbeef").mkdir(parents=True)
    assert rundir.classify(out) == "empty"
    with rundir.RunLock(out):
        assert os.listdir(out) == [] or os.listdir(out) == [".refvae-lock"]
