"""``refvae train``, ``refvae evaluate`` and ``refvae sample``.

With no arguments ``refvae train`` trains the built-in default: a VAE with a two-dimensional
latent space on scikit-learn's bundled 8×8 digits (no download, no path), in about a minute on two
cores, writing its run directory to ``runs/default``. The rules that keep a run directory whole
(``--resume``, ``--overwrite``, the lock, the staged first epoch) are in :mod:`refvae.train.rundir`.

On ``--resume`` the run's ``config.json`` and ``train.json`` supply every setting. A flag given
anyway is applied when it does not change the numbers a continued run computes — ``--epochs`` (the
new total; refused for a cosine schedule, which is planned over the original epochs), ``--threads``,
``--backend``, ``--data``/``--data-dir`` (data that moved), and the output flags — and refused
with one line when it would (the model, the optimisation options, ``--dtype``).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from ..util import inputs
from ..util import files as rio
from ..train import rundir
from ..math.config import VAEConfig, check_fields_apply
from ..errors import CheckpointError, ConfigError
from ..util.checked import checked
from .condition import eval_condition, sample_condition, with_condition_dim
from .train_args import (ARCH_FLAGS, DEFAULT_ARCH, DEFAULT_OPTIONS, OPTION_FLAGS,
                         register_evaluate, register_sample, register_train)

APPLIED_ON_RESUME = ("epochs", "threads")


def _arch_from_flags(args, arch: dict) -> dict:
    """``arch`` updated by ``--config FILE``, then by the individual flags."""
    arch = dict(arch)
    if args.config:
        from_file = rio.load_json(Path(args.config).expanduser())
        if not isinstance(from_file, dict):
            raise ConfigError(f"{args.config}: a config must be a JSON object")
        arch.update(from_file)
        for net in ("encoder", "decoder"):      # a layer list replaces the default MLP widths
            if f"{net}_layers" in from_file and f"{net}_hidden" not in from_file:
                arch.pop(f"{net}_hidden", None)
        if {"encoder_layers", "decoder_layers"} <= set(from_file) and "activation" not in from_file:
            arch.pop("activation", None)
    for name in ARCH_FLAGS:
        value = getattr(args, name)
        if value is not None:
            arch[name] = value
    return arch


# Layers whose input is an image (channels, height, width): an encoder starting with one reads the
# datum as one channel of the data's image shape unless the config gives data_shape.
IMAGE_LAYERS = ("conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "batch_norm2d")


def _model_config(args, data_dim: int, condition_dim: int = 0, image_shape=None) -> VAEConfig:
    """Architecture: the built-in default, then ``--config FILE``, then individual flags (and
    ``--condition``: the data's ``condition_dim``; ``image_shape``: the data's ``(rows, cols)``,
    the ``data_shape`` ``[1, rows, cols]`` of an encoder that starts with an image layer)."""
    arch = _arch_from_flags(args, DEFAULT_ARCH)
    if args.condition is not None:
        arch = with_condition_dim(arch, condition_dim)
    given = checked(arch.get("data_dim"), "config field 'data_dim'", integer=True, minimum=1,
                    none=True)
    if given is not None and given != data_dim:
        raise ConfigError(f"config data_dim is {given} but the data have {data_dim} dimensions; "
                          "fix data_dim or choose other data")
    arch["data_dim"] = data_dim
    layers = arch.get("encoder_layers")
    if (arch.get("data_shape") is None and image_shape is not None and isinstance(layers, list)
            and layers and isinstance(layers[0], dict) and layers[0].get("type") in IMAGE_LAYERS):
        arch["data_shape"] = [1, *image_shape]
    model = SimpleNamespace(emission=arch.get("emission", "bernoulli"),
                            latent=arch.get("latent", "gaussian"))
    if isinstance(model.emission, str) and isinstance(model.latent, str):
        check_fields_apply(model, [k for k in ARCH_FLAGS if getattr(args, k) is not None])
    return VAEConfig.from_dict(arch)


def _check_flags_apply(args, config: VAEConfig, options) -> None:
    """Every model or optimisation flag given must apply to the model and options chosen (one
    table each: :data:`refvae.math.config.FIELD_APPLIES`,
    :data:`refvae.train.loop.OPTION_APPLIES`)."""
    from ..train.loop import check_applicable  # noqa: PLC0415

    check_fields_apply(config, [k for k in ARCH_FLAGS if getattr(args, k) is not None])
    check_applicable(config, options, [k for k in OPTION_FLAGS if getattr(args, k) is not None],
                     flags=True)


def _resume_settings(args, out: Path):
    """``(config, options, data spec, backend, dtype)`` of the run in ``out``, with the flags given
    on this command line applied or refused (module docstring)."""
    info = rundir.read_train_json(out, required=True)
    saved = rundir.read_config(out)
    wanted = _arch_from_flags(args, saved.to_dict())
    changed = [f"{k} {wanted.get(k)!r} (run: {v!r})" for k,
               v in saved.to_dict().items() if wanted.get(k) != v]
    recorded = dict(info.get("options") or {})
    effective = _effective_options(saved, recorded)
    changed += [f"--{k.replace('_', '-')} {getattr(args, k)!r} (run: {effective.get(k)!r})"
                for k in OPTION_FLAGS if k not in APPLIED_ON_RESUME
                and getattr(args, k) is not None and getattr(args, k) != effective.get(k)]
    dtype = info.get("dtype", "float64")
    if args.condition is not None and args.condition != rundir.condition_source(info):
        changed.append(f"--condition {args.condition} (run: {rundir.condition_source(info)})")
    if args.dtype is not None and args.dtype != dtype:
        changed.append(f"--dtype {args.dtype} (run: {dtype})")
    if changed:
        raise ConfigError(f"--resume continues {out} as recorded; {'; '.join(changed)} would "
                          "change it: "
                          "drop those flags, or start a new run with another --out")
    opts = dict(recorded)
    if args.epochs is not None and args.epochs != recorded.get("epochs"):
        _check_epochs_reached(out, args.epochs)
        if recorded.get("schedule") == "cosine":
            raise ConfigError(f"--epochs {args.epochs}: the run's cosine schedule anneals over its "
                              f"{recorded.get('epochs')} planned epochs and cannot be extended; "
                              "start a "
                              "new run with the total --epochs")
        opts["epochs"] = args.epochs
    if args.threads is not None:
        opts["threads"] = args.threads
    data_dir = None if args.data_dir is None else _data_dir(args.data_dir)
    spec = args.data if args.data is not None else rundir.data_source(info, data_dir)
    if spec is None:
        raise rundir.no_data_record(out)
    return saved, opts, spec, args.backend or info.get("backend", "numpy"), dtype


def _latent_default(config: VAEConfig) -> str:
    """The latent's own estimator (``pathwise``, or ``gumbel-softmax`` for a categorical one)."""
    from ..math.latent import make_latent  # noqa: PLC0415

    return make_latent(config).default_estimator


def _effective_options(config: VAEConfig, recorded: dict) -> dict:
    """The recorded options with what None means filled in (the latent's own estimator; a relaxed
    latent's temperature 1), so that a flag naming the value the run used is not a change."""
    latent_default = _latent_default(config)
    effective = dict(recorded)
    if effective.get("estimator") is None:
        effective["estimator"] = latent_default
    if effective.get("temperature") is None and latent_default != "pathwise":
        effective["temperature"] = 1.0
    return effective


def _data_dir(text) -> Path:
    if not str(text).strip():
        raise ConfigError("--data-dir is empty (--data-dir ''); give the folder that holds the "
                          "data, or leave the flag out")
    return Path(text).expanduser()


def _check_epochs_reached(out: Path, epochs: int) -> None:
    """Refuse ``--resume --epochs N`` below the epochs already trained, before any data load."""
    from ..train.loop import CHECKPOINT  # noqa: PLC0415

    ckpt = out / CHECKPOINT
    if not inputs.is_file(ckpt, "checkpoint"):
        return  # train() says that there is no checkpoint
    done = rio.load_npz_checked(ckpt)[1].get("epoch")
    if isinstance(done, int) and epochs < done:
        raise ConfigError(f"--epochs {epochs}: the run in {inputs.show(out)} has already trained "
                          f"{done} epochs; pass --epochs {done} or more")


def _load_data(spec, args, quiet: bool, condition=None):
    from ..data.load import load_dataset  # noqa: PLC0415 - keep `refvae --help` light

    t0 = time.perf_counter()
    if not quiet:
        print(f"refvae: loading {spec or 'digits'} …", file=sys.stderr, flush=True)
    data_dir = None if args.data_dir is None else _data_dir(args.data_dir)
    data = load_dataset(spec, data_dir=data_dir, download=getattr(args, "download", False),
                        progress=not quiet, hints="cli", condition=condition)
    if not quiet and time.perf_counter() - t0 > 1.0:
        print(f"refvae: loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return data


def _cmd_train(args) -> int:
    from ..train.loop import TrainOptions, load_run, train  # noqa: PLC0415

    if not args.no_figures:
        from ..train.figures import require_matplotlib  # noqa: PLC0415

        require_matplotlib()
    # `--out .` or a symlink: the lock and staging go beside the real folder
    out = Path(args.out).expanduser().resolve()
    with rundir.RunLock(out) as lock:
        rundir.check_target(out, args.resume, args.overwrite)
        before = rundir.entries(out)  # what the staged run may replace: nothing saved after this
        if args.resume:
            config, opts, spec, backend, dtype = _resume_settings(args, out)
            data = _load_data(spec, args, args.quiet,
                              rundir.condition_source(rundir.read_train_json(out)))
        else:
            data = _load_data(args.data, args, args.quiet, args.condition)
            config = _model_config(args, data.train.shape[1], data.condition_dim,
                                   getattr(data, "image_shape", None))
            opts = dict(DEFAULT_OPTIONS, threads="auto")
            opts.update({k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k) is not None})
            backend, dtype = args.backend or "numpy", args.dtype or "float64"
        if opts.get("threads") == "auto":
            from ..fast.threads import usable_cores  # noqa: PLC0415

            opts["threads"] = usable_cores()
        opts["progress"] = not args.quiet
        opts["detect_anomaly"] = args.detect_anomaly
        if args.log_interval is not None:
            opts["log_interval"] = args.log_interval
        options = TrainOptions.from_dict(opts)
        _check_flags_apply(args, config, options)
        estimator = options.estimator or _latent_default(config)
        if not args.quiet:
            print(f"refvae train: {data.name} ({data.train.shape[0]} train, "
                  f"{0 if data.test is None else data.test.shape[0]} test, D={config.data_dim}); "
                  f"{config.latent} latent K={config.latent_dim}, {config.emission} emission; "
                  + (f"condition: {data.condition_source or 'none'} (C={config.condition_dim}"
                     f"{', one-hot' if data.condition_source == 'labels' else ''}); "
                     if config.condition_dim else "") +
                  f"estimator {estimator}, {options.samples} sample(s) per datum; "
                  f"{options.threads} thread(s); out {inputs.show(out)}", file=sys.stderr)
        if args.resume and not args.quiet:
            _say_if_finished(out, options.epochs, not args.no_figures)
        staging = None
        try:  # from the staging folder's creation on: a signal at any moment removes it
            staging = None if args.resume else rundir.make_staging(out, inside=lock.inside)
            if rundir.in_place(staging, out) and not args.quiet:
                print(rundir.IN_PLACE_NOTE.format(out=inputs.show(out), why="its folder is not "
                                                  "writable"), file=sys.stderr)
            after_epoch = _after_epoch(args, out, staging, config, backend, dtype, data,
                                       options.seed, before)
            history = train(config, options, data, staging or out, backend, dtype,
                            resume=args.resume, after_epoch=after_epoch)
        finally:
            rundir.discard(staging)
        if not args.no_figures:
            from ..train.figures import make_figures  # noqa: PLC0415

            model, params, _ = load_run(out, backend, dtype)
            written = make_figures(model, params, data, out, history, seed=options.seed)
            if not args.quiet:
                print("figures: " + ", ".join(p.name for p in written), file=sys.stderr)
                if getattr(data, "image_shape", None) is None:
                    print(f"figures: the data {data.name!r} have no image shape, so there are no "
                          "sample or reconstruction images (use `refvae sample --image-shape ROWS "
                          "COLS` or --out FILE.npy for the arrays)", file=sys.stderr)
    last = history[-1] if history else {}
    print(json.dumps({k: v for k, v in last.items() if k != "seconds"}))
    return 0


def _say_if_finished(out: Path, epochs: int, figures: bool) -> None:
    """One line when ``--resume`` finds the run already at its total: nothing is trained."""
    from ..train.loop import CHECKPOINT  # noqa: PLC0415

    if not inputs.is_file(out / CHECKPOINT, "checkpoint"):
        return  # train() says that there is no checkpoint
    done = rio.load_npz_checked(out / CHECKPOINT)[1].get("epoch")
    if done == epochs:
        print(f"refvae train: the run in {inputs.show(out)} has already trained its {epochs} "
              "epochs; nothing to train (pass --epochs N, a larger total, to continue)"
              + ("; redrawing its figures" if figures else ""), file=sys.stderr)


def _after_epoch(args, out: Path, staging, config, backend, dtype, data, seed, before=frozenset()):
    """What runs after each checkpoint: the staged run moved into place after the first one, and
    the per-epoch figure snapshots of ``--figures-every``."""
    state = {"staging": staging, "model": None}

    def hook(current, record, params):
        if state["staging"] is not None:
            current = rundir.publish(state["staging"], out, before, say=None if args.quiet
                                     else lambda text: print(text, file=sys.stderr))
            state["staging"] = None
        every = args.figures_every
        if every and not args.no_figures and record["epoch"] % every == 0:
            from ..train.figures import snapshot  # noqa: PLC0415
            from ..math.vae import VAE  # noqa: PLC0415

            state["model"] = state["model"] or VAE(config, backend, dtype)
            snapshot(state["model"], params, data, Path(current) / "epochs", record["epoch"], seed)
        return current

    return hook


def _cmd_evaluate(args) -> int:
    from ..util.gates import check_support  # noqa: PLC0415
    from ..math.objectives import evaluate  # noqa: PLC0415
    from ..util.progress import Meter  # noqa: PLC0415
    from ..train.loop import load_run  # noqa: PLC0415

    args.run = Path(args.run).expanduser()
    backend, dtype = run_engine(args)
    model, params, info = load_run(args.run, backend, dtype)
    data_dir = None if args.data_dir is None else _data_dir(args.data_dir)
    spec = args.data if args.data is not None else rundir.data_source(info, data_dir)
    if spec is None:
        raise rundir.no_data_record(args.run)
    data = _load_data(spec, args, args.quiet or args.json,
                      rundir.condition_source(info) if model.config.condition_dim else None)
    y = getattr(data, args.split)
    if y is None:
        raise ConfigError(f"the data set {data.name!r} has no {args.split} split")
    check_support(y, model.config.emission, f"the {data.name} {args.split} split")
    if y.shape[1] != model.config.data_dim:
        raise ConfigError(f"the {args.split} data have {y.shape[1]} values per datum but the run's "
                          f"model has data_dim {model.config.data_dim}; give the run's data")
    model.config.check_batch("--samples", min(len(y), 500), args.samples)
    cond = eval_condition(model.config, data, args.split)
    if args.iwae:
        # The bound on k: one datum's k samples at once must fit the memory budget (they are
        # processed in chunks, but a k beyond that is work no run finishes).
        model.config.check_batch("--iwae", 1, args.iwae)
        if not args.quiet:
            _iwae_estimate(model, params, y, args.iwae, cond)
    meter = Meter(f"iwae k={args.iwae}", int(y.shape[0]), bool(args.iwae) and not args.quiet,
                  unit="rows", log_interval=max(1, int(y.shape[0]) // 10))
    result = evaluate(model, params, y, seed=args.seed, samples=args.samples, iwae_k=args.iwae,
                      progress=meter.advance, condition=cond)
    if args.iwae:
        meter.line(f"iwae k={args.iwae}: {y.shape[0]} rows done")
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


IWAE_NOTICE_SECONDS = 30.0  # an --iwae run estimated to take longer is announced with its estimate
LARGE_K = 100  # from this K on, the estimate is printed whatever it is


def _iwae_estimate(model, params, y, k: int, condition=None) -> float:
    """Time a small pilot of the importance-weighted bound (its own noise: the results are
    unchanged), extrapolate to ``k`` samples of every row, and print the estimate before starting
    when ``k ≥`` :data:`LARGE_K` or the run is long. Returns the estimate in seconds."""
    from ..backend import NoiseSource  # noqa: PLC0415
    from ..math.objectives import iwae_bound  # noqa: PLC0415
    from ..util.progress import clock  # noqa: PLC0415

    rows, pilot_k = min(len(y), 20), min(k, 256)
    t0 = time.perf_counter()
    iwae_bound(model, params, y[:rows], NoiseSource(0), pilot_k, rows,
               condition=None if condition is None else condition[:rows])
    seconds = (time.perf_counter() - t0) * (len(y) / rows) * (k / pilot_k)
    if seconds > IWAE_NOTICE_SECONDS or k >= LARGE_K:
        print(f"refvae evaluate: --iwae {k} over {len(y)} rows will take about {clock(seconds)} "
              f"here (estimated from a pilot of {rows} row(s)); Ctrl-C stops it, a smaller K is "
              "faster (the bound is looser)", file=sys.stderr, flush=True)
    return seconds


def info_backend(run) -> str:
    """The backend a run trained on (numpy when it does not say)."""
    return rundir.read_train_json(run).get("backend") or "numpy"


def run_engine(args) -> tuple[str, str]:
    """``(backend, dtype)`` for evaluate and sample: the flags, else what the run recorded."""
    path = Path(args.run) / "train.json"
    info = rio.load_json(path) if inputs.is_file(path, "run file") else {}
    info = info if isinstance(info, dict) else {}
    return (args.backend or info.get("backend") or "numpy",
            args.dtype or info.get("dtype") or "float64")


def _cmd_sample(args) -> int:
    from ..train.figures import sample_grid  # noqa: PLC0415
    from ..train.loop import load_run  # noqa: PLC0415

    args.run = Path(args.run).expanduser()
    backend, dtype = run_engine(args)
    model, params, info = load_run(args.run, backend, dtype)
    model.config.check_batch("--n", args.n)
    condition = sample_condition(args, model.config, args.n)
    if Path(args.out).suffix.lower() == ".npy":
        return _write_sample_array(model, params, args, condition)
    shape = args.image_shape or rundir.image_shape(info)
    if shape is None and isinstance(info.get("data"), str):  # a run of an older refvae
        from ..data.load import load_dataset  # noqa: PLC0415

        shape = load_dataset(info.get("data"), data_dir=None if args.data_dir is None
                             else _data_dir(args.data_dir)).image_shape
    if shape is None:
        raise ConfigError("the run's data are not images; pass --image-shape ROWS COLS")
    shape = tuple(checked(s, "the image shape", integer=True, minimum=1) for s in shape)
    if len(shape) != 2 or shape[0] * shape[1] != model.config.data_dim:
        raise ConfigError(f"image shape {' x '.join(map(str, shape))} does not hold the model's "
                          f"{model.config.data_dim} values per datum; give --image-shape ROWS COLS "
                          f"with ROWS·COLS = {model.config.data_dim}")
    out = _png_path(args.out)
    sample_grid(model, params, out, n=args.n, seed=args.seed, image_shape=tuple(shape),
                condition=condition)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _write_sample_array(model, params, args, condition=None) -> int:
    """``sample --out FILE.npy``: the decoded means of ``--n`` prior draws, ``(n, data_dim)``
    (``--n`` already checked against the memory budget by :func:`_cmd_sample`)."""
    import numpy as np  # noqa: PLC0415 - host side

    from ..backend import NoiseSource  # noqa: PLC0415
    from ..train.figures import decoded_means, prior_inputs  # noqa: PLC0415

    out = _png_path(args.out)
    means = decoded_means(model, params, prior_inputs(model, NoiseSource(args.seed), args.n),
                          clip=False, condition=condition)
    rio.atomic_write(out, lambda f: np.save(f, means, allow_pickle=False), "samples")
    print(f"wrote {out} ({args.n} × {means.shape[1]} decoded means)", file=sys.stderr)
    return 0


def _png_path(out) -> Path:
    """``--out`` of ``sample``: the PNG (or ``.npy``) file written (``.png`` added when it has no
    suffix, as matplotlib does), in a folder that exists, and not a folder itself."""
    out = Path(out).expanduser()
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    folder = out.parent if str(out.parent) else Path(".")
    if not inputs.is_dir(folder, "output folder"):
        raise CheckpointError(f"cannot write {inputs.show(out)}: folder {inputs.show(folder)} does "
                              "not exist; create it first")
    if inputs.is_dir(out, "output"):
        raise CheckpointError(f"--out {inputs.show(out)} is a folder; give a file name such as "
                              "samples.png")
    return out


def register(sub) -> None:
    register_train(sub, _cmd_train)
    register_evaluate(sub, _cmd_evaluate)
    register_sample(sub, _cmd_sample)
