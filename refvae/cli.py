"""The ``refvae`` command line.

Each subcommand is a small function that parses its options and calls the library. Every error
refvae raises on purpose (:class:`~refvae.errors.RefvaeError`) is printed as one line and the
process exits with code 2; no traceback is shown for bad input.
"""
from __future__ import annotations

import argparse
import sys

from .errors import RefvaeError


def _cmd_gradcheck(args) -> int:
    """Finite-difference check of the MLP's parameter gradients and exact input Hessian."""
    from .demo import gradcheck_demo  # noqa: PLC0415 - keep start-up light

    ok = gradcheck_demo(activation=args.activation, hidden=args.hidden, seed=args.seed,
                        backend=args.backend, out=sys.stdout)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refvae",
        description="Reference VAEs with hand-derived gradients (NumPy/CuPy): train, evaluate, "
                    "and check other implementations.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("gradcheck", help="check the MLP's hand-derived gradients and input Hessian "
                                         "against central finite differences")
    p.add_argument("--activation", default="tanh", help="hidden activation (default: tanh)")
    p.add_argument("--hidden", type=int, nargs="*", default=[16, 8],
                   help="hidden layer widths (default: 16 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--backend", default="numpy", help="numpy or cupy (default: numpy)")
    p.set_defaults(func=_cmd_gradcheck)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RefvaeError as exc:
        print(f"refvae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
