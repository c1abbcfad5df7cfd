"""Reading a format-2 config from a live PyTorch VAE, so that ``check_torch`` needs no config
(docs/ORACLE.md, "A convolutional PyTorch VAE in one call").

The model holds its encoder body and its decoder as ``nn.Sequential`` of supported modules
(attributes ``encoder`` and ``decoder``, or the names given) and its Gaussian heads as two
``nn.Linear`` children: ``fc_mu``/``fc_logvar``, ``fc_mu``/``fc_var``, pytorch/examples'
``fc21``/``fc22``, ``mu``/``logvar``, … recognised by name, or named by the name map
(``{"fc_a": "encoder.mean", "fc_b": "encoder.logvar"}``). The layer lists, ``data_shape`` (from
``y``), ``latent_dim`` (the mean head's outputs) and the emission are read from the modules: a
decoder ending in ``nn.Sigmoid`` is a Bernoulli decoder whose logits are the sigmoid's input,
otherwise the emission is given (``emission="gaussian"``, ``alpha``). The decoder is the whole
decoder (``decoder_heads: "body"``). Any module that cannot be mapped is named in one line.
torch is imported lazily, inside the functions.
"""
from __future__ import annotations

import math
import re

from ..errors import ConfigError

HEAD_PAIRS = (("fc21", "fc22"),)
MEAN = re.compile(r"(^|_)(mu|mean)($|_)")
LOGVAR = re.compile(r"(^|_)(log_?var|var|log_?sigma)($|_)")
ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "SiLU": "silu",
               "Identity": "identity", "Softplus": "softplus", "GELU": "gelu", "ELU": "elu",
               "LeakyReLU": "leaky_relu"}


def _pairs(m, *names) -> dict:
    out = {}
    for n in names:
        v = getattr(m, n)
        out[n] = list(v) if isinstance(v, (tuple, list)) else v
    return out


def module_spec(where: str, m) -> dict:
    """One JSON layer object for the module ``m`` (``where`` names it in the error)."""
    torch = __import__("torch")
    nn, kind = torch.nn, type(m).__name__
    if isinstance(m, nn.Linear):
        return {"type": "linear", "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        if isinstance(m.padding, str):
            raise ConfigError(f"check_torch: {where} ({kind}) has padding {m.padding!r}; give "
                              "the padding as numbers")
        spec = {"type": "conv2d" if isinstance(m, nn.Conv2d) else "conv_transpose2d",
                "out_channels": m.out_channels, "bias": m.bias is not None, "groups": m.groups,
                "padding_mode": m.padding_mode,
                **_pairs(m, "kernel_size", "stride", "padding", "dilation")}
        if isinstance(m, nn.ConvTranspose2d):
            spec["output_padding"] = list(m.output_padding)
        return spec
    if isinstance(m, nn.MaxPool2d):
        return {"type": "max_pool2d", "ceil_mode": m.ceil_mode,
                "return_indices": m.return_indices,
                **_pairs(m, "kernel_size", "stride", "padding", "dilation")}
    if isinstance(m, nn.AvgPool2d):
        return {"type": "avg_pool2d", "ceil_mode": m.ceil_mode,
                "count_include_pad": m.count_include_pad,
                "divisor_override": m.divisor_override,
                **_pairs(m, "kernel_size", "stride", "padding")}
    if isinstance(m, nn.Flatten):
        return {"type": "flatten", "start_dim": m.start_dim, "end_dim": m.end_dim}
    if isinstance(m, nn.Unflatten) and m.dim == 1:
        return {"type": "unflatten", "shape": list(m.unflattened_size)}
    if isinstance(m, nn.Dropout) and (not m.training or m.p == 0):
        return {"type": "identity"}
    if kind in ACTIVATIONS and _plain_activation(m):
        spec = {"type": ACTIVATIONS[kind]}
        if kind == "ELU":
            spec["alpha"] = m.alpha
        elif kind == "LeakyReLU":
            spec["negative_slope"] = m.negative_slope
        return spec
    raise ConfigError(f"check_torch: {where} ({kind}{_detail(m)}) has no refvae layer; supported: "
                      "Linear, Conv2d, ConvTranspose2d, MaxPool2d, AvgPool2d, Flatten, "
                      "Unflatten(1, …), Dropout in eval mode and "
                      f"{', '.join(ACTIVATIONS)}; or pass a config")


def _plain_activation(m) -> bool:
    """Activations with PyTorch options refvae has only at their defaults."""
    if type(m).__name__ == "Softplus":
        return m.beta == 1
    if type(m).__name__ == "GELU":
        return m.approximate == "none"
    return True


def _detail(m) -> str:
    name = type(m).__name__
    if name == "Softplus":
        return f", beta={m.beta}"
    if name == "GELU":
        return f", approximate={m.approximate!r}"
    if name.startswith("Dropout"):
        return ", in training mode: call model.eval()"
    return ""


def sequential_spec(model, attr: str) -> list:
    """The JSON layer list of ``model.<attr>``, an ``nn.Sequential``."""
    torch = __import__("torch")
    net = getattr(model, attr, None)
    if not isinstance(net, torch.nn.Sequential):
        raise ConfigError(f"check_torch without a config reads model.{attr} as an nn.Sequential, "
                          f"got {type(net).__name__}; name it (modules={{'{attr}': …}}) or pass "
                          "a config")
    return [module_spec(f"model.{attr}[{i}]", m) for i, m in enumerate(net)]


def gaussian_heads(model, skip, name_map: dict) -> tuple[str, str]:
    """The names of the mean and log-variance ``nn.Linear`` children."""
    torch = __import__("torch")
    given = {ours: theirs for theirs, ours in name_map.items()}
    if "encoder.mean" in given and "encoder.logvar" in given:
        return given["encoder.mean"], given["encoder.logvar"]
    linear = [n for n, m in model.named_children()
              if n not in skip and isinstance(m, torch.nn.Linear)]
    for mean, logvar in HEAD_PAIRS:
        if mean in linear and logvar in linear:
            return mean, logvar
    means = [n for n in linear if MEAN.search(n.lower())]
    logvars = [n for n in linear if LOGVAR.search(n.lower()) and n not in means]
    if len(means) != 1 or len(logvars) != 1:
        raise ConfigError(f"check_torch: cannot tell the Gaussian heads among the nn.Linear "
                          f"children {linear or 'none'}; map them: name_map={{'<mean>': "
                          "'encoder.mean', '<logvar>': 'encoder.logvar'}")
    return means[0], logvars[0]


def config_from_modules(model, y, name_map=None, *, encoder: str = "encoder",
                        decoder: str = "decoder", emission: str | None = None, alpha=None,
                        data_shape=None) -> tuple[dict, dict]:
    """``(format-2 config, name map)`` read from ``model`` and the batch ``y`` ``(N, …)``."""
    name_map = dict(name_map or {})
    mean, logvar = gaussian_heads(model, (encoder, decoder), name_map)
    shape = list(data_shape) if data_shape is not None else list(y.shape[1:])
    if not shape:
        raise ConfigError("check_torch: y must have a batch axis and a datum shape, "
                          "e.g. (N, 1, 28, 28)")
    enc, dec = sequential_spec(model, encoder), sequential_spec(model, decoder)
    if emission is None:
        if not dec or dec[-1]["type"] != "sigmoid":
            raise ConfigError(f"check_torch: model.{decoder} does not end with nn.Sigmoid, so the "
                              "emission is not read from it; pass emission='bernoulli' (logits) "
                              "or 'gaussian' (with alpha)")
        emission = "bernoulli"
    if emission == "bernoulli" and dec and dec[-1]["type"] == "sigmoid":
        dec = dec[:-1]               # the Bernoulli decoder's output o is the logits
    if dec and dec[-1]["type"] not in ("flatten", "linear"):
        dec.append({"type": "flatten"})
    used = {encoder, decoder, mean, logvar}
    stray = [f"model.{n} ({type(m).__name__})" for n, m in model.named_children()
             if n not in used and any(True for _ in m.parameters())]
    if stray:
        raise ConfigError(f"check_torch: {', '.join(stray)} holds parameters outside the encoder, "
                          "the decoder and the Gaussian heads; check it with a config and a name "
                          "map")
    config = {"format": 2, "data_dim": math.prod(shape), "data_shape": shape,
              "latent_dim": getattr(model, mean).out_features, "encoder_layers": enc,
              "decoder_layers": dec, "decoder_heads": "body", "emission": emission}
    if alpha is not None:
        config["alpha"] = alpha
    ours = {mean: "encoder.mean", logvar: "encoder.logvar"}
    if encoder != "encoder":
        ours[encoder] = "encoder"
    if decoder != "decoder":
        ours[decoder] = "decoder"
    return config, {**ours, **name_map}


def decoder_ends(vae) -> tuple[str, str]:
    """The module whose input is the latent sample and the one whose output is ``o`` (the
    emission's ``out``), by refvae's names: what ``check_torch`` hooks."""
    dec = vae.decoder
    if not hasattr(dec, "layers"):
        return ("decoder.0" if dec.hidden else "decoder.out"), "decoder.out"
    first = "decoder.0" if dec.layers else "decoder.out"
    if dec.heads:
        return first, "decoder.out"
    last = max((i for i, layer in enumerate(dec.layers)
                if layer.kind not in ("flatten", "unflatten")), default=0)
    return first, f"decoder.{last}"
