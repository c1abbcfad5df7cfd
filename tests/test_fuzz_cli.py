"""Hypothesis fuzzing of the command line (issue 16): random option values for every numeric
option, and random file contents for every file-taking option, must end in exit 0, or in exit 2
with exactly one stderr line and no traceback, within a time and memory limit.

Each hypothesis example is a batch of CLI calls run by one child process (tests/fuzz_runner.py)
under ``resource.setrlimit`` (address space 3 GiB, CPU 240 s) with a 256 MiB refvae budget, so
that the budget, not the kernel, must stop every oversized request: a bare "out of memory" line
fails the test. Values that are valid but only slow (``--epochs 10**9``) are not drawn: the time
limit is there to catch hangs, not long runs the user asked for. :data:`EXAMPLES` × :data:`BATCH`
calls run in all.
"""
import json
import os
import re
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import npy_header_bytes, npz_with_member, set_encrypted_flag, zeros_deflated_member
from refvae.math.config import VAEConfig
from refvae.data.load import load_dataset
from refvae.oracle import write_example
from refvae.train.loop import TrainOptions, train

EXAMPLES, BATCH = 12, 8
LIMITS = (3 * 2**30, 240, 45)  # address space (bytes), CPU seconds, seconds per call
CFG = dict(data_dim=6, latent_dim=2, encoder_hidden=[4], decoder_hidden=[4], activation="tanh")
SMALL = ["--latent-dim", "2", "--encoder-hidden", "4", "--decoder-hidden", "4", "--activation",
         "tanh"]

HOSTILE_TEXT = st.sampled_from(["", " ", "-", "nan", "NaN", "inf", "-inf", "1e3", "0x10", "1_000",
                                "１",
                                "2.5", "-0", "+3", "9" * 40, "1e309", "true", "None", "\x00",
                                "\udcff"])
COUNT = st.one_of(st.integers(-10**6, 3).map(str), HOSTILE_TEXT)               # time grows with it
SIZE = st.one_of(st.integers(-10**3, 3).map(str),
                 st.sampled_from([str(10**k) for k in (6, 8, 12, 19, 25)]),
                 HOSTILE_TEXT)  # memory grows with it
REAL = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), HOSTILE_TEXT,
                 st.sampled_from(["1e-300", "1e300", "0", "-1", "0.5"]))
TRAIN_OPTIONS = {"--epochs": COUNT, "--batch-size": SIZE, "--samples": SIZE, "--eval-samples": SIZE,
                 "--seed": SIZE, "--lr": REAL, "--weight-decay": REAL, "--lr-gamma": REAL,
                 "--lr-step-size": COUNT, "--alpha": REAL, "--latent-dim": SIZE,
                 "--flow-length": COUNT,
                 "--encoder-hidden": SIZE, "--threads": st.sampled_from(["0", "-1", "1", "2", "x"]),
                 "--max-memory": st.sampled_from(["0", "1", "1K", "-5", "4X", "64M", "1T"])}

JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**40, 10**40) | st.floats()
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
CONFIG = st.fixed_dictionaries({}, optional={k: JSON for k in ("data_dim", "latent_dim",
                                                               "encoder_hidden",
                                                                "activation", "latent", "alpha",
                                                               "format")})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzcli")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", train=rng.random((40, 6)), test=rng.random((8, 6)))
    train(VAEConfig.from_dict(CFG), TrainOptions(epochs=1, progress=False),
          load_dataset(str(root / "d.npz")),
          root / "run")
    write_example(root / "oracle")
    return root


def _mangled(data: bytes, cuts) -> bytes:
    b = bytearray(data)
    for pos, value in cuts:
        if b:
            b[pos % len(b)] = value
    return bytes(b)


@st.composite
def calls(draw, root: Path):
    """One CLI call: a command with random option values or a file of random content."""
    case = draw(st.integers(0, 10**9))
    work = root / f"case{case}"
    work.mkdir(exist_ok=True)
    kind = draw(st.sampled_from(["train-options", "train-data", "train-config", "run-file",
                                 "archive", "evaluate",
                                 "sample", "gradcheck", "oracle-file", "bench"]))
    train_base = ["train", "--data", str(root / "d.npz"), "--epochs", "1", "--quiet",
                  "--no-figures",
                  "--out", str(work / "run"), *SMALL]
    if kind == "archive":
        run = work / "run"
        if not run.exists():
            import shutil

            shutil.copytree(root / "run", run)
        data = draw(st.sampled_from(("checkpoint.npz", "data.npz")))
        ARCHIVES[draw(st.sampled_from(sorted(ARCHIVES)))](
            run / "checkpoint.npz" if data == "checkpoint.npz" else work / data)
        if data == "data.npz":
            return train_base[:2] + [str(work / data)] + train_base[3:]
        return _run_command(draw, run, work, train_base)
    if kind == "train-options":
        chosen = draw(st.lists(st.sampled_from(sorted(TRAIN_OPTIONS)), min_size=1, max_size=3,
                               unique=True))
        return train_base + [x for k in chosen for x in (k, draw(TRAIN_OPTIONS[k]))]
    if kind in ("train-data", "run-file", "oracle-file", "train-config"):
        target = {"train-data": "data"
                  + draw(st.sampled_from([".npz", ".npy", ".mat", ".amat", ""])),
                  "train-config": "config.json",
                  "oracle-file": draw(st.sampled_from(["config.json", "params.npz",
                                                          "batch.npz", "theirs.npz"])),
                  "run-file": draw(st.sampled_from(["config.json", "checkpoint.npz", "train.json",
                                                    "metrics.jsonl"]))}[kind]
        source = {"train-data": root / "d.npz", "train-config": None,
                  "oracle-file": root / "oracle" / target,
                  "run-file": root / "run" / target}[kind]
        content = draw(st.one_of(
            st.binary(max_size=300),
            st.builds(_mangled, st.just(source.read_bytes() if source else b"{}"),
                      st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                               max_size=4)),
            st.builds(lambda c: json.dumps(c).encode(), CONFIG)))
        if kind == "run-file":
            run = work / "run"
            if not run.exists():
                import shutil

                shutil.copytree(root / "run", run)
            (run / target).write_bytes(content)
            return _run_command(draw, run, work, train_base)
        (work / target).write_bytes(content)
        if kind == "train-data":
            return (train_base[:2] + [str(work / target)] + train_base[3:]
                    + ["--emission", "gaussian"])
        if kind == "train-config":
            return train_base + ["--config", str(work / target)]
        o = {n: str(root / "oracle" / n) for n
             in ("config.json", "params.npz", "batch.npz", "theirs.npz")}
        o[target] = str(work / target)
        return ["oracle", "compare", "--config", o["config.json"], "--params", o["params.npz"],
                "--batch", o["batch.npz"], "--grads", o["theirs.npz"]]
    if kind == "evaluate":
        return ["evaluate", "--quiet", str(root / "run"), "--samples", draw(SIZE), "--iwae",
                draw(COUNT), "--seed", draw(SIZE)]
    if kind == "sample":
        return ["sample", str(root / "run"), "--n", draw(SIZE), "--image-shape", draw(SIZE),
                draw(SIZE),
                "--out", str(work / draw(st.sampled_from(["s.png", "s", "missing/s.png", "."])))]
    if kind == "gradcheck":
        return ["gradcheck", "--hidden", *draw(st.lists(COUNT, max_size=2)), "--seed", draw(SIZE)]
    return ["bench", "--arch", "examples", "--dtype", "float64", "--peer", str(work / "nopeer.py"),
            "--batch", draw(SIZE), "--steps", draw(st.sampled_from(["0", "1", "-2", "x"])),
            "--warmup", draw(st.sampled_from(["0", "-1", "1"]))]


def _run_command(draw, run: Path, work: Path, train_base) -> list:
    """A command that reads every file of the run directory ``run``: evaluate, sample or resume."""
    which = draw(st.sampled_from(["evaluate", "sample", "resume"]))
    if which == "evaluate":
        return ["evaluate", "--quiet", str(run)]
    if which == "sample":
        return ["sample", str(run), "--n", "2", "--out", str(work / "s.png")]
    return train_base[:-len(SMALL) - 1] + [str(run), *SMALL, "--resume", "--epochs", "2"]


def _many_members(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(5000):
            zf.writestr(f"m{i}.npy", b"")


def _duplicate_members(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # zipfile warns about the duplicate name: it is the point
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("train.npy", npy_header_bytes((2, 2)))
            zf.writestr("train.npy", npy_header_bytes((2, 2)))


# Archives that lie: more members than any run writes, a name twice, an entry whose inflated size
# is far beyond the budget, a header claiming a huge array, an unexpected name, encrypted flags.
ARCHIVES = {
    "many-members": _many_members,
    "duplicate": _duplicate_members,
    "deflate-bomb": lambda p: zeros_deflated_member(p, "train.npy", 40_000_000),
    "huge-header": lambda p: npz_with_member(p, "train.npy", npy_header_bytes((10**6, 10**6))),
    "unexpected": lambda p: npz_with_member(p, "payload.pkl", b"\x80\x04K\x01."),
    "encrypted": lambda p: set_encrypted_flag(npz_with_member(p, "train.npy",
                                                              npy_header_bytes((2, 2)))),
}


def run_batch(argvs) -> list[dict]:
    env = {**os.environ, "REFVAE_MAX_MEMORY": "256M", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("fuzz_runner.py")),
                           *map(str, LIMITS)],
                          input="".join(json.dumps(a) + "\n" for a in argvs), capture_output=True,
                          text=True,
                          env=env, timeout=LIMITS[1] + 60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_cli_fuzz(base, data):
    argvs = [data.draw(calls(base)) for _ in range(BATCH)]
    results = run_batch(argvs)
    assert len(results) == len(argvs)
    if os.environ.get("REFVAE_FUZZ_LOG"):  # for counting the cases and their outcomes
        with open(os.environ["REFVAE_FUZZ_LOG"], "a") as log:
            log.writelines(json.dumps(r) + "\n" for r in results)
    for r in results:
        lines = r["stderr"].strip().splitlines()
        where = f"{r['argv']}: {r['stderr'][-2000:]}"
        assert r["code"] in (0, 1, 2), where  # 1: a comparison or check that ran and failed
        if r["code"] == 2:
            assert len(lines) == 1 and re.match(r"refvae( [a-z]+)*: error: ", lines[0]), where
            assert "out of memory" not in lines[0], where
        assert "Traceback" not in r["stderr"], where


def test_every_lying_archive_against_every_run_command(base, tmp_path):
    """Each archive of :data:`ARCHIVES` as a run's checkpoint, read by evaluate, sample and
    --resume, and as a data file: one ``refvae: error:`` line each, never a traceback."""
    argvs = []
    for name, make in ARCHIVES.items():
        run = tmp_path / name / "run"
        import shutil

        shutil.copytree(base / "run", run)
        make(run / "checkpoint.npz")
        make(tmp_path / name / "data.npz")
        argvs += [["evaluate", "--quiet", str(run)],
                  ["sample", str(run), "--n", "2", "--out", str(tmp_path / name / "s.png")],
                  ["train", "--data", str(base / "d.npz"), "--quiet", "--no-figures", "--out",
                   str(run), *SMALL, "--resume", "--epochs", "2"],
                  ["train", "--data", str(tmp_path / name / "data.npz"), "--quiet",
                   "--no-figures", "--out", str(tmp_path / name / "new"), *SMALL]]
    for r in run_batch(argvs):
        lines = r["stderr"].strip().splitlines()
        assert r["code"] == 2 and len(lines) == 1, (r["argv"], r["stderr"][-2000:])
        assert lines[0].startswith("refvae") and "error:" in lines[0], r["argv"]


# ----- the Python API: random odd arguments raise only refvae's own errors (issue 26.6) --------
ODD = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(),
                st.text(max_size=4), st.lists(st.integers(-3, 3), max_size=3),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _api_call(which: int, a, b):
    from refvae.backend import NoiseSource
    from refvae.gradcheck import check_gradients
    from refvae.math.vae import VAE
    from refvae import oracle

    if which == 0:
        return NoiseSource(a)
    if which == 1:
        return VAE(VAEConfig.from_dict(CFG)).draw_noise(NoiseSource(0), a, b)
    if which == 2:
        return check_gradients(lambda p: 0.0, a, b)
    if which == 3:
        return oracle.check(CFG, a, b, {})
    return VAEConfig.from_dict({**CFG, "latent_dim": a, "alpha": b})


@settings(max_examples=150, deadline=None, derandomize=True)
@given(which=st.integers(0, 4), a=ODD, b=ODD)
def test_api_fuzz_raises_only_refvae_errors(which, a, b):
    from refvae.errors import RefvaeError
    from refvae.util import budget

    with budget.limited("256M"):
        try:
            _api_call(which, a, b)
        except RefvaeError:
            pass
