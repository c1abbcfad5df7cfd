"""Parsing one JSON layer object into a layer of :mod:`refvae.math.layers`.

Each object has a ``"type"`` and the fields of the PyTorch module of that name (``out_channels``,
``kernel_size``, ``stride``, …; sizes are ints or ``[h, w]`` pairs); input sizes are never given,
they come from the layer before. Every problem is a one-line :class:`~refvae.errors.ConfigError`
``layer <i> (<type>): <field>: <what is wrong>``
(docs/DERIVATIONS.md#sequential-networks-reverse-pass-jacobians-and-hessians).
"""
from __future__ import annotations

import math

from ..errors import ConfigError
from . import layers as L
from .activations import LAYER_ACTIVATIONS, make_activation

ALIASES = {"convtranspose2d": "conv_transpose2d", "maxpool2d": "max_pool2d",
           "avgpool2d": "avg_pool2d", "batchnorm1d": "batch_norm1d", "batchnorm2d": "batch_norm2d"}
_REQUIRED = object()


def shape_error(i: int, kind: str, message: str) -> ConfigError:
    return ConfigError(f"layer {i} ({kind}): {message}")


class _Fields:
    """The fields of one layer object; each read marks a field as known, :meth:`done` refuses
    the rest."""

    def __init__(self, i: int, kind: str, entry: dict):
        self.i, self.kind, self.entry, self.seen = i, kind, entry, {"type"}

    def error(self, name: str, message: str) -> ConfigError:
        return shape_error(self.i, self.kind, f"{name}: {message}")

    def _get(self, name, default):
        self.seen.add(name)
        if name not in self.entry:
            if default is _REQUIRED:
                raise self.error(name, "missing")
            return default
        return self.entry[name]

    def int(self, name: str, default=_REQUIRED, minimum: int = 1) -> int:
        v = self._get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.error(name, f"must be an integer ≥ {minimum}, got {v!r}")
        return v

    def pair(self, name: str, default=_REQUIRED, minimum: int = 1) -> tuple[int, int]:
        v = self._get(name, default)
        vals = list(v) if isinstance(v, (list, tuple)) else [v, v]
        if len(vals) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < minimum
                                 for n in vals):
            raise self.error(name, f"must be an integer ≥ {minimum} or a pair of them, got {v!r}")
        return tuple(vals)

    def number(self, name: str, default, positive: bool = False) -> float:
        v = self._get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (positive and v <= 0):
            raise self.error(name, f"must be a {'positive ' if positive else ''}finite number, "
                             f"got {v!r}")
        return float(v)

    def flag(self, name: str, default: bool) -> bool:
        v = self._get(name, default)
        if not isinstance(v, bool):
            raise self.error(name, f"must be true or false, got {v!r}")
        return v

    def fixed(self, name: str, allowed, why: str) -> None:
        """A PyTorch option refvae supports only at one value."""
        v = self._get(name, allowed)
        if v != allowed or type(v) is not type(allowed):
            raise self.error(name, f"only {allowed!r} is supported ({why}), got {v!r}")

    def done(self) -> None:
        extra = [k for k in self.entry if k not in self.seen]
        if extra:
            raise self.error(extra[0], "unknown field for this layer type")


def _need_ndim(f: _Fields, shape, ndims, what: str) -> None:
    if len(shape) not in ndims:
        raise shape_error(f.i, f.kind, f"needs {what} input, the layer before gives shape "
                          f"{tuple(shape)}")


def _check_channels(f: _Fields, name: str, expected: int) -> None:
    if name in f.entry and f.int(name) != expected:
        raise f.error(name, f"is {f.entry[name]}, but the input has {expected}")
    f.seen.add(name)


def _linear(f, shape):
    _need_ndim(f, shape, (1,), "a vector (add a flatten)")
    _check_channels(f, "in_features", shape[0])
    return L.Linear(shape, f.int("out_features"), f.flag("bias", True))


def _conv_common(f, shape):
    _need_ndim(f, shape, (3,), "a (channels, height, width)")
    _check_channels(f, "in_channels", shape[0])
    f.fixed("groups", 1, "grouped convolutions are not implemented")
    f.fixed("padding_mode", "zeros", "only zero padding is implemented")
    return dict(out_channels=f.int("out_channels"), kernel_size=f.pair("kernel_size"),
                stride=f.pair("stride", 1), padding=f.pair("padding", 0, minimum=0),
                dilation=f.pair("dilation", 1), bias=f.flag("bias", True))


def _conv2d(f, shape):
    return L.Conv2d(shape, **_conv_common(f, shape))


def _conv_transpose2d(f, shape):
    kw = _conv_common(f, shape)
    op = f.pair("output_padding", 0, minimum=0)
    for o, s, d in zip(op, kw["stride"], kw["dilation"]):
        if o >= max(s, d):
            raise f.error("output_padding", f"must be smaller than the stride or the dilation "
                          f"(as in PyTorch), got {list(op)}")
    return L.ConvTranspose2d(shape, output_padding=op, **kw)


def _pool_common(f, shape):
    _need_ndim(f, shape, (3,), "a (channels, height, width)")
    f.fixed("ceil_mode", False, "the output size is rounded down")
    kernel = f.pair("kernel_size")
    stride = f.pair("stride", kernel) if f.entry.get("stride") is not None else kernel
    f.seen.add("stride")
    padding = f.pair("padding", 0, minimum=0)
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise f.error("padding", f"must be at most half the kernel size (as in PyTorch), "
                      f"got {list(padding)} for kernel {list(kernel)}")
    return dict(kernel_size=kernel, stride=stride, padding=padding)


def _max_pool2d(f, shape):
    kw = _pool_common(f, shape)
    f.fixed("return_indices", False, "the indices are kept internally")
    return L.MaxPool2d(shape, dilation=f.pair("dilation", 1), **kw)


def _avg_pool2d(f, shape):
    kw = _pool_common(f, shape)
    f.fixed("count_include_pad", True, "padded zeros count in the mean")
    f.fixed("divisor_override", None, "the divisor is the window size")
    return L.AvgPool2d(shape, **kw)


def _batch_norm(cls, ndims, what):
    def parse(f, shape):
        _need_ndim(f, shape, ndims, what)
        _check_channels(f, "num_features", shape[0])
        if f.flag("training", False):
            raise f.error("training", "training-mode batch norm is not supported: batch "
                          "statistics couple the rows of a batch; use evaluation mode (false)")
        f.fixed("track_running_stats", True, "evaluation mode uses the running statistics")
        f.fixed("affine", True, "weight and bias are always present")
        momentum = f._get("momentum", 0.1)
        if momentum is not None:
            f.number("momentum", 0.1)           # unused in evaluation mode, but must be sane
        return cls(shape, eps=f.number("eps", 1e-5, positive=True))
    return parse


def _flatten(f, shape):
    f.fixed("start_dim", 1, "the batch axes are kept")
    f.fixed("end_dim", -1, "everything after the batch axes is flattened")
    return L.Flatten(shape)


def _unflatten(f, shape):
    _need_ndim(f, shape, (1,), "a vector")
    v = f._get("shape", _REQUIRED)
    if not isinstance(v, (list, tuple)) or not v or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in v):
        raise f.error("shape", f"must be a list of positive integers, got {v!r}")
    if math.prod(v) != shape[0]:
        raise f.error("shape", f"{list(v)} has {math.prod(v)} entries, the input has {shape[0]}")
    return L.Unflatten(shape, shape=tuple(v))


def _activation(f, shape):
    params = {}
    if f.kind == "leaky_relu":
        params["negative_slope"] = f.number("negative_slope", 0.01)
    elif f.kind == "elu":
        params["alpha"] = f.number("alpha", 1.0)
    return L.ActivationLayer(shape, activation=make_activation(f.kind, **params))


PARSERS = {"linear": _linear, "conv2d": _conv2d, "conv_transpose2d": _conv_transpose2d,
           "max_pool2d": _max_pool2d, "avg_pool2d": _avg_pool2d,
           "batch_norm1d": _batch_norm(L.BatchNorm1d, (1, 2),
                                       "a (channels,) or (channels, length)"),
           "batch_norm2d": _batch_norm(L.BatchNorm2d, (3,), "a (channels, height, width)"),
           "flatten": _flatten, "unflatten": _unflatten,
           **{name: _activation for name in LAYER_ACTIVATIONS}}


def parse_layer(i: int, entry, shape) -> L.Layer:
    """Layer ``i`` of a list from its JSON object and the input ``shape`` it receives."""
    if not isinstance(entry, dict):
        raise ConfigError(f"layer {i}: must be an object with a \"type\", got {entry!r}")
    kind = entry.get("type")
    if not isinstance(kind, str):
        raise ConfigError(f"layer {i}: type: missing or not a string, got {kind!r}")
    kind = ALIASES.get(kind.lower(), kind.lower())
    if kind not in PARSERS:
        raise ConfigError(f"layer {i}: type: unknown layer type {entry['type']!r}; choose one of "
                          f"{', '.join(PARSERS)}")
    f = _Fields(i, kind, entry)
    layer = PARSERS[kind](f, tuple(shape))
    f.done()
    return layer
