"""Faults around the inputs (issue 16): SIGTERM, stale temporary files, FIFOs, folders that cannot
be searched, names that are not UTF-8, and the memory budget's own parsing."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hostile import one_line
from refvae.util import budget, inputs
from refvae.cli.main import main
from refvae.errors import BudgetError, CheckpointError, ConfigError, DataError
from refvae.util.files import atomic_write_text

SMALL = ["--latent-dim", "2", "--encoder-hidden", "4", "--decoder-hidden", "4", "--batch-size",
         "32",
         "--quiet", "--no-figures"]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "refvae.cli.main", *args], capture_output=True,
                          text=True,
                          timeout=120, **kw)


@pytest.mark.skipif(os.name != "posix", reason="signals are POSIX")
def test_sigterm_prints_one_line_and_leaves_a_resumable_run(tmp_path):
    np.savez(tmp_path / "d.npz", train=np.random.default_rng(0).random((32, 6)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "refvae.cli.main", "train", "--data", str(tmp_path / "d.npz"),
           "--epochs",
           "100000", *SMALL, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoint.npz").exists():
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["refvae: terminated (SIGTERM); a training run keeps its "
                                        "last "
                                        "checkpoint, continue it with --resume"], err
    assert not list(out.glob(".*.tmp"))
    from refvae.util.files import load_npz_checked

    epoch = load_npz_checked(out / "checkpoint.npz")[1]["epoch"]
    done = cli("train", "--data", str(tmp_path / "d.npz"), "--epochs", str(epoch + 1), *SMALL,
               "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    assert load_npz_checked(out / "checkpoint.npz")[1]["epoch"] == epoch + 1


def test_stale_tmp_files_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "metrics.jsonl"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".metrics.jsonl.{dead.pid}.abc123.tmp"
    old = tmp_path / ".metrics.jsonl.xyz.tmp"            # written before pids were in the name
    mine = tmp_path / f".metrics.jsonl.{os.getpid()}.live.tmp"
    other = tmp_path / ".other.json.1.abc.tmp"
    for p in (stale, old, mine, other):
        p.write_text("partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert not stale.exists() and not old.exists()
    assert mine.exists() and other.exists()  # a live writer's file and another target's are kept


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_at_once_not_read_forever(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    t = time.time()
    for call in (lambda: inputs.read_input(fifo), lambda: inputs.load_json(fifo)):
        with pytest.raises(CheckpointError, match="FIFO"):
            call()
    result = cli("train", "--config", str(fifo), "--out", str(tmp_path / "r"), *SMALL)
    assert "FIFO" in one_line(result.returncode, result.stderr)
    assert time.time() - t < 60


def test_a_folder_that_cannot_be_searched_is_one_line(tmp_path, monkeypatch, capsys):
    """``Path.exists()`` raises PermissionError under a folder without execute permission (root
    ignores permissions, so the refusal is simulated at ``os.stat``)."""
    locked = tmp_path / "locked"
    real_stat = os.stat

    def stat(path, *a, **kw):
        if str(locked) in os.fsdecode(path) and os.fsdecode(path) != str(locked):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(os, "stat", stat)
    for argv in (["train", "--quiet", "--data", str(locked / "d.npz"), "--out",
                  str(tmp_path / "run")],
                 ["train", "--quiet", "--out", str(locked / "run"), "--data",
                  str(locked / "d.npz")],
                 ["evaluate", "--quiet", str(locked / "run")],
                 ["oracle", "compute", "--config", str(locked / "c.json"), "--params",
                  str(locked / "p.npz"),
                  "--batch", str(locked / "b.npz"), "--out", str(tmp_path / "r.npz")]):
        line = one_line(main(argv), capsys.readouterr().err)
        assert "Permission denied" in line and "locked" in line, line


@pytest.mark.skipif(sys.platform != "linux", reason="Linux file names are bytes")
def test_an_out_name_that_is_not_utf8(tmp_path):
    np.savez(tmp_path / "d.npz", train=np.random.default_rng(0).random((40, 6)))
    out = os.fsdecode(bytes(tmp_path) + b"/run-\xff")
    result = subprocess.run([sys.executable, "-m", "refvae.cli.main", "train", "--data",
                             str(tmp_path / "d.npz"),
                             "--epochs", "1", "--latent-dim", "2", "--encoder-hidden", "4",
                             "--decoder-hidden",
                             "4", "--out", out, "--no-figures"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr and b"run-\\udcff" in result.stderr
    assert os.path.isfile(os.path.join(out, "checkpoint.npz"))


def test_budget_sizes_and_refusals():
    assert budget.parse_size("4G") == 4 * 2**30 and budget.parse_size("512m") == 512 * 2**20
    assert budget.parse_size("1.5K") == 1536 and budget.parse_size("100") == 100
    for bad in ("", "-1", "4X", "nan", "1e9", "0"):
        with pytest.raises(ConfigError, match="size"):
            budget.parse_size(bad)
    with budget.limited("1K"):
        assert budget.limit() == 1024
        budget.check("x", 1024)
        with pytest.raises(BudgetError, match=r"x would take 1.0 KiB \(1025 bytes\).*budget of 1.0 "
                                              r"KiB"):
            budget.check("x", 1025)
        with pytest.raises(BudgetError, match="memory budget"):
            inputs.read_input(Path(__file__), "file", DataError)
    assert budget.limit() > 1024


def test_a_full_disk_while_a_figure_is_written_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    from refvae.math.config import VAEConfig
    from refvae.data.load import load_dataset
    from refvae.train.loop import TrainOptions, train

    np.savez(tmp_path / "d.npz", train=np.random.default_rng(0).random((40, 6)))
    train(VAEConfig.from_dict(dict(data_dim=6, latent_dim=2, encoder_hidden=[4],
                                   decoder_hidden=[4])),
          TrainOptions(epochs=1, progress=False), load_dataset(str(tmp_path / "d.npz")),
          tmp_path / "run")
    out = tmp_path / "s.png"
    out.write_bytes(b"old")

    def full_disk(self, f, **kw):
        f.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    args = ["sample", str(tmp_path / "run"), "--image-shape", "2", "3", "--out"]
    line = one_line(main(args + [str(out)]), capsys.readouterr().err)
    assert "No space left on device" in line and out.read_bytes() == b"old"
    assert not list(tmp_path.glob(".s.png.*"))
    monkeypatch.undo()
    assert "png" in one_line(main(args + [str(tmp_path / "s.xyz")]), capsys.readouterr().err)
