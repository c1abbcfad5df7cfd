"""``refvae train``, ``refvae evaluate`` and ``refvae sample``.

With no arguments ``refvae train`` trains the built-in default: a VAE with a two-dimensional
latent space on scikit-learn's bundled 8×8 digits (no download, no path), in about a minute on two
cores, writing its run directory to ``runs/default``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import inputs
from . import io as rio
from .config import VAEConfig
from .errors import CheckpointError, ConfigError
from .numbers import checked, cli_int

# The built-in default: small enough for about a minute on two cores, 2-D so that every figure
# (latent means, manifold) is drawn.
DEFAULT_ARCH = {"latent_dim": 2, "encoder_hidden": [128], "decoder_hidden": [128],
                "activation": "tanh", "latent": "gaussian", "emission": "bernoulli"}
DEFAULT_OPTIONS = {"epochs": 60, "batch_size": 64, "lr": 3e-3, "optimizer": "adam"}

ARCH_FLAGS = ("latent_dim", "encoder_hidden", "decoder_hidden", "activation", "latent", "emission",
              "alpha", "learn_alpha", "categories", "flow_length")
OPTION_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "samples",
                "seed", "estimator", "binarize", "temperature", "temperature_rate", "temperature_min",
                "temperature_every", "eval_samples", "lr_gamma", "lr_step_size", "threads")


def _model_config(args, data_dim: int) -> VAEConfig:
    """Architecture: the built-in default, then ``--config FILE``, then individual flags."""
    arch = dict(DEFAULT_ARCH)
    if args.config:
        from_file = rio.load_json(args.config)
        if not isinstance(from_file, dict):
            raise ConfigError(f"{args.config}: a config must be a JSON object")
        arch.update(from_file)
    for name in ARCH_FLAGS:
        value = getattr(args, name)
        if value is not None:
            arch[name] = value
    given = checked(arch.get("data_dim"), "config field 'data_dim'", integer=True, minimum=1, none=True)
    if given is not None and given != data_dim:
        raise ConfigError(f"config data_dim is {given} but the data have {data_dim} dimensions; "
                          "fix data_dim or choose other data")
    arch["data_dim"] = data_dim
    return VAEConfig.from_dict(arch)


def _cmd_train(args) -> int:
    from .data import load_dataset  # noqa: PLC0415 - keep `refvae --help` light
    from .figures import make_figures  # noqa: PLC0415
    from .train import TrainOptions, load_run, train  # noqa: PLC0415

    data = load_dataset(args.data, data_dir=args.data_dir)
    config = _model_config(args, data.train.shape[1])
    opts = dict(DEFAULT_OPTIONS)
    opts.update({k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k) is not None})
    opts["progress"] = not args.quiet
    opts["detect_anomaly"] = args.detect_anomaly
    options = TrainOptions.from_dict(opts)
    out = Path(args.out)
    if not args.quiet:
        print(f"refvae train: {data.name} ({data.train.shape[0]} train, "
              f"{0 if data.test is None else data.test.shape[0]} test, D={config.data_dim}); "
              f"{config.latent} latent K={config.latent_dim}, {config.emission} emission; out {out}",
              file=sys.stderr)
    history = train(config, options, data, out, args.backend, args.dtype, resume=args.resume)
    if not args.no_figures:
        model, params, _ = load_run(out, args.backend, args.dtype)
        written = make_figures(model, params, data, out, history, seed=options.seed)
        if not args.quiet:
            print("figures: " + ", ".join(p.name for p in written), file=sys.stderr)
    last = history[-1] if history else {}
    print(json.dumps({k: v for k, v in last.items() if k != "seconds"}))
    return 0


def _cmd_evaluate(args) -> int:
    from .data import check_support, load_dataset  # noqa: PLC0415
    from .objectives import evaluate  # noqa: PLC0415
    from .train import load_run  # noqa: PLC0415

    model, params, info = load_run(args.run, args.backend, args.dtype)
    data = load_dataset(args.data or info.get("data"), data_dir=args.data_dir)
    y = getattr(data, args.split)
    if y is None:
        raise ConfigError(f"the data set {data.name!r} has no {args.split} split")
    check_support(y, model.config.emission, f"the {data.name} {args.split} split")
    if y.shape[1] != model.config.data_dim:
        raise ConfigError(f"the {args.split} data have {y.shape[1]} values per datum but the run's "
                          f"model has data_dim {model.config.data_dim}; give the run's data")
    model.config.check_batch("--samples", min(len(y), 500), args.samples)
    result = evaluate(model, params, y, seed=args.seed, samples=args.samples, iwae_k=args.iwae)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


def _cmd_sample(args) -> int:
    from .data import load_dataset  # noqa: PLC0415
    from .figures import sample_grid  # noqa: PLC0415
    from .train import load_run  # noqa: PLC0415

    model, params, info = load_run(args.run, args.backend, args.dtype)
    shape = args.image_shape
    if shape is None:
        shape = load_dataset(info.get("data"), data_dir=args.data_dir).image_shape
    if shape is None:
        raise ConfigError("the run's data are not images; pass --image-shape ROWS COLS")
    out = _png_path(args.out)
    model.config.check_batch("--n", args.n)
    sample_grid(model, params, out, n=args.n, seed=args.seed, image_shape=tuple(shape))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _png_path(out) -> Path:
    """``--out`` of ``sample``: the PNG file written (``.png`` added when it has no suffix, as
    matplotlib does), in a folder that exists, and not a folder itself."""
    out = Path(out)
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    folder = out.parent if str(out.parent) else Path(".")
    if not inputs.is_dir(folder, "output folder"):
        raise CheckpointError(f"cannot write {inputs._show(out)}: folder {inputs._show(folder)} does "
                              "not exist; create it first")
    if inputs.is_dir(out, "output"):
        raise CheckpointError(f"--out {inputs._show(out)} is a folder; give a file name such as "
                              "samples.png")
    return out


def _common(p, run_dir: bool):
    if run_dir:
        p.add_argument("run", metavar="DIR", help="a run directory written by `refvae train --out DIR`")
    p.add_argument("--backend", default="numpy", help="numpy (default) or cupy")
    p.add_argument("--dtype", default="float64", help="float64 (default) or float32")
    p.add_argument("--seed", type=int if not run_dir else cli_int(0), default=None if not run_dir else 0,
                   help="random seed (default: 0)")
    p.add_argument("--data-dir", default=None, help="directory of the data files (see --data)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a VAE (no arguments: the built-in 8x8 digits default)",
                       description="Train a VAE. With no arguments: a 2-D latent VAE on scikit-learn's "
                                   "bundled 8x8 digits, written to runs/default.")
    _common(p, run_dir=False)
    p.add_argument("--data", default=None,
                   help="digits (default, built in), mnist, fashion-mnist, binarized-mnist, frey-face, "
                        "or a path to IDX/.mat/.npz files")
    p.add_argument("--binarize", choices=["none", "static", "dynamic"], default=None,
                   help="Bernoulli emission: keep greyscale (none, default), binarize once (static) or "
                        "every epoch (dynamic)")
    p.add_argument("--config", default=None, help="model config JSON (ORACLE.md format); flags override it")
    p.add_argument("--latent-dim", type=int, default=None, help="latent dimension K (default 2)")
    p.add_argument("--encoder-hidden", type=int, nargs="*", default=None, help="encoder widths (default 128)")
    p.add_argument("--decoder-hidden", type=int, nargs="*", default=None, help="decoder widths (default 128)")
    p.add_argument("--activation", default=None, help="hidden activation (default tanh)")
    p.add_argument("--latent", default=None, help="gaussian (default), gaussian_full or categorical")
    p.add_argument("--emission", default=None, help="bernoulli (default), gaussian or gaussian_diag")
    p.add_argument("--alpha", type=float, default=None, help="variance of the gaussian emission (default 1)")
    p.add_argument("--learn-alpha", action="store_true", default=None, help="learn log alpha")
    p.add_argument("--categories", type=int, default=None, help="classes per categorical variable")
    p.add_argument("--flow-length", type=int, default=None, help="planar flows after the Gaussian (default 0)")
    p.add_argument("--epochs", type=int, default=None, help=f"passes over the data (default {DEFAULT_OPTIONS['epochs']})")
    p.add_argument("--batch-size", type=int, default=None, help=f"minibatch size (default {DEFAULT_OPTIONS['batch_size']})")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {DEFAULT_OPTIONS['lr']})")
    p.add_argument("--optimizer", default=None, help="adam (default), adagrad or sgd")
    p.add_argument("--weight-decay", type=float, default=None, help="L2 penalty (default 0)")
    p.add_argument("--schedule", default=None, help="learning-rate schedule: constant (default), step, "
                                                   "exponential, cosine")
    p.add_argument("--lr-gamma", type=float, default=None, help="decay factor of the step/exponential schedules")
    p.add_argument("--lr-step-size", type=int, default=None, help="steps between decays of the step schedule")
    p.add_argument("--samples", type=int, default=None, help="samples L per datum (default 1)")
    p.add_argument("--eval-samples", type=int, default=None, help="samples per test datum (default 1)")
    p.add_argument("--estimator", default=None, help="gradient estimator (default: the latent's, pathwise)")
    p.add_argument("--temperature", type=float, default=None,
                   help="initial relaxation temperature s0 of a categorical latent (default 1)")
    p.add_argument("--temperature-rate", type=float, default=None,
                   help="anneal s = max(s_min, s0 exp(-r t)) with this r per step (default 0: constant)")
    p.add_argument("--temperature-min", type=float, default=None, help="s_min (default 0.5)")
    p.add_argument("--temperature-every", type=int, default=None, help="update s every n steps (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads: the batch split into N row shards (default 1; results then agree "
                        "with 1 thread to rounding, not bitwise; on a GPU the batch stays whole)")
    p.add_argument("--out", default="runs/default", help="output directory (default runs/default)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--detect-anomaly", action="store_true",
                   help="check every intermediate for NaN/inf and name the first one (slower)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="negative ELBO, importance-weighted bound and active units of a run")
    _common(p, run_dir=True)
    p.add_argument("--data", default=None, help="data set (default: the one the run trained on)")
    p.add_argument("--split", choices=["train", "test"], default="test", help="which split (default test)")
    p.add_argument("--samples", type=cli_int(1), default=1, help="samples per datum for the ELBO (default 1)")
    p.add_argument("--iwae", type=cli_int(0), default=0, metavar="K", help="also the importance-weighted bound with K samples")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("sample", help="a PNG grid of samples from the prior")
    _common(p, run_dir=True)
    p.add_argument("--n", type=cli_int(1), default=64, help="number of samples (default 64)")
    p.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    p.add_argument("--image-shape", type=cli_int(1), nargs=2, default=None, metavar=("ROWS", "COLS"),
                   help="image shape when the run's data are not a known image set")
    p.set_defaults(func=_cmd_sample)
