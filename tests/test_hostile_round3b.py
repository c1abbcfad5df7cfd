"""Hostile round 3b (issue 26, the remaining defects): flags that do not apply, the budget of each
latent and estimator, mount points and read-only parents, tracebacks from odd sizes and odd API
arguments, and small CLI edges."""
import errno
import json
import os

import numpy as np
import pytest

from hostile import SMALL, data, one_line, run_cli  # noqa: F401 - data is a fixture
from refvae.cli.main import main
from refvae.errors import RefvaeError
from refvae.train import rundir



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


# ----- 4. no tracebacks: odd sizes, shapes and API arguments ------------------------------------
@pytest.fixture
def run(tmp_path, data):
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), *SMALL, "--out", str(out)]) == 0
    return out


def test_sample_image_shape_must_hold_the_data_width(run, capsys, tmp_path):
    code, err = run_cli(capsys, "sample", run, "--image-shape", "3", "3", "--out", tmp_path / "s")
    assert "ROWS·COLS = 6" in one_line(code, err)


@pytest.mark.parametrize("shape", [[np.nan, 3], [-2, -3], [2.5, 2.4], [np.inf, 1], [1e30, 1]])
def test_a_data_files_image_shape_is_validated(tmp_path, capsys, shape):
    path = tmp_path / "b.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train=rng.random((32, 6)), test=rng.random((8, 6)), image_shape=np.array(shape))
    code, err = run_cli(capsys, "train", "--data", path, *SMALL, "--out", tmp_path / "r")
    assert "image_shape" in one_line(code, err)


def test_zero_row_image_data_is_one_line(tmp_path, capsys):
    path = tmp_path / "z.npz"
    np.savez(path, train=np.zeros((0, 2, 3)))
    code, err = run_cli(capsys, "train", "--data", path, *SMALL, "--out", tmp_path / "r")
    assert "0 rows" in one_line(code, err)


def test_an_overflowing_schedule_is_refused_before_training(tmp_path, data, capsys):
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", tmp_path / "r",
                        "--schedule", "exponential", "--lr-gamma", "1e300")
    assert "overflows" in one_line(code, err) and not (tmp_path / "r").exists()
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", tmp_path / "t",
                        "--latent", "categorical", "--categories", "3",
                        "--temperature-rate", "1e308")
    assert code == 0, err


def test_gradcheck_sizes_are_budgeted(capsys):
    code, err = run_cli(capsys, "gradcheck", "--hidden", "100000000", "--max-memory", "256M")
    assert "memory budget" in one_line(code, err)


def test_a_malformed_budget_variable_is_refused_by_every_command(capsys, monkeypatch, run):
    from refvae.util import budget

    monkeypatch.setenv("REFVAE_MAX_MEMORY", "bogus")
    for argv in (["gradcheck"], ["evaluate", run]):
        monkeypatch.setattr(budget, "_limit", None)
        code, err = run_cli(capsys, *argv)
        line = one_line(code, err)
        assert "$REFVAE_MAX_MEMORY" in line and "config.json" not in line, line


def _f(p):
    return float((np.asarray(p["w"]) ** 2).sum())


@pytest.mark.parametrize("args", [
    (_f, [1, 2], {"w": np.ones(3)}), (_f, {"w": np.ones(3)}, None),
    (_f, {"w": "abc"}, {"w": np.ones(3)}), (_f, {"w": np.ones(3)}, {"w": "abc"}),
    (3, {"w": np.ones(3)}, {"w": 2 * np.ones(3)}),
    (lambda p: "x", {"w": np.ones(3)}, {"w": np.ones(3)}),
])
def test_gradcheck_api_odd_inputs_raise_refvae_errors(args):
    from refvae.gradcheck import check_gradients

    with pytest.raises(RefvaeError):
        check_gradients(*args)


@pytest.mark.parametrize("kw", [{"mode": "x"}, {"eps": -1}, {"eps": "a"},
                                {"mode": "directions", "n_directions": "a"}])
def test_gradcheck_api_odd_options_raise_refvae_errors(kw):
    from refvae.gradcheck import check_gradients

    with pytest.raises(RefvaeError):
        check_gradients(_f, {"w": np.ones(3)}, {"w": 2 * np.ones(3)}, **kw)


def test_a_wrong_gradient_under_a_name_params_lacks_fails():
    from refvae import assert_gradients

    with pytest.raises(RefvaeError, match="unexpected zz"):
        assert_gradients(_f, {"w": np.ones(3)}, {"w": 2 * np.ones(3), "zz": np.ones(2)})


@pytest.mark.parametrize("seed", [-1, 1.5, "x", True, [1, -2]])
def test_noise_source_refuses_a_bad_seed(seed):
    from refvae.backend import NoiseSource

    with pytest.raises(RefvaeError, match="seed"):
        NoiseSource(seed)


@pytest.mark.parametrize("n, samples", [(-1, 1), (2, 0), (2.5, 1), ("a", 1), (10**12, 10**6)])
def test_draw_noise_refuses_bad_sizes(n, samples):
    from refvae.backend import NoiseSource
    from refvae.math.config import VAEConfig
    from refvae.math.vae import VAE

    with pytest.raises(RefvaeError):
        VAE(VAEConfig(data_dim=4, latent_dim=2)).draw_noise(NoiseSource(0), n, samples)


@pytest.mark.parametrize("which", [0, 1, 2, 3])
@pytest.mark.parametrize("odd", [None, 3, [1], 2.5])
def test_oracle_check_refuses_odd_containers(which, odd):
    from refvae import oracle

    args = [{"data_dim": 4, "latent_dim": 2}, {}, {}, {}]
    args[which] = odd
    with pytest.raises(RefvaeError):
        oracle.check(*args)


# ----- 5. smaller ------------------------------------------------------------------------------
def test_a_240_character_out_name_is_accepted(tmp_path, data):
    out = tmp_path / ("x" * 240)
    assert main(["train", "--data", str(data), *SMALL, "--out", str(out)]) == 0
    assert rundir.classify(out) == "run"
    assert main(["train", "--data", str(data), *SMALL, "--out", str(out), "--overwrite"]) == 0


def test_an_empty_data_dir_is_refused(tmp_path, capsys):
    code, err = run_cli(capsys, "train", "--data", "mnist", *SMALL, "--out", tmp_path / "r",
                        "--data-dir", "")
    assert "--data-dir is empty" in one_line(code, err)


def test_oracle_paths_expand_the_home_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["oracle", "example", "--out", "~/ex"]) == 0
    assert (tmp_path / "ex" / "config.json").exists() and not (tmp_path / "~").exists()
    assert main(["oracle", "compare", "--config", "~/ex/config.json", "--params",
                 "~/ex/params.npz", "--batch", "~/ex/batch.npz", "--grads", "~/ex/theirs.npz"]) == 0


def test_the_oracle_budgets_prices_hessians_too(tmp_path, capsys):
    """The oracle reads the batch before it knows the estimator; Price's per-sample K×K Hessians
    are budgeted when it does (``refvae oracle compute --estimator price``: one line, exit 2)."""
    from refvae import oracle
    from refvae.backend import NoiseSource
    from refvae.errors import BudgetError
    from refvae.math.vae import VAE
    from refvae.util import budget

    cfg = {"format": 1, "data_dim": 6, "latent_dim": 150, "encoder_hidden": [4],
           "decoder_hidden": [4], "latent": "gaussian_full", "activation": "tanh",
           "emission": "bernoulli"}
    vae, noise = VAE(cfg), NoiseSource(0)
    params = vae.init_params(noise)
    batch = {"y": (noise.uniform((16, 6)) < 0.5).astype(float),
             "eps": vae.draw_noise(noise, 16, 64)}
    with budget.limited("256M"):
        oracle.compute(cfg, params, batch)                       # pathwise fits
        with pytest.raises(BudgetError, match="memory budget"):
            oracle.compute(cfg, params, batch, estimator="price")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    np.savez(tmp_path / "params.npz", **params)
    np.savez(tmp_path / "batch.npz", **batch)
    code, err = run_cli(capsys, "oracle", "compute", "--config", tmp_path / "config.json",
                        "--params", tmp_path / "params.npz", "--batch", tmp_path / "batch.npz",
                        "--out", tmp_path / "r.npz", "--max-memory", "256M",
                        "--estimator", "price")
    assert "memory budget" in one_line(code, err)
    assert not (tmp_path / "r.npz").exists()
