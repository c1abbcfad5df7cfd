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
