"""Data sets: the built-in default, the standard formats of the VAE literature, binarization.

Everything here is host-side (NumPy, SciPy, the standard library); arrays are float64 with one
datum per row, and the training code moves them to the device.

* Built-in default, no download and no path: scikit-learn's bundled 8×8 digits (Alpaydin & Kaynak
  1998, UCI "Optical Recognition of Handwritten Digits"), scaled to [0, 1].
* MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) in the IDX format,
  gzipped or raw, from a directory, or downloaded once into a cache with checksum verification.
* Larochelle & Murray's (2011) fixed binarization of MNIST (``binarized_mnist_{train,valid,test}
  .amat``; MATLAB files, or the original whitespace-separated text).
* Frey Face (Brendan Frey; used by Kingma & Welling 2014 with a Gaussian decoder).
* Any ``.npz`` holding ``train`` (and optionally ``test``, ``valid``) or a single ``y``.

Binarization for a Bernoulli emission: ``"none"`` keeps greyscale values in [0, 1] as targets (as
pytorch/examples' VAE does); ``"static"`` draws one fixed Bernoulli sample with a seed;
``"dynamic"`` redraws each epoch (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted
Autoencoders", ICLR, section 5) through :func:`binarize`.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .backend import NoiseSource, array_module
from .errors import CheckpointError, ConfigError, DataError, ShapeError

KINDS = ("greyscale", "binary", "real")
BINARIZATIONS = ("none", "static", "dynamic")
EMISSIONS = ("bernoulli", "gaussian", "gaussian_diag")
NAMED = ("digits", "mnist", "fashion-mnist", "binarized-mnist", "frey-face")

DIGITS_TEST = 297          # the last 297 of sklearn's 1,797 digits are the test split
DEFAULT_TEST_FRACTION = 0.1

# Sub-folder names under a data directory where each named data set is looked for (then the
# directory itself). ``raw`` covers torchvision's ``MNIST/raw`` layout.
_SUBDIRS = {
    "mnist": ("mnist", "MNIST", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw"),
    "binarized-mnist": ("binarized_mnist", "binarized-mnist"),
    "frey-face": ("frey_face", "frey-face"),
}

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# Accepted MD5 digests per file; a digest matches either the file or its gunzipped content. MNIST:
# the official gzip files and their uncompressed contents (recompressed copies of the training
# images circulate, whose gzip md5 differs but whose content is the official 6bbc9a…).
# Fashion-MNIST: the official gzip files (zalandoresearch/fashion-mnist).
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",),
        "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",),
        "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",),
        "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",),
    },
}


# ---------------------------------------------------------------------------------------------
# The data set record
# ---------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """A data set as host float64 arrays of shape ``(n, D)``, one datum per row.

    ``image_shape`` is ``(rows, cols)`` for images stored row-major (else None); ``kind`` is
    ``"greyscale"`` (values in [0, 1]), ``"binary"`` (0/1) or ``"real"``; ``valid`` is the
    validation split where the data set defines one (binarized MNIST), else None. ``source`` is a
    spec that :func:`load_dataset` accepts to load the same data again (``"digits"`` or a path).
    ``train_labels``/``test_labels`` are the class of each row where the format has them (digits,
    MNIST, Fashion-MNIST), else None.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    image_shape: tuple[int, int] | None = None
    kind: str = "real"
    valid: np.ndarray | None = None
    source: str = ""
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"unknown data kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        self.train = _as_rows(self.train, f"{self.name} train split")
        self.test = _as_rows(self.test, f"{self.name} test split")
        if self.valid is not None:
            self.valid = _as_rows(self.valid, f"{self.name} valid split")
        for split, a in (("test", self.test), ("valid", self.valid)):
            if a is not None and a.shape[1] != self.train.shape[1]:
                raise ShapeError(f"{self.name}: {split} split has {a.shape[1]} values per datum but "
                                 f"train has {self.train.shape[1]}; give splits of the same width")
        if self.image_shape is not None:
            self.image_shape = tuple(int(s) for s in self.image_shape)
            if len(self.image_shape) != 2 or math.prod(self.image_shape) != self.dim:
                raise ShapeError(f"{self.name}: image_shape {self.image_shape} does not hold "
                                 f"{self.dim} values; give (rows, cols) with rows·cols = {self.dim}")

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    @property
    def n_train(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test.shape[0])

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        v = "" if self.valid is None else f", valid={self.valid.shape[0]}"
        return (f"Dataset({self.name!r}, train={self.n_train}, test={self.n_test}{v}, D={self.dim}, "
                f"image_shape={self.image_shape}, kind={self.kind!r})")


def _as_rows(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ShapeError(f"{what} has shape {a.shape}; give a 2-D array with one datum per row")
    if a.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {a.dtype}; give numeric data")
    return np.ascontiguousarray(a, dtype=np.float64)


def infer_kind(*arrays) -> str:
    """``"binary"`` if every value is 0 or 1, ``"greyscale"`` if all lie in [0, 1], else ``"real"``."""
    arrays = [a for a in arrays if a is not None and a.size]
    if all(np.all((a == 0) | (a == 1)) for a in arrays):
        return "binary"
    if all(np.all((a >= 0) & (a <= 1)) for a in arrays):
        return "greyscale"
    return "real"


def _split_last(y: np.ndarray, test_fraction: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split: the last ``round(test_fraction·n)`` rows (at least one) are the test set."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must lie in (0, 1), got {test_fraction}; e.g. 0.1")
    n = y.shape[0]
    if n < 2:
        raise DataError(f"{what} has {n} rows, too few to split into train and test; give more data")
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    return y[: n - n_test], y[n - n_test:]


# ---------------------------------------------------------------------------------------------
# Support checks and binarization
# ---------------------------------------------------------------------------------------------
def _first_index(mask, shape) -> tuple[int, int]:
    xp = array_module(mask)
    flat = int(xp.argmax(mask.reshape(-1)))
    return divmod(flat, shape[1])


def check_support(y, emission: str, name: str = "data") -> None:
    """Check that ``y`` (``(n, D)``, host or device) is valid data for ``emission``.

    Every emission needs a non-empty array of finite values; ``bernoulli`` also needs every value
    in [0, 1]. Raises :class:`~refvae.errors.DataError` naming the count and the first bad entry.
    """
    if emission not in EMISSIONS:
        raise ConfigError(f"unknown emission {emission!r}; choose one of {', '.join(EMISSIONS)}")
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    shape = tuple(y.shape)
    if len(shape) != 2:
        raise ShapeError(f"{name} has shape {shape}; give a 2-D array with one datum per row")
    if 0 in shape:
        raise DataError(f"{name} is empty (shape {shape}); check the file or the split")
    xp = array_module(y)
    bad = ~xp.isfinite(y)
    n_bad = int(bad.sum())
    if n_bad:
        r, c = _first_index(bad, shape)
        raise DataError(f"{name} has {n_bad} non-finite values (NaN or inf), first at row {r}, "
                        f"column {c}; remove or impute them")
    if emission == "bernoulli":
        out = (y < 0) | (y > 1)
        n_out = int(out.sum())
        if n_out:
            r, c = _first_index(out, shape)
            raise DataError(f"bernoulli emission needs {name} in [0, 1], but {n_out} values lie "
                            f"outside, first at row {r}, column {c} (value {float(y[r, c]):g}); "
                            "rescale to [0, 1] (8-bit images: divide by 255) or use a gaussian emission")


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
        raise ConfigError(f"unknown binarization {mode!r}; choose one of {', '.join(BINARIZATIONS)}")
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
                   source="digits", train_labels=labels[:-DIGITS_TEST], test_labels=labels[-DIGITS_TEST:])


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the path") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({exc}); download it "
                            "again") from exc
    return raw


def read_idx(path) -> np.ndarray:
    """Read an IDX file (LeCun's format: magic ``00 00 type ndim``, big-endian dims, data).

    Gzipped or raw. A bad magic number or a data size that does not match the header is a
    :class:`~refvae.errors.DataError`. Returns the array in its stored dtype.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        magic = raw[:4].hex() if len(raw) >= 4 else raw.hex() or "empty"
        raise DataError(f"{path} is not an IDX file (magic number 0x{magic}); give an MNIST-style "
                        "IDX file, gzipped or raw")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its IDX header; download it again")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path} holds {len(raw) - header} data bytes but its header {dims} needs "
                        f"{expected} (truncated or corrupt); download it again")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def load_idx_images(path) -> tuple[np.ndarray, tuple[int, int]]:
    """An IDX image file (magic 0x00000803: unsigned bytes, ``(n, rows, cols)``) as ``(n, rows·cols)``
    float64 in [0, 1] (divided by 255), and ``(rows, cols)``."""
    path = Path(path)
    a = read_idx(path)
    if a.dtype != np.uint8 or a.ndim != 3:
        raise DataError(f"{path} is not an IDX image file (type {a.dtype}, {a.ndim} dimensions; "
                        "expected unsigned bytes, 3 dimensions, magic 0x00000803); check the file name")
    n, rows, cols = a.shape
    return a.reshape(n, rows * cols).astype(np.float64) / 255.0, (rows, cols)


def _idx_image_file(directory: Path, prefix: str) -> Path | None:
    for fname in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte",
                  f"{prefix}-images.idx3-ubyte"):
        if (directory / fname).is_file():
            return directory / fname
    return None


def load_idx_dir(directory, name: str = "mnist") -> Dataset:
    """MNIST or Fashion-MNIST from a directory holding the standard IDX image files."""
    directory = Path(directory)
    files = {p: _idx_image_file(directory, p) for p in ("train", "t10k")}
    missing = [f"{p}-images-idx3-ubyte.gz" for p, f in files.items() if f is None]
    if missing:
        raise DataError(f"{directory} lacks {' and '.join(missing)} (gzipped or raw); place the "
                        f"{name} IDX files there")
    train, shape = load_idx_images(files["train"])
    test, test_shape = load_idx_images(files["t10k"])
    if test_shape != shape:
        raise DataError(f"{files['t10k']} holds {test_shape} images but {files['train']} holds "
                        f"{shape}; use files of the same data set")
    labels = {p: _idx_labels(directory, p, n) for p, n in (("train", len(train)), ("t10k", len(test)))}
    return Dataset(name, train, test, shape, "greyscale", source=str(directory),
                   train_labels=labels["train"], test_labels=labels["t10k"])


def _idx_labels(directory: Path, prefix: str, n: int) -> np.ndarray | None:
    """The class of each image from ``{prefix}-labels-idx1-ubyte[.gz]``; None when the file is
    absent or does not hold ``n`` labels (labels only colour figures)."""
    for fname in (f"{prefix}-labels-idx1-ubyte.gz", f"{prefix}-labels-idx1-ubyte"):
        if (directory / fname).is_file():
            labels = read_idx(directory / fname)
            return labels.astype(np.int64) if labels.shape == (n,) else None
    return None


# ---------------------------------------------------------------------------------------------
# Binarized MNIST, Frey Face, npz
# ---------------------------------------------------------------------------------------------
def _loadmat(path: Path) -> dict:
    import scipy.io  # noqa: PLC0415 - host-side file reading

    try:
        return scipy.io.loadmat(path)
    except Exception as exc:  # SciPy raises ValueError, TypeError, MatReadError... on bad files
        raise DataError(f"{path} is not a readable MATLAB file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); check the file") from exc


_TEXT_BYTES = frozenset(b"0123456789.-+eE \t\r\n")


def _mat_variable(path: Path, name: str, expected: str) -> np.ndarray:
    """Variable ``name`` of a MATLAB file, or a DataError listing what the file holds instead."""
    m = _loadmat(path)
    if name not in m:
        keys = sorted(k for k in m if not k.startswith("__"))
        raise DataError(f"{path} has no variable {name!r} (found {', '.join(keys) or 'none'}); give "
                        f"{expected}")
    return np.asarray(m[name])


def read_amat(path) -> np.ndarray:
    """One split of Larochelle's binarized MNIST: a MATLAB file (``loadmat(path)['X']``) or the
    original whitespace-separated text ``.amat`` (one image per line)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head and all(b in _TEXT_BYTES for b in head):
        try:
            X = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise DataError(f"{path} is a malformed text .amat file ({exc}); download it again") from exc
    else:
        X = _mat_variable(path, "X", "the binarized MNIST file")
    if X.ndim != 2 or X.size == 0:
        raise DataError(f"{path} holds an array of shape {X.shape}; expected (n, 784), one image per row")
    return X.astype(np.float64)


def load_binarized_mnist_dir(directory) -> Dataset:
    """Larochelle & Murray's binarized MNIST from ``binarized_mnist_{train,valid,test}.amat``.

    The test file is sorted by class (its first 1,000 rows are mostly zeros): evaluate on all of it
    or on a random subset, never on ``test[:n]``."""
    directory = Path(directory)
    paths = {s: directory / f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")}
    missing = [p.name for s, p in paths.items() if s != "valid" and not p.is_file()]
    if missing:
        raise DataError(f"{directory} lacks {' and '.join(missing)}; place the binarized MNIST files "
                        "there")
    train, test = read_amat(paths["train"]), read_amat(paths["test"])
    valid = read_amat(paths["valid"]) if paths["valid"].is_file() else None
    side = int(round(math.sqrt(train.shape[1])))
    shape = (side, side) if side * side == train.shape[1] else None
    return Dataset("binarized-mnist", train, test, shape, infer_kind(train, valid, test),
                   valid=valid, source=str(directory))


FREY_SHAPE = (28, 20)


def load_frey_face(path, test_fraction: float = DEFAULT_TEST_FRACTION) -> Dataset:
    """Frey Face: ``loadmat(path)['ff']`` of shape (560, 1965), one 28×20 row-major image per column,
    values 0–255 scaled to [0, 1]. Deterministic split: the last ``test_fraction`` of the sequence
    (a contiguous block of frames, so test faces are not near-duplicates of training frames)."""
    path = Path(path)
    ff = _mat_variable(path, "ff", "frey_rawface.mat")
    if ff.ndim != 2 or ff.shape[0] != math.prod(FREY_SHAPE) or ff.shape[1] < 2:
        raise DataError(f"{path}: 'ff' has shape {ff.shape}, expected (560, n) with one 28×20 image "
                        "per column; give frey_rawface.mat")
    y = ff.T.astype(np.float64) / 255.0
    train, test = _split_last(y, test_fraction, str(path))
    return Dataset("frey-face", train, test, FREY_SHAPE, "greyscale", source=str(path))


def _rows_and_shape(a: np.ndarray, what: str):
    if a.ndim == 3:
        return a.reshape(a.shape[0], -1), (a.shape[1], a.shape[2])
    if a.ndim != 2:
        raise DataError(f"{what} has shape {a.shape}; give one datum per row, shape (n, D) or "
                        "(n, rows, cols)")
    return a, None


def load_npz_dataset(path, test_fraction: float = DEFAULT_TEST_FRACTION) -> Dataset:
    """An ``.npz`` holding ``train`` (optionally ``test``, ``valid``, ``image_shape``) or a single
    ``y``; or an ``.npy`` holding one array. Without ``test`` the last ``test_fraction`` of the rows
    is the test split. Arrays may be ``(n, D)`` or ``(n, rows, cols)`` images."""
    from .io import load_npz_checked  # noqa: PLC0415 - host-side, avoids a cycle at import

    path = Path(path)
    if path.suffix == ".npy":
        try:
            arrays = {"y": np.load(path, allow_pickle=False)}
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path} is not a readable .npy array of numbers ({exc}); save it with "
                            "numpy.save") from exc
    else:
        try:
            arrays, _ = load_npz_checked(path, require_meta=False)
        except CheckpointError as exc:
            raise DataError(str(exc)) from exc
    names = set(arrays) - {"image_shape"}
    if "train" in names and names <= {"train", "test", "valid"}:
        train, test, valid = arrays["train"], arrays.get("test"), arrays.get("valid")
    elif names == {"y"}:
        train, test, valid = arrays["y"], None, None
    else:
        raise DataError(f"{path} holds {', '.join(sorted(arrays)) or 'no arrays'}; expected 'train' "
                        "(and optionally 'test', 'valid', 'image_shape') or a single 'y'")
    train, shape = _rows_and_shape(train, f"{path}: train")
    if test is not None:
        test, _ = _rows_and_shape(test, f"{path}: test")
    if valid is not None:
        valid, _ = _rows_and_shape(valid, f"{path}: valid")
    if "image_shape" in arrays:
        shape = tuple(int(s) for s in np.ravel(arrays["image_shape"]))
    for what, a in (("train", train), ("test", test), ("valid", valid)):
        if a is not None and a.dtype.kind not in "biuf":
            raise DataError(f"{path}: {what} has dtype {a.dtype}; give numeric data")
    if test is None:
        train, test = _split_last(train, test_fraction, f"{path}: train")
    kind = infer_kind(*(np.asarray(a) for a in (train, valid, test) if a is not None)) \
        if all(np.isfinite(a).all() for a in (train, valid, test) if a is not None) else "real"
    return Dataset(path.stem, train, test, shape, kind, valid=valid, source=str(path))


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
    """None when the file's md5, or its gunzipped content's md5, is accepted; else the file's md5."""
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
    from .progress import Meter  # noqa: PLC0415

    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".download.", suffix=".tmp")
    try:
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
    """Download MNIST or Fashion-MNIST's four IDX files once into ``cache_dir/name``; return that folder.

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
def _candidate_dirs(key: str, data_dir) -> list[Path]:
    base = Path(data_dir)
    return [base / sub for sub in _SUBDIRS[key]] + [base]


def _find_named(key: str, data_dir) -> Path | None:
    for d in _candidate_dirs(key, data_dir):
        if not d.is_dir():
            continue
        if key in ("mnist", "fashion-mnist"):
            if _idx_image_file(d, "train") and _idx_image_file(d, "t10k"):
                return d
        elif key == "binarized-mnist":
            if (d / "binarized_mnist_train.amat").is_file():
                return d
        elif key == "frey-face":
            if (d / "frey_rawface.mat").is_file():
                return d / "frey_rawface.mat"
    return None


def _detect_path(path: Path, test_fraction: float) -> Dataset:
    if path.is_dir():
        if _idx_image_file(path, "train") or _idx_image_file(path, "t10k"):
            name = "fashion-mnist" if "fashion" in str(path).lower() else "mnist"
            return load_idx_dir(path, name)
        if (path / "binarized_mnist_train.amat").is_file() or (path / "binarized_mnist_test.amat").is_file():
            return load_binarized_mnist_dir(path)
        if (path / "frey_rawface.mat").is_file():
            return load_frey_face(path / "frey_rawface.mat", test_fraction)
        npz = sorted(path.glob("*.npz"))
        if len(npz) == 1:
            return load_npz_dataset(npz[0], test_fraction)
        raise DataError(f"no known data set in {path}: expected MNIST IDX files "
                        "(train-images-idx3-ubyte.gz …), binarized_mnist_*.amat, frey_rawface.mat or "
                        f"exactly one .npz (found {len(npz)}); give the data file's path")
    name = path.name
    if "idx" in name and "ubyte" in name:
        return _detect_path(path.parent, test_fraction)
    if name.startswith("binarized_mnist_"):
        return load_binarized_mnist_dir(path.parent)
    if path.suffix in (".npz", ".npy"):
        return load_npz_dataset(path, test_fraction)
    if path.suffix == ".mat":
        return load_frey_face(path, test_fraction)
    raise DataError(f"unrecognised data file {path}; give an IDX directory, a binarized_mnist "
                    ".amat, frey_rawface.mat, or an .npz with 'train' (and 'test') or 'y'")


def load_dataset(spec: str | os.PathLike | None = None, data_dir=None, *, binarization: str = "none",
                 seed: int = 0, test_fraction: float = DEFAULT_TEST_FRACTION, download: bool = False,
                 cache_dir=None, base_url: str | None = None, progress: bool = False) -> Dataset:
    """Load a data set by name or path, then apply ``binarization`` (see :func:`apply_binarization`).

    ``spec``: None or ``"digits"`` — the built-in digits; ``"mnist"``, ``"fashion-mnist"``,
    ``"binarized-mnist"``, ``"frey-face"`` — looked for in ``data_dir`` (or ``$REFVAE_DATA_DIR``),
    in the folder of that name under it or in it directly; MNIST and Fashion-MNIST also in the
    download cache (``cache_dir``, default :func:`default_cache_dir`), fetched there first when
    ``download=True`` (with a progress display when ``progress``); anything else — a path to a
    data directory or file, whose format is detected.
    """
    if spec is None or str(spec).lower() == "digits":
        ds = load_digits_dataset()
    elif str(spec).lower() in NAMED:
        key = str(spec).lower()
        data_dir = data_dir if data_dir is not None else os.environ.get("REFVAE_DATA_DIR") or None
        found = _find_named(key, data_dir) if data_dir is not None else None
        if found is None and key in CHECKSUMS:
            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            found = _find_named(key, cache)
            if found is None and download:
                found = _download(key, cache, base_url, progress=progress)
            if found is None:
                where = f"{Path(data_dir) / _SUBDIRS[key][0]} or {cache / key}" if data_dir else str(cache / key)
                raise DataError(f"{key} not found in {where}; pass download=True (CLI: --download) "
                                f"to fetch it, or place {', '.join(IDX_FILES)} in {cache / key}")
        if found is None:
            what = ("binarized_mnist_train.amat, binarized_mnist_valid.amat, binarized_mnist_test.amat"
                    if key == "binarized-mnist" else "frey_rawface.mat")
            where = Path(data_dir) / _SUBDIRS[key][0] if data_dir else f"<data_dir>/{_SUBDIRS[key][0]}"
            raise DataError(f"{key} not found; place {what} in {where} and pass data_dir "
                            "(or set REFVAE_DATA_DIR)")
        if key in ("mnist", "fashion-mnist"):
            ds = load_idx_dir(found, key)
        elif key == "binarized-mnist":
            ds = load_binarized_mnist_dir(found)
        else:
            ds = load_frey_face(found, test_fraction)
    else:
        path = Path(spec).expanduser()
        if data_dir is not None and not path.is_absolute() and not path.exists():
            path = Path(data_dir) / path
        if not path.exists():
            raise DataError(f"unknown data set {str(spec)!r}: neither a built-in name "
                            f"({', '.join(NAMED)}) nor an existing path; check the spelling or the path")
        ds = _detect_path(path, test_fraction)
    for split, a in (("train", ds.train), ("test", ds.test), ("valid", ds.valid)):
        if a is not None:
            check_support(a, "gaussian", f"{ds.name} {split} split")
    return apply_binarization(ds, binarization, seed)
