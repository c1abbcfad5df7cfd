"""The ``refvae`` command line.

Each subcommand is a small function, in the module of the work it does, that parses its options
and calls the library; :data:`COMMAND_MODULES` lists those modules. Every error
refvae raises on purpose (:class:`~refvae.errors.RefvaeError`), and every ``MemoryError``,
``OSError`` and ``RecursionError`` on the way, is printed as one line and the process exits with
code 2; no traceback is shown for bad input, and warnings raised by a command that then fails are
dropped so that the error line is the only line. SIGTERM is handled as SIGINT is: the run stops
where it is, keeps its last checkpoint, and says so in one line.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings

from . import __version__, budget
from .fast.threads import tune_host_allocator
from .errors import RefvaeError


# Each module names its subcommands in ``register(subparsers)``; add a line here to add a group.
# The order of `refvae --help`: the main job first (train, evaluate, sample).
COMMAND_MODULES = ("refvae.train_cli", "refvae.data_cli", "refvae.demo", "refvae.oracle_cli",
                   "refvae.bench", "refvae.docs_cli")


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
    parser.add_argument("--version", action="version", version=f"refvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _add_max_memory(sub)
    return parser


def _add_max_memory(sub) -> None:
    """``--max-memory`` on every (sub)command that runs something."""
    for p in set(sub.choices.values()):
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _add_max_memory(nested[0])
        elif "--max-memory" not in p._option_string_actions:
            p.add_argument("--max-memory", default=None, metavar="SIZE",
                           help=f"memory budget for sizes taken from the input, e.g. 4G (default: "
                                f"${budget.ENV} or 80%% of the available memory)")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it stops as on Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _say(text: str) -> None:
    # A path that is not valid UTF-8 holds surrogates, which cannot be printed as they are.
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, RefvaeError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return ("out of memory; use smaller sizes (widths, batch, samples) or set a memory budget "
                "with --max-memory")
    if isinstance(exc, RecursionError):
        return "an input is nested too deeply (maximum recursion depth exceeded); simplify it"
    where = f" {exc.filename!r}" if getattr(exc, "filename", None) else ""
    return f"{exc.strerror or type(exc).__name__}{where}; check the path, its permissions and free space"


def main(argv=None) -> int:
    tune_host_allocator()  # this process is ours: keep NumPy's temporaries off fresh mmap pages
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        with warnings.catch_warnings(record=True) as caught, \
                budget.limited(getattr(args, "max_memory", None)):
            warnings.simplefilter("default")  # once per place: a long run cannot pile them up
            code = int(args.func(args) or 0)
        for w in caught:  # the command succeeded: its warnings are shown after all
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return code
    except (RefvaeError, MemoryError, OSError, RecursionError) as exc:
        _say(f"refvae: error: {_one_line(exc)}")
        return 2
    except Terminated:
        _say("refvae: terminated (SIGTERM); a training run keeps its last checkpoint, continue it "
             "with --resume")
        return 143
    except KeyboardInterrupt:
        _say("refvae: interrupted")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading  # noqa: PLC0415

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
