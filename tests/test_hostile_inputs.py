"""The hostile-input catalogue of issue 16: every probe that once ended in a traceback, a runaway
allocation or a silently wrong number now ends in exit 2 with exactly one line on stderr (no
traceback, no warning before it), or in a correct result.

Each row: an id, its kind (traceback, runaway, silent, minor), a function of the fixture ``env``
giving the CLI arguments, and words the line must contain. Runaway rows run under a 256 MiB budget
(``--max-memory``) and must not allocate more than it (``tracemalloc`` sees NumPy's buffers).
"""
import json
import shutil
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io

from hostile import (CFG, config_file, idx_gz_claiming, npy_header_bytes, npz_with_member,
                     one_line, set_encrypted_flag, zeros_deflated_member)
from refvae.util.budget import parse_size
from refvae.cli.main import main
from refvae.math.config import VAEConfig
from refvae.data.load import load_dataset
from refvae.util.files import atomic_write_npz, load_npz_checked
from refvae.oracle import write_example
from refvae.train.loop import TrainOptions, train

BUDGET = 256 * 2**20


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", train=rng.random((40, 6)), test=rng.random((8, 6)))
    np.savez(root / "d255.npz", train=rng.integers(0, 256, (40, 6)),
             test=rng.integers(0, 256, (8, 6)))
    run = root / "run"
    train(VAEConfig.from_dict(CFG), TrainOptions(epochs=1, progress=False),
          load_dataset(str(root / "d.npz")), run)
    write_example(root / "oracle")
    return SimpleNamespace(root=root, run=run, data=str(root / "d.npz"), oracle=root / "oracle")


def run_copy(env, name, mutate=None, *, arrays=None, meta=None) -> str:
    """A copy of the trained run; ``mutate(dir)`` changes it, or ``arrays``/``meta`` rewrite the
    checkpoint (``arrays(old) -> new``, ``meta(old) -> new``)."""
    target = env.root / name
    if not target.exists():
        shutil.copytree(env.run, target)
        if mutate:
            mutate(target)
        if arrays or meta:
            a, m = load_npz_checked(target / "checkpoint.npz")
            m.pop("refvae_format")
            atomic_write_npz(target / "checkpoint.npz", arrays(a) if arrays else a,
                             meta(m) if meta else m)
    return str(target)


def train_args(env, *extra, data=None):
    return ["train", "--data", data or env.data, "--epochs", "1", "--quiet", "--no-figures",
            "--out", str(env.root / "out"), *extra]


def with_metrics(text):
    return lambda d: (d / "metrics.jsonl").write_text(text)


def raw_meta(text):
    """Rewrite the checkpoint's metadata entry with ``text`` as it is (not JSON-checked)."""
    def mutate(d):
        z = dict(np.load(d / "checkpoint.npz"))
        z["__meta__"] = np.array(text(str(z["__meta__"])))
        np.savez(d / "checkpoint.npz", **z)
    return mutate


def resume(env, name, mutate):
    return train_args(env, "--resume", "--epochs", "2", "--latent-dim", "2", "--encoder-hidden",
                      "4",
                      "--decoder-hidden", "4", "--activation", "tanh", "--out",
                      run_copy(env, name, mutate))


def folder(env, name, files: dict) -> str:
    """A folder holding ``files`` (name → bytes, or a function of the path that writes it)."""
    d = env.root / name
    d.mkdir(exist_ok=True)
    for fname, content in files.items():
        content(d / fname) if callable(content) else (d / fname).write_bytes(content)
    return str(d)


def frey_complex(env) -> str:
    path = env.root / "frey_rawface.mat"
    scipy.io.savemat(path, {"ff": np.full((560, 4), 100 + 1j)})
    return str(path)


def oracle_args(env, batch):
    o = env.oracle
    return ["oracle", "compute", "--config", str(o / "config.json"), "--params",
            str(o / "params.npz"),
            "--batch", batch, "--out", str(env.root / "result.npz")]


CATALOGUE = [
    # ----- tracebacks -----
    ("json nested 100k deep", "traceback", lambda e: train_args(
        e, "--config", str(config_file(e.root, "deep.json", "[" * 100_000 + "]" * 100_000))),
     "nested"),
    ("json 5000-digit integer", "traceback", lambda e: train_args(
        e, "--config",
        str(config_file(e.root, "digits.json", '{"latent_dim": ' + "9" * 5000 + "}"))), "digits"),
    ("config activation []", "traceback", lambda e: train_args(
        e, "--config", str(config_file(e.root, "act.json", {"activation": []}))), "activation"),
    ("resume: torn metrics line", "traceback", lambda e: resume(
        e, "torn", with_metrics('{"epoch": 1, "train_loss": 3.2}\n{"epoch": 2, "tr')),
     "metrics.jsonl line 2"),
    ("resume: metrics line a list", "traceback", lambda e: resume(
        e, "mlist", with_metrics("[1, 2]\n")), "not a JSON object"),
    ("resume: metrics epoch a string", "traceback", lambda e: resume(
        e, "mstr", with_metrics('{"epoch": "2"}\n')), "'epoch'"),
    ("resume: stored step infinity", "traceback", lambda e: resume(
        e, "stepinf", raw_meta(lambda m: m.replace('"step": ', '"step": Infinity, "x": '))),
     "Infinity"),
    ("resume: generator state garbage", "traceback", lambda e: resume(
        e, "noise", raw_meta(lambda m: m.replace('"noise_state": "', '"noise_state": "x'))),
     "generator state"),
    ("encrypted flag in a checkpoint", "traceback", lambda e: ["evaluate", "--quiet", run_copy(
        e, "encrypted", lambda d: set_encrypted_flag(d / "checkpoint.npz"))], "corrupt"),
    ("encrypted flag in a data npz", "traceback", lambda e: train_args(
        e, data=str(set_encrypted_flag(shutil.copy(e.data, e.root / "enc.npz")))), "corrupt"),
    ("negative --seed: train", "traceback", lambda e: train_args(e, "--seed", "-1"), "seed"),
    ("negative --seed: evaluate", "traceback",
     lambda e: ["evaluate", "--quiet", str(e.run), "--seed", "-1"], "seed"),
    ("negative --seed: sample", "traceback", lambda e: ["sample", str(e.run), "--seed", "-1"],
     "seed"),
    ("negative --seed: oracle example", "traceback", lambda e: [
        "oracle", "example", "--out", str(e.root / "ex"), "--seed", "-1"], "seed"),
    ("negative --seed: gradcheck", "traceback", lambda e: ["gradcheck", "--seed", "-1"], "seed"),
    ("evaluate --iwae -1", "traceback",
     lambda e: ["evaluate", "--quiet", str(e.run), "--iwae", "-1"], "iwae"),
    ("evaluate --samples -3", "traceback",
     lambda e: ["evaluate", "--quiet", str(e.run), "--samples", "-3"], "samples"),
    ("sample --n 0", "traceback", lambda e: ["sample", str(e.run), "--n", "0"], "--n"),
    ("sample --image-shape 0 0", "traceback",
     lambda e: ["sample", str(e.run), "--image-shape", "0", "0"],
     "image-shape"),
    ("sample --out in a missing folder", "traceback", lambda e: [
        "sample", str(e.run), "--image-shape", "2", "3", "--out", str(e.root / "no" / "s.png")],
     "does not exist"),
    ("bench --batch 0", "traceback", lambda e: ["bench", "--batch", "0"], "batch"),
    ("gradcheck --hidden -3", "traceback", lambda e: ["gradcheck", "--hidden", "-3"], "hidden"),
    # ----- runaway allocations (under a 256 MiB budget) -----
    ("config latent_dim 1e9", "runaway", lambda e: train_args(
        e, "--config", str(config_file(e.root, "k.json", {"latent_dim": 10**9}))), "memory budget"),
    ("config encoder_hidden [1e5, 1e5]", "runaway", lambda e: train_args(
        e, "--config", str(config_file(e.root, "w.json", {"encoder_hidden": [10**5, 10**5]}))),
     "memory budget"),
    ("gaussian_full K = 1e5", "runaway", lambda e: train_args(
        e, "--config",
        str(config_file(e.root, "f.json", {"latent": "gaussian_full", "latent_dim": 10**5}))),
     "memory budget"),
    ("gzip IDX header claiming 5e6 images", "runaway",
     lambda e: train_args(e, data=folder(e, "idx", {
        "train-images-idx3-ubyte.gz": lambda p: idx_gz_claiming(p, (5_000_000, 28, 28)),
        "t10k-images-idx3-ubyte.gz": lambda p: idx_gz_claiming(p, (1, 28, 28), bytes(784))})),
     "IDX header"),
    ("checkpoint .npy header of 1e12 floats", "runaway", lambda e: ["evaluate", "--quiet", run_copy(
        e, "huge", lambda d: npz_with_member(d / "checkpoint.npz", "param/x.npy",
                                             npy_header_bytes((10**12,))))],
     "memory budget"),
    ("small member inflating beyond the budget", "runaway", lambda e: train_args(
        e, "--max-memory", "16M",
        data=str(zeros_deflated_member(e.root / "bomb.npz", "train.npy", 2**22))),
     "memory budget"),
    ("--data /dev/zero", "runaway", lambda e: train_args(e, data="/dev/zero"), "character device"),
    ("--config /dev/urandom", "runaway", lambda e: train_args(e, "--config", "/dev/urandom"),
     "character device"),
    ("train --samples 1e7", "runaway", lambda e: train_args(e, "--samples", "10000000"),
     "memory budget"),
    ("evaluate --samples 1e7", "runaway",
     lambda e: ["evaluate", "--quiet", str(e.run), "--samples", "10000000"],
     "memory budget"),
    ("oracle noise L = 1e7", "runaway", lambda e: oracle_args(e, str(npz_with_member(
        e.root / "noise.npz", "eps.npy", npy_header_bytes((4, 10**7, 2))))), "memory budget"),
    ("bench --batch 1e8", "runaway", lambda e: ["bench", "--batch", "100000000", "--steps", "1",
                                                "--dtype", "float64", "--arch", "examples"],
     "memory budget"),
    # ----- silently wrong -----
    ("divergence on the last step", "silent", lambda e: train_args(
        e, "--optimizer", "sgd", "--lr", "1e308", "--batch-size", "64"), "NaN or inf"),
    ("evaluate 0-255 data with a bernoulli model", "silent", lambda e: [
        "evaluate", "--quiet", str(e.run), "--data", str(e.root / "d255.npz")], "[0, 1]"),
    ("evaluate --samples 0", "silent",
     lambda e: ["evaluate", "--quiet", str(e.run), "--samples", "0"], "samples"),
    ("frey face .mat with complex ff", "silent", lambda e: train_args(
        e, "--emission", "gaussian", data=frey_complex(e)), "complex"),
    ("checkpoint parameters of int dtype", "silent", lambda e: ["evaluate", "--quiet", run_copy(
        e, "ints", arrays=lambda a: {k: v.astype(np.int64) for k, v in a.items()})], "dtype int64"),
    ("checkpoint parameters of complex dtype", "silent", lambda e: ["evaluate", "--quiet", run_copy(
        e, "cplx", arrays=lambda a: {k: v.astype(complex) for k, v in a.items()})],
     "dtype complex"),
    ("checkpoint with NaN parameters", "silent", lambda e: ["evaluate", "--quiet", run_copy(
        e, "nanp", arrays=lambda a: {k: v * np.nan for k, v in a.items()})], "NaN or inf"),
    ("duplicate JSON keys", "silent", lambda e: train_args(
        e, "--config", str(config_file(e.root, "dup.json", '{"latent_dim": 2, "latent_dim": 3}'))),
     "twice"),
    ('"format": true', "silent", lambda e: train_args(
        e, "--config", str(config_file(e.root, "fmt.json", {"format": True}))), "format"),
    ("gradcheck --hidden 0", "silent", lambda e: ["gradcheck", "--hidden", "0"], "hidden"),
    ("bench --steps 0", "silent", lambda e: ["bench", "--steps", "0"], "steps"),
    # ----- minor -----
    ("--lr-gamma nan", "minor", lambda e: train_args(e, "--lr-gamma", "nan"), "lr_gamma"),
    ('config data_dim "6"', "minor", lambda e: train_args(
        e, "--config", str(config_file(e.root, "dd.json", {"data_dim": "6"}))),
     "data_dim' must be"),
    ("text .amat with nan", "minor", lambda e: train_args(e, data=folder(e, "amat", {
        "binarized_mnist_train.amat": b"0 1 nan 1\n1 0 0 1\n",
        "binarized_mnist_test.amat": b"0 1 0 1\n"})),
     "non-finite"),
    ("bench --peer /dev/zero (no warning line first)", "minor", lambda e: [
        "bench", "--peer", "/dev/zero", "--steps", "1", "--arch", "examples", "--batch", "2"],
     "character device"),
]
ROWS = [pytest.param(*row, id=row[0]) for row in CATALOGUE]


@pytest.mark.parametrize("name,kind,args,words", ROWS)
def test_one_line_and_exit_2(env, capsys, name, kind, args, words):
    argv = args(env)
    budget = BUDGET
    if kind == "runaway":
        if "--max-memory" in argv:
            budget = parse_size(argv[argv.index("--max-memory") + 1])
        else:
            argv = argv + ["--max-memory", str(BUDGET)]
        tracemalloc.start()
    try:
        code = run_main(argv)
    finally:
        peak = tracemalloc.get_traced_memory()[1] if kind == "runaway" else 0
        tracemalloc.stop()
    line = one_line(code, capsys.readouterr().err)
    assert words in line, line
    assert peak < budget, f"{name} allocated {peak} bytes"


def run_main(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


def test_catalogue_size_by_kind():
    kinds = [row[1] for row in CATALOGUE]
    counts = {k: kinds.count(k) for k in ("traceback", "runaway", "silent", "minor")}
    assert counts["traceback"] >= 20 and counts["runaway"] >= 10 and counts["silent"] >= 10, counts


def test_sample_out_without_suffix_names_the_file_written(env, capsys):
    out = env.root / "grid"
    assert main(["sample", str(env.run), "--image-shape", "2", "3", "--n", "4", "--out",
                 str(out)]) == 0
    assert capsys.readouterr().err.strip() == f"wrote {out}.png"
    assert (env.root / "grid.png").is_file() and not out.exists()


def test_strict_json_refuses_what_json_module_accepts():
    from refvae.errors import CheckpointError
    from refvae.util.inputs import loads_json

    for text, words in (('{"a": NaN}', "NaN"), ('{"a": 1e999}', "infinity"),
                        ('{"a": -Infinity}', "Infinity"),
                        ('{"a": 1, "a": 1}', "twice"), ("[" * 65 + "]" * 65, "nested"),
                        ("1" * 31, "digits")):
        with pytest.raises(CheckpointError, match=words):
            loads_json(text)
    assert loads_json("[" * 64 + "]" * 64) == json.loads("[" * 64 + "]" * 64)
    assert loads_json('{"a": [1, 2.5, "x", true, null]}') == {"a": [1, 2.5, "x", True, None]}
