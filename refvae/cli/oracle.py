"""``refvae oracle compute | compare | unbiased | example``: the command-line face of
:mod:`refvae.oracle`.

Exit codes: 0 when every tensor passes, 1 when any differs, 2 for unusable input (one line on
stderr, printed by :func:`refvae.cli.main.main`).
"""
from __future__ import annotations

import json
import os
import sys

from .. import oracle
from ..math.config import LATENTS
from ..math.emission import EMISSIONS
from ..util.checked import cli_float, cli_int
from ..math.vae import REDUCTIONS


_PATHS = ("config", "params", "batch", "grads", "draws", "out", "map_file")


def _expand(args):
    """``~`` expanded in every path of an oracle command, as in train's and evaluate's."""
    for name in _PATHS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
    return args


def _name_map(args) -> dict:
    return oracle.parse_name_map(args.map or (), args.map_file)


def _layout(args) -> dict:
    return {"name_map": _name_map(args), "layout": args.layout,
            "split": oracle.parse_split(args.split or ())}


def _emit(text) -> None:
    """Print; a reader that closed the pipe early (``| head``) is not an error: the exit status
    still reports the comparison."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail either


def _cmd_compute(args) -> int:
    _expand(args)
    result = oracle.compute(args.config, args.params, args.batch, estimator=args.estimator,
                            reduction=args.reduction, temperature=args.temperature,
                            backend=args.backend, scale=args.scale, **_layout(args))
    oracle.write_npz(args.out, result.arrays())
    if args.json:
        _emit(json.dumps({"out": os.fspath(args.out), "loss": result.loss, "kl": result.kl,
                          "reconstruction": result.reconstruction, "estimator": result.estimator,
                          "reduction": result.reduction, "temperature": result.temperature}))
    else:
        unit = "nats per datum" if result.reduction == "mean" else "nats, summed over the batch"
        _emit(f"wrote {args.out}: loss {result.loss:.10g} (KL {result.kl:.10g}, reconstruction "
              f"{result.reconstruction:.10g}) {unit}; estimator {result.estimator}")
    return 0


def _cmd_compare(args) -> int:
    _expand(args)
    report = oracle.check(args.config, args.params, args.batch, args.grads,
                          estimator=args.estimator,
                          reduction=args.reduction, temperature=args.temperature, rtol=args.rtol,
                          atol=args.atol, backend=args.backend, scale=args.scale,
                          **_layout(args))
    _emit(json.dumps(report.to_dict()) if args.json else report)
    return 0 if report.passed else 1


def _cmd_unbiased(args) -> int:
    _expand(args)
    report = oracle.check_unbiased(args.config, args.params, args.batch, args.draws,
                                   estimator=args.estimator,
                                   level=args.level, reduction=args.reduction, seed=args.seed,
                                   reference_replicates=args.reference_replicates, **_layout(args))
    _emit(json.dumps(report.to_dict()) if args.json else report)
    return 0 if report.passed else 1


def _cmd_example(args) -> int:
    _expand(args)
    paths = oracle.write_example(args.out, latent=args.latent, emission=args.emission,
                                 learn_alpha=args.learn_alpha, categories=args.categories,
                                 estimator=args.estimator, reduction=args.reduction,
                                 temperature=args.temperature, seed=args.seed,
                                 flow_length=args.flow_length, overwrite=args.overwrite)
    command = (f"refvae oracle compare --config {paths['config']} --params {paths['params']} "
               f"--batch {paths['batch']} --grads {paths['theirs']}"
               + (f" --reduction {args.reduction}" if args.reduction != "mean" else "")
               + (f" --estimator {args.estimator}" if args.estimator else ""))
    if args.json:
        _emit(json.dumps({"files": paths, "compare": command}))
    else:
        _emit(f"wrote {', '.join(paths.values())}\n"
              "theirs.npz holds refvae's own result in the format your exporter writes; check it "
              "with\n"
              f"  {command}")
    return 0


def _model_options(p, out_help: str) -> None:
    p.add_argument("--config", required=True, help="config.json (architecture, ORACLE.md)")
    p.add_argument("--params", required=True, help="params.npz (PyTorch state_dict names and "
                                                   "layout)")
    p.add_argument("--batch", required=True, help="batch.npz: y, the noise (eps or gumbel), "
                                                  "optional temperature")
    _run_options(p)
    p.add_argument("--scale", type=cli_float(0, open_min=True), default=1.0,
                   help="a factor of your whole objective beside --reduction, e.g. 0.00127551 "
                        "for a loss divided by D = 784 (default 1)")
    _layout_options(p)
    p.add_argument("--backend", default="numpy", help="numpy or cupy (default: numpy)")
    p.add_argument("--json", action="store_true", help=out_help)


def _layout_options(p) -> None:
    p.add_argument("--map", action="append", metavar="THEIRS=OURS",
                   help="rename a module or tensor of yours, e.g. fc1=encoder.0 (repeatable)")
    p.add_argument("--map-file", metavar="JSON", help='name map file: {"fc1": "encoder.0", ...}')
    p.add_argument("--layout", choices=("out-in", "in-out"), default="out-in",
                   help="out-in: weight is (out, in) as in PyTorch (default); in-out: (in, out) "
                        "kernels "
                        "named kernel or weight (JAX, Flax, Keras, NumPy)")
    p.add_argument("--split", action="append", metavar="THEIRS=OURS,OURS",
                   help="split a fused layer along its outputs, e.g. "
                        "enc_out=encoder.mean,encoder.logvar "
                        "(repeatable)")


def _run_options(p) -> None:
    p.add_argument("--estimator", default=None,
                   help="gradient estimator (default: pathwise; gumbel-softmax for categorical "
                        "latents)")
    p.add_argument("--temperature", type=cli_float(0, open_min=True), default=None,
                   help="relaxation temperature of a categorical latent (or store it in batch.npz)")
    p.add_argument("--reduction", choices=REDUCTIONS, default="mean",
                   help="mean (default) or sum of the per-datum loss over the batch")


def register(sub) -> None:
    """``refvae oracle compute | compare | unbiased | example``."""
    p = sub.add_parser("oracle", help="check another implementation's VAE loss and gradients "
                                      "against refvae's (ORACLE.md: `refvae docs` shows where)")
    osub = p.add_subparsers(dest="oracle_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: p.print_help() or 2)

    c = osub.add_parser("compute", help="write refvae's loss, its parts and every gradient to an "
                                        ".npz")
    _model_options(c, "print a JSON summary instead of text")
    c.add_argument("--out", required=True, help="result .npz to write")
    c.set_defaults(func=_cmd_compute)

    k = osub.add_parser("compare", help="compare your loss and gradients (theirs.npz) with "
                                        "refvae's; "
                                        "exit 0 all pass, 1 mismatch, 2 unusable input")
    _model_options(k, "print the report as JSON")
    k.add_argument("--grads", required=True,
                   help="theirs.npz: grad/<name> for every parameter; optional loss, kl, "
                        "reconstruction, "
                        "kl_per_datum, reconstruction_per_datum")
    k.add_argument("--rtol", type=cli_float(0), default=None,
                   help="relative tolerance (default 1e-7 for float64 gradients, 1e-4 for float32)")
    k.add_argument("--atol", type=cli_float(0), default=None,
                   help="absolute tolerance, in units of each tensor's scale max(1, max|ours|) "
                        "(default 1e-9 for float64 gradients, 1e-5 for float32)")
    k.set_defaults(func=_cmd_compare)

    u = osub.add_parser("unbiased", help="test M draws of your stochastic gradient estimator for "
                                         "bias "
                                         "against refvae's expected gradient; exit 0 unbiased, 1 "
                                         "biased, 2 unusable input")
    u.add_argument("--config", required=True, help="config.json (architecture, ORACLE.md)")
    u.add_argument("--params", required=True, help="params.npz (the parameters the draws were "
                                                   "taken at)")
    u.add_argument("--batch", required=True, help="batch.npz holding y (noise arrays in it are not "
                                                  "used)")
    u.add_argument("--draws", required=True, help="draws.npz: grad/<name> of shape (M, *shape), M "
                                                  "independent draws")
    u.add_argument("--level", type=cli_float(0, 1, open_min=True), default=1e-3,
                   help="family-wise false-alarm probability (Bonferroni over all entries; default "
                        "1e-3)")
    u.add_argument("--estimator", default=None,
                   help="refvae estimator for the reference where no exact expectation exists "
                        "(default pathwise; score for categorical latents)")
    u.add_argument("--reference-replicates", type=cli_int(2), default=200,
                   help="replicates of refvae's estimator when no exact expectation exists "
                        "(default 200)")
    u.add_argument("--reduction", choices=REDUCTIONS, default="mean",
                   help="mean (default) or sum of the per-datum loss over the batch")
    u.add_argument("--seed", type=cli_int(0), default=0, help="seed of the reference replicates")
    _layout_options(u)
    u.add_argument("--json", action="store_true", help="print the report as JSON")
    u.set_defaults(func=_cmd_unbiased)

    e = osub.add_parser("example", help="write a complete, valid set of oracle files for a small "
                                        "model")
    e.add_argument("--out", default="oracle-example", metavar="DIR",
                   help="folder to write config.json, params.npz, batch.npz, theirs.npz "
                        "(default oracle-example)")
    e.add_argument("--latent", choices=LATENTS, default="gaussian",
                   help="latent family (default gaussian)")
    e.add_argument("--emission", choices=EMISSIONS, default="bernoulli",
                   help="emission (default bernoulli)")
    e.add_argument("--learn-alpha", action="store_true", help="learned variance (emission "
                                                              "gaussian)")
    e.add_argument("--categories", type=cli_int(2), default=None,
                   help="classes per latent variable (categorical)")
    e.add_argument("--flow-length", type=cli_int(0), default=0, help="planar flows after the "
                                                                     "Gaussian (default 0)")
    e.add_argument("--seed", type=cli_int(0), default=0, help="seed of the parameters, data and "
                                                              "noise (default 0)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace those four files in a folder that is not empty (default: refused)")
    e.add_argument("--json", action="store_true", help="print the written paths as JSON")
    _run_options(e)
    e.set_defaults(func=_cmd_example)
