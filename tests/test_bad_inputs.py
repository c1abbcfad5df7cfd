"""The catalogue of bad inputs (issue 9): every entry point answers each one with a specific
exception from refvae.errors whose message is one line naming the problem, and the CLI with exit
code 2, that one line on stderr, and no traceback.

Each row: an id, a function ``env -> None`` that calls the Python API (it must raise), the
expected exception type, words the message must contain, and optionally the CLI arguments
(a function of ``env``) that present the same problem on the command line.
"""
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from refvae import get_backend
from refvae.cli.main import main
from refvae.math.config import VAEConfig
from refvae.data.load import load_dataset
from refvae.data.formats import read_idx
from refvae.errors import (BackendError, CheckpointError, ConfigError, DataError, NonFiniteError,
                           RefvaeError, ShapeError)
from refvae.oracle import compute, write_example
from refvae.train.loop import TrainOptions, load_run, train
from refvae.math.vae import VAE

CFG = dict(data_dim=6, latent_dim=2, encoder_hidden=[4], decoder_hidden=[4], activation="tanh")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    model = VAE(CFG)
    e = SimpleNamespace(root=root, model=model, params=model.init_params(1), y=rng.random((5, 6)),
                        eps=rng.normal(size=(5, 2, 2)))
    np.savez(root / "data.npz", train=rng.random((40, 6)), test=rng.random((8, 6)))
    e.run = root / "run"
    data = load_dataset(str(root / "data.npz"))
    train(VAEConfig.from_dict(CFG), TrainOptions(epochs=1, progress=False), data, e.run)
    write_example(root / "oracle")
    e.oracle = root / "oracle"
    return e


def with_param(env, name, value):
    p = dict(env.params)
    p[name] = value
    return p


def corrupt_copy(env, name, mutate):
    """A copy of the run directory whose checkpoint was mutated by ``mutate(path)``."""
    import shutil

    target = env.root / name
    if not target.exists():
        shutil.copytree(env.run, target)
        mutate(target / "checkpoint.npz")
    return target


def write_file(env, name, content: bytes) -> Path:
    path = env.root / name
    path.write_bytes(content)
    return path


def oracle_batch(env, name, **arrays) -> Path:
    path = env.root / name
    np.savez(path, **arrays)
    return path


def oracle_args(env, batch=None, config=None):
    o = env.oracle
    return ["oracle", "compute", "--config", str(config or o / "config.json"), "--params",
            str(o / "params.npz"),
            "--batch", str(batch or o / "batch.npz"), "--out", str(env.root / "result.npz")]


def train_args(env, *extra):
    return ["train", "--data", str(env.root / "data.npz"), "--epochs", "1", "--quiet",
            "--no-figures",
            "--out", str(env.root / "cli-run"), *extra]


CATALOGUE = [
    ("nan in data",
     lambda e: e.model.loss_and_grads(e.params, np.where(e.y > 0.5, np.nan, e.y), e.eps),
     DataError, "NaN",
     lambda e: train_args(e, "--data",
                          str(oracle_batch(e, "nan.npz", train=np.full((4, 6), np.nan))))),
    ("inf in data (gaussian emission)",
     lambda e: VAE({**CFG, "emission": "gaussian"}).loss_and_grads(
        e.params, e.y * np.inf, e.eps), DataError, "inf", None),
    ("inf in parameters",
     lambda e: e.model.loss_and_grads(with_param(e, "encoder.0.bias", np.full(4, np.inf)), e.y,
                                      e.eps),
     NonFiniteError, "encoder.0.bias", None),
    ("nan in noise", lambda e: e.model.loss_and_grads(e.params, e.y, e.eps * np.nan), DataError,
     "noise", None),
    ("data of the wrong width", lambda e: e.model.loss_and_grads(e.params, e.y[:, :4], e.eps),
     ShapeError,
     "expected (N, 6)", None),
    ("data that are not numbers",
     lambda e: e.model.loss_and_grads(e.params, np.full((5, 6), "x"), e.eps),
     DataError, "numeric", None),
    ("parameters that are not numbers", lambda e: e.model.loss_and_grads(
        with_param(e, "encoder.0.bias", np.array(list("abcd"))), e.y, e.eps), DataError, "numeric",
     None),
    ("data outside [0, 1] for bernoulli",
     lambda e: e.model.loss_and_grads(e.params, e.y + 1, e.eps), DataError,
     "[0, 1]",
     lambda e: train_args(e, "--data",
                          str(oracle_batch(e, "big.npz", train=np.full((4, 6), 3.0))))),
    ("empty data", lambda e: e.model.loss_and_grads(e.params, e.y[:0], e.eps[:0]), DataError,
     "empty",
     lambda e: train_args(e, "--data", str(oracle_batch(e, "empty.npz", train=np.zeros((0, 6)))))),
    ("config missing a field", lambda e: VAE({"latent_dim": 2}), ConfigError, "data_dim",
     lambda e: oracle_args(e, config=write_file(e, "c1.json",
                                                json.dumps({"latent_dim": 2}).encode()))),
    ("config with an unknown field", lambda e: VAE({**CFG, "laten_dim": 3}), ConfigError,
     "laten_dim",
     lambda e: oracle_args(e,
                           config=write_file(e, "c2.json",
                                             json.dumps({**CFG, "laten_dim": 3}).encode()))),
    ("config with an invalid value", lambda e: VAE({**CFG, "latent_dim": -1}), ConfigError,
     "latent_dim",
     lambda e: train_args(e, "--latent-dim", "-1")),
    ("config that is not JSON", lambda e: VAEConfig.from_dict([1, 2]), ConfigError, "JSON object",
     lambda e: oracle_args(e, config=write_file(e, "c3.json", b"{not json"))),
    ("parameters missing a tensor", lambda e: e.model.loss_and_grads(
        {k: v for k, v in e.params.items() if k != "decoder.out.bias"}, e.y, e.eps), ShapeError,
     "missing decoder.out.bias", None),
    ("transposed weight", lambda e: e.model.loss_and_grads(
        with_param(e, "encoder.0.weight", e.params["encoder.0.weight"].T), e.y, e.eps), ShapeError,
     "transposed", None),
    ("noise for the wrong latent kind",
     lambda e: VAE({**CFG, "latent": "categorical", "categories": 3}).loss_and_grads(
        VAE({**CFG, "latent": "categorical", "categories": 3}).init_params(0), e.y, e.eps,
        temperature=1.0),
     ShapeError, "gumbel",
     lambda e: oracle_args(e,
                           batch=oracle_batch(e, "b1.npz",
                                              y=np.random.default_rng(0).random((3, 4)),
                                          eps=np.zeros((3, 2))))),
    ("temperature zero",
     lambda e: VAE({**CFG, "latent": "categorical", "categories": 3}).loss_and_grads(
        VAE({**CFG, "latent": "categorical", "categories": 3}).init_params(0), e.y,
        np.zeros((5, 1, 2, 3)), temperature=0.0), ConfigError, "temperature",
     lambda e: train_args(e, "--temperature", "-1")),
    ("zero training threads", lambda e: TrainOptions(threads=0), ConfigError, "threads",
     lambda e: train_args(e, "--threads", "0")),
    ("zero samples per datum", lambda e: e.model.loss_and_grads(e.params, e.y, e.eps[:, :0]),
     ShapeError, "noise",
     lambda e: train_args(e, "--samples", "0")),
    ("unknown backend", lambda e: get_backend("jax"), ConfigError, "backend",
     lambda e: train_args(e, "--backend", "jax")),
    ("unknown dtype", lambda e: get_backend("numpy", "float16"), ConfigError, "dtype",
     lambda e: train_args(e, "--dtype", "float16")),
    ("unknown estimator", lambda e: e.model.loss_and_grads(e.params, e.y, e.eps, estimator="magic"),
     ConfigError,
     "estimator", lambda e: train_args(e, "--estimator", "magic")),
    ("unknown emission", lambda e: VAE({**CFG, "emission": "poisson"}), ConfigError, "emission",
     lambda e: train_args(e, "--emission", "poisson")),
    ("unknown activation", lambda e: VAE({**CFG, "activation": "gelu"}), ConfigError, "activation",
     lambda e: train_args(e, "--activation", "gelu")),
    ("unknown optimizer", lambda e: TrainOptions(optimizer="lbfgs") and train(
        VAEConfig.from_dict(CFG), TrainOptions(optimizer="lbfgs", epochs=1, progress=False),
        load_dataset(str(e.root / "data.npz")), e.root / "opt"), ConfigError, "optimizer",
     lambda e: train_args(e, "--optimizer", "lbfgs")),
    ("missing checkpoint", lambda e: load_run(e.root / "nowhere"), CheckpointError,
     "not a training run",
     lambda e: ["evaluate", str(e.root / "nowhere")]),
    ("truncated checkpoint", lambda e: load_run(corrupt_copy(
        e, "trunc", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]))),
     CheckpointError, "checkpoint.npz",
     lambda e: ["evaluate", str(corrupt_copy(e, "trunc", None))]),
    ("corrupt checkpoint",
     lambda e: load_run(corrupt_copy(e, "junk", lambda p: p.write_bytes(b"\x00junk" * 100))),
     CheckpointError, "checkpoint.npz", lambda e: ["evaluate", str(corrupt_copy(e, "junk", None))]),
    ("checkpoint containing a pickle", lambda e: load_run(corrupt_copy(
        e, "pickled", lambda p: np.savez(p, evil=np.array([{"a": 1}], dtype=object)))),
     CheckpointError, "checkpoint.npz",
     lambda e: ["evaluate", str(corrupt_copy(e, "pickled", None))]),
    ("pickle file given as parameters", lambda e: compute(e.oracle / "config.json",
                                                          write_file(e, "p.pkl",
                                                                     pickle.dumps({"a": 1})),
                                                          e.oracle / "batch.npz"), RefvaeError,
     "p.pkl", None),
    ("output directory that cannot be written", lambda e: train(
        VAEConfig.from_dict(CFG), TrainOptions(epochs=1, progress=False),
        load_dataset(str(e.root / "data.npz")),
        write_file(e, "afile", b"x") / "run"), CheckpointError, "afile",
     lambda e: train_args(e, "--out", str(write_file(e, "afile2", b"x") / "run"))),
    ("data file that does not exist", lambda e: load_dataset(str(e.root / "missing.npz")),
     DataError, "missing.npz",
     lambda e: train_args(e, "--data", str(e.root / "missing.npz"))),
    ("corrupt IDX file",
     lambda e: read_idx(write_file(e, "t10k-images-idx3-ubyte", b"\x00\x00\x08\x03junk")),
     DataError, "t10k-images", None),
    ("wrong-shaped noise in an oracle batch", lambda e: compute(
        e.oracle / "config.json", e.oracle / "params.npz",
        oracle_batch(e, "b2.npz", y=np.load(e.oracle / "batch.npz")["y"], eps=np.zeros((2, 1, 1)))),
     ShapeError, "eps", lambda e: oracle_args(e, batch=e.root / "b2.npz")),
]


def test_catalogue_is_big_enough():
    assert len(CATALOGUE) >= 25
    assert len({row[0] for row in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("name,call,error,words,cli", CATALOGUE, ids=[row[0] for row in CATALOGUE])
def test_api_raises_a_named_one_line_error(env, name, call, error, words, cli):
    with pytest.raises(error) as info:
        call(env)
    message = str(info.value)
    assert words in message, message
    assert "\n" not in message and message.strip()


@pytest.mark.parametrize("name,call,error,words,cli", [row for row in CATALOGUE if row[4]],
                         ids=[row[0] for row in CATALOGUE if row[4]])
def test_cli_exits_2_with_one_line(env, capsys, name, call, error, words, cli):
    code = main(cli(env))
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, captured
    assert err and err[-1].startswith("refvae: error:"), captured.err
    assert "Traceback" not in captured.err
    assert len([line for line in err if line.startswith("refvae: error:")]) == 1
