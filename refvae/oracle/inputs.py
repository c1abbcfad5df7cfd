"""Reading the oracle's inputs: config, parameters, batch (paths or objects), validated in one
pass with one-line errors (ORACLE.md). Host-side file I/O, hence NumPy directly."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..backend import to_host
from ..math.config import VAEConfig
from ..errors import (CheckpointError, ConfigError, DataError, RefvaeError, ShapeError,
                      name_mismatch, shape_mismatch)
from ..util import gates
from ..util.files import load_json, load_npz_checked
from ..math.vae import VAE
from .layouts import Layout, children, flatten, translate, unused_entries

FORMAT = 1


def host(a, what: str) -> np.ndarray:
    """NumPy array from NumPy, PyTorch (CPU or GPU, with or without grad), CuPy, JAX, lists,
    scalars."""
    if hasattr(a, "detach"):
        a = a.detach()
    if hasattr(a, "cpu"):
        a = a.cpu()
    try:
        arr = to_host(a)
    except Exception as exc:  # noqa: BLE001 - any unconvertible object is the user's input error
        raise DataError(f"{what} cannot be read as an array ({exc})") from None
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{what} has dtype {arr.dtype}; expected real numbers"
                        + ("; pass nested parameters as dicts of arrays" if arr.dtype.kind == "O"
                           else ""))
    return arr


def load_npz(path, what: str = "file") -> dict:
    """Every array of a user's ``.npz`` (read by :func:`refvae.util.files.load_npz_checked`, never
    unpickling), as a dict of real-valued NumPy arrays; errors name the file's role."""
    try:
        arrays, _ = load_npz_checked(path, require_meta=False)
    except CheckpointError as exc:
        raise DataError(f"{what}: {exc}") from None
    return {k: host(v, f"{what} {os.fspath(path)}: array {k!r}") for k, v in arrays.items()}


def load_json_input(path, what: str):
    try:
        return load_json(path)
    except CheckpointError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def input_path(source, what: str, accepts: str = "a dict of arrays"):
    """``source`` as a path with ``~`` expanded, or a ConfigError when it is neither a path nor
    what the caller also accepts (a None, a number, a list: one line naming the argument)."""
    if isinstance(source, bytes):
        source = os.fsdecode(source)
    if not isinstance(source, (str, os.PathLike)):
        shown = repr(source) if len(repr(source)) <= 40 else type(source).__name__
        raise ConfigError(f"{what} must be a path or {accepts}, got {shown}; pass one of those")
    return os.path.expanduser(os.fspath(source))


def load_config(config) -> VAEConfig:
    """A :class:`VAEConfig` from a path to ``config.json``, a dict, or a VAEConfig."""
    if isinstance(config, VAEConfig):
        return config
    where = "config"
    if not isinstance(config, dict):
        where = input_path(config, "config", "a dict of config fields")
        config = load_json_input(where, "config")
    try:
        return VAEConfig.from_dict(config)
    except TypeError as exc:  # a field of the wrong kind that the dataclass itself rejects
        raise ConfigError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def arrays_of(source, what: str, tree=flatten) -> dict:
    """Host arrays from a (possibly nested) dict or an ``.npz`` path."""
    if isinstance(source, (str, bytes, os.PathLike)):
        return load_npz(input_path(source, what), what)
    if children(source) is None:
        raise DataError(f"{what} must be a dict, list, tuple or tree of arrays, or an .npz path; "
                        f"got {type(source).__name__}")
    if not hasattr(source, "items"):   # a list, tuple or object: its members are the tree
        return {k: host(v, f"{what} leaf {k!r}") for k, v in flatten(source, what).items()}
    return {str(k): host(v, f"{what} leaf {k!r}")
            for k, v in tree(dict(source.items()), what).items()}


def label(source, default: str) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else default


def parse_name_map(pairs=(), path=None) -> dict:
    """``{theirs: ours}`` from ``theirs=ours`` strings and/or a JSON file holding an object."""
    mapping = {}
    if path is not None:
        loaded = load_json_input(path, "name map")
        if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in loaded.items()):
            raise ConfigError(f"name map file {path} must hold a JSON object of names, "
                              '{"theirs": "ours", ...}')
        mapping.update(loaded)
    for pair in pairs:
        theirs, sep, ours = pair.partition("=")
        if not sep or not theirs or not ours:
            raise ConfigError(f"name map entry {pair!r} is not of the form theirs=ours (e.g. "
                              "fc1=encoder.0)")
        mapping[theirs] = ours
    return mapping


@dataclass
class OracleInputs:
    """Validated inputs, as host float64 arrays: the model, its parameters, the batch and noise;
    ``origin`` maps refvae's parameter names to the user's."""

    vae: VAE
    params: dict
    y: np.ndarray
    noise: np.ndarray
    temperature: float | None
    origin: dict = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout)
    condition: np.ndarray | None = None   # (N, condition_dim) of a conditional VAE


def default_estimator(vae: VAE) -> str:
    """The latent's own estimator (``gumbel-softmax`` for categorical latents, else
    ``pathwise``)."""
    return vae.default_estimator


def _temperature(value, what: str):
    arr = host(value, what)
    first = float(arr.reshape(-1)[0]) if arr.size else float("nan")
    if arr.size != 1 or not math.isfinite(first) or first <= 0:
        raise ConfigError(f"{what} must be one positive finite number, got {arr.tolist()!r}")
    return first


# The advice on renamed modules; check_torch (Python) replaces it by API_MAP_HINT.
CLI_MAP_HINT = "map them with --map theirs=ours"
API_MAP_HINT = "map them with name_map={'theirs': 'ours', ...}"


def with_samples_axis(noise: np.ndarray, vae: VAE) -> np.ndarray:
    """Noise drawn as users draw it, one sample per datum: ``(N, K)`` (Gaussian latents) or
    ``(N, K, C)`` (categorical; ``(N, C)`` when K = 1) is read as ``L = 1``; other shapes pass
    unchanged to the batch check."""
    per = tuple(vae.latent.noise_shape(1, 1)[2:])
    kept = noise.ndim - 1
    if 1 <= kept <= len(per) and noise.shape[1:] == per[len(per) - kept:] \
            and all(d == 1 for d in per[:len(per) - kept]):
        return noise.reshape((noise.shape[0], 1) + per)
    return noise


def check_param_arrays(vae: VAE, named: dict, p_label: str) -> None:
    """Every problem of the parameters in one message: names, shapes, non-finite values."""
    shapes = vae.param_shapes()
    missing = [k for k in shapes if k not in named]
    extra = [k for k in named if k not in shapes]
    problems = [name_mismatch(missing, extra)] if missing or extra else []
    problems += [shape_mismatch(k, named[k].shape, s) for k, s in shapes.items()
                 if k in named and tuple(named[k].shape) != tuple(s)]
    problems += [f"{k} contains NaN or inf" for k, s in shapes.items()
                 if k in named and tuple(named[k].shape) == tuple(s)
                 and not np.isfinite(named[k]).all()]
    if not problems:
        return
    hint = ""
    if missing and extra:
        hint = f"; if your modules are named differently, {CLI_MAP_HINT}"
    kind = ShapeError if missing or extra or any("has shape" in p for p in problems) else DataError
    raise kind(f"{p_label}: parameters do not match the config: {'; '.join(problems)}{hint}")


def load_inputs(config, params, batch, temperature=None, name_map=None, backend: str = "numpy",
                layout=None, split=None, condition=None) -> OracleInputs:
    """Read and validate config, parameters and batch (paths or objects); one-line errors. A
    conditional VAE's condition ``c`` ``(N, condition_dim)`` is ``condition`` or the batch's
    ``condition`` array."""
    vae = VAE(load_config(config), backend=backend, dtype="float64")
    lay = layout if isinstance(layout, Layout) else Layout.make(name_map, layout, split)
    p_label, b_label = label(params, "params"), label(batch, "batch")
    raw = arrays_of(params, "params")
    kernels = [k for k in raw if k.rpartition(".")[2] in ("kernel", "W") and raw[k].ndim == 2]
    if lay.layout != "in_out" and kernels:
        raise ShapeError(f"{p_label}: parameters named 'kernel' or 'W' ({kernels[0]}) are (in, "
                         "out) "
                         "kernels (JAX, Flax, Keras, stax, HIPS autograd): pass layout='in_out' "
                         "(--layout in-out)")
    unused = unused_entries(raw, lay)
    if unused:
        raise ConfigError(f"{p_label}: name map or split entr{'y' if len(unused) == 1 else 'ies'} "
                          f"{', '.join(unused)} match{'es' if len(unused) == 1 else ''} no "
                          "parameter")
    named, origin = translate(raw, lay, vae.param_shapes(), p_label)
    check_param_arrays(vae, named, p_label)
    data = arrays_of(batch, "batch")
    noise_name = vae.latent.noise_name
    allowed = {"y", noise_name, "temperature"} | ({"condition"} if vae.config.condition_dim
                                                  else set())
    if "y" not in data or noise_name not in data:
        missing = [k for k in ("y", noise_name) if k not in data]
        raise ShapeError(f"{b_label} has no array {' or '.join(map(repr, missing))} (latent "
                         f"{vae.config.latent!r} reads 'y' and the noise {noise_name!r}); "
                         f"found: {', '.join(map(repr, data)) or 'nothing'}")
    extra = [k for k in data if k not in allowed]
    if extra:
        raise ShapeError(f"{b_label} holds unexpected array(s) {', '.join(map(repr, extra))}; "
                         "latent "
                         f"{vae.config.latent!r} reads 'y', {noise_name!r} and optionally "
                         "'temperature'" + (" and 'condition'" if vae.config.condition_dim
                                            else " ('condition' needs condition_dim > 0)"))
    if condition is not None and "condition" in data:
        raise ConfigError(f"a condition was given but {b_label} holds one too; give one of them")
    if condition is not None:
        data["condition"] = host(condition, "condition")
    data[noise_name] = with_samples_axis(data[noise_name], vae)
    try:
        eps = data[noise_name]
        vae.config.check_batch(f"{b_label}: the batch", eps.shape[0] if eps.ndim else 1,
                               eps.shape[1] if eps.ndim > 1 else 1)
        gates.check_batch(vae, data["y"], data[noise_name])
        cond, c_dim = data.get("condition"), vae.config.condition_dim
        if cond is None and c_dim:
            raise ShapeError(f"the VAE is conditional (condition_dim {c_dim}): give its condition, "
                             f"an (N, {c_dim}) array, as condition= or the batch's 'condition'")
        if cond is not None:
            cond = np.asarray(vae.bk.to_numpy(gates.check_condition(vae, cond,
                                                                    data["y"].shape[0])),
                              dtype=np.float64)
    except RefvaeError as exc:
        raise type(exc)(f"{b_label}: {exc}") from None
    if "temperature" in data:
        stored = _temperature(data["temperature"], f"{b_label}: temperature")
        if temperature is not None and float(temperature) != stored:
            raise ConfigError(f"temperature {temperature} was given but {b_label} holds "
                              "temperature "
                              f"{stored}; give one of them")
        temperature = stored
    elif temperature is not None:
        temperature = _temperature(temperature, "temperature")
    if temperature is not None and vae.default_estimator == "pathwise":
        raise ConfigError("a temperature applies only to categorical latents, not "
                          f"to {vae.config.latent!r}; "
                          "drop --temperature (or the batch's 'temperature' array)")
    params64 = {k: np.asarray(named[k], dtype=np.float64) for k in vae.param_shapes()}
    return OracleInputs(vae, params64, np.asarray(data["y"], dtype=np.float64),
                        np.asarray(data[noise_name], dtype=np.float64), temperature,
                        {k: v for k, v in origin.items() if v != k}, lay, cond)
