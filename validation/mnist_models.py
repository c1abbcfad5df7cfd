"""What claims 7, 8, 9, 10 and 12 share: the MNIST data at the scale of each mode, the trained
MNIST models (trained once, cached on disk), and a single-threaded BLAS guard.

The shared model is trained by refvae's own training loop (:func:`refvae.train.loop.train`) and
cached under ``validation/.cache/`` in a directory named by the mode, seed and latent size and a
digest of everything that determines the result (model config, training options, data, and the
source of the ``refvae`` package): a later claim of the same run, or a later run with unchanged
code, reuses it; any change to the library retrains.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

from refvae.backend import NoiseSource
from refvae.math.config import VAEConfig
from refvae.data.load import Dataset, apply_binarization, load_dataset
from refvae.train.loop import TrainOptions, load_run, train

try:
    from validation.common import skipped
except ImportError:  # pragma: no cover - run as a script from validation/
    from common import skipped

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
PACKAGE = HERE.parent / "refvae"


@dataclass(frozen=True)
class Scale:
    """The MNIST scale of one mode: data sizes (``None``: the whole split) and the shared model's
    training (Burda et al. 2016's architecture in full mode: 784-200-200-50, tanh)."""

    n_train: int | None
    n_test: int | None
    hidden: tuple
    epochs: int
    batch_size: int = 100
    lr: float = 1e-3
    latent_dim: int = 50

    def describe(self, data: Dataset, latent_dim: int) -> str:
        h = "-".join(str(w) for w in self.hidden)
        return (f"{data.name}, {data.n_train} train / {data.n_test} test, 784-{h}-{latent_dim} "
                "tanh, "
                f"Bernoulli, Adam {self.lr:g}, batch {self.batch_size}, {self.epochs} epochs")


QUICK = Scale(n_train=5000, n_test=1000, hidden=(200,), epochs=10)
FULL = Scale(n_train=None, n_test=None, hidden=(200, 200), epochs=50)


def scale(ctx) -> Scale:
    return QUICK if ctx.quick else FULL


@contextlib.contextmanager
def single_threaded():
    """One BLAS thread (and one torch thread) inside the block. On a shared two-core machine
    OpenBLAS's spinning threads made a training step ~6× slower than one thread (measured: 365 ms
    against 62 ms per 784-400-20 step under a load of 5); on an idle one it costs at most 2×."""
    torch_threads = None
    try:
        import torch  # noqa: PLC0415 - optional

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 - optional (scikit-learn's)

        limiter = threadpool_limits(limits=1)
    except ImportError:
        limiter = contextlib.nullcontext()
    try:
        with limiter:
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)


@lru_cache(maxsize=4)
def _load(name: str, data_dir: str) -> Dataset:
    return load_dataset(name, data_dir=data_dir)


def _rows(a, n: int | None, seed: int):
    """``n`` rows drawn without replacement by a fixed permutation (all rows, in order, for
    ``None``): the first rows are no sample, since binarized MNIST's test file is sorted by class
    (its first 1,000 rows have mean intensity 0.170, the next 1,000 0.076, the whole file 0.133)."""
    return a if n is None or n >= len(a) else a[NoiseSource(seed).permutation(len(a))[:n]]


def _subset(ds: Dataset, n_train: int | None, n_test: int | None) -> Dataset:
    return replace(ds, train=_rows(ds.train, n_train, 1), test=_rows(ds.test, n_test, 2),
                   valid=None)


def binary_mnist(ctx, n_train: int | None = None, n_test: int | None = None) -> Dataset | None:
    """Binary MNIST at the mode's scale: Larochelle & Murray's fixed binarization (the benchmark
    of the IWAE literature), else a static binarization (seed 0) of the IDX MNIST, else ``None``."""
    s = scale(ctx)
    n_train, n_test = n_train or s.n_train, n_test or s.n_test
    if ctx.data("binarized_mnist") is not None:
        return _subset(_load("binarized-mnist", str(ctx.data_dir)), n_train, n_test)
    if ctx.data("mnist") is not None:
        return _subset(apply_binarization(_load("mnist", str(ctx.data_dir)), "static", seed=0),
                       n_train, n_test)
    return None


def greyscale_mnist(ctx, n_train: int | None, n_test: int | None) -> Dataset | None:
    """MNIST scaled to [0, 1] (what pytorch/examples trains on); ``None`` if absent."""
    if ctx.data("mnist") is None:
        return None
    return _subset(_load("mnist", str(ctx.data_dir)), n_train, n_test)


def data_note(ctx) -> str:
    return "" if ctx.data("binarized_mnist") is not None else \
        " (binarized_mnist absent: a static binarization of the IDX MNIST, seed 0)"


@lru_cache(maxsize=1)
def _source_digest() -> str:
    """Computed once per process, so that one run trains each model once even while the library
    is being edited."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(path.relative_to(PACKAGE).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@dataclass
class TrainedModel:
    vae: object
    params: dict
    data: Dataset
    history: list
    cached: bool
    seconds: float
    description: str


_MEMO: dict = {}


def trained_model(ctx, latent_dim: int | None = None, seed: int | None = None,
                  n_train: int | None = None,
                  epochs: int | None = None, track_test: bool = True) -> TrainedModel | None:
    """The mode's MNIST model with ``latent_dim`` latents (default the shared 50) trained with
    ``seed`` (default ``ctx.seed``) on :func:`binary_mnist` (``n_train`` and ``epochs`` override the
    mode's); ``None`` when no MNIST is present. Trained by :func:`refvae.train.loop.train` once,
    then read from the cache. ``track_test=False`` skips the test bound after every epoch (the
    history then has none), for callers that evaluate once, after training."""
    s = scale(ctx)
    if epochs is not None:
        s = replace(s, epochs=epochs)
    latent_dim = latent_dim or s.latent_dim
    seed = ctx.seed if seed is None else seed
    data = binary_mnist(ctx, n_train=n_train)
    if data is None:
        return None
    config = VAEConfig(data_dim=data.dim, latent_dim=latent_dim, encoder_hidden=s.hidden,
                       decoder_hidden=s.hidden, activation="tanh", emission="bernoulli")
    options = TrainOptions(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, seed=seed,
                           progress=False)
    key = json.dumps({"config": config.to_dict(), "options": options.to_dict(), "data": data.source,
                      "n": [data.n_train, data.n_test], "refvae": _source_digest()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    prefix = (f"mnist-{'quick' if ctx.quick else 'full'}{'' if track_test else '-untracked'}-"
              f"n{data.n_train}-e{s.epochs}-seed{seed}-K{latent_dim}-")
    run_dir = CACHE / (prefix + digest)
    if run_dir in _MEMO:
        return _MEMO[run_dir]
    for stale in CACHE.glob(prefix + "*"):   # the same model trained by an older library
        if stale != run_dir:
            shutil.rmtree(stale, ignore_errors=True)
    t0 = time.perf_counter()
    done = (run_dir / "metrics.jsonl").exists() and \
        len((run_dir / "metrics.jsonl").read_text().splitlines()) == options.epochs
    with single_threaded():
        history = train(config, options,
                        data if track_test else SimpleNamespace(train=data.train, test=None),
                        run_dir, resume=(run_dir / "checkpoint.npz").exists())
    vae, params, _ = load_run(run_dir)
    model = TrainedModel(vae, params, data, history, done, time.perf_counter() - t0,
                         s.describe(data, latent_dim) + f", seed {seed}" + data_note(ctx))
    _MEMO[run_dir] = model
    return model


NO_MNIST = "no MNIST data (binarized_mnist or mnist) in the data directory"


def run_on_shared_model(ctx, title: str, source: str, run):
    """``run(ctx, model)`` on the shared trained MNIST model, single-threaded; a SKIP naming the
    missing data when there is none (claims 7 and 8)."""
    with single_threaded():
        model = trained_model(ctx)
        if model is None:
            return skipped(title, source, NO_MNIST)
        return run(ctx, model)
