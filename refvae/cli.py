"""The ``refvae`` command line.

Each subcommand is a small function, in the module of the work it does, that parses its options
and calls the library; :data:`COMMAND_MODULES` lists those modules. Every error
refvae raises on purpose (:class:`~refvae.errors.RefvaeError`) is printed as one line and the
process exits with code 2; no traceback is shown for bad input.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .fast.threads import tune_host_allocator
from .errors import RefvaeError


# Each module names its subcommands in ``register(subparsers)``; add a line here to add a group.
COMMAND_MODULES = ("refvae.demo", "refvae.train_cli", "refvae.oracle_cli", "refvae.bench")


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes (unknown option, a value that is not a number, …) as one line, exit code 2,
    like every other bad input; ``--help`` still prints the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="refvae",
        description="Reference VAEs with hand-derived gradients (NumPy/CuPy): train, evaluate, "
                    "and check other implementations.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    tune_host_allocator()  # this process is ours: keep NumPy's temporaries off fresh mmap pages
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
