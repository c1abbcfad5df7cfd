"""The condition of a conditional VAE on the command line: ``refvae train --condition
{labels,vectors}`` (the data set's condition: :mod:`refvae.data.condition`), and ``refvae sample
--condition CLASS`` or ``--condition-vector V1,V2,...`` (what every sample is drawn given)."""
from __future__ import annotations

import math

import numpy as np

from ..data.condition import SOURCES
from ..errors import ConfigError


def add_train_flag(group) -> None:
    group.add_argument("--condition", default=None, choices=SOURCES,
                       help="train a conditional VAE given the data set's labels one-hot "
                            "(digits, MNIST with its label files, an .npz's 'labels') or an "
                            ".npz's 'condition' vectors; sets condition_dim to their width")


def add_sample_flags(p) -> None:
    p.add_argument("--condition", default=None, metavar="CLASS",
                   help="a conditional run: draw every sample given this class (0..C-1, "
                        "one-hot of the run's condition width C)")
    p.add_argument("--condition-vector", default=None, metavar="V1,V2,...",
                   help="a conditional run: draw every sample given this condition vector "
                        "(C comma-separated numbers)")


def with_condition_dim(arch: dict, width: int) -> dict:
    """``arch`` of a run trained with ``--condition``: condition_dim the data's ``width`` unless
    the config gives one (a different one is refused by the training loop, naming both)."""
    if not arch.get("condition_dim"):
        arch = {**arch, "condition_dim": width}
    return arch


def sample_condition(args, config, n: int):
    """The ``(n, C)`` condition of ``refvae sample`` (None for an unconditional run)."""
    c = config.condition_dim
    given = [f for f, v in (("--condition", args.condition),
                            ("--condition-vector", args.condition_vector)) if v is not None]
    if not c:
        if given:
            raise ConfigError(f"{given[0]}: the run is not conditional (condition_dim 0); drop "
                              "the flag")
        return None
    if not given:
        raise ConfigError(f"the run is conditional (condition_dim {c}): pass --condition CLASS "
                          f"(0..{c - 1}, one-hot) or --condition-vector with {c} comma-separated "
                          "numbers")
    if len(given) == 2:
        raise ConfigError("--condition and --condition-vector both given; give one of them")
    if args.condition is not None:
        text = str(args.condition).strip()
        if not (text.isdigit() and int(text) < c):
            raise ConfigError(f"--condition {args.condition!r}: give a class 0..{c - 1} (the "
                              f"run's condition has {c} values), or use --condition-vector")
        vector = np.eye(c)[int(text)]
    else:
        try:
            vector = np.array([float(v) for v in str(args.condition_vector).split(",")])
        except ValueError:
            vector = None
        if vector is None or vector.shape != (c,) or not all(map(math.isfinite, vector)):
            raise ConfigError(f"--condition-vector {args.condition_vector!r}: give {c} finite "
                              "comma-separated numbers (the run's condition width)")
    return np.tile(vector, (n, 1))


def eval_condition(config, data, split: str):
    """The condition of ``data``'s ``split`` for ``refvae evaluate`` (None: unconditional)."""
    if not config.condition_dim:
        return None
    from ..train.condition import conditions  # noqa: PLC0415

    train, test = conditions(config, data)
    return train if split == "train" else test
