"""The options of ``refvae train``, ``evaluate`` and ``sample``, grouped as ``--help`` shows them.

Closed sets are listed in the help (``{a,b,c}``). Those that the library validates itself (model
fields, optimizer, schedule, estimator, backend, dtype) are checked there rather than by argparse,
so that a wrong value is the same one-line ``refvae: error:`` whether it came from a flag, a
``--config`` file or the Python API.
"""
from __future__ import annotations

import argparse

from ..backend import BACKENDS, DTYPES
from ..math.config import LATENTS
from ..math.emission import EMISSIONS
from ..math.activations import ACTIVATIONS
from ..util.checked import cli_int
from .condition import add_sample_flags, add_train_flag

# The built-in default: small enough for about a minute on two cores, 2-D so that every figure
# (latent means, manifold) is drawn.
DEFAULT_ARCH = {"latent_dim": 2, "encoder_hidden": [128], "decoder_hidden": [128],
                "activation": "tanh", "latent": "gaussian", "emission": "bernoulli"}
DEFAULT_OPTIONS = {"epochs": 60, "batch_size": 64, "lr": 3e-3, "optimizer": "adam"}

ARCH_FLAGS = ("latent_dim", "encoder_hidden", "decoder_hidden", "activation", "latent", "emission",
              "alpha", "learn_alpha", "categories", "flow_length")
OPTION_FLAGS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "samples",
                "seed", "estimator", "binarize", "temperature", "temperature_rate",
                "temperature_min",
                "temperature_every", "eval_samples", "lr_gamma", "lr_step_size", "threads",
                "device_noise")
OPTIMIZER_NAMES = ("adam", "adamw", "adagrad", "sgd")
SCHEDULE_NAMES = ("constant", "step", "exponential", "cosine")
ESTIMATOR_NAMES = ("pathwise", "price", "score", "score-loo", "score-running", "score-optimal",
                   "gumbel-softmax", "straight-through")
DATA_NAMES = ("digits", "mnist", "fashion-mnist", "binarized-mnist", "frey-face")


def one_of(values) -> str:
    return "{" + ",".join(values) + "}"


def threads_value(text: str):
    """``auto`` or an integer (a count below 1 is refused later, with the other bad options)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (an integer or "
                                         "auto)") from None


def engine_options(g, run_dir: bool, seed_of: str = "the evaluation noise") -> None:
    """``--backend`` and ``--dtype`` (train: defaults, or the resumed run's; ``run_dir``: evaluate
    and sample, the run's), and for those two ``--seed`` of ``seed_of``."""
    given = "the run's" if run_dir else "numpy; a resumed run: the run's"
    g.add_argument("--backend", default=None, metavar=one_of(BACKENDS),
                   help=f"array library (default {given})")
    given = "the run's" if run_dir else "float64; a resumed run: the run's"
    g.add_argument("--dtype", default=None, metavar=one_of(DTYPES),
                   help=f"floating-point type (default {given})")
    if run_dir:
        g.add_argument("--seed", type=cli_int(0), default=0,
                       help=f"random seed of {seed_of} (default 0)")


def register_train(sub, func) -> None:
    p = sub.add_parser("train", help="train a VAE (no arguments: the built-in 8x8 digits default)",
                       description="Train a VAE. With no arguments: a 2-D latent VAE on "
                                   "scikit-learn's "
                                   "bundled 8x8 digits, written to runs/default. `--out DIR "
                                   "--resume "
                                   "[--epochs N]` continues a run with no other flag.")
    m = p.add_argument_group("model")
    m.add_argument("--config", default=None, metavar="JSON",
                   help="model config (docs/ORACLE.md format: `refvae docs` shows where); "
                        "the flags below override it")
    m.add_argument("--latent-dim", type=int, default=None, help="latent dimension K (default 2)")
    m.add_argument("--encoder-hidden", type=int, nargs="*", default=None, metavar="WIDTH",
                   help="encoder hidden widths (default 128)")
    m.add_argument("--decoder-hidden", type=int, nargs="*", default=None, metavar="WIDTH",
                   help="decoder hidden widths (default 128)")
    m.add_argument("--activation", default=None, metavar=one_of(ACTIVATIONS),
                   help="hidden activation (default tanh)")
    m.add_argument("--latent", default=None, metavar=one_of(LATENTS),
                   help="latent family (default gaussian)")
    m.add_argument("--emission", default=None, metavar=one_of(EMISSIONS),
                   help="emission (default bernoulli)")
    m.add_argument("--alpha", type=float, default=None, help="variance of the gaussian emission "
                                                             "(default 1)")
    m.add_argument("--learn-alpha", action="store_true", default=None, help="learn log alpha")
    m.add_argument("--categories", type=int, default=None, help="classes per categorical variable")
    m.add_argument("--flow-length", type=int, default=None, help="planar flows after the Gaussian "
                                                                 "(default 0)")

    d = p.add_argument_group("data")
    d.add_argument("--data", default=None, metavar="NAME|PATH",
                   help=f"{one_of(DATA_NAMES)} (default digits, built in), or a path to "
                        "IDX/.mat/.npz files")
    d.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where --data NAME looks for its files (then in the download cache); with "
                        "--resume alone: the run's data set, moved here")
    d.add_argument("--download", action="store_true",
                   help="fetch MNIST or Fashion-MNIST into the download cache if missing "
                        "(checksummed)")
    d.add_argument("--binarize", choices=["none", "static", "dynamic"], default=None,
                   help="Bernoulli emission: keep greyscale (none, default), binarize once "
                        "(static) or "
                        "every epoch (dynamic)")
    add_train_flag(d)

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=None,
                   help=f"passes over the data (default {DEFAULT_OPTIONS['epochs']}; on --resume: "
                        "the new total)")
    o.add_argument("--batch-size", type=int, default=None,
                   help=f"minibatch size (default {DEFAULT_OPTIONS['batch_size']})")
    o.add_argument("--lr", type=float, default=None, help="learning rate "
                                                          f"(default {DEFAULT_OPTIONS['lr']})")
    o.add_argument("--optimizer", default=None, metavar=one_of(OPTIMIZER_NAMES),
                   help="optimizer (default adam)")
    o.add_argument("--weight-decay", type=float, default=None, help="L2 penalty (default 0)")
    o.add_argument("--schedule", default=None, metavar=one_of(SCHEDULE_NAMES),
                   help="learning-rate schedule (default constant)")
    o.add_argument("--lr-gamma", type=float, default=None, help="decay factor of the "
                                                                "step/exponential schedules")
    o.add_argument("--lr-step-size", type=int, default=None, help="steps between decays of the "
                                                                  "step schedule")
    o.add_argument("--samples", type=int, default=None, help="samples L per datum (default 1)")
    o.add_argument("--eval-samples", type=int, default=None, help="samples per test datum (default "
                                                                  "1)")
    o.add_argument("--estimator", default=None, metavar=one_of(ESTIMATOR_NAMES),
                   help="gradient estimator (default: the latent's own, pathwise or "
                        "gumbel-softmax)")
    o.add_argument("--temperature", type=float, default=None,
                   help="initial relaxation temperature s0 of a categorical latent (default 1)")
    o.add_argument("--temperature-rate", type=float, default=None,
                   help="anneal s = max(s_min, s0 exp(-r t)) with this r per step (default 0: "
                        "constant)")
    o.add_argument("--temperature-min", type=float, default=None, help="s_min (default 0.5)")
    o.add_argument("--temperature-every", type=int, default=None,
                   help="update s every n steps (default 1)")
    o.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    o.add_argument("--threads", type=threads_value, default=None, metavar="N|auto",
                   help="CPU threads: the batch split into N row shards (default auto: every "
                        "usable core; "
                        "a resumed run: the run's). Bit for bit reproducible with the same count "
                        "on the "
                        "same machine; other counts agree to rounding. On a GPU the batch stays "
                        "whole")
    engine_options(o, run_dir=False)
    o.add_argument("--device-noise", action="store_const", const=True, default=None,
                   help="draw the base noise on the device (faster on a GPU; NumPy and CuPy runs "
                        "of a seed then differ). Default: the host stream, equal on every backend")
    o.add_argument("--detect-anomaly", action="store_true",
                   help="check every intermediate for NaN/inf and name the first one (slower)")

    w = p.add_argument_group("output")
    w.add_argument("--out", default="runs/default", metavar="DIR",
                   help="run directory (default runs/default)")
    w.add_argument("--resume", action="store_true",
                   help="continue the run in --out with its own settings (no other flag needed)")
    w.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (the old one stays whole until the new one's "
                        "first checkpoint)")
    w.add_argument("--quiet", action="store_true", help="print nothing but errors")
    w.add_argument("--log-interval", type=cli_int(1), default=None, metavar="N",
                   help="when stderr is not a terminal, a progress line every N steps (default "
                        "100)")
    w.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    w.add_argument("--figures-every", type=cli_int(1), default=None, metavar="N",
                   help="also save sample and reconstruction snapshots every N epochs (in "
                        "DIR/epochs/)")
    p.set_defaults(func=func)


def register_evaluate(sub, func) -> None:
    p = sub.add_parser("evaluate", help="negative ELBO, importance-weighted bound and active units "
                                        "of a run")
    p.add_argument("run", metavar="DIR", help="a run directory written by `refvae train --out DIR`")
    engine_options(p, run_dir=True)
    p.add_argument("--data", default=None, metavar="NAME|PATH", help="data set (default: the one "
                                                                     "the run trained on)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where --data NAME looks for its files (alone: the run's data set, "
                        "moved here)")
    p.add_argument("--split", choices=["train", "test"], default="test",
                   help="which split (default test)")
    p.add_argument("--samples", type=cli_int(1), default=1, help="samples per datum for the ELBO "
                                                                 "(default 1)")
    p.add_argument("--iwae", type=cli_int(0), default=0, metavar="K",
                   help="also the importance-weighted bound with K samples (K decoder passes per "
                        "datum; from K = 100 on, a time estimate is printed before it starts)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=func)


def register_sample(sub, func) -> None:
    p = sub.add_parser("sample", help="a PNG grid of samples from the prior (or their arrays)")
    p.add_argument("run", metavar="DIR", help="a run directory written by `refvae train --out DIR`")
    engine_options(p, run_dir=True, seed_of="the prior draws")
    p.add_argument("--n", type=cli_int(1), default=64, help="number of samples (default 64)")
    p.add_argument("--out", default="samples.png", metavar="FILE",
                   help="output: a PNG grid (default samples.png), or FILE.npy for the decoded "
                        "means as an (n, data_dim) array")
    p.add_argument("--image-shape", type=cli_int(1), nargs=2, default=None,
                   metavar=("ROWS", "COLS"),
                   help="image shape (default: the one the run recorded)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="runs of older refvae versions only (no image shape recorded): where their "
                        "data are")
    add_sample_flags(p)
    p.set_defaults(func=func)
