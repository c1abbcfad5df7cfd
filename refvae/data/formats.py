"""The data formats of the VAE literature, as one table: :data:`FORMATS` maps each name to where it
is looked for, how its folder or file is recognised, and how it is read.

* MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) in the IDX format,
  gzipped or raw.
* Larochelle & Murray's (2011) fixed binarization of MNIST (``binarized_mnist_{train,valid,test}
  .amat``; MATLAB files, or the original whitespace-separated text).
* Frey Face (Brendan Frey; used by Kingma & Welling 2014 with a Gaussian decoder).
* Any ``.npz`` holding ``train`` (and optionally ``test``, ``valid``) or a single ``y``.

Every file is opened through :func:`refvae.util.inputs.open_input`, and every size a header declares
is checked against the memory budget before it is read.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..util import budget, inputs
from . import condition
from .dataset import DEFAULT_TEST_FRACTION, Dataset, split_last, infer_kind
from ..errors import CheckpointError, DataError

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_exactly(f, n: int, path: Path) -> bytes:
    try:
        data = f.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{inputs.show(path)} is a corrupt or truncated gzip file ({exc}); "
                        "download "
                        "it again") from exc
    return data


def read_idx(path) -> np.ndarray:
    """Read an IDX file (LeCun's format: magic ``00 00 type ndim``, big-endian dims, data).

    Gzipped or raw; a gzipped file is inflated in a stream, and the size its header declares is
    checked against the memory budget (as float64, the copy training makes) before any of it is
    read. A bad magic number or a data size that does not match the header is a
    :class:`~refvae.errors.DataError`. Returns the array in its stored dtype.
    """
    path = Path(path)
    with inputs.open_input(path, "data file", DataError) as raw_file:
        f = gzip.GzipFile(fileobj=raw_file) if raw_file.read(2) == b"\x1f\x8b" else raw_file
        raw_file.seek(0)
        head = _read_exactly(f, 4, path)
        if (len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES or head[3]
            == 0):
            magic = head.hex() or "empty"
            raise DataError(f"{path} is not an IDX file (magic number 0x{magic}); give an "
                            "MNIST-style "
                            "IDX file, gzipped or raw")
        ndim = head[3]
        dim_bytes = _read_exactly(f, 4 * ndim, path)
        if len(dim_bytes) < 4 * ndim:
            raise DataError(f"{path} is truncated inside its IDX header; download it again")
        dims = struct.unpack(">" + "I" * ndim, dim_bytes)
        dtype = np.dtype(_IDX_TYPES[head[2]])
        expected = math.prod(dims) * dtype.itemsize
        budget.check_array(f"{inputs.show(path)} (IDX header {dims})", dims, 8,
                           hint="check the file")
        body = _read_exactly(f, expected + 1, path)
    if len(body) != expected:
        got = f"more than {expected}" if len(body) > expected else str(len(body))
        raise DataError(f"{path} holds {got} data bytes but its header {dims} needs "
                        f"{expected} (truncated or corrupt); download it again")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def load_idx_images(path) -> tuple[np.ndarray, tuple[int, int]]:
    """An IDX image file (magic 0x00000803: unsigned bytes, ``(n, rows, cols)``) as
    ``(n, rows·cols)`` float64 in [0, 1] (divided by 255), and ``(rows, cols)``."""
    path = Path(path)
    a = read_idx(path)
    if a.dtype != np.uint8 or a.ndim != 3:
        raise DataError(f"{path} is not an IDX image file (type {a.dtype}, {a.ndim} dimensions; "
                        "expected unsigned bytes, 3 dimensions, magic 0x00000803); check the file "
                        "name")
    n, rows, cols = a.shape
    return a.reshape(n, rows * cols).astype(np.float64) / 255.0, (rows, cols)


def _idx_image_file(directory: Path, prefix: str) -> Path | None:
    for fname in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte",
                  f"{prefix}-images.idx3-ubyte"):
        if _is_file(directory / fname):
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
    labels = {p: _idx_labels(directory, p, n) for p,
              n in (("train", len(train)), ("t10k", len(test)))}
    return Dataset(name, train, test, shape, "greyscale", source=str(directory),
                   train_labels=labels["train"], test_labels=labels["t10k"])


def _idx_labels(directory: Path, prefix: str, n: int) -> np.ndarray | None:
    """The class of each image from ``{prefix}-labels-idx1-ubyte[.gz]``; None when the file is
    absent or does not hold ``n`` labels (labels only colour figures)."""
    for fname in (f"{prefix}-labels-idx1-ubyte.gz", f"{prefix}-labels-idx1-ubyte"):
        if _is_file(directory / fname):
            labels = read_idx(directory / fname)
            return labels.astype(np.int64) if labels.shape == (n,) else None
    return None


# ---------------------------------------------------------------------------------------------
# Binarized MNIST, Frey Face, npz
# ---------------------------------------------------------------------------------------------
def _loadmat(path: Path) -> dict:
    """A MATLAB file's variables, each variable's declared size checked against the budget first."""
    import scipy.io  # noqa: PLC0415 - host-side file reading

    with inputs.open_input(path, "data file", DataError) as f:
        try:
            for name, shape, _ in scipy.io.whosmat(f):
                budget.check_array(f"{inputs.show(path)} variable {name!r}", shape, 16,
                                   hint="check the file")
            f.seek(0)
            return scipy.io.loadmat(f)
        except (DataError, budget.BudgetError):
            raise
        except Exception as exc:  # SciPy raises ValueError, TypeError, MatReadError... on bad files
            raise DataError(f"{path} is not a readable MATLAB file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); check the "
                            "file") from exc


def _is_file(path: Path) -> bool:
    return inputs.is_file(path, "data file", DataError)


def _is_dir(path: Path) -> bool:
    return inputs.is_dir(path, "data folder", DataError)


def _mat_variable(path: Path, name: str, expected: str) -> np.ndarray:
    """Variable ``name`` of a MATLAB file, or a DataError listing what the file holds instead."""
    m = _loadmat(path)
    if name not in m:
        keys = sorted(k for k in m if not k.startswith("__"))
        raise DataError(f"{path} has no variable {name!r} (found {', '.join(keys) or 'none'}); "
                        "give "
                        f"{expected}")
    a = np.asarray(m[name])
    if a.dtype.kind not in "biuf":
        raise DataError(f"{path}: variable {name!r} has dtype {a.dtype}; give real numbers "
                        "(complex, text and cell arrays are refused)")
    return a


def read_amat(path) -> np.ndarray:
    """One split of Larochelle's binarized MNIST: a MATLAB file (``loadmat(path)['X']``) or the
    original whitespace-separated text ``.amat`` (one image per line)."""
    path = Path(path)
    with inputs.open_input(path, "data file", DataError) as f:
        head = f.read(4096)
    # MATLAB 5 files start with a text header "MATLAB 5.0 MAT-file"; version 4 files are binary.
    if head and not head.startswith(b"MATLAB") and b"\x00" not in head:
        # Parsed, every number of at least two bytes ("0 ") becomes eight: the array and the
        # parser's chunk take up to 5× the file, which is what the budget is asked for.
        size = inputs.check_regular(path, "data file", DataError).st_size
        budget.check(f"{inputs.show(path)} parsed as text (5 × its {size} bytes)", 5 * size,
                     "give a smaller file or the MATLAB (.mat) version")
        try:
            with inputs.open_input(path, "data file", DataError) as f:
                X = np.loadtxt(f, dtype=np.float64, ndmin=2)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{path} is a malformed text .amat file ({str(exc).splitlines()[0]}); "
                            "download it again") from exc
    else:
        X = _mat_variable(path, "X", "the binarized MNIST file")
    if X.ndim != 2 or X.size == 0:
        raise DataError(f"{path} holds an array of shape {X.shape}; expected (n, 784), one image "
                        "per row")
    return np.asarray(X, dtype=np.float64)


def load_binarized_mnist_dir(directory) -> Dataset:
    """Larochelle & Murray's binarized MNIST from ``binarized_mnist_{train,valid,test}.amat``.

    The test file is sorted by class (its first 1,000 rows are mostly zeros): evaluate on all of it
    or on a random subset, never on ``test[:n]``."""
    directory = Path(directory)
    paths = {s: directory / f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")}
    missing = [p.name for s, p in paths.items() if s != "valid" and not _is_file(p)]
    if missing:
        raise DataError(f"{directory} lacks {' and '.join(missing)}; place the binarized MNIST "
                        "files "
                        "there")
    train, test = read_amat(paths["train"]), read_amat(paths["test"])
    valid = read_amat(paths["valid"]) if _is_file(paths["valid"]) else None
    side = int(round(math.sqrt(train.shape[1])))
    shape = (side, side) if side * side == train.shape[1] else None
    return Dataset("binarized-mnist", train, test, shape, infer_kind(train, valid, test),
                   valid=valid, source=str(directory))


FREY_SHAPE = (28, 20)


def load_frey_face(path, test_fraction: float = DEFAULT_TEST_FRACTION) -> Dataset:
    """Frey Face: ``loadmat(path)['ff']`` of shape (560, 1965), one 28×20 row-major image per
    column, values 0–255 scaled to [0, 1]. Deterministic split: the last ``test_fraction`` of the
    sequence (a contiguous block of frames, so test faces are not near-duplicates of training
    frames)."""
    path = Path(path)
    ff = _mat_variable(path, "ff", "frey_rawface.mat")
    if ff.ndim != 2 or ff.shape[0] != math.prod(FREY_SHAPE) or ff.shape[1] < 2:
        raise DataError(f"{path}: 'ff' has shape {ff.shape}, expected (560, n) with one 28×20 "
                        "image "
                        "per column; give frey_rawface.mat")
    y = ff.T.astype(np.float64) / 255.0
    train, test = split_last(y, test_fraction, str(path))
    return Dataset("frey-face", train, test, FREY_SHAPE, "greyscale", source=str(path))


def _rows_and_shape(a: np.ndarray, what: str):
    if a.ndim == 3:
        return a.reshape(a.shape[0], a.shape[1] * a.shape[2]), (a.shape[1], a.shape[2])
    if a.ndim != 2:
        raise DataError(f"{what} has shape {a.shape}; give one datum per row, shape (n, D) or "
                        "(n, rows, cols)")
    return a, None


_NPZ_NAMES = ("train", "test", "valid", "image_shape", "y") + condition.NPZ_KEYS


def load_npz_dataset(path, test_fraction: float = DEFAULT_TEST_FRACTION) -> Dataset:
    """An ``.npz`` holding ``train`` (optionally ``test``, ``valid``, ``image_shape``) or a single
    ``y``; or an ``.npy`` holding one array. Without ``test`` the last ``test_fraction`` of the rows
    is the test split. Arrays may be ``(n, D)`` or ``(n, rows, cols)`` images. Labels and
    condition vectors: :mod:`refvae.data.condition`."""
    from ..util.files import load_npz_checked  # noqa: PLC0415 - host-side, avoids a cycle at import

    path = Path(path)
    if path.suffix == ".npy":
        from ..util.files import load_npy_checked  # noqa: PLC0415

        arrays = {"y": load_npy_checked(path, DataError)}
    else:
        try:
            arrays, _ = load_npz_checked(path, require_meta=False, names=_NPZ_NAMES.__contains__,
                                         expected="'train' (and optionally 'test', 'valid', "
                                                  "'image_shape', labels, condition) or a "
                                                  "single 'y'")
        except CheckpointError as exc:
            raise DataError(str(exc)) from exc
    extra_keys = {k: arrays[k] for k in condition.NPZ_KEYS if k in arrays}
    arrays = {k: v for k, v in arrays.items() if k not in extra_keys}
    names = set(arrays) - {"image_shape"}
    if "train" in names and names <= {"train", "test", "valid"}:
        train, test, valid = arrays["train"], arrays.get("test"), arrays.get("valid")
    elif names == {"y"}:
        train, test, valid = arrays["y"], None, None
    else:
        raise DataError(f"{path} holds {', '.join(sorted(arrays)) or 'no arrays'}; expected "
                        "'train' "
                        "(and optionally 'test', 'valid', 'image_shape') or a single 'y'")
    train, shape = _rows_and_shape(train, f"{path}: train")
    if test is not None:
        test, _ = _rows_and_shape(test, f"{path}: test")
    if valid is not None:
        valid, _ = _rows_and_shape(valid, f"{path}: valid")
    if "image_shape" in arrays:
        shape = np.ravel(arrays["image_shape"])  # validated by Dataset
    for what, a in (("train", train), ("test", test), ("valid", valid)):
        if a is not None and a.dtype.kind not in "biuf":
            raise DataError(f"{path}: {what} has dtype {a.dtype}; give numeric data "
                            "(real numbers: complex values are refused)")
    extra = condition.from_npz(extra_keys, path, train, test)
    if test is None:
        train, test = split_last(train, test_fraction, f"{path}: train")
        extra = condition.split(extra, len(train))
    kind = infer_kind(*(np.asarray(a) for a in (train, valid, test) if a is not None)) \
        if all(np.isfinite(a).all() for a in (train, valid, test) if a is not None) else "real"
    return Dataset(path.stem, train, test, shape, kind, valid=valid, source=str(path), **extra)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    """One data format: where a named data set is looked for, how its folder or one of its files is
    recognised, and how it is read."""

    subdirs: tuple[str, ...]                  # folders under a data directory searched (then it)
    files: str                                # what a user places there (for messages)
    in_folder: Callable[[Path], Path | None]  # a folder → the path ``read`` takes, or None
    of_file: Callable[[Path], Path | None]  # one of its files → the path ``read`` takes, or None
    read: Callable[[Path, str | None, float], Dataset]  # (path, name or None, test_fraction)


def _idx_in(d: Path) -> Path | None:
    return d if _idx_image_file(d, "train") or _idx_image_file(d, "t10k") else None


def _read_idx_set(path: Path, key: str | None, test_fraction: float) -> Dataset:
    return load_idx_dir(path,
                        key or ("fashion-mnist" if "fashion" in str(path).lower() else "mnist"))


def _amat_in(d: Path) -> Path | None:
    return d if any(_is_file(d / f"binarized_mnist_{s}.amat") for s in ("train", "test")) else None


def _frey_in(d: Path) -> Path | None:
    return d / "frey_rawface.mat" if _is_file(d / "frey_rawface.mat") else None


def _npz_in(d: Path) -> Path | None:
    found = sorted(d.glob("*.npz"))
    return found[0] if len(found) == 1 else None


_IDX = dict(files=", ".join(IDX_FILES), in_folder=_idx_in, read=_read_idx_set,
            of_file=lambda p: p.parent if "idx" in p.name and "ubyte" in p.name else None)
FORMATS = {
    "mnist": Format(("mnist", "MNIST", "MNIST/raw"), **_IDX),
    "fashion-mnist": Format(("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw"),
                            **_IDX),
    "binarized-mnist": Format(
        ("binarized_mnist", "binarized-mnist"),
        "binarized_mnist_train.amat, binarized_mnist_valid.amat, binarized_mnist_test.amat",
        _amat_in,
        lambda p: p.parent if p.name.startswith("binarized_mnist_") else None,
        lambda p, key, tf: load_binarized_mnist_dir(p)),
    "frey-face": Format(("frey_face", "frey-face"), "frey_rawface.mat", _frey_in,
                        lambda p: p if p.suffix == ".mat" else None,
                        lambda p, key, tf: load_frey_face(p, tf)),
    "npz": Format((), "one .npz", _npz_in, lambda p: p if p.suffix in (".npz", ".npy") else None,
                  lambda p, key, tf: load_npz_dataset(p, tf)),
}


def find_named(key: str, data_dir) -> Path | None:
    base, fmt = Path(data_dir), FORMATS[key]
    for d in [base / sub for sub in fmt.subdirs] + [base]:
        if _is_dir(d) and (found := fmt.in_folder(d)) is not None:
            return found
    return None


def detect_path(path: Path, test_fraction: float) -> Dataset:
    folder = _is_dir(path)
    if not folder:
        inputs.check_regular(path, "data file", DataError)
    for key in ("mnist", "binarized-mnist", "frey-face", "npz"):
        fmt = FORMATS[key]
        found = fmt.in_folder(path) if folder else fmt.of_file(path)
        if found is not None:
            return fmt.read(found, None, test_fraction)
    if folder:
        n = len(list(path.glob("*.npz")))
        raise DataError(f"no known data set in {path}: expected MNIST IDX files "
                        "(train-images-idx3-ubyte.gz …), binarized_mnist_*.amat, "
                        "frey_rawface.mat "
                        "or "
                        f"exactly one .npz (found {n}); give the data file's path")
    raise DataError(f"unrecognised data file {path}; give an IDX directory, a binarized_mnist "
                    ".amat, frey_rawface.mat, or an .npz with 'train' (and 'test') or 'y'")
