"""``refvae gradcheck``: exits 0 and prints PASS; bad options exit 2 with one line, no traceback."""
import subprocess
import sys

import pytest

from refvae.cli.main import build_parser, main


@pytest.mark.parametrize("argv", [
    ["gradcheck", "--hidden", "4", "3"],
    ["gradcheck", "--activation", "sigmoid", "--hidden", "5"],
    ["gradcheck", "--activation", "softplus", "--hidden", "3", "3", "3", "--seed", "4"],
    ["gradcheck", "--activation", "silu", "--hidden", "4", "--backend", "numpy"],
    ["gradcheck", "--activation", "relu", "--hidden", "4", "3"],
    ["gradcheck", "--activation", "identity", "--hidden"],  # no hidden layer: depth 0
])
def test_gradcheck_passes(capsys, argv):
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "FAIL" not in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("MLP ") and last.endswith("PASS")
    # the three reports: parameter gradients, full and diagonal input Hessians
    assert out.count("gradient check: PASS") == 1
    assert "input Hessian (full)" in out and "input Hessian (diagonal)" in out
    assert out.count("Hessian check: PASS") == 2
    assert err == ""


def test_gradcheck_defaults(capsys):
    assert main(["gradcheck"]) == 0
    out, _ = capsys.readouterr()
    assert out.strip().splitlines()[-1] == "MLP 3-16-8-5 (tanh): PASS"
    for name in ("decoder.0.weight", "decoder.1.bias", "decoder.out.weight"):
        assert name in out


def test_gradcheck_reports_failure_with_exit_1(capsys, monkeypatch):
    """If the MLP's gradient were wrong, the command says FAIL and exits 1 (not 0, not 2)."""
    from refvae.math import mlp as mlp_mod

    real_backward = mlp_mod.MLP.backward

    def wrong_backward(self, *args, **kwargs):
        res = real_backward(self, *args, **kwargs)
        res.grads[f"{self.prefix}.out.bias"] = res.grads[f"{self.prefix}.out.bias"] * 1.01
        return res

    monkeypatch.setattr(mlp_mod.MLP, "backward", wrong_backward)
    assert main(["gradcheck", "--hidden", "3"]) == 1
    out, _ = capsys.readouterr()
    assert out.strip().splitlines()[-1].endswith("FAIL")
    assert "worst entries of decoder.out.bias" in out


@pytest.mark.parametrize("argv, words", [
    (["gradcheck", "--activation", "gelu"], ["unknown activation", "'gelu'", "tanh"]),
    (["gradcheck", "--backend", "jax"], ["unknown backend", "'jax'", "numpy"]),
])
def test_bad_option_exits_2_with_one_line(capsys, argv, words):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("refvae: error: ")
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in err


def test_cupy_without_cupy_exits_2(capsys):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed; the missing-CuPy path is covered in test_backend.py")
    except ImportError:
        pass
    assert main(["gradcheck", "--backend", "cupy", "--hidden", "2"]) == 2
    _, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1
    assert "CuPy is not installed" in err and "Traceback" not in err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    out, _ = capsys.readouterr()
    assert "gradcheck" in out


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["gradcheck", "--seed", "abc"])
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_parser_documents_options():
    parser = build_parser()
    args = parser.parse_args(["gradcheck"])
    assert (args.activation, args.hidden, args.seed, args.backend) == ("tanh", [16, 8], 0, "numpy")


def test_real_process_unknown_activation_has_no_traceback():
    """The same through a real interpreter (exit status and stderr as a user sees them)."""
    proc = subprocess.run([sys.executable, "-m", "refvae.cli.main", "gradcheck", "--activation",
                           "bogus"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown activation 'bogus'" in proc.stderr and "Traceback" not in proc.stderr
