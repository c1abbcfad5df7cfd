"""Training a conditional VAE (``condition_dim`` C > 0): the data set's condition, checked against
the model.

The condition comes from the data set (:mod:`refvae.data.condition`: labels one-hot, or an
``.npz``'s vectors): ``train_condition`` for the steps, ``test_condition`` for the test metrics.
Each step passes its rows' condition to :func:`refvae.fast.parallel.loss_and_grads`.
"""
from __future__ import annotations

from ..errors import ConfigError


def conditions(config, data):
    """``(train, test)`` host condition arrays of ``data`` for ``config`` (None, None when the model
    is unconditional); a ConfigError in one line when the data carry none or another width."""
    c = config.condition_dim
    if not c:
        return None, None
    train = getattr(data, "train_condition", None)
    name = getattr(data, "name", "the data")
    if train is None:
        raise ConfigError(f"the model is conditional (condition_dim {c}) but the data set {name!r} "
                          "carries no condition; train with --condition labels (data with labels) "
                          "or --condition vectors (an .npz with 'condition'), or set "
                          "condition_dim 0")
    test = getattr(data, "test_condition", None)
    if getattr(data, "test", None) is not None and len(data.test) and test is None:
        raise ConfigError(f"the data set {name!r} has a condition for its train split only; give "
                          "the test split one too")
    if train.shape[1] != c:
        raise ConfigError(f"the data's condition has {train.shape[1]} values per datum but the "
                          f"model's condition_dim is {c}; set condition_dim to {train.shape[1]} "
                          "(or leave it out with --condition)")
    return train, test
