"""Run directories: a run is continued, evaluated and sampled from its own files in any working
directory, and training never destroys a run or someone else's files (overwrite, lock, kill)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from refvae import __version__
from refvae.train import rundir
from refvae.cli.main import main
from refvae.train.loop import load_run

SMALL = ["--epochs", "2", "--batch-size", "16", "--latent-dim", "2", "--encoder-hidden", "6",
         "--decoder-hidden", "6", "--no-figures", "--quiet", "--threads", "1"]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data" / "d.npz"
    path.parent.mkdir()
    np.savez(path, train=rng.random((48, 12)), test=rng.random((8, 12)),
             image_shape=np.array([3, 4]))
    return path


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_resume_evaluate_sample_need_only_the_run(tmp_path, data, monkeypatch, capsys):
    """Trained with a relative data path in one directory; resumed with no other flag, evaluated
    and sampled from another (sample without reading the data at all). The resumed run is the
    uninterrupted one, bit for bit."""
    monkeypatch.chdir(data.parent)
    assert main(["train", "--data", "d.npz", *SMALL, "--out", str(tmp_path / "whole"), "--epochs",
                 "3"]) == 0
    assert main(["train", "--data", "d.npz", *SMALL, "--out", str(tmp_path / "run")]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "3",
                 "--quiet"]) == 0
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == (tmp_path / "whole"
                                                                  / "checkpoint.npz").read_bytes()
    info = json.loads((tmp_path / "run" / "train.json").read_text())
    assert info["data"]["source"] == str(data) and info["data"]["image_shape"] == [3, 4]
    assert info["options"]["epochs"] == 3 and info["options"]["threads"] == 1
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 8
    import refvae.data.load

    def no_data(*a, **k):
        raise AssertionError("sample loaded the data set")
    monkeypatch.setattr(refvae.data.load, "load_dataset", no_data)
    assert main(["sample", str(tmp_path / "run"), "--n", "4", "--out", "s.png"]) == 0
    assert (elsewhere / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_refuses_changes_and_cosine_extension(tmp_path, data, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--data", str(data), *SMALL, "--out", out, "--schedule", "cosine"]) == 0
    before = snapshot(tmp_path / "run")
    for flags, words in ((["--lr", "0.5"], "--lr 0.5 (run: 0.003)"),
                         (["--latent-dim", "3"], "latent_dim 3 (run: 2)"),
                         (["--dtype", "float32"], "--dtype float32 (run: float64)"),
                         (["--epochs", "4"], "cosine schedule"), (["--overwrite"], "contradict")):
        assert main(["train", "--out", out, "--resume", "--quiet", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("refvae: error:") and words in err and "\n" not in err, err
    # The same values as recorded are accepted (the old way of resuming still works).
    assert main(["train", "--data", str(data), *SMALL, "--out", out, "--resume", "--schedule",
                 "cosine"]) == 0
    assert snapshot(tmp_path / "run")["checkpoint.npz"] == before["checkpoint.npz"]
    assert main(["train", "--out", str(tmp_path / "none"), "--resume", "--quiet"]) == 2
    assert "holds no refvae run" in capsys.readouterr().err


def test_existing_run_and_foreign_folder_are_never_touched(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), *SMALL, "--out", str(out)]) == 0
    (out / "old.png").write_bytes(b"old figure")
    before = snapshot(out)
    assert main(["train", "--data", str(data), *SMALL, "--out", str(out)]) == 2
    assert "pass --resume to continue it, --overwrite to replace it" in capsys.readouterr().err
    assert snapshot(out) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"mine": 1}')
    (foreign / "metrics.jsonl").write_text("my notes\n")
    for extra in ([], ["--overwrite"]):
        assert main(["train", "--data", str(data), *SMALL, "--out", str(foreign), *extra]) == 2
        assert "is not an empty directory or a refvae run" in capsys.readouterr().err
    assert snapshot(foreign) == {"config.json": b'{"mine": 1}', "metrics.jsonl": b"my notes\n"}
    # --overwrite replaces the run as a whole: the old figure goes with the old run.
    assert main(["train", "--data", str(data), *SMALL, "--out", str(out), "--overwrite", "--seed",
                 "5"]) == 0
    assert ("old.png" not in snapshot(out)
            and json.loads((out / "train.json").read_text())["options"]["seed"] == 5)
    # no staging or lock left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]


def test_a_failed_first_epoch_leaves_the_old_run(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), *SMALL, "--out", str(out)]) == 0
    before = snapshot(out)
    assert main(["train", "--data", str(data), *SMALL, "--out", str(out), "--overwrite", "--lr",
                 "1e12"]) == 2
    assert "no checkpoint was written yet" in capsys.readouterr().err
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]


HOLD = ("import sys, time\nfrom refvae.train.rundir import RunLock\nwith RunLock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n    time.sleep(60)\n")


@pytest.mark.skipif(os.name != "posix", reason="flock and SIGKILL are POSIX")
def test_a_second_trainer_is_turned_away_and_a_stale_lock_is_not(tmp_path, data, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        t0 = time.perf_counter()
        assert main(["train", "--data", str(data), *SMALL, "--out", str(out)]) == 2
        assert time.perf_counter() - t0 < 5
        err = capsys.readouterr().err
        assert f"in use by another trainer (process {holder.pid}" in err and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died (SIGKILL) with its lock file in place: the lock is stale, training proceeds.
    assert (tmp_path / ".run.refvae-lock").read_text().strip() == str(holder.pid)
    assert main(["train", "--data", str(data), *SMALL, "--out", str(out)]) == 0
    assert not (tmp_path / ".run.refvae-lock").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_sigkill_during_an_overwrite_leaves_the_old_run_or_the_new_one(tmp_path, data):
    """A fresh run into an existing run's directory, killed at random moments (before, during and
    after the swap): ``out`` always holds one whole run, old or new, that loads and evaluates."""
    out = tmp_path / "run"
    base = [sys.executable, "-m", "refvae.cli.main", "train", "--data", str(data), *SMALL, "--out",
            str(out)]
    subprocess.run(base, check=True, capture_output=True)
    old = snapshot(out)
    # Many small epochs: the first checkpoint and the swap come a few hundred ms after start-up.
    cmd = base + ["--overwrite", "--seed", "9", "--epochs", "100000", "--batch-size", "48"]
    rng = np.random.default_rng(1)
    seen = set()
    for attempt in range(8):
        inode = out.stat().st_ino
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt % 2:  # after the swap (the directory at `out` is another one), a little later
            deadline = time.time() + 60
            while out.stat().st_ino == inode and time.time() < deadline and proc.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # at a random moment from start-up on: before the swap, during it, or after it
            time.sleep(rng.uniform(0.0, 1.5) if attempt else 0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = snapshot(out)
        if now == old:
            seen.add("old")
            continue
        seen.add("new")
        assert json.loads(now["train.json"])["options"]["seed"] == 9
        _, params, _ = load_run(out)
        assert all(np.isfinite(v).all() for v in params.values())
        assert main(["evaluate", str(out), "--json", "--quiet"]) == 0
        old = snapshot(out)  # the new run is now the one the next kill must keep whole
    assert seen == {"old", "new"}, seen


def test_files_honour_the_umask(tmp_path, data):
    previous = os.umask(0o022)
    try:
        assert main(["train", "--data", str(data), *SMALL, "--out", str(tmp_path / "run")]) == 0
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755


def test_progress_lines_when_not_a_terminal_and_quiet(tmp_path, data, capsys):
    assert main(["train", "--data", str(data), *SMALL[:-3], "--no-figures", "--out",
                 str(tmp_path / "a"),
                 "--log-interval", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    steps = [line for line in err if line.startswith("epoch 1/2 ") and "steps/s" in line]
    assert [line.split()[2] for line
            in steps] == ["2/3"] and "eta" in steps[0] and "elapsed" in steps[0]
    assert any(line.startswith("epoch 2/2  train") and "run eta" not in line for line in err)
    assert any(line.startswith("epoch 1/2  train") and "run eta" in line for line in err)
    assert main(["train", "--data", str(data), *SMALL, "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""


def test_matplotlib_is_checked_before_training(tmp_path, data, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = ["train", "--data", str(data), "--epochs", "1", "--quiet", "--out",
            str(tmp_path / "run")]
    assert main(args) == 2
    assert "figures need matplotlib" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"refvae {__version__}"


def test_classify(tmp_path):
    assert rundir.classify(tmp_path / "x") == "absent"
    assert rundir.classify(tmp_path) == "empty"
    (tmp_path / "config.json").write_text("{}")
    assert rundir.classify(tmp_path) == "other"
    (tmp_path / "checkpoint.npz").write_bytes(b"")
    assert rundir.classify(tmp_path) == "run"
