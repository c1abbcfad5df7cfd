"""A newcomer's first hour (issue 27): the corners a user meets in the README's commands, each as
that user would expect it to behave."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from refvae.cli import bench
from refvae.cli.main import build_parser, main
from refvae.data.load import load_dataset
from refvae.errors import DataError
from test_data import _mnist_dir

TINY = ["--latent-dim", "2", "--encoder-hidden", "4", "--decoder-hidden", "4", "--batch-size", "8"]


def _train(args, capsys):
    code = main(["train", *TINY, "--no-figures", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.err


def _tiny_npz(path, dim=5):
    """A data set whose rows are not images (5 values per datum): no image shape."""
    rng = np.random.default_rng(0)
    np.savez(path, train=rng.random((24, dim)), test=rng.random((8, dim)))
    return path


# ----- item 2: data that moved ---------------------------------------------------------------
def test_moved_mnist_evaluates_and_resumes_with_data_dir_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFVAE_CACHE_DIR", str(tmp_path / "empty-cache"))
    _mnist_dir(tmp_path / "old" / "mnist", n_train=16, n_test=8)
    run = tmp_path / "run"
    _train(["--data", "mnist", "--data-dir", str(tmp_path / "old"), "--epochs", "1", "--out",
            str(run), "--quiet"], capsys)
    assert json.loads((run / "train.json").read_text())["data"]["name"] == "mnist"
    shutil.move(tmp_path / "old", tmp_path / "new")
    assert main(["evaluate", str(run), "--data-dir", str(tmp_path / "new"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 8
    _train(["--out", str(run), "--resume", "--epochs", "2", "--data-dir", str(tmp_path / "new"),
            "--quiet"], capsys)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2


def test_moved_data_file_is_found_by_its_name_in_data_dir(tmp_path, capsys):
    run = tmp_path / "run"
    _train(["--data", str(_tiny_npz(tmp_path / "rows.npz")), "--epochs", "1", "--out", str(run),
            "--quiet"], capsys)
    (tmp_path / "moved").mkdir()
    shutil.move(tmp_path / "rows.npz", tmp_path / "moved" / "rows.npz")
    assert main(["evaluate", str(run), "--data-dir", str(tmp_path / "moved"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 8


# ----- item 4: the advice speaks the caller's language ---------------------------------------
def test_missing_mnist_advice_is_a_flag_on_the_cli_and_an_argument_in_python(tmp_path, monkeypatch,
                                                                             capsys):
    monkeypatch.setenv("REFVAE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError) as exc:
        load_dataset("mnist", data_dir=tmp_path / "none")
    assert "pass download=True to fetch it" in str(exc.value) and "--download" not in str(exc.value)
    assert main(["train", "--data", "mnist", "--data-dir", str(tmp_path / "none"),
                 "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "pass --download to fetch it" in err and "download=True" not in err
    with pytest.raises(DataError, match="pass data_dir"):
        load_dataset("frey-face", data_dir=None)
    assert main(["train", "--data", "frey-face", "--no-figures"]) == 2
    assert "pass --data-dir" in capsys.readouterr().err


# ----- item 6: a large --iwae says how long it will take -------------------------------------
def test_large_iwae_k_prints_an_estimate_before_starting(tmp_path, capsys):
    run = tmp_path / "run"
    _train(["--data", str(_tiny_npz(tmp_path / "rows.npz")), "--epochs", "1", "--out", str(run),
            "--quiet", "--emission", "gaussian"], capsys)
    assert main(["evaluate", str(run), "--iwae", "600"]) == 0
    err = capsys.readouterr().err
    assert "--iwae 600 over 8 rows will take about" in err
    assert err.index("will take about") < err.index("rows done")
    assert main(["evaluate", str(run), "--iwae", "5"]) == 0
    assert "will take about" not in capsys.readouterr().err


# ----- item 7: help texts and defaults of evaluate, sample, gradcheck ------------------------
def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_texts_fit_their_command(capsys):
    for command in ("evaluate", "sample"):
        text = _help([command], capsys)
        assert "a resumed run" not in text and "(default the run's)" in text
    assert "random seed of the prior draws" in _help(["sample"], capsys)
    assert "random seed of the evaluation noise" in _help(["evaluate"], capsys)
    text = _help(["gradcheck"], capsys)
    assert "--activation {tanh," in text and "--backend {numpy,cupy}" in text
    commands = list(build_parser()._subparsers._group_actions[0].choices)
    assert commands[:3] == ["train", "evaluate", "sample"]


def test_evaluate_and_sample_use_the_runs_dtype(tmp_path, monkeypatch, capsys):
    import refvae.train.loop as rtrain

    run = tmp_path / "run"
    _train(["--data", str(_tiny_npz(tmp_path / "rows.npz")), "--epochs", "1", "--out", str(run),
            "--quiet", "--dtype", "float32", "--emission", "gaussian"], capsys)
    seen = []
    original = rtrain.load_run
    monkeypatch.setattr(rtrain, "load_run", lambda r, b, d: seen.append(d) or original(r, b, d))
    assert main(["evaluate", str(run), "--json"]) == 0
    assert main(["sample", str(run), "--out", str(tmp_path / "s.npy")]) == 0
    assert main(["evaluate", str(run), "--json", "--dtype", "float64"]) == 0
    assert seen == ["float32", "float32", "float64"]


# ----- item 8: bench warnings ---------------------------------------------------------------
BENCH = ["bench", "--arch", "examples", "--batch", "8", "--dtype", "float64", "--steps", "1",
         "--warmup", "1", "--threads", "1"]


def test_bench_warns_once_about_few_steps_and_not_without_a_ratio(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert main([*BENCH, "--peer", str(tmp_path / "absent.py")]) == 0
    captured = capsys.readouterr()
    assert "n/a" in captured.out and captured.err == ""
    peer = tmp_path / "peer.py"
    peer.write_text("def make_step(config, batch, dtype, device, threads=1):\n"
                    "    return (lambda: None), (lambda: None)\n")
    assert main([*BENCH, "--peer", str(peer)]) == 0
    assert capsys.readouterr().err.splitlines() == [bench.few_steps_warning(1, 1)]


def test_bench_warns_once_when_the_machine_is_busy(tmp_path, monkeypatch, capsys):
    assert bench.load_warning(2, load=0.1, cores=2) is None
    assert bench.load_warning(1, load=1.2, cores=2) is None
    assert "busy (load average 1.5 on 2 core(s), 2 thread(s)" in bench.load_warning(2, 1.5, 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (float(os.cpu_count() or 1) + 3, 0.0, 0.0))
    assert main([*BENCH, "--peer", str(tmp_path / "absent.py")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "the machine is busy" in err[0]


# ----- item 9: advice that fits its context -------------------------------------------------
def test_resume_on_data_of_another_width_does_not_advise_changing_data_dim(tmp_path, capsys):
    run = tmp_path / "run"
    _train(["--data", str(_tiny_npz(tmp_path / "five.npz")), "--epochs", "1", "--out", str(run),
            "--quiet"], capsys)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-figures",
                 "--data", str(_tiny_npz(tmp_path / "six.npz", dim=6))]) == 2
    err = capsys.readouterr().err
    assert "set data_dim" not in err and "resume on the run's data (5 values per datum" in err


def test_download_to_a_cache_dir_advises_data_dir_too(tmp_path, monkeypatch, capsys):
    import refvae.data.load as rdata

    monkeypatch.setattr(rdata, "download", lambda name, cache_dir=None, progress=False:
                        Path(cache_dir or tmp_path / "cache") / name)
    assert main(["data", "download", "mnist", "--cache-dir", str(tmp_path / "D")]) == 0
    assert f"train with --data mnist --data-dir {tmp_path / 'D'}" in capsys.readouterr().err
    assert main(["data", "download", "mnist"]) == 0
    assert capsys.readouterr().err.rstrip().endswith("train with --data mnist")


def test_check_torch_speaks_python(monkeypatch):
    import builtins

    from refvae.oracle import check_torch

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ModuleNotFoundError, match=r"needs PyTorch.*pip install"):
        check_torch(None, None, np.zeros((2, 6)), {})


@pytest.mark.torch
def test_check_torch_without_name_map_suggests_name_map():
    torch = pytest.importorskip("torch")
    from refvae.errors import ShapeError
    from refvae.oracle import check_torch

    class Renamed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Linear(6, 4)
            self.mu = torch.nn.Linear(4, 2)
            self.lv = torch.nn.Linear(4, 2)
            self.dec = torch.nn.Linear(2, 6)

        def forward(self, y):
            h = torch.tanh(self.enc(y))
            mu, lv = self.mu(h), self.lv(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * lv)
            return self.dec(z), mu, lv

    def loss_fn(model, y):
        logits, mu, lv = model(y)
        rec = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        return rec - 0.5 * torch.sum(1 + lv - mu ** 2 - lv.exp())

    config = {"format": 1, "data_dim": 6, "latent_dim": 2, "encoder_hidden": [4],
              "decoder_hidden": [], "activation": "tanh", "latent": "gaussian",
              "emission": "bernoulli"}
    y = torch.rand(3, 6, dtype=torch.float64)
    with pytest.raises(ShapeError) as exc:
        check_torch(Renamed().double(), loss_fn, y, config, reduction="sum")
    assert "name_map={'theirs': 'ours'" in str(exc.value) and "--map" not in str(exc.value)


# ----- item 10: silent corners of --resume; the start line ----------------------------------
def test_resume_of_a_finished_run_says_so_and_the_start_line_names_the_estimator(tmp_path, capsys):
    run = tmp_path / "run"
    data = str(_tiny_npz(tmp_path / "rows.npz"))
    err = _train(["--data", data, "--epochs", "1", "--out", str(run), "--samples", "2"], capsys)
    assert "estimator pathwise, 2 sample(s) per datum" in err
    err = _train(["--out", str(run), "--resume"], capsys)
    assert "has already trained its 1 epochs; nothing to train" in err


def test_resume_with_fewer_epochs_is_refused_before_the_data_load(tmp_path, monkeypatch, capsys):
    import refvae.data.load as rdata

    run = tmp_path / "run"
    _train(["--data", str(_tiny_npz(tmp_path / "rows.npz")), "--epochs", "2", "--out", str(run),
            "--quiet"], capsys)
    monkeypatch.setattr(rdata, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    assert main(["train", "--out", str(run), "--resume", "--epochs", "1"]) == 2
    assert "has already trained 2 epochs; pass --epochs 2 or more" in capsys.readouterr().err


# ----- item 11: figures and sample arrays ---------------------------------------------------
def test_manifold_has_axes_in_latent_coordinates(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from refvae.train import figures
    from refvae.math.config import VAEConfig
    from refvae.math.vae import VAE
    from refvae.backend import NoiseSource

    model = VAE(VAEConfig.from_dict({"data_dim": 4, "latent_dim": 2, "encoder_hidden": [3],
                                     "decoder_hidden": [3]}))
    params = model.init_params(NoiseSource(0))
    axes = []
    monkeypatch.setattr(figures, "_save", lambda plt, fig, path: axes.append(fig.axes[0]))
    figures.manifold(model, params, tmp_path / "m.png", (2, 2), steps=5)
    ax = axes[0]
    assert ax.get_xlabel().startswith("z₁") and "ν₁ axis of latent.png" in ax.get_xlabel()
    labels = [float(t.get_text()) for t in ax.get_xticklabels()]
    # Φ⁻¹(0.1), Φ⁻¹(0.5), Φ⁻¹(0.9)
    assert labels == pytest.approx([-1.28, 0.0, 1.28], abs=0.01)


def test_data_without_image_shape_get_a_note_and_sample_writes_arrays(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    code = main(["train", *TINY, "--data", str(_tiny_npz(tmp_path / "rows.npz")), "--epochs", "1",
                 "--out", str(run), "--emission", "gaussian"])
    err = capsys.readouterr().err
    assert code == 0 and "have no image shape, so there are no sample" in err
    assert main(["sample", str(run), "--n", "7", "--out", str(tmp_path / "s.npy")]) == 0
    arr = np.load(tmp_path / "s.npy", allow_pickle=False)
    assert arr.shape == (7, 5) and np.isfinite(arr).all()
    assert main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 2
    assert "--image-shape" in capsys.readouterr().err


# ----- item 12: litter ----------------------------------------------------------------------
def test_oracle_example_has_a_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["oracle", "example"]) == 0
    assert (tmp_path / "oracle-example" / "theirs.npz").is_file()


# ----- item 3: the documentation is found wherever refvae is installed ----------------------
def test_docs_command_prints_the_folder_of_the_cited_files(capsys):
    assert main(["docs"]) == 0
    captured = capsys.readouterr()
    folder = Path(captured.out.strip())
    assert (folder / "ORACLE.md").is_file() and (folder / "DERIVATIONS.md").is_file()
    assert "ORACLE.md: the oracle" in captured.err
    assert main(["docs", "--quiet"]) == 0 and capsys.readouterr().err == ""


def test_the_build_copies_docs_into_the_package(tmp_path, monkeypatch):
    """setup.py's build step (what a wheel holds: refvae/docs/*.md), run on its own."""
    import importlib.util

    from setuptools.dist import Distribution

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("refvae_setup", root / "setup.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr("setuptools.setup", lambda **kwargs: None)
    spec.loader.exec_module(module)
    command = module.BuildPyWithDocs(Distribution({"packages": []}))
    command.build_lib = str(tmp_path)
    monkeypatch.setattr(module.build_py, "run", lambda self: None)
    command.run()
    assert sorted(p.name for p in (tmp_path / "refvae" / "docs").iterdir()) == sorted(
        p.name for p in (root / "docs").glob("*.md"))


# ----- item 1: the quick start's lines are what a fresh Linux machine needs -------------------
def test_quick_start_fetches_cpu_torch_and_names_extras_that_exist():
    import re
    import tomllib

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    quick = readme[readme.index("## Quick start"):readme.index("## Using it")]
    lines = re.findall(r"```bash\n(.*?)```", quick, re.S)
    assert len(lines) == 2 and all(line.count("\n") == 1 for line in lines)  # one line each
    main_job, tests = (line.strip() for line in lines)
    assert "torch" not in main_job and main_job.endswith("refvae train")
    torch_step = next(step for step in tests.split(" && ") if "install torch" in step)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_step
    assert tests.index("install torch") < tests.index("install -e")
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    named = re.findall(r"-e '\.\[([\w,-]+)\]'", main_job + tests)
    assert named and all(e in extras for name in named for e in name.split(","))
    assert "test" not in extras  # the suite is not in the wheel: `dev` says it is for a checkout
    ci = (root / ".ci" / "run").read_text()
    assert "-e '.[dev]'" in ci and "pytest -q --full" in ci and "trap 'rm -rf" in ci
    assert ci.rstrip().splitlines()[-1].startswith("python -m pytest")  # its summary line last
    assert re.search(r"about \d+ minutes? on two cores", quick)
