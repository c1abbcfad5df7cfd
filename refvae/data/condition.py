"""The condition of a conditional VAE carried by a data set: one vector per row.

Two sources (:data:`SOURCES`), chosen when the data are loaded (``load_dataset(condition=...)``,
``refvae train --condition``):

* ``"labels"``: the data set's integer classes, one-hot encoded to C = the largest class + 1
  (over the train and test splits): the 8×8 digits, MNIST and Fashion-MNIST with their
  ``*-labels-idx1-ubyte`` files, an ``.npz`` with ``labels``.
* ``"vectors"``: an ``.npz``'s ``condition`` array, any real vector per row, shape ``(N, C)``.

In an ``.npz`` with a single ``y`` or with ``train`` and no ``test``, ``labels`` and
``condition`` have one row per row of the file and are split as the data are; with ``train`` and
``test`` they are ``train_labels``/``test_labels`` and ``train_condition``/``test_condition``.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import DataError
from ..util import budget

SOURCES = ("labels", "vectors")
KINDS = ("condition", "labels")
NPZ_KEYS = KINDS + tuple(f"{s}_{k}" for s in ("train", "test") for k in KINDS)
LABELS_HINT = ("the 8x8 digits, MNIST or Fashion-MNIST with their label files, or an .npz "
               "with 'labels'")
VECTORS_HINT = "an .npz with 'condition' (N, C) (or 'train_condition' and 'test_condition')"


def vectors(a, n: int, what: str) -> np.ndarray:
    """A condition array ``(n, C)``: real, finite, one row per datum; float64."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {a.dtype}; give real numbers, one condition vector "
                        "per datum")
    if a.ndim != 2 or a.shape[1] < 1:
        raise DataError(f"{what} has shape {a.shape}; give (N, C), one condition vector per "
                        "datum (integer classes go in 'labels')")
    if a.shape[0] != n:
        raise DataError(f"{what} has {a.shape[0]} rows but the data have {n}; give one "
                        "condition vector per datum")
    if not np.isfinite(a).all():
        raise DataError(f"{what} holds NaN or inf; give finite condition vectors")
    return np.ascontiguousarray(a, dtype=np.float64)


def labels(a, n: int, what: str) -> np.ndarray:
    """Integer classes ``(n,)``, each 0 or more; int64."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf" or a.ndim != 1:
        raise DataError(f"{what} has shape {a.shape} and dtype {a.dtype}; give one integer "
                        "class (0, 1, ...) per datum, shape (N,)")
    if a.shape[0] != n:
        raise DataError(f"{what} has {a.shape[0]} labels but the data have {n} rows; give one "
                        "class per datum")
    if a.dtype.kind == "f" and not (np.isfinite(a) & (a == np.round(a))).all():
        raise DataError(f"{what} holds values that are not whole numbers; give integer classes")
    if a.size and (a < 0).any():
        raise DataError(f"{what} holds a negative class ({a.min()}); give classes 0, 1, ...")
    if a.size and a.max() >= 2**31:
        raise DataError(f"{what} holds class {a.max()}; give classes 0, 1, ... C-1")
    return a.astype(np.int64)


def one_hot(train: np.ndarray, test: np.ndarray | None, what: str):
    """The one-hot rows of ``train`` and ``test`` labels, C = the largest class + 1."""
    classes = 1 + int(max(int(a.max()) for a in (train, test) if a is not None and a.size))
    rows = len(train) + (0 if test is None else len(test))
    budget.check_array(f"{what} one-hot ({rows} × {classes})", (rows, classes), 8,
                       hint="give fewer classes")
    eye = np.eye(classes)
    return eye[train], None if test is None else eye[test]


def from_npz(arrays: dict, path, train: np.ndarray, test: np.ndarray | None) -> dict:
    """Take the condition and label keys out of ``arrays`` (an ``.npz``'s), checked against the
    rows of ``train`` and ``test`` (``test`` None: the file's single array, split later by
    :func:`split`); returns the Dataset fields they fill."""
    out = {}
    for kind in KINDS:
        whole = arrays.pop(kind, None)
        parts = {s: arrays.pop(f"{s}_{kind}", None) for s in ("train", "test")}
        given = [f"'{s}_{kind}'" for s, a in parts.items() if a is not None]
        if test is None:
            if given:
                raise DataError(f"{path} holds {' and '.join(given)} but no 'test' array; give "
                                f"'{kind}' with one entry per row of the file instead")
            parts = {"train": whole, "test": None}
        elif whole is not None:
            raise DataError(f"{path} holds 'train' and 'test', so its '{kind}' cannot be split; "
                            f"give 'train_{kind}' and 'test_{kind}' instead")
        elif len(given) == 1:
            missing = "test" if parts["test"] is None else "train"
            raise DataError(f"{path} holds {given[0]} but no '{missing}_{kind}'; give both")
        check = vectors if kind == "condition" else labels
        for s, a in parts.items():
            if a is not None:
                key = kind if test is None else f"{s}_{kind}"
                out[f"{s}_{kind}"] = check(a, len(train if s == "train" else test),
                                           f"{path}: '{key}'")
    if "train_condition" in out:
        out["condition_source"] = "vectors"
    return out


def split(fields: dict, n_train: int) -> dict:
    """The fields of :func:`from_npz` of a file without a test split, split after ``n_train``
    rows as :func:`~refvae.data.dataset.split_last` split its data."""
    out = dict(fields)
    for kind in KINDS:
        a = out.get(f"train_{kind}")
        if a is not None:
            out[f"train_{kind}"], out[f"test_{kind}"] = a[:n_train], a[n_train:]
    return out


def select(ds, source: str | None, flag: str = "condition"):
    """``ds`` with the condition of ``source`` (:data:`SOURCES`) in its ``train_condition`` and
    ``test_condition``; None: ``ds`` as loaded (an ``.npz``'s vectors, if any)."""
    if source is None:
        return ds
    if source not in SOURCES:
        raise DataError(f"unknown condition source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "vectors":
        if ds.condition_source != "vectors":
            raise DataError(f"{flag} vectors: the data set {ds.name!r} carries no condition "
                            f"vectors; give {VECTORS_HINT}, or use {flag} labels")
        return ds
    if ds.train_labels is None or (ds.n_test and ds.test_labels is None):
        raise DataError(f"{flag} labels: the data set {ds.name!r} has no labels for every row "
                        f"(an MNIST labels file missing, or not one label per image?); give "
                        f"{LABELS_HINT}")
    what = f"the labels of {ds.name!r}"
    train = labels(ds.train_labels, ds.n_train, f"{what} (train)")
    test = None if ds.test_labels is None else labels(ds.test_labels, ds.n_test,
                                                      f"{what} (test)")
    train_c, test_c = one_hot(train, test, what)
    return replace(ds, train_labels=train, test_labels=test, train_condition=train_c,
                   test_condition=test_c, condition_source="labels")


def check_fields(ds) -> None:
    """The condition fields of a Dataset: both splits or neither, one row per datum, one width."""
    if ds.train_condition is None and ds.test_condition is None:
        ds.condition_source = None
        return
    if ds.train_condition is None or (ds.test_condition is None and ds.n_test):
        raise DataError(f"{ds.name}: a condition for one split only; give the train and the "
                        "test split a condition each")
    ds.train_condition = vectors(ds.train_condition, ds.n_train, f"{ds.name}: train condition")
    if ds.test_condition is not None:
        ds.test_condition = vectors(ds.test_condition, ds.n_test, f"{ds.name}: test condition")
        if ds.test_condition.shape[1] != ds.train_condition.shape[1]:
            raise DataError(f"{ds.name}: the test condition has {ds.test_condition.shape[1]} "
                            f"values per datum but the train condition "
                            f"{ds.train_condition.shape[1]}; give conditions of one width")
    if ds.condition_source is None:
        ds.condition_source = "vectors"
