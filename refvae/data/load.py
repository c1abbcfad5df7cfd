"""Data sets: the built-in default, the standard formats of the VAE literature, binarization.

Everything here is host-side (NumPy, SciPy, the standard library); arrays are float64 with one
datum per row, and the training code moves them to the device.

* Built-in default, no download and no path: scikit-learn's bundled 8×8 digits (Alpaydin & Kaynak
  1998, UCI "Optical Recognition of Handwritten Digits"), scaled to [0, 1].
* The formats of :mod:`refvae.data.formats` (MNIST and Fashion-MNIST IDX, binarized MNIST, Frey
  Face, ``.npz``), found by name in a data directory or by path; MNIST and Fashion-MNIST also
  downloaded once into a cache with checksum verification.

Binarization for a Bernoulli emission: ``"none"`` keeps greyscale values in [0, 1] as targets (as
pytorch/examples' VAE does); ``"static"`` draws one fixed Bernoulli sample with a seed;
``"dynamic"`` redraws each epoch (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted
Autoencoders", ICLR, section 5) through :func:`binarize`.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..util import inputs
from ..backend import NoiseSource, array_module
from .dataset import DEFAULT_TEST_FRACTION, Dataset
from ..util.gates import check_support
from ..errors import ConfigError, DataError, ShapeError
from .condition import select
from .formats import FORMATS, IDX_FILES, detect_path, find_named

BINARIZATIONS = ("none", "static", "dynamic")
NAMED = ("digits", "mnist", "fashion-mnist", "binarized-mnist", "frey-face")

DIGITS_TEST = 297          # the last 297 of sklearn's 1,797 digits are the test split

MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist"
                                                                "/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# Accepted MD5 digests per file; a digest matches either the file or its gunzipped content. MNIST:
# the official gzip files and their uncompressed contents (recompressed copies of the training
# images circulate, whose gzip md5 differs but whose content is the official 6bbc9a…).
# Fashion-MNIST: the official gzip files (zalandoresearch/fashion-mnist).
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873",
                                       "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432",
                                       "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3",
                                      "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c",
                                      "27ae3e4e09519cfbb04c329615203637"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",),
        "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",),
        "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",),
        "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",),
    },
}


# ---------------------------------------------------------------------------------------------
# Support checks and binarization
# ---------------------------------------------------------------------------------------------
def binarize(y, noise: NoiseSource) -> np.ndarray:
    """One Bernoulli draw per entry with probability ``y`` (values in [0, 1]), on the host.

    Called once with a fixed seed this is static binarization; called each epoch with the
    training loop's noise source it is dynamic binarization (Burda et al. 2016, section 5).
    """
    y = np.asarray(y, dtype=np.float64)
    check_support(y, "bernoulli", "data to binarize")
    return noise.binomial_like(y)


def apply_binarization(ds: Dataset, mode: str = "none", seed: int = 0) -> Dataset:
    """Prepare ``ds`` for the binarization ``mode`` (none, static, dynamic).

    ``static`` returns a copy with train, valid and test each drawn once from ``NoiseSource(seed)``
    (in that order) and ``kind="binary"``. ``none`` and ``dynamic`` return ``ds`` unchanged after
    checking its values lie in [0, 1]; for ``dynamic`` the training loop calls :func:`binarize` on
    each epoch's data.
    """
    if mode not in BINARIZATIONS:
        raise ConfigError(f"unknown binarization {mode!r}; choose one "
                          f"of {', '.join(BINARIZATIONS)}")
    if mode == "none":
        return ds
    for split, a in (("train", ds.train), ("valid", ds.valid), ("test", ds.test)):
        if a is not None and a.size:
            check_support(a, "bernoulli", f"{ds.name} {split} split")
    if mode == "dynamic":
        return ds
    noise = NoiseSource(seed)
    train = binarize(ds.train, noise)
    valid = None if ds.valid is None else binarize(ds.valid, noise)
    test = binarize(ds.test, noise)
    return replace(ds, train=train, valid=valid, test=test, kind="binary")


# ---------------------------------------------------------------------------------------------
# Built-in default
# ---------------------------------------------------------------------------------------------
def load_digits_dataset() -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 images, values 0–16 scaled to [0, 1]).

    Deterministic split: the first 1,500 images train, the last 297 test. Needs scikit-learn.
    """
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise DataError("the built-in digits data set needs scikit-learn, which is not installed; "
                        "install it with pip install 'refvae[train]' or give a data path") from exc
    bunch = load_digits()
    y = np.asarray(bunch.data, dtype=np.float64) / 16.0
    labels = np.asarray(bunch.target)
    return Dataset("digits", y[:-DIGITS_TEST], y[-DIGITS_TEST:], (8, 8), "greyscale",
                   source="digits", train_labels=labels[:-DIGITS_TEST],
                   test_labels=labels[-DIGITS_TEST:])

# ---------------------------------------------------------------------------------------------
# Download (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$REFVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/refvae``, else ``~/.cache/refvae``."""
    if os.environ.get("REFVAE_CACHE_DIR"):
        return Path(os.environ["REFVAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "refvae"


def _md5_matches(path: Path, accepted) -> str | None:
    """None when the file's md5, or its gunzipped content's md5, is accepted; else the file's
    md5."""
    accepted = {a.lower() for a in accepted}
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() in accepted:
        return None
    try:
        with gzip.open(path, "rb") as f:
            g = hashlib.md5()
            for block in iter(lambda: f.read(1 << 20), b""):
                g.update(block)
        if g.hexdigest() in accepted:
            return None
    except (OSError, EOFError, zlib.error):
        pass
    return h.hexdigest()


def _fetch(url: str, dest_dir: Path, timeout: float, progress: bool = False) -> Path:
    from ..util.files import file_mode  # noqa: PLC0415 - avoids a cycle at import
    from ..util.progress import Meter  # noqa: PLC0415

    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".download.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            size = int(resp.headers.get("Content-Length") or 0)
            meter = Meter(url.rsplit("/", 1)[-1], max(1, size >> 10), progress, unit="KiB",
                          log_interval=1 << 12)
            for block in iter(lambda: resp.read(1 << 16), b""):
                out.write(block)
                meter.advance(len(block) >> 10)
            meter.line(f"downloaded {url} ({meter.done} KiB)")
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def download(name: str, cache_dir=None, base_url: str | None = None, *, timeout: float = 30.0,
             checksums: dict | None = None, progress: bool = False) -> Path:
    """Download MNIST or Fashion-MNIST's four IDX files once into ``cache_dir/name``; return that
    folder.

    Files already present with a valid checksum are not fetched again. Each download goes to a
    temporary file, is checked against ``checksums`` (default :data:`CHECKSUMS`: md5 of the gzip
    file or of its content), and only then renamed into place. ``base_url`` replaces the default
    mirrors. When every mirror fails, a :class:`~refvae.errors.DataError` says which files to place
    where by hand. ``progress`` shows each file's download on stderr.
    """
    key = str(name).lower()
    if key not in CHECKSUMS:
        raise ConfigError(f"cannot download {name!r}; downloads exist for {', '.join(CHECKSUMS)}")
    table = CHECKSUMS[key] if checksums is None else checksums
    urls = (base_url,) if base_url else MIRRORS[key]
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = target / key
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the download cache {target}: {exc.strerror or exc}; pass a "
                        "writable cache_dir") from exc

    def valid(f: str) -> bool:
        return (target / f).is_file() and _md5_matches(target / f, table[f]) is None

    for fname in table:
        if valid(fname):
            continue
        problems = []
        for base in urls:
            url = base.rstrip("/") + "/" + fname
            try:
                tmp = _fetch(url, target, timeout, progress)
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    reason = f"HTTP {exc.code} {exc.reason}"
                else:
                    reason = getattr(exc, "reason", None) or exc
                problems.append(f"{url}: {reason}")
                continue
            bad = _md5_matches(tmp, table[fname])
            if bad is not None:
                tmp.unlink()
                problems.append(f"{url}: checksum mismatch (md5 {bad}, expected "
                                f"{' or '.join(table[fname])})")
                continue
            os.replace(tmp, target / fname)
            break
        else:
            todo = [f for f in table if not valid(f)]
            raise DataError(f"could not download {key} ({'; '.join(problems)}); download "
                            f"{', '.join(todo)} by hand from {urls[0]} and place them in {target}")
    return target


_download = download  # load_dataset's ``download`` flag shadows the function's name

# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def load_dataset(spec: str | os.PathLike | None = None, data_dir=None, *,
                 binarization: str = "none",
                 seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION,
                 download: bool = False,
                 cache_dir=None, base_url: str | None = None, progress: bool = False,
                 hints: str = "api", condition: str | None = None) -> Dataset:
    """Load a data set by name or path, then apply ``binarization`` (see
    :func:`apply_binarization`).

    ``spec``: None or ``"digits"`` — the built-in digits; ``"mnist"``, ``"fashion-mnist"``,
    ``"binarized-mnist"``, ``"frey-face"`` — looked for in ``data_dir`` (or ``$REFVAE_DATA_DIR``),
    in the folder of that name under it or in it directly; MNIST and Fashion-MNIST also in the
    download cache (``cache_dir``, default :func:`default_cache_dir`), fetched there first when
    ``download=True`` (with a progress display when ``progress``); anything else — a path to a
    data directory or file, whose format is detected.

    ``condition`` (``"labels"`` or ``"vectors"``) fills the data set's condition for a
    conditional VAE (:func:`refvae.data.condition.select`); None leaves it as loaded.

    ``hints="cli"`` words the advice of an error as command-line flags (``--download``,
    ``--data-dir``) instead of this function's arguments.
    """
    if spec is not None and not str(spec).strip():
        raise DataError("the data set name or path is empty (--data ''); give a name such as "
                        "digits or mnist, or a path to the data")
    cli = hints == "cli"
    if spec is None or str(spec).lower() == "digits":
        ds = load_digits_dataset()
    elif str(spec).lower() in NAMED:
        key = str(spec).lower()
        data_dir = data_dir if data_dir is not None else os.environ.get("REFVAE_DATA_DIR") or None
        found = find_named(key, data_dir) if data_dir is not None else None
        if found is None and key in CHECKSUMS:
            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            found = find_named(key, cache)
            if found is None and download:
                found = _download(key, cache, base_url, progress=progress)
            if found is None:
                where = (f"{Path(data_dir) / FORMATS[key].subdirs[0]} "
                         f"or {cache / key}") if data_dir else str(cache / key)
                raise DataError(f"{key} not found in {where}; pass "
                                f"{'--download' if cli else 'download=True'} to fetch it, or "
                                f"place {', '.join(IDX_FILES)} in {cache / key}")
        if found is None:
            sub = FORMATS[key].subdirs[0]
            where = Path(data_dir) / sub if data_dir else f"<data_dir>/{sub}"
            raise DataError(f"{key} not found; place {FORMATS[key].files} in {where} and pass "
                            f"{'--data-dir' if cli else 'data_dir'} (or set REFVAE_DATA_DIR)")
        ds = FORMATS[key].read(found, key, test_fraction)
    else:
        path = Path(spec).expanduser()
        if (data_dir is not None and not path.is_absolute()
            and not inputs.exists(path, "data", DataError)):
            path = Path(data_dir) / path
        if not inputs.exists(path, "data", DataError):
            raise DataError(f"unknown data set {str(spec)!r}: neither a built-in name "
                            f"({', '.join(NAMED)}) nor an existing path; check the spelling or the "
                            "path")
        ds = detect_path(path, test_fraction)
    for split, a in (("train", ds.train), ("test", ds.test), ("valid", ds.valid)):
        if a is not None:
            check_support(a, "gaussian", f"{ds.name} {split} split")
    ds = select(ds, condition, "--condition" if cli else "condition=")
    return apply_binarization(ds, binarization, seed)
