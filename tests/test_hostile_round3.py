"""Hostile round 3 (issue 26): the lock file, staging folders, files a user saves during the first
epoch, oracle example folders, run files as input, archive sizes, signals and small CLI edges."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hostile import SMALL, data, one_line, run_cli  # noqa: F401 - data is a fixture
from refvae.train import rundir
from refvae.cli.main import main



# ----- 1. the lock file is never opened through a link ------------------------------------------
@pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="needs O_NOFOLLOW")
@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path, data, capsys, how):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    lock = tmp_path / ".run.refvae-lock"
    (os.symlink if how == "symlink" else os.link)(notes, lock)
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", tmp_path / "run")
    assert "lock file" in one_line(code, err) and "remove it" in err
    assert notes.read_text() == "my notes\n"
    assert not (tmp_path / "run").exists()


# ----- 2. a glob character in --out reaches no other run's staging folder -----------------------
@pytest.mark.parametrize("name", ["exp[1]", "exp?", "exp*"])
def test_a_glob_character_in_out_leaves_other_staging_folders(tmp_path, data, capsys, name):
    other = tmp_path / f".exp1{rundir._NEW}{os.getpid() + 1}-0123abcd"  # a live trainer of exp1
    other.mkdir()
    (other / "checkpoint.npz").write_bytes(b"staged")
    own = tmp_path / f".{name}{rundir._NEW}1-deadbeef"  # left by a killed trainer of this name
    own.mkdir()
    assert main(["train", "--data", str(data), *SMALL, "--out", str(tmp_path / name)]) == 0
    assert (other / "checkpoint.npz").read_bytes() == b"staged"
    assert not own.exists() and rundir.classify(tmp_path / name) == "run"


# ----- 3. the swap never deletes a file it did not write ----------------------------------------
@pytest.mark.parametrize("start", ["absent", "empty", "run"])
def test_files_saved_into_out_during_the_first_epoch_are_kept(tmp_path, data, capsys, monkeypatch,
                                                              start):
    out = tmp_path / "run"
    extra = []
    if start == "empty":
        out.mkdir()
    elif start == "run":
        assert main(["train", "--data", str(data), *SMALL, "--out", str(out)]) == 0
        extra = ["--overwrite"]
    import refvae.train.loop as train_mod

    real = train_mod.save_checkpoint

    def save_then_user_writes(path, *a, **k):  # the user saves a file while epoch 1 trains
        out.mkdir(exist_ok=True)
        (out / "notes.txt").write_text("mine\n")
        return real(path, *a, **k)
    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_user_writes)
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", out, *extra)
    assert "gained files" in one_line(code, err) and "notes.txt" in err
    assert (out / "notes.txt").read_text() == "mine\n"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("run.refvae-run-")]
    assert len(kept) == 1 and rundir.classify(kept[0]) == "run"
    assert rundir.classify(out) == ("run" if start == "run" else "other")
    assert not [p for p in tmp_path.iterdir() if ".refvae-" in p.name and p not in kept]


# ----- 4. oracle example never replaces a user's files ------------------------------------------
def test_oracle_example_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"mine": 1}')
    (mine / "params.npz").write_bytes(b"my params")
    code, err = run_cli(capsys, "oracle", "example", "--out", mine)
    assert "not empty" in one_line(code, err) and "--overwrite" in err
    assert (mine / "config.json").read_text() == '{"mine": 1}'
    assert (mine / "params.npz").read_bytes() == b"my params"
    assert run_cli(capsys, "oracle", "example", "--out", mine, "--overwrite")[0] == 0
    assert json.loads((mine / "config.json").read_text())["data_dim"] == 6
    assert run_cli(capsys, "oracle", "example", "--out", tmp_path / "new")[0] == 0


@pytest.fixture
def trained(tmp_path, data):
    run = tmp_path / "trained"
    assert main(["train", "--data", str(data), *SMALL, "--out", str(run)]) == 0
    return run


def edit_json(path, change):
    obj = json.loads(path.read_text())
    path.write_text(json.dumps(change(obj)))


# ----- 5. evaluate and --resume never guess the data ---------------------------------------------
@pytest.mark.parametrize("how", ["removed", "null", "no source"])
def test_a_run_without_a_data_record_asks_for_data(trained, data, capsys, how):
    def change(info):
        if how == "removed":
            del info["data"]
        elif how == "null":
            info["data"] = None
        else:
            info["data"]["source"] = None
        return info
    edit_json(trained / "train.json", change)
    for cmd in (["evaluate", trained, "--quiet"], ["train", "--out", trained, "--resume", "--quiet",
                                                   "--no-figures", "--epochs", "2"]):
        code, err = run_cli(capsys, *cmd)
        assert "records no data set" in one_line(code, err) and "--data" in err
    assert run_cli(capsys, "evaluate", trained, "--quiet", "--data", data)[0] == 0


# ----- 6. run files are input: one validated reader each -----------------------------------------
RUN_FILE_DAMAGE = {
    "train.json not an object": ("train.json", lambda o: [], "not a JSON object"),
    "options a list": ("train.json", lambda o: {**o, "options": [1]}, "'options'"),
    "options.epochs text": ("train.json",
                            lambda o: {**o, "options": {**o["options"], "epochs": "x"}}, "epochs"),
    "options.optimizer 5": ("train.json",
                            lambda o: {**o, "options": {**o["options"], "optimizer": 5}},
                            "'options.optimizer'"),
    "data a number": ("train.json", lambda o: {**o, "data": 5}, "'data'"),
    "data.source a number": ("train.json", lambda o: {**o, "data": {**o["data"], "source": 5}},
                             "'data.source'"),
    "image_shape text": ("train.json", lambda o: {**o, "data": {**o["data"], "image_shape": "ab"}},
                         "'data.image_shape'"),
    "image_shape negative": ("train.json",
                             lambda o: {**o, "data": {**o["data"], "image_shape": [0, -1]}},
                             "'data.image_shape'"),
    "dtype a list": ("train.json", lambda o: {**o, "dtype": [1]}, "'dtype'"),
    "config latent_dim text": ("config.json", lambda o: {**o, "latent_dim": "2"}, "latent_dim"),
}


@pytest.mark.parametrize("case", sorted(RUN_FILE_DAMAGE))
def test_damaged_run_files_are_one_line_naming_file_and_field(trained, capsys, case):
    name, change, field = RUN_FILE_DAMAGE[case]
    edit_json(trained / name, change)
    for cmd in (["train", "--out", trained, "--resume", "--epochs", "2", "--quiet", "--no-figures"],
                ["evaluate", trained, "--quiet"],
                ["sample", trained, "--n", "4", "--out", trained.parent / "s.png"]):
        code, err = run_cli(capsys, *cmd)
        line = one_line(code, err)
        assert str(trained / name) in line and field in line, (cmd[0], line)
    assert not (trained.parent / "s.png").exists()


@pytest.mark.parametrize("damage, field", [({"train_loss": "big"}, "'train_loss'"),
                                           ({"step": -1}, "'step'"),
                                           ({"epoch": 0}, "'epoch'"),
                                           ({"train_kl": None}, "'train_kl'"),
                                           ({"train_reconstruction": ...},
                                            "'train_reconstruction'"),
                                           ({}, "epoch 1 follows epoch 1")])
def test_damaged_metrics_are_one_line_naming_the_field(trained, capsys, damage, field):
    metrics = trained / "metrics.jsonl"
    record = {**json.loads(metrics.read_text()), **damage}
    record = {k: v for k, v in record.items() if v is not ...}
    metrics.write_text(json.dumps(record) + "\n" + ("" if damage else json.dumps(record) + "\n"))
    code, err = run_cli(capsys, "train", "--out", trained, "--resume", "--epochs", "2", "--quiet")
    line = one_line(code, err)
    assert "metrics.jsonl line" in line and field in line


# ----- 7. archives are checked as a whole before anything is inflated ---------------------------
def deflated_members(path, names, n_floats):
    """An ``.npz`` of ``names``, each ``n_floats`` float64 zeros, deflated (a few KB in all)."""
    import zipfile

    from hostile import npy_header_bytes

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            with zf.open(name + ".npy", "w") as member:
                member.write(npy_header_bytes((n_floats,)))
                member.write(bytes(8 * n_floats))
    return path


def test_many_small_members_are_refused_as_a_whole(tmp_path, capsys):
    from refvae.util import budget
    from refvae.errors import BudgetError
    from refvae.util.files import load_npz_checked

    ckpt = deflated_members(tmp_path / "c.npz", [f"param/w{i}" for i in range(12)], 3 * 2**17)
    assert ckpt.stat().st_size < 2**17  # 12 × 3 MiB inflated: each under the budget, not together
    with budget.limited("16M"), pytest.raises(BudgetError, match="together"):
        load_npz_checked(ckpt, require_meta=False)
    data = deflated_members(tmp_path / "d.npz", ["train", "test"], 3 * 2**18)  # 2 × 6 MiB
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", tmp_path / "r",
                        "--max-memory", "8M")
    assert "together" in one_line(code, err) and "--max-memory" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("names, problem", [(["train", "train"], "twice"),
                                            (["train", "junk"], "unexpected entry 'junk'")])
def test_duplicate_and_unexpected_members_are_refused_before_inflating(tmp_path, capsys, names,
                                                                       problem):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
        data = deflated_members(tmp_path / "d.npz", names, 60)
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", tmp_path / "r")
    assert problem in one_line(code, err)


# ----- 9. --resume accepts a flag equal to the run's effective value ----------------------------
def test_resume_accepts_the_recorded_default_estimator_by_name(trained, capsys):
    assert json.loads((trained / "train.json").read_text())["options"]["estimator"] is None
    code, err = run_cli(capsys, "train", "--out", trained, "--resume", "--epochs", "2", "--quiet",
                        "--no-figures", "--estimator", "pathwise")
    assert code == 0, err
    code, err = run_cli(capsys, "train", "--out", trained, "--resume", "--epochs", "3", "--quiet",
                        "--no-figures", "--estimator", "score")
    assert "--estimator 'score' (run: 'pathwise')" in one_line(code, err)


# ----- 8. SIGHUP as SIGTERM; Ctrl-C at start-up ------------------------------------------------
def start_training(tmp_path, rows, epochs):
    import signal  # noqa: F401 - the callers send signals

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "big.npz", train=rng.random((rows, 6)))
    cmd = [sys.executable, "-m", "refvae.cli", "train", "--data", str(tmp_path / "big.npz"),
           *SMALL[2:], "--epochs", str(epochs), "--out", str(tmp_path / "run")]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(predicate, proc, seconds=60):
    import time

    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not predicate():
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1]


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGHUP"), reason="needs SIGHUP")
def test_sighup_keeps_the_last_checkpoint_in_one_line(tmp_path):
    import signal

    proc = start_training(tmp_path, 64, 100000)
    wait_for(lambda: (tmp_path / "run" / "checkpoint.npz").exists(), proc)
    proc.send_signal(signal.SIGHUP)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 129, err
    assert err.strip().splitlines() == ["refvae: terminated (SIGHUP); a training run keeps its "
                                        "last checkpoint, continue it with --resume"], err
    assert rundir.classify(tmp_path / "run") == "run"
    assert not (tmp_path / ".run.refvae-lock").exists()


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGHUP"), reason="needs SIGHUP")
def test_sighup_before_the_first_checkpoint_leaves_nothing_behind(tmp_path):
    import signal

    proc = start_training(tmp_path, 40000, 1)
    wait_for(lambda: any(rundir._NEW in p.name for p in tmp_path.iterdir()), proc)
    proc.send_signal(signal.SIGHUP)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 129 and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npz"]


def test_ctrl_c_during_start_up_is_one_line(monkeypatch, capsys):
    import refvae.cli.main

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(refvae.cli.main, "build_parser", interrupted)
    try:
        code = refvae.cli.main.main(["train"])
    except KeyboardInterrupt:  # not raised out of main: that is the traceback a user would see
        pytest.fail("KeyboardInterrupt escaped main()")
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["refvae: interrupted"]


# ----- 11. smaller edges ----------------------------------------------------------------------
def test_a_newline_in_out_is_still_one_line(tmp_path, data, capsys):
    (tmp_path / "a\nb").mkdir()
    (tmp_path / "a\nb" / "notes.txt").write_text("x")
    code, err = run_cli(capsys, "train", "--data", data, *SMALL, "--out", tmp_path / "a\nb")
    assert "a\\nb" in one_line(code, err)


def test_tilde_in_out_is_the_home_folder_as_in_data(tmp_path, data, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "~/../d.npz", *SMALL, "--out", "~/x"]) == 0
    assert rundir.classify(home / "x") == "run" and not (tmp_path / "~").exists()
    assert main(["evaluate", "~/x", "--quiet"]) == 0
    assert main(["sample", "~/x", "--n", "4", "--out", "~/s.png"]) == 0
    assert (home / "s.png").exists()


def test_a_refused_run_leaves_no_parent_folders(tmp_path, data, capsys):
    code, err = run_cli(capsys, "train", "--data", tmp_path / "missing.npz", *SMALL, "--out",
                        tmp_path / "a" / "b" / "run")
    one_line(code, err)
    code, err = run_cli(capsys, "train", "--resume", "--quiet", "--out", tmp_path / "c" / "run")
    one_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_empty_data_is_refused_not_the_working_folder(tmp_path, data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # holds d.npz
    code, err = run_cli(capsys, "train", "--data", "", *SMALL, "--out", tmp_path / "run")
    assert "empty" in one_line(code, err)
    assert not (tmp_path / "run").exists()


def test_an_error_writing_the_output_does_not_blame_a_path(trained, capsys, monkeypatch):
    import refvae.cli.train

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(refvae.cli.train, "print", full, raising=False)
    code, err = run_cli(capsys, "evaluate", trained, "--quiet", "--json")
    line = one_line(code, err)
    assert "No space left on device while writing the output" in line and "path" not in line


# ----- 10. evaluate --iwae: a bound on k and a time estimate ------------------------------------
def test_an_absurd_iwae_k_is_refused_before_it_runs(trained, capsys, monkeypatch):
    import refvae.math.objectives as objectives

    def never(*a, **k):
        raise AssertionError("the bound ran")
    monkeypatch.setattr(objectives, "iwae_bound", never)
    code, err = run_cli(capsys, "evaluate", trained, "--iwae", 10**12, "--max-memory", "1G",
                        "--quiet")
    assert "--iwae" in one_line(code, err) and "memory budget" in err


def test_a_long_iwae_run_is_announced_with_its_estimate(trained, capsys, monkeypatch):
    import refvae.cli.train

    monkeypatch.setattr(refvae.cli.train, "IWAE_NOTICE_SECONDS", 0.0)
    code, err = run_cli(capsys, "evaluate", trained, "--iwae", 30, "--json")
    assert code == 0, err
    assert "refvae evaluate: --iwae 30 over 8 rows will take about" in err
