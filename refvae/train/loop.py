"""The training loop: seeded, reproducible, resumable, and stopped cleanly on divergence.

One :class:`~refvae.backend.NoiseSource` seeded by ``seed`` owns every random draw of a run — the
initial parameters, the minibatch order, the base noise and dynamic binarization — and its state
is saved in each checkpoint, so the same seed gives the same numbers and a resumed run continues
exactly where an uninterrupted one would have been (bit for bit).

``threads`` > 1 splits each batch into row shards on a :class:`~refvae.fast.parallel.Workers` pool
(open for an epoch's steps, closed before its evaluation); the gradients are then summed in another
order, so such a run agrees with a one-thread run to rounding, not bitwise (and with itself, resumed
or not, bit for bit). This function's default, one thread, gives a seed the same numbers on every
machine whose BLAS rounds alike; ``refvae train`` defaults to every usable core
(``--threads auto``).

An output directory holds ``config.json`` (the model, ORACLE.md format), ``train.json`` (the run's
options and data: :mod:`refvae.train.rundir`), ``checkpoint.npz`` (parameters, optimizer state,
epoch, generator state; written atomically at the end of every epoch), ``metrics.jsonl`` (one JSON
object per epoch) and figures.

``device_noise`` draws the base noise on the device (:class:`~refvae.backend.DeviceNoise`): no host
draw and copy per step, but NumPy and CuPy runs of a seed then differ; by default the noise comes
from the host stream, so that they agree.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np  # host side: data order and per-epoch summaries

from ..util import inputs
from ..util import files as rio
from . import rundir
from . import condition as conditional
from ..fast import parallel
from ..backend import DeviceNoise, NoiseSource
from ..math.config import VAEConfig
from ..data.load import BINARIZATIONS, apply_binarization, binarize
from ..util.gates import check_params, check_support
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..util.checked import checked
from ..math.objectives import neg_elbo_terms
from ..fast.optim import make_optimizer
from ..optim.rules import FlatParams
from ..util.progress import Meter, clock
from ..optim.schedules import TemperatureSchedule, make_schedule
from ..fast.model import fast_vae

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"


@dataclass
class TrainOptions:
    """How to train (everything except the architecture, which is :class:`VAEConfig`)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    lr_gamma: float = 0.1
    lr_step_size: int = 1000
    samples: int = 1
    seed: int = 0
    estimator: str | None = None
    binarize: str = "none"
    temperature: float | None = None
    temperature_rate: float = 0.0
    temperature_min: float = 0.5
    temperature_every: int = 1
    eval_samples: int = 1
    progress: bool = True
    detect_anomaly: bool = False
    threads: int = 1
    log_interval: int = 100
    device_noise: bool = False

    def __post_init__(self):
        for name, rule in _OPTION_RULES.items():
            setattr(self, name, checked(getattr(self, name), name, **rule))
        if self.binarize not in BINARIZATIONS:
            raise ConfigError(f"unknown binarization {self.binarize!r}; choose one "
                              f"of {', '.join(BINARIZATIONS)}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(map(repr, unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def temperature_schedule(self, latent) -> TemperatureSchedule | None:
        """Jang et al.'s ``s = max(s_min, s_0 exp(−r t))`` for a relaxed latent (``None``
        otherwise); a pure function of the step, so resuming needs only the step count."""
        if latent.default_estimator == "pathwise":
            return None
        return TemperatureSchedule(1.0 if self.temperature is None else self.temperature,
                                   self.temperature_rate,
                                   min(self.temperature_min, self.temperature or 1.0),
                                   self.temperature_every)


_POSITIVE_INT = {"integer": True, "minimum": 1}
_POSITIVE = {"minimum": 0, "open_min": True}
_OPTION_RULES = {
    **dict.fromkeys(("epochs", "batch_size", "samples", "eval_samples", "temperature_every",
                     "threads", "lr_step_size", "log_interval"), _POSITIVE_INT),
    "seed": {"integer": True, "minimum": 0, "maximum": 2**63 - 1},
    "lr": _POSITIVE, "lr_gamma": _POSITIVE, "weight_decay": {"minimum": 0},
    "temperature": {**_POSITIVE, "none": True}, "temperature_rate": {"minimum": 0},
    "temperature_min": _POSITIVE,
}


def _relaxed(config, options) -> bool:
    return config.latent == "categorical"


_CATEGORICAL = (_relaxed, "categorical latents (--latent categorical)", "latent {latent!r}")
# Each option that applies to some models or settings only: option -> (applies(config, options),
# where it applies, what this run has instead). An option that does not apply is refused in one
# line (by the CLI when its flag is given; by train() when it differs from its default) rather than
# silently ignored.
OPTION_APPLIES = {
    "temperature": _CATEGORICAL,
    "temperature_rate": _CATEGORICAL,
    "temperature_min": _CATEGORICAL,
    "temperature_every": _CATEGORICAL,
    "lr_gamma": (lambda c, o: o.schedule in ("step", "exponential"),
                 "--schedule step or exponential", "schedule {schedule!r}"),
    "lr_step_size": (lambda c, o: o.schedule == "step", "--schedule step", "schedule {schedule!r}"),
    "binarize": (lambda c, o: c.emission == "bernoulli" or o.binarize == "none",
                 "the bernoulli emission", "emission {emission!r}"),
}


def check_applicable(config: VAEConfig, options: "TrainOptions", given=None, flags=False) -> None:
    """Refuse an option that does not apply to ``config`` with ``options`` (:data:`OPTION_APPLIES`).

    ``given``: the option names the user set (the CLI's flags); None: those that differ from their
    defaults. ``flags``: name them as ``--flag`` rather than as options."""
    defaults = TrainOptions.__dataclass_fields__
    if given is None:
        given = [k for k in OPTION_APPLIES if getattr(options, k) != defaults[k].default]
    for name in given:
        if name not in OPTION_APPLIES:
            continue
        applies, where, instead = OPTION_APPLIES[name]
        if applies(config, options):
            continue
        shown = f"--{name.replace('_', '-')}" if flags else f"option {name!r}"
        have = instead.format(latent=config.latent, schedule=options.schedule,
                              emission=config.emission)
        raise ConfigError(f"{shown} applies only to {where}, not to {have}; drop it"
                          + (" or change the model" if "latent" in instead or "emission" in instead
                             else " or choose such a schedule"))


class TrainingDiverged(NonFiniteError):
    """The loss or a gradient became NaN/inf; the message names the step and the tensor."""


@dataclass
class RunState:
    """What a checkpoint restores."""

    params: dict
    optimizer: dict
    optimizer_name: str
    epoch: int
    step: int
    noise_state: str
    estimator_state: dict


def save_checkpoint(path, flat: FlatParams, optimizer, epoch: int, step: int, noise: NoiseSource,
                    config: VAEConfig, estimator_state: dict) -> None:
    """Parameters (``param/<name>``), optimizer state (``optim/<key>``) and JSON metadata,
    atomically."""
    arrays = {f"param/{k}": v for k, v in flat.to_numpy().items()}
    meta = {"epoch": epoch, "step": step, "noise_state": noise.state(), "config": config.to_dict(),
            "estimator_state": _jsonable(estimator_state), "optimizer": optimizer.name,
            "optimizer_scalars": {}}
    for k, v in optimizer.state_dict().items():
        if isinstance(v, np.ndarray):
            arrays[f"optim/{k}"] = v
        else:
            meta["optimizer_scalars"][k] = v
    rio.atomic_write_npz(path, arrays, meta)


def load_checkpoint(path, config: VAEConfig) -> RunState:
    """Read a checkpoint written by :func:`save_checkpoint` for this ``config`` (else
    CheckpointError: another config, arrays that are not floating point, non-finite values, corrupt
    metadata)."""
    arrays, meta = rio.load_npz_checked(path, names=lambda n: n.startswith(("param/", "optim/")),
                                        expected="param/NAME and optim/NAME arrays")
    try:
        saved = VAEConfig.from_dict(meta["config"])
        if saved != config:
            raise CheckpointError(f"{path}: the checkpoint belongs to another model config "
                                  f"({saved.to_dict()}); resume with that config or start a new "
                                  "--out")
        for name, a in arrays.items():
            if a.dtype.kind != "f":
                raise CheckpointError(f"{path}: array {name!r} has dtype {a.dtype}, but a "
                                      "checkpoint "
                                      "holds floating-point arrays; the file is not a refvae "
                                      "checkpoint")
            if not np.isfinite(a).all():
                raise CheckpointError(f"{path}: array {name!r} holds NaN or inf, so the checkpoint "
                                      "is not usable (a diverged or damaged run); restore a good "
                                      "copy "
                                      "or train again")
        params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
        optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
        optim.update(meta["optimizer_scalars"])
        counter = {"integer": True, "minimum": 0, "error": CheckpointError}
        return RunState(params, optim, str(meta["optimizer"]),
                        checked(meta["epoch"], f"{path}: the stored epoch", **counter),
                        checked(meta["step"], f"{path}: the stored step", **counter),
                        str(meta["noise_state"]), dict(meta.get("estimator_state") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is incomplete or corrupt "
                              f"({exc})") from exc


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if hasattr(v, "tolist"):
            v = v.tolist()
        out[k] = v
    return out


def _first_nonfinite(bk, grads: dict) -> str | None:
    for name, g in grads.items():
        if not bool(bk.xp.isfinite(g).all()):
            return name
    return None


def train(config: VAEConfig, options: TrainOptions, data, out_dir, backend: str = "numpy",
          dtype: str = "float64", resume: bool = False, stream=None,
          after_epoch=None) -> list[dict]:
    """Train ``config`` on ``data`` (an object with host arrays ``train`` and ``test``) into
    ``out_dir``; returns the per-epoch metrics (also in ``metrics.jsonl``).

    ``after_epoch(out, record, params)``, when given, runs after each epoch's checkpoint and returns
    the directory to continue in (the CLI moves a staged run into place after its first epoch).

    A conditional ``config`` (``condition_dim`` > 0) trains on ``data.train_condition`` and is
    evaluated with ``data.test_condition`` (:mod:`refvae.train.condition`).

    Raises :class:`TrainingDiverged` naming the step and the tensor when the loss or a gradient is
    not finite; the checkpoint of the last finished epoch is left in place.
    """
    out = rio.ensure_writable_dir(out_dir)
    model = fast_vae(config, backend, dtype)
    bk = model.bk
    _check_data(model, data, options, resume)
    c_train, c_test = conditional.conditions(config, data)  # None, None: unconditional
    estimator = options.estimator or model.default_estimator
    config.check_batch("batch_size × samples", options.batch_size, options.samples, estimator)
    if getattr(data, "test", None) is not None:
        config.check_batch("eval_samples over the test split", min(len(data.test), 500),
                           options.eval_samples)
    ckpt_path = out / CHECKPOINT

    check_applicable(config, options)
    schedule_end = max(1, options.epochs) * max(1, -(-len(data.train) // options.batch_size))
    _schedule(options, schedule_end)(schedule_end)  # overflows refused before the first step
    temperature = options.temperature_schedule(model.latent)
    noise = NoiseSource(options.seed)
    params = model.init_params(noise)
    _preflight(model, params, data, options, estimator, temperature, c_train)
    start_epoch, step, estimator_state = 0, 0, {}
    flat = FlatParams.from_dict(bk, params)
    opt = make_optimizer(options.optimizer, bk, flat.size, lr=options.lr,
                         weight_decay=options.weight_decay)
    history: list[dict] = []
    if resume:
        if not inputs.exists(ckpt_path, "checkpoint"):
            raise CheckpointError(f"--resume: no checkpoint at {ckpt_path}; train without --resume "
                                  "first")
        state = load_checkpoint(ckpt_path, config)
        if state.optimizer_name != opt.name:
            raise CheckpointError(f"{ckpt_path} was written with "
                                  f"optimizer {state.optimizer_name!r}; "
                                  f"resume with --optimizer {state.optimizer_name}")
        flat.load(state.params)
        opt.load_state_dict(state.optimizer)
        try:
            noise.set_state(state.noise_state)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{ckpt_path}: the stored generator state is corrupt ({exc}); "
                                  "restore a good copy or train again without --resume") from exc
        start_epoch, step, estimator_state = state.epoch, state.step, state.estimator_state
        if options.epochs < start_epoch:
            raise ConfigError(f"--epochs {options.epochs}: the run in {out} has already trained "
                              f"{start_epoch} epochs; pass --epochs {start_epoch} or more")
        history = [m for m in _read_metrics(out / METRICS) if m["epoch"] <= start_epoch]
    rio.save_json(out / "config.json", config.to_dict())
    rio.save_json(out / "train.json",
                  {"options": options.to_dict(), "data": rundir.data_record(data,
                                                                            c_train is not None),
                   "backend": backend, "dtype": dtype})
    _write_metrics(out / METRICS, history)

    data = apply_binarization(data, options.binarize, seed=options.seed + 1)
    y_train = data.train
    n = y_train.shape[0]
    per_epoch = math.ceil(n / options.batch_size)
    schedule = _schedule(options, per_epoch)
    y_dev = bk.asarray(y_train) if options.binarize != "dynamic" else None
    c_dev = None if c_train is None else bk.asarray(c_train)

    run_t0 = time.perf_counter()
    for epoch in range(start_epoch + 1, options.epochs + 1):
        t0 = time.perf_counter()
        order = noise.permutation(n)
        order_dev = bk.xp.asarray(order)   # one copy per epoch; each batch gathers by a slice of it
        # --device-noise: the base noise of this epoch's steps drawn on the device, from a stream
        # seeded by (seed, epoch), so that a resumed run continues as an uninterrupted one.
        draws = DeviceNoise(bk, [options.seed, epoch, 2]) if options.device_noise else noise
        if y_dev is None:
            y_epoch = bk.asarray(binarize(data.train, noise))
        else:
            y_epoch = y_dev
        sums = np.zeros(3)
        meter = Meter(f"epoch {epoch}/{options.epochs}", per_epoch, options.progress, stream,
                      options.log_interval)
        # The pool lives for this epoch's steps only: evaluation and the checkpoint run after it is
        # closed, with the BLAS library's own thread count back.
        with parallel.Workers(options.threads) as workers:
            for b in range(per_epoch):
                idx = order[b * options.batch_size:(b + 1) * options.batch_size]
                rows = order_dev[b * options.batch_size:(b + 1) * options.batch_size]
                yb = y_epoch[rows]
                eps = model.draw_noise(draws, len(idx), options.samples)
                try:
                    res = parallel.loss_and_grads(
                        model, workers, flat.params, yb, eps, estimator, check=False,
                        temperature=temperature(step) if temperature else None,
                        estimator_state=estimator_state,
                        detect_anomaly=options.detect_anomaly, grads_out=flat.grads,
                        grad_buffer=flat.grad, condition=None if c_dev is None else c_dev[rows])
                except NonFiniteError as exc:
                    raise _diverged(epoch, step, str(exc), ckpt_path, start_epoch, history) from exc
                bad = None if res.grads_finite else _first_nonfinite(bk, res.grads)
                if bad:
                    raise _diverged(epoch, step, f"the gradient of {bad} contains NaN or inf",
                                    ckpt_path,
                                    start_epoch, history)
                opt.step(flat, lr=schedule(step), workers=workers)
                step += 1
                sums += (res.loss * len(idx), res.kl * len(idx), res.reconstruction * len(idx))
                meter.advance(1, f"loss {sums[0] / min((b + 1) * options.batch_size, n):.4f}")
        record = {"epoch": epoch, "step": step, "lr": schedule(step),
                  **({"temperature": temperature(step)} if temperature else {}),
                  "train_loss": sums[0] / n, "train_kl": sums[1] / n,
                  "train_reconstruction": sums[2] / n}
        # The last update of the epoch is checked here: no later gradient would catch it.
        bad = _first_nonfinite(bk, flat.params)
        if bad:
            raise _diverged(epoch, step, f"the parameter {bad} became NaN or inf", ckpt_path,
                            start_epoch, history)
        record.update(_test_metrics(model, flat.params, data, options, epoch, c_test))
        bad = [k for k, v in record.items() if not math.isfinite(v)]
        if bad:
            raise _diverged(epoch, step, f"{', '.join(bad)} is NaN or inf", ckpt_path, start_epoch,
                            history)
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        # Metrics first: a kill between the two writes leaves a metrics line ahead of the
        # checkpoint, which a resume drops, never a checkpoint without its metrics line.
        _write_metrics(out / METRICS, history)
        save_checkpoint(ckpt_path, flat, opt, epoch, step, noise, config, estimator_state)
        if after_epoch is not None:
            out = Path(after_epoch(out, record, flat.params))
            ckpt_path = out / CHECKPOINT
        left = (time.perf_counter() - run_t0) / (epoch - start_epoch) * (options.epochs - epoch)
        meter.line(_epoch_text(record, options.epochs)
                   + (f"  run eta {clock(left)}" if left else ""))
    return history


def _schedule(options: TrainOptions, per_epoch: int):
    """The learning-rate schedule by name; cosine anneals over the whole run."""
    kw = {"step": {"step_size": options.lr_step_size, "gamma": options.lr_gamma},
          "exponential": {"gamma": options.lr_gamma},
          "cosine": {"total_steps": options.epochs * per_epoch}}.get(options.schedule, {})
    return make_schedule(options.schedule, options.lr, **kw)


def _preflight(model, params, data, options, estimator, temperature, condition=None):
    """One loss evaluation on a few training rows with throwaway noise before anything is written,
    so that an estimator, sample count or temperature that does not fit fails at once."""
    n = min(len(data.train), options.batch_size)
    eps = model.draw_noise(NoiseSource(0), n, options.samples)
    model.loss_and_grads(params, data.train[:n], eps, estimator,
                         temperature=temperature(0) if temperature else None,
                         condition=None if condition is None else condition[:n])


def _check_data(model, data, options, resume: bool = False):
    for split in ("train", "test"):
        arr = getattr(data, split, None)
        if arr is None:
            continue
        check_support(arr, model.config.emission)
        if arr.ndim != 2 or arr.shape[1] != model.config.data_dim:
            advice = (f"resume on the run's data ({model.config.data_dim} values per datum: "
                      "--data/--data-dir), or train a new run with another --out" if resume
                      else f"set data_dim to {arr.shape[-1]}")
            raise ConfigError(f"the {split} data have shape {arr.shape}, but the model's data_dim "
                              "is "
                              f"{model.config.data_dim}; {advice}")


def _test_metrics(model, params, data, options, epoch, condition=None) -> dict:
    test = getattr(data, "test", None)
    if test is None or len(test) == 0:
        return {}
    # A generator of its own per epoch, so evaluation never shifts the training stream.
    kl, rec = neg_elbo_terms(model, params, test, NoiseSource([options.seed, epoch, 1]),
                             options.eval_samples, condition=condition)
    return {"test_neg_elbo": float((kl + rec).mean()), "test_kl": float(kl.mean()),
            "test_reconstruction": float(rec.mean())}


def _epoch_text(r: dict, epochs: int) -> str:
    text = f"epoch {r['epoch']}/{epochs}  train {r['train_loss']:.4f}"
    if "test_neg_elbo" in r:
        text += f"  test {r['test_neg_elbo']:.4f} (KL {r['test_kl']:.3f})"
    return text + f"  {r['seconds']:.1f}s"


def _diverged(epoch, step, what, ckpt_path, start_epoch, history) -> TrainingDiverged:
    last = history[-1]["epoch"] if history else start_epoch
    kept = f"the last good checkpoint (epoch {last}) is kept at {ckpt_path}" if Path(
        ckpt_path).exists() \
        else "no checkpoint was written yet"
    return TrainingDiverged(f"training stopped at epoch {epoch}, step {step}: {what}; {kept}; "
                            "lower --lr or check the data")


_METRIC_KEYS = ("epoch", "train_loss", "train_kl", "train_reconstruction")
_TEST_KEYS = ("test_neg_elbo", "test_kl", "test_reconstruction")


def _read_metrics(path: Path) -> list[dict]:
    """The per-epoch records (else CheckpointError naming the line and the field): each a JSON
    object with an integer ``epoch`` above the line before's, an integer ``step`` (0 or more),
    ``seconds`` 0 or more, and every other field a finite number (what the figures plot)."""
    if not inputs.exists(path, "metrics file"):
        return []
    lines = [(i, inputs.loads_json(line, f"{path} line {i}", CheckpointError)) for i, line
             in enumerate(inputs.read_text(path, "metrics file").splitlines(), 1) if line.strip()]
    records = []
    for i, r in lines:  # every line parsed first: a torn last line is named as such
        if not isinstance(r, dict):
            raise CheckpointError(f"{path} line {i} is not a JSON object; repair or delete "
                                  "the line")
        for key, value in r.items():
            rule = {"epoch": {"integer": True, "minimum": 1},
                    "step": {"integer": True, "minimum": 0},
                    "seconds": {"minimum": 0}}.get(key, {})
            checked(value, f"{path} line {i}: field {key!r}", **rule, error=CheckpointError)
        missing = [k for k in _METRIC_KEYS if k not in r]
        if missing or any(k in r for k in _TEST_KEYS) and not all(k in r for k in _TEST_KEYS):
            absent = missing or [k for k in _TEST_KEYS if k not in r]
            raise CheckpointError(f"{path} line {i} has no field {absent[0]!r}; repair or "
                                  "delete the line")
        if records and r["epoch"] <= records[-1]["epoch"]:
            raise CheckpointError(f"{path} line {i}: epoch {r['epoch']} follows epoch "
                                  f"{records[-1]['epoch']}; repair or delete the line")
        records.append(r)
    return records


def _write_metrics(path: Path, history: list[dict]) -> None:
    rio.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in history))


def load_run(run_dir, backend: str = "numpy", dtype: str = "float64"):
    """``(model, params, info)`` of a training run directory (``config.json`` + ``checkpoint.npz``);
    ``info`` is ``train.json`` (options and data name) when present."""
    run = Path(run_dir)
    config = rundir.read_config(run)
    info = rundir.read_train_json(run)
    state = load_checkpoint(run / CHECKPOINT, config)
    model = fast_vae(config, backend, dtype)
    params = check_params(model, state.params)
    return model, params, info
