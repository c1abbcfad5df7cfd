"""A training process killed (SIGKILL) at arbitrary moments, many of them during a checkpoint save,
always leaves a loadable checkpoint, and resuming from it continues the run."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from refvae.train.loop import load_run


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL is POSIX")
def test_sigkill_never_leaves_a_broken_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    # Tiny data and many epochs: a checkpoint is written every few milliseconds, so kills land
    # during saves as well as between them.
    np.savez(tmp_path / "d.npz", train=rng.random((32, 6)), test=rng.random((4, 6)))
    out = tmp_path / "run"
    base = [sys.executable, "-m", "refvae.cli.main", "train", "--data", str(tmp_path / "d.npz"),
            "--epochs", "100000",
            "--batch-size", "32", "--latent-dim", "2", "--encoder-hidden", "4", "--decoder-hidden",
            "4",
            "--quiet", "--no-figures", "--out", str(out)]
    epochs_seen = []
    for attempt in range(6):
        ckpt = out / "checkpoint.npz"
        before = ckpt.stat().st_mtime_ns if ckpt.exists() else None
        cmd = base + (["--resume"] if before else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        # Wait until this process has saved at least once, then kill it a little later.
        while time.time() < deadline and proc.poll() is None and \
                (not ckpt.exists() or ckpt.stat().st_mtime_ns == before):
            time.sleep(0.02)
        time.sleep(0.05 + 0.13 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        _, params, _ = load_run(out)             # must load: never half-written
        assert all(np.isfinite(v).all() for v in params.values())
        from refvae.util.files import load_npz_checked

        epochs_seen.append(load_npz_checked(out / "checkpoint.npz")[1]["epoch"])
    assert epochs_seen == sorted(epochs_seen) and epochs_seen[-1] > epochs_seen[0]
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= epochs_seen[-1]
