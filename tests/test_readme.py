"""The README's Python examples outside the oracle section run as written (the oracle section
has its own test in test_oracle_torch.py)."""
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_using_it_python_blocks_run():
    text = README.read_text(encoding="utf-8")
    start = text.index("## Using it")
    section = text[start:text.index("\n## ", start + 1)]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S)
              if "assert_gradients(loss_fn" not in b]
    assert blocks
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert result.loss > 0 and set(result.grads) == set(namespace["params"])


def readme_commands() -> list[str]:
    """The ``refvae …`` lines of the bash blocks of "## Using it", continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    start = text.index("## Using it")
    section = text[start:text.index("\n## ", start + 1)]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        lines += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def scaled_down(argv: list[str]) -> list[str] | None:
    """The README's command, run quickly: one or two epochs, few importance samples, bench steps;
    None for a placeholder line (``...``), which has its own test."""
    if "..." in argv:
        return None
    argv = list(argv)
    scale = {"--epochs": "2" if "--resume" in argv else "1", "--iwae": "5", "--figures-every": "1"}
    for flag, value in scale.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    if argv[0] == "train" and "--epochs" not in argv:
        argv += ["--epochs", "1"]
    if argv[0] == "bench":
        argv += ["--arch", "examples", "--batch", "8", "--dtype", "float64", "--steps", "1",
                 "--warmup", "1"]
    return argv


@pytest.mark.slow
def test_using_it_command_lines_run_as_written(tmp_path, monkeypatch, capsys):
    """Every command line of "## Using it", in order, scaled down, in a fresh working directory:
    ``--data mnist --download`` finds a small MNIST (IDX files) already in the download cache, so
    nothing is fetched; ``refvae data download mnist`` runs on a second cache filled from the real
    files where this machine has them (checksummed; else that line is skipped). Then the run is
    evaluated from another directory."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from refvae.cli.main import main
    from test_data import _mnist_dir

    work = tmp_path / "checkout"
    work.mkdir()
    _mnist_dir(tmp_path / "cache" / "mnist", n_train=40, n_test=10)
    (work / "my_config.json").write_text(json.dumps(
        {"format": 1, "latent_dim": 2, "encoder_hidden": [8], "decoder_hidden": [8],
         "activation": "tanh",
         "latent": "gaussian", "emission": "bernoulli"}))
    real_mnist = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    monkeypatch.setenv("REFVAE_CACHE_DIR", str(tmp_path / "cache"))
    if real_mnist.is_dir():
        shutil.copytree(real_mnist, tmp_path / "real-cache" / "mnist")
    monkeypatch.chdir(work)
    ran = []
    for line in readme_commands():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "refvae", line
        args = scaled_down(argv[1:])
        if args is None or (args[:2] == ["data", "download"] and not real_mnist.is_dir()):
            continue
        with monkeypatch.context() as m:
            if args[:2] == ["data", "download"]:
                m.setenv("REFVAE_CACHE_DIR", str(tmp_path / "real-cache"))
            assert main(args) == 0, (line, capsys.readouterr().err)
        ran.append(args[0])
    assert ran.count("train") == 7 and {"evaluate", "sample", "gradcheck", "bench"} <= set(ran)
    assert (work / "samples.png").is_file()
    mnist = json.loads((work / "runs" / "mnist" / "train.json").read_text())
    assert mnist["options"]["epochs"] == 2 and mnist["options"]["lr"] == 1e-3
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["evaluate", str(work / "runs" / "mnist"), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10
