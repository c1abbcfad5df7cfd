"""The encoder and decoder networks of a config: an :class:`~refvae.math.mlp.MLP` (format 1) or a
:class:`~refvae.math.sequential.Sequential` built from ``encoder_layers``/``decoder_layers``
(format 2; docs/ORACLE.md, "config.json").

Format 2 in short:

* ``encoder_layers`` is the body of ``nn.Sequential`` the encoder runs on the datum reshaped to
  ``data_shape`` (default ``[data_dim]``); it must end in a vector (a ``flatten`` or a
  ``linear``), and the recognition heads (``encoder.mean``, ``encoder.logvar``, …) are a final
  linear map as in format 1.
* ``decoder_layers`` is the body the decoder runs on the latent sample. With ``decoder_heads``
  ``"linear"`` (the default) the emission heads (``decoder.out``, ``decoder.logvar``) are a final
  linear map on its vector output; with ``"body"`` the body's flattened output *is* the emission's
  output ``o`` (one head, ``out``: emissions ``bernoulli`` and ``gaussian``), as when a
  ``conv_transpose2d`` produces the image.

Parameters are named as the ``state_dict`` of ``nn.Sequential``: ``encoder.{i}.weight``, … .
Batch normalisation is refused inside a VAE: its running statistics are buffers, which the VAE's
parameter dict does not carry.
"""
from __future__ import annotations

import math

from ..errors import ConfigError
from .layers import BatchNorm
from .mlp import MLP
from .sequential import Sequential

DECODER_HEADS = ("linear", "body")
BODY_EMISSIONS = ("bernoulli", "gaussian")


def encoder_network(config, heads):
    """The encoder of ``config`` with the recognition ``heads`` ``[(name, width), …]``."""
    if config.encoder_layers is None:
        return MLP.build("encoder", config.data_dim + config.condition_dim,
                         config.encoder_hidden, heads, config.activation)
    return _sequential("encoder", config.data_shape, config.encoder_layers, heads, FlatInput)


def decoder_network(config, decoder_in: int, heads):
    """The decoder of ``config`` from ``decoder_in`` inputs to the emission ``heads``."""
    if config.decoder_layers is None:
        return MLP.build("decoder", decoder_in, config.decoder_hidden, heads, config.activation)
    if config.decoder_heads != "body":
        return _sequential("decoder", (decoder_in,), config.decoder_layers, heads)
    net = _sequential("decoder", (decoder_in,), config.decoder_layers, ())
    want = sum(d for _, d in heads)
    if net.out_dim != want:
        raise ConfigError(f"decoder_layers: with decoder_heads 'body' the last layer's output "
                          f"{net.body_shape} has {net.out_dim} entries, the emission needs {want} "
                          f"(data_dim)")
    return net


class FlatInput(Sequential):
    """A :class:`Sequential` that reads its input flattened, ``(..., prod(in_shape))``, as the
    VAE holds the data, and views it as ``(..., *in_shape)`` (``data_shape``)."""

    def forward(self, bk, params, x):
        return super().forward(bk, params, x.reshape(*x.shape[:-1], *self.in_shape))


def _sequential(prefix: str, in_shape, spec, heads, cls=Sequential) -> Sequential:
    try:
        net = cls.build(prefix, in_shape, spec, heads)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}_layers: {exc}") from None
    for i, layer in enumerate(net.layers):
        if isinstance(layer, BatchNorm):
            raise ConfigError(f"{prefix}_layers: layer {i} ({layer.kind}): batch norm is not "
                              f"supported inside a VAE (its running statistics are buffers); "
                              f"fold it into the convolution before it, or remove it")
    return net


def check_networks(config, encoder_heads: int, decoder_heads: list) -> tuple:
    """Build both networks of a format-2 ``config`` (``encoder_heads``: the recognition heads'
    total width) so that a bad layer list is refused when the config is read."""
    return (encoder_network(config, [("heads", encoder_heads)]),
            decoder_network(config, config.decoder_in, decoder_heads))


def n_params(net) -> int:
    """Number of trainable numbers of an MLP or a Sequential."""
    return sum(math.prod(s) for s in net.param_shapes().values())


def activation_sizes(net) -> list[int]:
    """The size per datum of every intermediate a forward pass keeps (the hidden widths of an
    MLP; each layer's output of a Sequential): what the memory budget and the evaluation's
    chunking count."""
    if isinstance(net, MLP):
        return list(net.hidden)
    return [math.prod(layer.out_shape) for layer in net.layers]


# ----- format 2 of the config ---------------------------------------------------------------
FORMATS = (1, 2)
DEFAULT_HIDDEN = ((400,), ())   # encoder_hidden/decoder_hidden when not given (or dropped)


def refuse_both(d: dict) -> None:
    """A ``config.json`` mapping may not describe one network twice."""
    for net in ("encoder", "decoder"):
        if f"{net}_layers" in d and f"{net}_hidden" in d:
            raise ConfigError(f"config gives both {net}_layers and {net}_hidden; give one "
                              f"({net}_layers replaces the MLP's widths)")
    if "encoder_layers" in d and "decoder_layers" in d and "activation" in d:
        raise ConfigError("config gives 'activation' with encoder_layers and decoder_layers; "
                          "the layer lists name their own activations: drop 'activation'")


def normalise(c) -> None:
    """Validate the format-2 fields of ``c`` (a :class:`~refvae.math.config.VAEConfig` in its
    ``__post_init__``) and set ``format``: 2 when a layer list is given, else 1."""
    setattr_ = object.__setattr__
    used = c.encoder_layers is not None or c.decoder_layers is not None
    if c.format is not None and (type(c.format) is not int or c.format not in FORMATS):
        raise ConfigError(f"config 'format' is {c.format!r}; this refvae reads formats 1 and 2")
    if c.format == 1 and used:
        raise ConfigError("config fields encoder_layers/decoder_layers need \"format\": 2")
    if c.format == 2 and not used:
        raise ConfigError("config 'format' is 2 but gives no encoder_layers or decoder_layers; "
                          "write format 1 for an MLP")
    setattr_(c, "format", 2 if used else 1)
    for net in ("encoder", "decoder"):
        spec = getattr(c, f"{net}_layers")
        if spec is None:
            continue
        if not isinstance(spec, (list, tuple)) or not spec:
            raise ConfigError(f"config field '{net}_layers' must be a non-empty list of layer "
                              f"objects, got {spec!r}")
        if getattr(c, f"{net}_hidden") not in DEFAULT_HIDDEN:
            raise ConfigError(f"config gives both {net}_layers and {net}_hidden; give one")
        setattr_(c, f"{net}_hidden", ())
        setattr_(c, f"{net}_layers", _json_copy(spec, f"{net}_layers"))
    if c.encoder_layers is not None and c.decoder_layers is not None and c.activation != "relu":
        raise ConfigError("config gives 'activation' with encoder_layers and decoder_layers; "
                          "the layer lists name their own activations: drop 'activation'")
    _data_shape(c, setattr_)
    if c.decoder_heads is not None:
        if c.decoder_layers is None:
            raise ConfigError("config field 'decoder_heads' applies only with decoder_layers")
        if c.decoder_heads not in DECODER_HEADS:
            raise ConfigError(f"config field 'decoder_heads' is {c.decoder_heads!r}; choose "
                              f"{' or '.join(DECODER_HEADS)}")
        if c.decoder_heads == "body" and c.emission not in BODY_EMISSIONS:
            raise ConfigError(f"decoder_heads 'body' needs an emission with one output head "
                              f"({', '.join(BODY_EMISSIONS)}), not {c.emission!r}")


def _data_shape(c, setattr_) -> None:
    shape = c.data_shape
    if shape is None:
        if c.encoder_layers is not None:
            setattr_(c, "data_shape", (c.data_dim,))
        return
    if c.encoder_layers is None:
        raise ConfigError("config field 'data_shape' applies only with encoder_layers")
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (list, tuple)) or not shape \
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ConfigError(f"config field 'data_shape' must be a list of positive integers "
                          f"(e.g. [1, 28, 28]), got {shape!r}")
    if math.prod(shape) != c.data_dim:
        raise ConfigError(f"config field 'data_shape' {list(shape)} has {math.prod(shape)} "
                          f"entries but data_dim is {c.data_dim}")
    setattr_(c, "data_shape", tuple(shape))


def _json_copy(spec, name: str) -> tuple:
    """A deep copy in JSON's own types (lists, string keys), so that a config equals itself read
    back from JSON."""
    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise ConfigError(f"config field {name!r} is not plain JSON (it holds a "
                          f"{type(value).__name__})")

    return tuple(plain(list(spec)))


def format2_dict(c, d: dict) -> dict:
    """``to_dict``'s output without the format-2 fields a format-1 config does not use."""
    for name in ("data_shape", "encoder_layers", "decoder_layers", "decoder_heads"):
        if d[name] is None:
            d.pop(name)
        elif isinstance(d[name], tuple):
            d[name] = list(d[name])
    for net in ("encoder", "decoder"):
        if f"{net}_layers" in d:
            d.pop(f"{net}_hidden")
    if "encoder_layers" in d and "decoder_layers" in d:
        d.pop("activation")
    return d
