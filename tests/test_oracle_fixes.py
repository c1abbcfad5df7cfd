"""The oracle's fixes of issue 14: a closed pipe is not an error, every problem of params.npz in one
message, tolerances per tensor from that tensor's dtype, tolerances validated."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refvae.cli import main as cli
from refvae import oracle
from refvae.errors import ConfigError, ShapeError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    return oracle.write_example(tmp_path_factory.mktemp("ex"), emission="gaussian",
                                learn_alpha=True)


def argv(ex, **over):
    files = {"config": ex["config"], "params": ex["params"], "batch": ex["batch"],
             "grads": ex["theirs"], **over}
    return ["oracle", "compare"] + [a for k, v in files.items() for a in (f"--{k}", str(v))]


@pytest.mark.parametrize("wrong", [False, True])
def test_a_closed_pipe_is_not_a_traceback_and_the_status_is_the_comparison(ex, tmp_path, wrong):
    grads = ex["theirs"]
    if wrong:
        theirs = oracle.load_npz(ex["theirs"])
        theirs["grad/encoder.0.bias"] = theirs["grad/encoder.0.bias"] + 1.0
        grads = tmp_path / "wrong.npz"
        np.savez(grads, **theirs)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "refvae.cli.main", *argv(ex, grads=grads)],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()   # the reader is gone before anything is printed (as `| head -0` would be)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == (1 if wrong else 0), err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_every_params_problem_in_one_message(ex, tmp_path):
    params = oracle.load_npz(ex["params"])
    params["encoder.0.weight"] = params["encoder.0.weight"].T
    params["decoder.0.bias"] = params["decoder.0.bias"].copy()
    params["decoder.0.bias"][0] = np.nan
    del params["decoder.log_alpha"]
    params["decoder.extra"] = np.ones(2)
    with pytest.raises(ShapeError) as info:
        oracle.check(ex["config"], params, ex["batch"], ex["theirs"])
    msg = str(info.value)
    assert "\n" not in msg
    for words in ["missing decoder.log_alpha", "unexpected decoder.extra",
                  "encoder.0.weight has shape",
                  "transposed", "decoder.0.bias contains NaN or inf"]:
        assert words in msg, msg


def test_one_float32_gradient_loosens_only_itself(ex):
    theirs = oracle.load_npz(ex["theirs"])
    theirs["grad/decoder.0.weight"] = theirs["grad/decoder.0.weight"].astype(np.float32)
    report = oracle.check(ex["config"], ex["params"], ex["batch"], theirs)
    assert report.passed, str(report)
    assert report.tolerances["grad/decoder.0.weight"] == (1e-4, 1e-5)
    assert report.tolerances["grad/decoder.0.bias"] == (1e-7, 1e-9)
    assert any("grad/decoder.0.weight is float32 in an otherwise float64 "
               "export" in n for n in report.notes)
    assert not any("your gradients are float32" in n for n in report.notes)
    # a float64 tensor off by 1e-5 relative still fails: it was not loosened
    theirs["grad/decoder.0.bias"] = theirs["grad/decoder.0.bias"] * (1 + 1e-5)
    bad = oracle.check(ex["config"], ex["params"], ex["batch"], theirs)
    assert [c.name for c in bad.failures()] == ["grad/decoder.0.bias"]


def test_tolerances_are_validated_in_the_python_api_too(ex):
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ConfigError, match="rtol must be a positive finite number"):
            oracle.check(ex["config"], ex["params"], ex["batch"], ex["theirs"], rtol=bad)


@pytest.mark.parametrize("option,value", [("--rtol", "nan"), ("--rtol", "-1"), ("--atol", "inf"),
                                          ("--atol", "-0.5")])
def test_tolerances_must_be_finite_and_non_negative(ex, option, value, capsys):
    with pytest.raises(SystemExit) as info:   # argparse's one-line usage error
        cli.main(argv(ex) + [option, value])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert option in err and "finite number" in err
