"""``check_unbiased``: is a user's stochastic gradient estimator unbiased for the gradient of the
expected negative ELBO? (ORACLE.md, "Is your estimator unbiased?")

The user gives M independent draws of their estimator (``grad/<name>`` arrays ``(M, *shape)``,
each draw with fresh noise) at fixed parameters and data. refvae supplies the expected gradient:

* exactly, where the gradient is a polynomial of degree ≤ 3 in the Gaussian noise (Gaussian
  latents with a linear decoder and the ``gaussian`` emission: the reconstruction is quadratic in
  x): the symmetric cubature rule with the 2K points ``±√K e_k`` and equal weights integrates
  such polynomials exactly against N(0, I), so refvae's pathwise gradient with those 2K points as
  its L samples *is* the expectation;
* exactly, for categorical latents small enough to enumerate (analytic KL): the ``score``
  estimator with two samples (leave-one-out baseline) is unbiased, so its average over every
  ordered pair of configurations, weighted by their posterior probabilities, is the gradient;
* otherwise from R replicates of refvae's own unbiased estimator (pathwise, or ``score`` for
  categorical latents), with its standard error.

Per entry ``z = (mean of the draws − reference) / sqrt(s²/M + se_ref²)``, after taking off the
oracle's rounding tolerance for the draws' dtype (a difference within it is rounding, not bias);
two-sided p-values from Student's t with M − 1 degrees of freedom, Bonferroni-corrected over all P
entries; the estimator fails when any corrected p-value falls below ``level``. The report also
states, per tensor, the bias that would be detected with probability 0.9 (the power of the test with
these M draws).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ..backend import NoiseSource
from ..errors import ConfigError, DataError, ShapeError, name_mismatch
from ..math.latent.categorical import log_softmax
from ..util.checked import checked
from .core import GRAD, TOLERANCES, dtype_class
from ..math.vae import VAE
from .inputs import arrays_of, label, load_config, load_inputs
from .layouts import flatten_results, translate

POWER = 0.9
MAX_ENUMERATION_CALLS = 5000


@dataclass
class UnbiasedRow:
    """One tensor: its z-scores, the worst entry, the corrected p-value and the detectable bias."""

    name: str
    shape: tuple
    z: np.ndarray
    p_adjusted: float
    detectable: np.ndarray
    passed: bool
    varies: np.ndarray | None = None   # the entries whose draws (or reference) vary at all

    @property
    def resolution(self) -> float:
        """The median detectable bias over the entries that vary: an entry that is always the same
        (a gradient that is always 0, e.g. of a blank border pixel) is resolved to rounding and
        would understate what the test can see elsewhere; 0 when no entry varies."""
        d = self.detectable if self.varies is None else self.detectable[self.varies]
        return float(np.median(d)) if d.size else 0.0

    @property
    def worst(self) -> tuple:
        if self.z.size == 0:
            return ()
        return tuple(int(i) for i
                     in np.unravel_index(int(np.nanargmax(np.abs(self.z))), self.z.shape))


@dataclass
class UnbiasedReport:
    """The unbiasedness test of M draws against refvae's expected gradient."""

    rows: list
    draws: int
    level: float
    reference: str
    entries: int
    aliases: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def failures(self) -> list:
        return [r for r in self.rows if not r.passed]

    def __str__(self) -> str:
        lines = [f"unbiasedness check: {'PASS' if self.passed else 'FAIL'} ({self.draws} draws "
                 "against "
                 f"{self.reference}; fail when a Bonferroni-corrected p-value over {self.entries} "
                 "entries "
                 f"is below {self.level:g}; 'detectable' is the median bias found with "
                 f"probability {POWER:g}, over the entries that vary)"]
        names = [self.label(r.name) for r in self.rows]
        width = max([len(n) for n in names] + [6])
        lines.append(f"{'tensor':<{width}}  {'shape':<14} {'max |z|':>9} {'at':<12}"
                     f" {'p (corr.)':>10} "
                     f"{'detectable':>11}  result")
        for name, r in zip(names, self.rows):
            zmax = float(np.max(np.abs(r.z))) if r.z.size else 0.0
            lines.append(f"{name:<{width}}  {str(r.shape):<14} {zmax:9.3g} {str(r.worst):<12} "
                         f"{r.p_adjusted:10.3g}"
                         f" {r.resolution:11.3g}  "
                         f"{'ok' if r.passed else 'BIASED'}")
        return "\n".join(lines)

    def label(self, name: str) -> str:
        theirs = self.aliases.get(name)
        return name if theirs is None else f"{name} ({theirs})"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "draws": self.draws, "level": self.level,
                "reference": self.reference,
                "entries": self.entries,
                "tensors": [{"name": r.name, "their_name": self.aliases.get(r.name, r.name),
                             "shape": list(r.shape),
                             "max_abs_z": float(np.max(np.abs(r.z))) if r.z.size else 0.0,
                             "worst": list(r.worst), "p_adjusted": r.p_adjusted,
                             "median_detectable_bias": r.resolution,
                             "passed": r.passed} for r in self.rows]}


# ----- refvae's expected gradient ----------------------------------------------------------------
def cubature_applies(config) -> bool:
    return (config.latent in ("gaussian", "gaussian_full") and not config.flow_length
            and not config.decoder_hidden and config.decoder_layers is None
            and config.emission == "gaussian")


def cubature_noise(n: int, k: int) -> np.ndarray:
    """The 2K points ``±√K e_k`` for every datum, ``(N, 2K, K)``: exact for polynomials of degree
    ≤ 3."""
    points = math.sqrt(k) * np.concatenate([np.eye(k), -np.eye(k)])
    return np.broadcast_to(points, (n, 2 * k, k)).copy()


def _grads(vae, params, y, noise, estimator, reduction, batch_size=None, condition=None) -> dict:
    bk = vae.bk
    res = vae.loss_and_grads({k: bk.asarray(v) for k, v in params.items()}, bk.asarray(y),
                             bk.asarray(noise),
                             estimator=estimator, reduction=reduction, check=False,
                             estimator_state={},
                             batch_size=batch_size,
                             condition=None if condition is None else bk.asarray(condition))
    return {k: np.asarray(bk.to_numpy(v), dtype=np.float64) for k, v in res.grads.items()}


def enumeration_calls(vae, n: int) -> int:
    c = vae.config
    return n * (c.categories ** c.latent_dim) ** 2


def enumerated(vae, params, y, reduction, condition=None) -> dict:
    """The exact gradient of a categorical VAE: the two-sample ``score`` estimator averaged over all
    ordered pairs of configurations with weights q(c|y)·q(c'|y), one datum at a time."""
    k, c = vae.config.latent_dim, vae.config.categories
    cond = None if condition is None else vae.bk.asarray(condition)
    heads, _ = vae.encode({n: vae.bk.asarray(v) for n, v in params.items()}, vae.bk.asarray(y),
                          cond)
    log_pi = vae.bk.to_numpy(log_softmax(vae.bk, heads["logits"].reshape(len(y), k, c)))
    configs = list(itertools.product(range(c), repeat=k))
    total = {name: np.zeros(shape) for name, shape in vae.param_shapes().items()}
    for i in range(len(y)):
        for a, b in itertools.product(configs, repeat=2):
            weight = math.exp(sum(log_pi[i, j, a[j]] + log_pi[i, j, b[j]] for j in range(k)))
            if weight == 0.0:
                continue
            g0 = np.zeros((1, 2, k, c))
            g0[0, 0, range(k), a] = g0[0, 1, range(k), b] = 1e3 + 2 * np.abs(log_pi[i]).max()
            g = _grads(vae, params, y[i:i + 1], g0, "score", reduction, batch_size=len(y),
                       condition=None if condition is None else condition[i:i + 1])
            for name in total:
                total[name] += weight * g[name]
    return total


def replicated(vae, params, y, estimator, reduction, replicates: int, samples: int,
               seed: int, condition=None) -> tuple:
    """Mean and standard error over ``replicates`` runs of refvae's estimator, ``samples`` each."""
    source = NoiseSource(seed)
    runs = [_grads(vae, params, y, vae.bk.to_numpy(vae.draw_noise(source, len(y), samples)),
                   estimator, reduction, condition=condition) for _ in range(replicates)]
    mean = {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}
    se = {k: np.std([r[k] for r in runs], axis=0, ddof=1) / math.sqrt(replicates) for k in runs[0]}
    return mean, se


def reference(inputs, estimator, reduction, replicates, samples, seed) -> tuple:
    """``(expected gradient, its standard error, how it was obtained)``."""
    vae, params, y, cond = inputs.vae, inputs.params, inputs.y, inputs.condition
    c = vae.config
    zero = {k: np.zeros(s) for k, s in vae.param_shapes().items()}
    if estimator is None and cubature_applies(c):
        exact = _grads(vae, params, y, cubature_noise(len(y), c.latent_dim), "pathwise", reduction,
                       condition=cond)
        return exact, zero, f"the exact expected gradient (cubature over {2 * c.latent_dim} points)"
    categorical = c.latent == "categorical"
    if estimator is None and categorical and c.categorical_kl == "analytic" \
            and enumeration_calls(vae, len(y)) <= MAX_ENUMERATION_CALLS:
        return (enumerated(vae, params, y, reduction, cond), zero,
                f"the exact expected gradient (enumeration of {c.categories ** c.latent_dim} "
                "configurations)")
    estimator = estimator or ("score" if categorical else "pathwise")
    samples = max(samples, 2) if estimator.startswith("score") else samples
    mean, se = replicated(vae, params, y, estimator, reduction, replicates, samples, seed, cond)
    return mean, se, (f"refvae's {estimator} estimator ({replicates} replicates of {samples} "
                      "samples)")


# ----- the test ----------------------------------------------------------------------------------
def _draws(draws, inputs, layout_label: str) -> tuple:
    """Their draws under refvae's names, ``{name: (M, *shape)}``, and the names' origins."""
    raw = arrays_of(draws, "draws", flatten_results)
    shapes = inputs.vae.param_shapes()
    counts = {v.shape[0] if v.ndim else 0 for v in raw.values()}
    if len(counts) != 1 or min(counts) < 2:
        raise ShapeError(
            f"{layout_label}: every draws array must be (M, *shape) with the same M ≥ "
            "2 "
            f"(found M = {sorted(counts)}); stack M independent gradient draws along "
            "axis 0")
    m = counts.pop()
    per_draw = [translate({k: v[i] for k, v in raw.items()}, inputs.layout, shapes, layout_label,
                          GRAD)
                for i in range(m)]
    origin = per_draw[0][1]
    stacked = {k: np.stack([d[0][k] for d in per_draw]) for k in per_draw[0][0]}
    expected = {GRAD + k: s for k, s in shapes.items()}
    missing = [k for k in expected if k not in stacked]
    extra = [k for k in stacked if k not in expected]
    problems = [name_mismatch(missing, extra)] if missing or extra else []
    problems += [f"{k} has shape {stacked[k].shape[1:]} per draw, expected {tuple(s)}"
                 for k, s in expected.items() if k in stacked and stacked[k].shape[1:] != tuple(s)]
    if problems:
        raise ShapeError(f"{layout_label} does not match the model: {'; '.join(problems)}")
    bad = [k for k, v in stacked.items() if not np.isfinite(v).all()]
    if bad:
        raise DataError(f"{layout_label}: draws of {', '.join(bad)} contain NaN or inf")
    return stacked, {k: v[len(GRAD):] for k, v in origin.items() if v != k}


def rounding_band(draws: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Differences within the oracle's tolerance for the draws' dtype are rounding, not bias (an
    estimator may be deterministic in some coordinates: Price's log-variance gradient)."""
    tol = TOLERANCES[dtype_class(draws)]
    scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
    return tol["atol"] * scale + tol["rtol"] * np.abs(ref)


def check_unbiased(config, params, y, draws, *, estimator: str | None = None, level: float = 1e-3,
                   reduction: str = "mean", name_map=None, layout=None, split=None,
                   reference_replicates: int = 200, reference_samples: int = 32,
                   seed: int = 0, condition=None) -> UnbiasedReport:
    """Test M independent draws of a gradient estimator (``draws``: ``grad/<name>`` arrays of shape
    ``(M, *shape)``, or a nested ``{"grad": tree}``, or an ``.npz`` path) for bias against refvae's
    expected gradient of the batch's negative ELBO at ``params`` (see the module docstring).
    ``estimator`` names refvae's unbiased estimator to use as the reference instead of an exact
    one; ``condition`` (or the batch's ``condition`` array, where ``y`` is a batch) is a
    conditional VAE's ``c`` ``(N, condition_dim)``, as in :func:`~refvae.oracle.check`."""
    level = checked(level, "level", minimum=0, maximum=1, open_min=True)
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"unknown reduction {reduction!r}; choose mean or sum")
    for what, value in (("reference_replicates", reference_replicates),
                        ("reference_samples", reference_samples)):
        checked(value, what, integer=True, minimum=2)
    inputs = _inputs(config, params, y, name_map, layout, split, condition)
    stacked, aliases = _draws(draws, inputs, label(draws, "draws"))
    m = next(iter(stacked.values())).shape[0]
    ref, ref_se, how = reference(inputs, estimator, reduction, reference_replicates,
                                 reference_samples, seed)
    entries = sum(int(np.prod(s)) for s in inputs.vae.param_shapes().values())
    critical = stats.t.isf(level / (2 * entries), m - 1)
    rows = []
    for name in inputs.vae.param_shapes():
        d = stacked[GRAD + name]
        mean, se = d.mean(axis=0), d.std(axis=0, ddof=1) / math.sqrt(m)
        total = np.sqrt(se ** 2 + ref_se[name] ** 2)
        band = rounding_band(d, ref[name])
        diff = mean - ref[name]
        beyond = np.sign(diff) * np.maximum(np.abs(diff) - band, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(total > 0, beyond / np.where(total > 0, total, 1.0),
                         np.where(beyond == 0, 0.0, np.inf))
        p = 2 * stats.t.sf(np.abs(z), m - 1) if z.size else np.ones(0)
        p_adj = float(min(1.0, entries * float(p.min()))) if z.size else 1.0
        detectable = band + (critical + stats.norm.isf(1 - POWER)) * total
        rows.append(UnbiasedRow(GRAD + name, tuple(d.shape[1:]), z, p_adj, detectable,
                                p_adj >= level, total > 0))
    return UnbiasedReport(rows, m, float(level), how, entries, aliases)


def _inputs(config, params, y, name_map, layout, split, condition=None):
    """Validated parameters, data and condition; the noise is a placeholder (the draws brought
    their own)."""
    batch = {}
    if hasattr(y, "shape") or isinstance(y, (list, tuple)):
        y_arr = y
    else:
        data = arrays_of(y, "batch")
        if "y" not in data:
            raise ShapeError(f"{label(y, 'batch')} has no array 'y'; "
                             f"found: {', '.join(map(repr, data)) or 'nothing'}")
        y_arr = data["y"]
        batch = {k: data[k] for k in ("condition",) if k in data}
    vae = VAE(load_config(config))
    placeholder = np.zeros(vae.latent.noise_shape(np.shape(y_arr)[0] if np.ndim(y_arr) else 1, 1))
    batch.update({"y": y_arr, vae.latent.noise_name: placeholder})
    return load_inputs(vae.config, params, batch, None, name_map, "numpy", layout, split,
                       condition)
