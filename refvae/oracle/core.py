"""The oracle's comparison (ORACLE.md): refvae's numbers for the user's inputs, computed by
:meth:`refvae.math.vae.VAE.loss_and_grads` (there is no second implementation here), compared tensor
by tensor with :func:`refvae.gradcheck.compare_arrays`, and the report with its diagnosis."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import ConfigError, GradcheckError, ShapeError, name_mismatch, shape_mismatch
from ..gradcheck import CheckList, TensorCheck, compare_arrays, table_lines
from ..util.files import atomic_write
from ..util.checked import checked
from ..math.vae import REDUCTIONS
from . import diagnose
from .inputs import OracleInputs, arrays_of, default_estimator, label, load_inputs
from .layouts import Layout, flatten_results, translate

SCALARS = ("loss", "kl", "reconstruction")
PER_DATUM = ("kl_per_datum", "reconstruction_per_datum")
GRAD = "grad/"
HEADS = "heads/"

# Default tolerances by the dtype of each of *their* tensors. An entry passes when
# |theirs − ours| ≤ atol·s + rtol·|ours|, with s = max(1, max|ours|) over the tensor: rounding
# errors of a sum scale with its terms, not with the (possibly cancelled) result, so an entry that
# cancels to nearly zero is judged on the tensor's scale. float64: both sides are float64 and
# differ only in the order of roundings, ~1e-16 · sqrt(number of terms) · conditioning, so rtol
# 1e-7 keeps about eight orders of margin while a real error (a wrong factor, sign or term; one
# entry perturbed by 1e-6 relative) fails. float32: their rounding (~6e-8 per operation) dominates;
# PyTorch float32 twins needed rtol ≤ 1e-6 at atol 1e-5 (measured on a 784-400-20 model, N up to
# 512, summed loss), so the defaults keep a margin of about 100; tests/test_oracle_torch.py checks
# a margin of at least 10 on every emission. Each tensor is judged by its own dtype: one float32
# array in a float64 export loosens only that array.
TOLERANCES = {"float64": {"rtol": 1e-7, "atol": 1e-9},
              "float32": {"rtol": 1e-4, "atol": 1e-5}}


class OracleMismatch(GradcheckError):
    """Their numbers differ from refvae's; the message is the full comparison table. An
    ``AssertionError``, so pytest shows it as a test failure."""


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
    scale: float = 1.0
    inputs: OracleInputs | None = field(default=None, repr=False, compare=False)

    def arrays(self) -> dict:
        """The result file's arrays: scalars, per-datum arrays, ``grad/<name>``."""
        out = {k: np.asarray(getattr(self, k), dtype=np.float64) for k in SCALARS + PER_DATUM}
        out.update({GRAD + k: v for k, v in self.grads.items()})
        return out

    def intermediates(self) -> dict:
        """The forward pass, in order: ``heads/<name>`` ``(N, size)``, the latent sample ``x``
        ``(N, L, K_in)`` and ``decoder_out`` ``(N, L, D)`` (μ or logits: the ``decoder.out``
        head)."""
        inp = self.inputs
        vae, bk = inp.vae, inp.vae.bk
        fp = vae.forward({k: bk.asarray(v) for k, v in inp.params.items()}, bk.asarray(inp.y),
                         bk.asarray(inp.noise), self.estimator, inp.temperature,
                         None if inp.condition is None else bk.asarray(inp.condition))
        out = {HEADS + h: bk.to_numpy(v) for h, v in fp.heads.items()}
        out["x"] = bk.to_numpy(fp.state.x)
        out["decoder_out"] = bk.to_numpy(fp.dec_out)[..., :vae.config.data_dim]
        return out

    def rerun(self, **changes) -> "OracleResult":
        """refvae's result for the same inputs with ``noise``, ``params``, ``temperature``, ``vae``
        (a model with a mistaken part), ``estimator`` or ``reduction`` changed (the diagnosis tests
        its hypotheses this way)."""
        inp = replace(self.inputs,
                      **{k: changes.pop(k) for k in ("noise", "params", "temperature", "vae")
                         if k in changes})
        return compute_inputs(inp, changes.get("estimator", self.estimator),
                              changes.get("reduction", self.reduction), self.scale)


def compute_inputs(inputs: OracleInputs, estimator: str | None = None,
                   reduction: str = "mean", scale: float = 1.0) -> OracleResult:
    """:meth:`VAE.loss_and_grads` on validated inputs (fresh estimator state: deterministic);
    ``scale`` multiplies the loss and every gradient (an objective divided by D: ``1/D``)."""
    vae, bk = inputs.vae, inputs.vae.bk
    estimator = estimator or default_estimator(vae)
    noise = inputs.noise
    # The batch was budgeted when it was read; the estimator's own terms (Price's per-sample
    # Hessians) are known only now.
    vae.config.check_batch("the batch", noise.shape[0], noise.shape[1] if noise.ndim > 1 else 1,
                           estimator)
    params = {k: bk.asarray(v) for k, v in inputs.params.items()}
    res = vae.loss_and_grads(params, bk.asarray(inputs.y), bk.asarray(inputs.noise),
                             estimator=estimator,
                             reduction=reduction, check=False, temperature=inputs.temperature,
                             estimator_state={}, scale=scale,
                             condition=None if inputs.condition is None
                             else bk.asarray(inputs.condition))
    return OracleResult(res.loss, res.kl, res.reconstruction, bk.to_numpy(res.kl_per_datum),
                        bk.to_numpy(res.reconstruction_per_datum),
                        {k: np.asarray(bk.to_numpy(v), dtype=np.float64) for k,
                         v in res.grads.items()},
                        estimator, reduction, inputs.temperature, scale, inputs)


def compute(config, params, batch, *, estimator: str | None = None, reduction: str = "mean",
            temperature=None, name_map=None, backend: str = "numpy", layout=None,
            split=None, condition=None, scale: float = 1.0) -> OracleResult:
    """refvae's loss, its parts and every parameter's gradient for the given files or objects;
    ``condition`` (or the batch's ``condition`` array) is a conditional VAE's ``c``, ``scale`` the
    objective's factor (beside ``reduction``: ``reduction="sum", scale=1/D`` for a loss divided by
    D)."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    return compute_inputs(load_inputs(config, params, batch, temperature, name_map, backend, layout,
                                      split, condition),
                          estimator, reduction, scale)


def write_npz(path, arrays: dict) -> None:
    """Write ``arrays`` as a plain ``numpy.savez`` file, atomically (:mod:`refvae.util.files`)."""
    atomic_write(path, lambda fh: np.savez(fh, **arrays), "result file")


# ----- comparing ---------------------------------------------------------------------------------
@dataclass
class OracleReport(CheckList):
    """One row per compared tensor, with the user's names beside refvae's; ``hints`` is the
    diagnosis; ``str(report)`` is what ``refvae oracle compare`` prints."""

    dtype: str = "float64"
    notes: list = field(default_factory=list)
    hints: list = field(default_factory=list)
    aliases: dict = field(default_factory=dict)      # refvae's name -> the user's
    tolerances: dict = field(default_factory=dict)   # tensor -> (rtol, atol)

    def label(self, name: str) -> str:
        theirs = self.aliases.get(name)
        return name if theirs is None else f"{name} ({theirs})"

    def _rule(self) -> str:
        kinds = sorted(set(self.tolerances.values()) or {(self.rtol, self.atol)})
        if len(kinds) == 1:
            return f"{kinds[0][1]:g}·s + {kinds[0][0]:g}·|ours|"
        return "atol·s + rtol·|ours| with " + ", ".join(f"rtol={r:g}, atol={a:g}" for r,
                                                        a in kinds) \
            + " by each tensor's dtype"

    def __str__(self) -> str:
        lines = [f"oracle comparison: {'PASS' if self.passed else 'FAIL'} "
                 f"({sum(c.passed for c in self.checks)}/{len(self.checks)} tensors pass; "
                 f"pass when |theirs − ours| ≤ {self._rule()}, s = max(1, max|ours|) per "
                 "tensor)"]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"diagnosis: {h}" for h in self.hints]
        lines += table_lines([replace(c, name=self.label(c.name)) for c in self.checks],
                             ("theirs", "ours"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready form (non-finite numbers become ``null``)."""
        def num(x):
            return float(x) if math.isfinite(x) else None
        return {"passed": self.passed, "rtol": self.rtol, "atol": self.atol, "dtype": self.dtype,
                "notes": list(self.notes), "diagnosis": list(self.hints),
                "tensors": [{"name": c.name, "their_name": self.aliases.get(c.name, c.name),
                             "shape": list(c.shape), "max_abs_err": num(c.max_abs),
                             "max_rel_err": num(c.max_rel), "err_per_tol": num(c.of_tol),
                             "max_abs_err_where_zero": num(c.abs_at_zero), "passed": c.passed,
                             "rtol": self.tolerances.get(c.name, (self.rtol,))[0],
                             "atol": self.tolerances.get(c.name, (None, self.atol))[1],
                             "worst": [{"index": list(i), "theirs": num(t), "ours": num(o)}
                                       for i, t, o in c.worst]} for c in self.checks]}


def dtype_class(arr) -> str:
    """``float32`` for single (or lower) precision floats, else ``float64``: the tolerance class."""
    return "float32" if arr.dtype.kind == "f" and arr.dtype.itemsize <= 4 else "float64"


def check_tolerance(value, what: str):
    """``None`` or a finite number ≥ 0, as a float (a NaN tolerance would fail every tensor)."""
    return checked(value, what, minimum=0, none=True)


def conform(arr: np.ndarray, shape) -> np.ndarray:
    """An intermediate without its samples axis (L = 1, as most models draw one sample) takes
    refvae's shape; any other difference is left for the shape check."""
    if tuple(arr.shape) != tuple(shape) and arr.size == int(np.prod(shape)) \
            and [d for d in arr.shape if d != 1] == [d for d in shape if d != 1]:
        return arr.reshape(shape)
    return arr


def _validate_theirs(theirs: dict, expected: dict, label_: str) -> dict:
    problems, extra = [], []
    # gradients: all or none (a loss-only or forward-only export is checked as far as it goes)
    some = any(n.startswith(GRAD) for n in theirs)
    missing = [n for n in expected if n.startswith(GRAD) and n not in theirs and some]
    if not theirs:
        raise ShapeError(f"{label_} holds nothing to compare: export the loss, grad/<name> for "
                         "every "
                         "parameter, or the intermediates (ORACLE.md)")
    out = {}
    for name, arr in theirs.items():
        if name not in expected:
            plain = GRAD + name in expected
            extra.append(f"{name} (gradients are named {GRAD}{name})" if plain else name)
            continue
        arr = (conform(arr, expected[name]) if name not in SCALARS + PER_DATUM
               and not name.startswith(GRAD) else arr)
        if tuple(arr.shape) != tuple(expected[name]):
            problems.append(shape_mismatch(name, arr.shape, expected[name]))
        out[name] = arr
    if missing or extra:
        problems.insert(0, name_mismatch(missing, extra))
    if problems:
        raise ShapeError(f"{label_} does not match the model: {'; '.join(problems)}")
    return out


def _check(name, theirs, ours, rtol, atol) -> TensorCheck:
    """One tensor, with the absolute tolerance on the tensor's scale ``max(1, max|ours|)``."""
    scale = max(1.0, float(np.max(np.abs(ours)))) if ours.size else 1.0
    return compare_arrays(name, theirs, ours, rtol, atol * scale, n_worst=3)


def _tolerance_notes(theirs: dict, rtol, atol) -> list:
    grads = {k: dtype_class(v) for k, v in theirs.items() if k.startswith(GRAD)}
    single = sorted(k for k, c in grads.items() if c == "float32")
    defaults = TOLERANCES["float32"]
    used = [f"{k}={defaults[k]:g}" for k,
            given in (("rtol", rtol), ("atol", atol)) if given is None]
    if not single or not used:
        return []
    plural = "s" if len(used) > 1 else ""
    if len(single) == len(grads):
        dtype = min((theirs[k].dtype for k in single), key=lambda d: d.itemsize).name
        return [f"your gradients are {dtype}: using the float32 default{plural} {', '.join(used)} "
                "(refvae computes in float64 at your parameters); --rtol/--atol override"]
    return [f"{', '.join(single)} {'is' if len(single) == 1 else 'are'} float32 in an otherwise "
            "float64 "
            f"export: judged by the float32 default{plural} {', '.join(used)}, the others by "
            "float64's"]


def compare(theirs, ours: OracleResult, *, rtol: float | None = None, atol: float | None = None,
            name_map=None, layout=None, split=None) -> OracleReport:
    """Compare their arrays (a dict, nested or flat, or an ``.npz`` path with the result file's
    keys; ``grad/<name>`` required for every parameter; the loss, its parts and the intermediates
    ``heads/<name>``, ``x``, ``decoder_out`` optional) with refvae's result."""
    rtol, atol = check_tolerance(rtol, "rtol"), check_tolerance(atol, "atol")
    label_ = label(theirs, "theirs")
    if name_map is None and layout is None and split is None and ours.inputs is not None:
        lay = ours.inputs.layout
    else:
        lay = Layout.make(name_map, layout, split)
    shapes = ours.inputs.vae.param_shapes() if ours.inputs is not None else {}
    translated, origin = translate(arrays_of(theirs, "theirs", flatten_results), lay, shapes,
                                   label_, GRAD)
    mine = ours.arrays()
    wants_forward = any(k.startswith(HEADS) or k in ("x", "decoder_out") for k in translated)
    forward = ours.intermediates() if wants_forward and ours.inputs is not None else {}
    expected = {k: v.shape for k, v in {**forward, **mine}.items()}
    theirs_ = _validate_theirs(translated, expected, label_)
    ordered = {**forward, **mine}
    checks, tolerances = [], {}
    for name, arr in ordered.items():
        if name in theirs_:
            d = TOLERANCES[dtype_class(theirs_[name])]
            tol = (d["rtol"] if rtol is None else rtol, d["atol"] if atol is None else atol)
            tolerances[name] = tol
            checks.append(_check(name, theirs_[name], arr, *tol))
    grad_dtypes = [v.dtype for k,
                   v in theirs_.items() if k.startswith(GRAD) and v.dtype.kind == "f"]
    dtype = min(grad_dtypes, key=lambda d: d.itemsize).name if grad_dtypes else "float64"
    worst = TOLERANCES["float32" if "float32" in {dtype_class(v) for v in theirs_.values()}
                       else "float64"]
    notes = _tolerance_notes(theirs_, rtol, atol)
    if not any(k.startswith(GRAD) for k in theirs_):
        notes.append("no gradients were exported: only " + ", ".join(theirs_) + " compared")
    report = OracleReport(checks, worst["rtol"] if rtol is None else rtol,
                          worst["atol"] if atol is None else atol,
                          dtype, notes,
                          aliases={k: v[len(GRAD):] if v.startswith(GRAD) else v
                                   for k, v in origin.items() if v != k},
                          tolerances=tolerances)
    if not report.passed:
        def agrees(name, candidate):
            return _check(name, theirs_[name], np.asarray(candidate, dtype=float),
                          *tolerances[name]).passed
        report.hints = diagnose.diagnose(theirs_, ordered, report, ours, agrees)
    return report


def check(config, params, batch, theirs, *, estimator: str | None = None, reduction: str = "mean",
          temperature=None, rtol: float | None = None, atol: float | None = None, name_map=None,
          backend: str = "numpy", layout=None, split=None, condition=None,
          scale: float = 1.0) -> OracleReport:
    """:func:`compute` then :func:`compare`: the meaning of ``refvae oracle compare``."""
    rtol, atol = check_tolerance(rtol, "rtol"), check_tolerance(atol, "atol")
    ours = compute(config, params, batch, estimator=estimator, reduction=reduction,
                   temperature=temperature, name_map=name_map, backend=backend, layout=layout,
                   split=split, condition=condition, scale=scale)
    return compare(theirs, ours, rtol=rtol, atol=atol)


def assert_matches(config, params, batch, theirs, **kwargs) -> OracleReport:
    """:func:`check`, raising :class:`OracleMismatch` (an ``AssertionError``) with the table when
    any tensor fails; returns the report when all pass. For use inside a user's pytest suite."""
    report = check(config, params, batch, theirs, **kwargs)
    if not report.passed:
        raise OracleMismatch(str(report))
    return report
