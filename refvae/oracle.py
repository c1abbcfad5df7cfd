"""The oracle: check another implementation's VAE loss and gradients against refvae (ORACLE.md).

A user writes, from their own code, the architecture (``config.json``), the parameters in PyTorch
``state_dict`` names and layout (``params.npz``), the batch and the base noise their model drew
(``batch.npz``), and their loss and gradients (``theirs.npz``: ``loss``, ``kl``,
``reconstruction``, ``kl_per_datum``, ``reconstruction_per_datum`` — all optional — and
``grad/<parameter name>`` for every parameter). refvae computes the same quantities with
:meth:`refvae.vae.VAE.loss_and_grads` (there is no second implementation here) and compares them
tensor by tensor with :func:`refvae.gradcheck.compare_arrays`.

Python API (every argument may be a path or the object itself; arrays may be NumPy arrays, CPU or
GPU PyTorch tensors, JAX arrays)::

    from refvae.oracle import assert_matches
    assert_matches("config.json", model.state_dict(), {"y": y, "eps": eps},
                   {**{f"grad/{n}": p.grad for n, p in model.named_parameters()}, "loss": loss},
                   reduction="sum")

Files are read with ``allow_pickle=False``; every unusable input is a one-line
:class:`~refvae.errors.RefvaeError`. Host-side file I/O, hence NumPy directly.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .backend import NoiseSource, to_host
from .config import VAEConfig
from .errors import (CheckpointError, ConfigError, DataError, GradcheckError, RefvaeError, ShapeError,
                     name_mismatch, shape_mismatch)
from .gradcheck import CheckList, TensorCheck, compare_arrays, table_lines
from .io import atomic_write, ensure_writable_dir, load_json, load_npz_checked, save_json
from .vae import REDUCTIONS, VAE

FORMAT = 1
SCALARS = ("loss", "kl", "reconstruction")
PER_DATUM = ("kl_per_datum", "reconstruction_per_datum")
GRAD = "grad/"

# Default tolerances by the dtype of *their* gradients. An entry passes when
# |theirs − ours| ≤ atol·s + rtol·|ours|, with s = max(1, max|ours|) over the tensor: rounding
# errors of a sum scale with its terms, not with the (possibly cancelled) result, so an entry that
# cancels to nearly zero is judged on the tensor's scale. float64: both sides are float64 and
# differ only in the order of roundings, ~1e-16 · sqrt(number of terms) · conditioning, so rtol 1e-7
# keeps about eight orders of margin while a real error (a wrong factor, sign or term; one entry
# perturbed by 1e-6 relative) fails. float32: their rounding (~6e-8 per operation) dominates;
# PyTorch float32 twins needed rtol ≤ 1e-6 at atol 1e-5 (measured on a 784-400-20 model, N up to
# 512, summed loss), so the defaults keep a margin of about 100; tests/test_oracle_torch.py checks
# a margin of at least 10 on every emission.
TOLERANCES = {"float64": {"rtol": 1e-7, "atol": 1e-9},
              "float32": {"rtol": 1e-4, "atol": 1e-5}}


class OracleMismatch(GradcheckError):
    """Their numbers differ from refvae's; the message is the full comparison table. An
    ``AssertionError``, so pytest shows it as a test failure."""


# ----- reading ---------------------------------------------------------------------------------
def _host(a, what: str) -> np.ndarray:
    """NumPy array from NumPy, CuPy, PyTorch (CPU or GPU, with or without grad), JAX, lists, scalars."""
    if hasattr(a, "detach"):
        a = a.detach()
    if hasattr(a, "cpu"):
        a = a.cpu()
    try:
        arr = to_host(a)
    except Exception as exc:  # noqa: BLE001 - any unconvertible object is the user's input error
        raise DataError(f"{what} cannot be read as an array ({exc})") from None
    if arr.dtype.kind not in "fiub":
        raise DataError(f"{what} has dtype {arr.dtype}; expected real numbers")
    return arr


def load_npz(path, what: str = "file") -> dict:
    """Every array of a user's ``.npz`` (read by :func:`refvae.io.load_npz_checked`, never
    unpickling), as a dict of real-valued NumPy arrays; errors name the file's role."""
    try:
        arrays, _ = load_npz_checked(path, require_meta=False)
    except CheckpointError as exc:
        raise DataError(f"{what}: {exc}") from None
    return {k: _host(v, f"{what} {os.fspath(path)}: array {k!r}") for k, v in arrays.items()}


def load_config(config) -> VAEConfig:
    """A :class:`VAEConfig` from a path to ``config.json``, a dict, or a VAEConfig."""
    if isinstance(config, VAEConfig):
        return config
    where = "config"
    if not isinstance(config, dict):
        where = os.fspath(config)
        config = _json(where, "config")
    try:
        return VAEConfig.from_dict(config)
    except TypeError as exc:  # a field of the wrong kind that the dataclass itself rejects
        raise ConfigError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _json(path, what: str):
    try:
        return load_json(path)
    except CheckpointError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _arrays(source, what: str) -> dict:
    if isinstance(source, dict):
        return {str(k): _host(v, f"{what} array {k!r}") for k, v in source.items()}
    return load_npz(source, what)


def _label(source, default: str) -> str:
    return default if isinstance(source, dict) else os.fspath(source)


# ----- name map ----------------------------------------------------------------------------------
def parse_name_map(pairs=(), path=None) -> dict:
    """``{theirs: ours}`` from ``theirs=ours`` strings and/or a JSON file holding an object."""
    mapping = {}
    if path is not None:
        loaded = _json(path, "name map")
        if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in loaded.items()):
            raise ConfigError(f"name map file {path} must hold a JSON object of names, "
                              '{"theirs": "ours", ...}')
        mapping.update(loaded)
    for pair in pairs:
        theirs, sep, ours = pair.partition("=")
        if not sep or not theirs or not ours:
            raise ConfigError(f"name map entry {pair!r} is not of the form theirs=ours (e.g. fc1=encoder.0)")
        mapping[theirs] = ours
    return mapping


def rename(name: str, name_map: dict) -> str:
    """Apply the name map: an exact entry, else the longest entry that is a dotted prefix
    (``fc1`` renames ``fc1.weight`` to ``encoder.0.weight``, but not ``fc12.weight``)."""
    if name in name_map:
        return name_map[name]
    best = max((k for k in name_map if name.startswith(k + ".")), key=len, default=None)
    return name if best is None else name_map[best] + name[len(best):]


def _renamed(arrays: dict, name_map: dict, what: str, prefix: str = "") -> dict:
    out, origin = {}, {}
    for key, value in arrays.items():
        new = key
        if key.startswith(prefix):
            new = prefix + rename(key[len(prefix):], name_map)
        if new in out:
            raise ConfigError(f"{what}: the name map sends both {origin[new]!r} and {key!r} to {new!r}")
        out[new], origin[new] = value, key
    return out


# ----- inputs ------------------------------------------------------------------------------------
@dataclass
class OracleInputs:
    """Validated inputs, as host float64 arrays: the model, its parameters, the batch and noise."""

    vae: VAE
    params: dict
    y: np.ndarray
    noise: np.ndarray
    temperature: float | None


def default_estimator(vae: VAE) -> str:
    """The latent's ``default_estimator``: ``gumbel-softmax`` for categorical latents, ``pathwise``
    for the others (ORACLE.md)."""
    return vae.default_estimator


def _temperature(value, what: str):
    arr = _host(value, what)
    if arr.size != 1 or not math.isfinite(float(arr.reshape(-1)[0])) or float(arr.reshape(-1)[0]) <= 0:
        raise ConfigError(f"{what} must be one positive finite number, got {arr.tolist()!r}")
    return float(arr.reshape(-1)[0])


def load_inputs(config, params, batch, temperature=None, name_map=None,
                backend: str = "numpy") -> OracleInputs:
    """Read and validate config, parameters and batch (paths or objects); one-line errors."""
    name_map = name_map or {}
    vae = VAE(load_config(config), backend=backend, dtype="float64")
    p_label, b_label = _label(params, "params"), _label(batch, "batch")
    raw = _arrays(params, "params")
    unused = [k for k in name_map if not any(n == k or n.startswith(k + ".") for n in raw)]
    if unused:
        raise ConfigError(f"{p_label}: name map entr{'y' if len(unused) == 1 else 'ies'} "
                          f"{', '.join(unused)} match{'es' if len(unused) == 1 else ''} no parameter")
    named = _renamed(raw, name_map, p_label)
    try:
        vae.check_params(named)
    except RefvaeError as exc:
        expected = set(vae.param_shapes())
        renamed_only = bool(expected - set(named)) and bool(set(named) - expected)
        hint = "; if your modules are named differently, map them with --map theirs=ours" \
            if renamed_only else ""
        raise type(exc)(f"{p_label}: {exc}{hint}") from None
    data = _arrays(batch, "batch")
    noise_name = vae.latent.noise_name
    allowed = {"y", noise_name, "temperature"}
    if "y" not in data or noise_name not in data:
        missing = [k for k in ("y", noise_name) if k not in data]
        raise ShapeError(f"{b_label} has no array {' or '.join(map(repr, missing))} (latent "
                         f"{vae.config.latent!r} reads 'y' and the noise {noise_name!r}); "
                         f"found: {', '.join(map(repr, data)) or 'nothing'}")
    extra = [k for k in data if k not in allowed]
    if extra:
        raise ShapeError(f"{b_label} holds unexpected array(s) {', '.join(map(repr, extra))}; latent "
                         f"{vae.config.latent!r} reads 'y', {noise_name!r} and optionally 'temperature'")
    try:
        eps = data[noise_name]
        vae.config.check_batch(f"{b_label}: the batch", eps.shape[0] if eps.ndim else 1,
                               eps.shape[1] if eps.ndim > 1 else 1)
        vae.check_batch(data["y"], data[noise_name])
    except RefvaeError as exc:
        raise type(exc)(f"{b_label}: {exc}") from None
    if "temperature" in data:
        stored = _temperature(data["temperature"], f"{b_label}: temperature")
        if temperature is not None and float(temperature) != stored:
            raise ConfigError(f"temperature {temperature} was given but {b_label} holds temperature "
                              f"{stored}; give one of them")
        temperature = stored
    elif temperature is not None:
        temperature = _temperature(temperature, "temperature")
    if temperature is not None and vae.default_estimator == "pathwise":
        raise ConfigError(f"a temperature applies only to categorical latents, not to {vae.config.latent!r}; "
                          "drop --temperature (or the batch's 'temperature' array)")
    host = {k: np.asarray(named[k], dtype=np.float64) for k in vae.param_shapes()}
    return OracleInputs(vae, host, np.asarray(data["y"], dtype=np.float64),
                        np.asarray(data[noise_name], dtype=np.float64), temperature)


# ----- computing ---------------------------------------------------------------------------------
@dataclass
class OracleResult:
    """refvae's numbers for one batch (host float64), with what produced them."""

    loss: float
    kl: float
    reconstruction: float
    kl_per_datum: np.ndarray
    reconstruction_per_datum: np.ndarray
    grads: dict
    estimator: str
    reduction: str
    temperature: float | None = None

    def arrays(self) -> dict:
        """The result file's arrays: scalars, per-datum arrays, ``grad/<name>``."""
        out = {k: np.asarray(getattr(self, k), dtype=np.float64) for k in SCALARS + PER_DATUM}
        out.update({GRAD + k: v for k, v in self.grads.items()})
        return out


def compute_inputs(inputs: OracleInputs, estimator: str | None = None,
                   reduction: str = "mean") -> OracleResult:
    """:meth:`VAE.loss_and_grads` on validated inputs (fresh estimator state: deterministic)."""
    vae, bk = inputs.vae, inputs.vae.bk
    estimator = estimator or default_estimator(vae)
    params = {k: bk.asarray(v) for k, v in inputs.params.items()}
    res = vae.loss_and_grads(params, bk.asarray(inputs.y), bk.asarray(inputs.noise), estimator=estimator,
                             reduction=reduction, check=False, temperature=inputs.temperature,
                             estimator_state={})
    return OracleResult(res.loss, res.kl, res.reconstruction, bk.to_numpy(res.kl_per_datum),
                        bk.to_numpy(res.reconstruction_per_datum),
                        {k: np.asarray(bk.to_numpy(v), dtype=np.float64) for k, v in res.grads.items()},
                        estimator, reduction, inputs.temperature)


def compute(config, params, batch, *, estimator: str | None = None, reduction: str = "mean",
            temperature=None, name_map=None, backend: str = "numpy") -> OracleResult:
    """refvae's loss, its parts and every parameter's gradient for the given files or objects."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    return compute_inputs(load_inputs(config, params, batch, temperature, name_map, backend),
                          estimator, reduction)


def write_npz(path, arrays: dict) -> None:
    """Write ``arrays`` as a plain ``numpy.savez`` file, atomically (:mod:`refvae.io`)."""
    atomic_write(path, lambda fh: np.savez(fh, **arrays), "result file")


# ----- comparing ---------------------------------------------------------------------------------
@dataclass
class OracleReport(CheckList):
    """One row per compared tensor; ``str(report)`` is the table ``refvae oracle compare`` prints."""

    dtype: str = "float64"
    notes: list = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"oracle comparison: {'PASS' if self.passed else 'FAIL'} "
                 f"({sum(c.passed for c in self.checks)}/{len(self.checks)} tensors pass; "
                 f"pass when |theirs − ours| ≤ {self.atol:g}·s + {self.rtol:g}·|ours|, "
                 "s = max(1, max|ours|) per tensor)"]
        lines += [f"note: {n}" for n in self.notes]
        lines += table_lines(self.checks, ("theirs", "ours"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready form (non-finite numbers become ``null``)."""
        def num(x):
            return float(x) if math.isfinite(x) else None
        return {"passed": self.passed, "rtol": self.rtol, "atol": self.atol, "dtype": self.dtype,
                "notes": list(self.notes),
                "tensors": [{"name": c.name, "shape": list(c.shape), "max_abs_err": num(c.max_abs),
                             "max_rel_err": num(c.max_rel), "passed": c.passed,
                             "worst": [{"index": list(i), "theirs": num(t), "ours": num(o)}
                                       for i, t, o in c.worst]} for c in self.checks]}


def _theirs_dtype(theirs: dict) -> str:
    floats = [v.dtype for k, v in theirs.items() if k.startswith(GRAD) and v.dtype.kind == "f"]
    if not floats:
        return "float64"
    return min(floats, key=lambda d: d.itemsize).name


def _validate_theirs(theirs: dict, ours: OracleResult, label: str) -> None:
    expected = {k: v.shape for k, v in ours.arrays().items()}
    problems, missing, extra = [], [], []
    for name, shape in expected.items():
        if name.startswith(GRAD) and name not in theirs:
            missing.append(name)
    for name, arr in theirs.items():
        if name not in expected:
            plain = GRAD + name in expected
            extra.append(f"{name} (gradients are named {GRAD}{name})" if plain else name)
            continue
        shape = expected[name]
        if tuple(arr.shape) != tuple(shape):
            problems.append(shape_mismatch(name, arr.shape, shape))
    if missing or extra:
        problems.insert(0, name_mismatch(missing, extra))
    if problems:
        raise ShapeError(f"{label} does not match the model: {'; '.join(problems)}")


def _check(name, theirs, ours, rtol, atol) -> TensorCheck:
    """One tensor, with the absolute tolerance on the tensor's scale ``max(1, max|ours|)``."""
    scale = max(1.0, float(np.max(np.abs(ours)))) if ours.size else 1.0
    return compare_arrays(name, theirs, ours, rtol, atol * scale, n_worst=3)


def _reduction_hint(theirs: dict, ours: dict, fail: TensorCheck, n: int, rtol, atol):
    if n < 2:
        return None
    for factor, option in ((n, "sum"), (1.0 / n, "mean")):
        if _check(fail.name, theirs[fail.name], ours[fail.name] * factor, rtol, atol).passed:
            return (f"theirs is {'N' if factor == n else '1/N'} times refvae's for {fail.name}: "
                    f"your loss {'sums' if option == 'sum' else 'averages'} over the batch; "
                    f"use --reduction {option}")
    return None


def compare(theirs, ours: OracleResult, *, rtol: float | None = None, atol: float | None = None,
            name_map=None) -> OracleReport:
    """Compare their arrays (a dict or ``.npz`` path with the result file's keys; ``grad/<name>``
    required for every parameter, the rest optional) with refvae's result."""
    label = _label(theirs, "theirs")
    theirs = _renamed(_arrays(theirs, "theirs"), name_map or {}, label, prefix=GRAD)
    _validate_theirs(theirs, ours, label)
    dtype = _theirs_dtype(theirs)
    defaults = TOLERANCES["float64" if dtype == "float64" else "float32"]
    notes = []
    used = [f"{k}={defaults[k]:g}" for k, given in (("rtol", rtol), ("atol", atol)) if given is None]
    if dtype != "float64" and used:
        notes.append(f"your gradients are {dtype}: using the float32 default{'s' if len(used) > 1 else ''} "
                     f"{', '.join(used)} (refvae computes in float64 at your parameters); "
                     "--rtol/--atol override")
    rtol = defaults["rtol"] if rtol is None else float(rtol)
    atol = defaults["atol"] if atol is None else float(atol)
    mine = ours.arrays()
    checks = [_check(name, theirs[name], mine[name], rtol, atol) for name in mine if name in theirs]
    fails = [c for c in checks if not c.passed]
    if fails:
        hint = _reduction_hint(theirs, mine, fails[0], len(ours.kl_per_datum), rtol, atol)
        if hint:
            notes.append(hint)
    return OracleReport(checks, rtol, atol, dtype, notes)


def check(config, params, batch, theirs, *, estimator: str | None = None, reduction: str = "mean",
          temperature=None, rtol: float | None = None, atol: float | None = None, name_map=None,
          backend: str = "numpy") -> OracleReport:
    """:func:`compute` then :func:`compare`: the meaning of ``refvae oracle compare``."""
    ours = compute(config, params, batch, estimator=estimator, reduction=reduction,
                   temperature=temperature, name_map=name_map, backend=backend)
    return compare(theirs, ours, rtol=rtol, atol=atol, name_map=name_map)


def assert_matches(config, params, batch, theirs, **kwargs) -> OracleReport:
    """:func:`check`, raising :class:`OracleMismatch` (an ``AssertionError``) with the table when
    any tensor fails; returns the report when all pass. For use inside a user's pytest suite."""
    report = check(config, params, batch, theirs, **kwargs)
    if not report.passed:
        raise OracleMismatch(str(report))
    return report


# ----- example -----------------------------------------------------------------------------------
def write_example(directory, *, latent: str = "gaussian", emission: str = "bernoulli",
                  learn_alpha: bool = False, categories: int | None = None, estimator: str | None = None,
                  reduction: str = "mean", temperature: float | None = None, n: int = 4, samples: int = 2,
                  seed: int = 0, flow_length: int = 0) -> dict:
    """Write a complete, valid set of oracle files for a small model into ``directory``:
    ``config.json``, ``params.npz``, ``batch.npz`` and ``theirs.npz`` (refvae's own result, in the
    format a user's exporter writes); ``flow_length`` planar flows follow a Gaussian latent (their
    amortized heads ``encoder.flow_u/w/b``). Returns ``{file role: path}``."""
    if latent == "categorical":  # the default estimator relaxes the sample: it needs a temperature
        categories = 3 if categories is None else categories
        temperature = 0.5 if temperature is None else temperature
    spec = {"format": FORMAT, "data_dim": 6, "latent_dim": 2, "encoder_hidden": [5],
            "decoder_hidden": [5], "activation": "tanh", "latent": latent, "emission": emission,
            "alpha": 1.0, "learn_alpha": learn_alpha}
    if categories is not None:
        spec["categories"] = categories
    if flow_length:
        spec["flow_length"] = flow_length
    config = load_config(spec)
    vae = VAE(config)
    noise = NoiseSource(seed)
    params = {k: vae.bk.to_numpy(v) for k, v in vae.init_params(noise).items()}
    y = noise.uniform((n, config.data_dim))
    if emission == "bernoulli":
        y = np.round(y)
    batch = {"y": y, vae.latent.noise_name: vae.bk.to_numpy(vae.draw_noise(noise, n, samples))}
    if temperature is not None:
        batch["temperature"] = np.asarray(float(temperature))
    result = compute(config, params, batch, estimator=estimator, reduction=reduction)
    ensure_writable_dir(directory)
    paths = {role: os.path.join(os.fspath(directory), f"{role}.{ext}")
             for role, ext in (("config", "json"), ("params", "npz"), ("batch", "npz"), ("theirs", "npz"))}
    save_json(paths["config"], config.to_dict())
    write_npz(paths["params"], params)
    write_npz(paths["batch"], batch)
    write_npz(paths["theirs"], result.arrays())
    return paths
