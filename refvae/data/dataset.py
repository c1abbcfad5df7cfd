"""The data set record: host float64 arrays, one datum per row, with their kind and split."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError, ShapeError
from .condition import check_fields

KINDS = ("greyscale", "binary", "real")
DEFAULT_TEST_FRACTION = 0.1


@dataclass
class Dataset:
    """A data set as host float64 arrays of shape ``(n, D)``, one datum per row.

    ``image_shape`` is ``(rows, cols)`` for images stored row-major (else None); ``kind`` is
    ``"greyscale"`` (values in [0, 1]), ``"binary"`` (0/1) or ``"real"``; ``valid`` is the
    validation split where the data set defines one (binarized MNIST), else None. ``source`` is a
    spec that :func:`load_dataset` accepts to load the same data again (``"digits"`` or a path).
    ``train_labels``/``test_labels`` are the class of each row where the format has them (digits,
    MNIST, Fashion-MNIST, an ``.npz``'s ``labels``), else None. ``train_condition``/
    ``test_condition`` are a conditional VAE's condition, one vector per row, ``(n, C)``, and
    ``condition_source`` what they hold (``"labels"`` one-hot, or ``"vectors"``):
    :mod:`refvae.data.condition`.
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
    train_condition: np.ndarray | None = None
    test_condition: np.ndarray | None = None
    condition_source: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"unknown data kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        self.train = as_rows(self.train, f"{self.name} train split")
        self.test = as_rows(self.test, f"{self.name} test split")
        if self.valid is not None:
            self.valid = as_rows(self.valid, f"{self.name} valid split")
        for split, a in (("test", self.test), ("valid", self.valid)):
            if a is not None and a.shape[1] != self.train.shape[1]:
                raise ShapeError(f"{self.name}: {split} split has {a.shape[1]} values per datum "
                                 "but "
                                 f"train has {self.train.shape[1]}; give splits of the same width")
        if self.image_shape is not None:
            shape = np.asarray(self.image_shape).ravel()
            if shape.dtype.kind not in "biuf" or not np.isfinite(shape).all() \
                    or (shape != np.round(shape)).any() or (shape < 1).any() \
                    or (shape > 2**31).any():
                raise DataError(f"{self.name}: image_shape {shape.tolist()} is not (rows, cols) of "
                                f"positive integers; give rows·cols = {self.dim}, or no "
                                "image_shape")
            self.image_shape = tuple(int(s) for s in shape)
            if len(self.image_shape) != 2 or math.prod(self.image_shape) != self.dim:
                raise ShapeError(f"{self.name}: image_shape {self.image_shape} does not hold "
                                 f"{self.dim} values; give (rows, cols) with rows·cols "
                                 f"= {self.dim}")
        check_fields(self)

    @property
    def condition_dim(self) -> int:
        """C, the width of the condition (0 when the data carry none)."""
        return 0 if self.train_condition is None else int(self.train_condition.shape[1])

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
        return (f"Dataset({self.name!r}, train={self.n_train}, test={self.n_test}{v}, "
                f"D={self.dim}, "
                f"image_shape={self.image_shape}, kind={self.kind!r})")


def as_rows(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ShapeError(f"{what} has shape {a.shape}; give a 2-D array with one datum per row")
    if a.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {a.dtype}; give numeric data "
                        "(real numbers: complex values are refused)")
    return np.ascontiguousarray(a, dtype=np.float64)


def infer_kind(*arrays) -> str:
    """``"binary"`` if every value is 0 or 1, ``"greyscale"`` if all lie in [0, 1], else
    ``"real"``."""
    arrays = [a for a in arrays if a is not None and a.size]
    if all(np.all((a == 0) | (a == 1)) for a in arrays):
        return "binary"
    if all(np.all((a >= 0) & (a <= 1)) for a in arrays):
        return "greyscale"
    return "real"


def split_last(y: np.ndarray, test_fraction: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split: the last ``round(test_fraction·n)`` rows (at least one) are the test
    set."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must lie in (0, 1), got {test_fraction}; e.g. 0.1")
    n = y.shape[0]
    if n < 2:
        raise DataError(f"{what} has {n} rows, too few to split into train and test; give more "
                        "data")
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    return y[: n - n_test], y[n - n_test:]
