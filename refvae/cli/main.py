"""The ``refvae`` command line.

Each subcommand is a small function, in the module of the work it does, that parses its options
and calls the library; :data:`COMMAND_MODULES` lists those modules. Every error
refvae raises on purpose (:class:`~refvae.errors.RefvaeError`), and every ``MemoryError``,
``OSError`` and ``RecursionError`` on the way, is printed as one line and the process exits with
code 2; no traceback is shown for bad input, and warnings raised by a command that then fails are
dropped so that the error line is the only line. SIGTERM and SIGHUP are handled as SIGINT is
(from the start of :func:`main`): the run stops where it is, keeps its last checkpoint, and says so
in one line; a second signal during the cleanup is ignored.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import warnings

from .. import __version__
from ..util import budget
from ..fast.threads import tune_host_allocator
from ..errors import RefvaeError


# Each module names its subcommands in ``register(subparsers)``; add a line here to add a group.
# The order of `refvae --help`: the main job first (train, evaluate, sample).
COMMAND_MODULES = ("refvae.cli.train", "refvae.cli.data", "refvae.cli.gradcheck",
                   "refvae.cli.oracle", "refvae.cli.bench", "refvae.cli.docs")


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
    """SIGTERM or SIGHUP, raised where the program is, so that it stops as on Ctrl-C."""

    def __init__(self, signum=signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


_STOPS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _on_sigterm(signum, frame):
    _ignore_further_stops()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt()
    raise Terminated(signum)


def _ignore_further_stops() -> None:
    """After the first stop signal, the cleanup it starts (the staging folder removed, the lock
    released) runs to its end: a second Ctrl-C cannot break it off with a traceback."""
    for s in _STOPS:
        signal.signal(s, signal.SIG_IGN)


def _say(text: str) -> None:
    # A path that is not valid UTF-8 holds surrogates, which cannot be printed as they are; a
    # newline or carriage return in a name given on the command line would split the one line.
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"), file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, RefvaeError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return ("out of memory; use smaller sizes (widths, batch, samples) or set a memory budget "
                "with --max-memory")
    if isinstance(exc, RecursionError):
        return "an input is nested too deeply (maximum recursion depth exceeded); simplify it"
    reason = exc.strerror or type(exc).__name__
    if not getattr(exc, "filename", None):  # a stream: standard output or error, or a pipe
        return (f"{reason} while writing the output (standard output or error); check where it "
                "goes (a closed pipe, a full disk)")
    return f"{reason} {exc.filename!r}; check the path, its permissions and free space"


def main(argv=None) -> int:
    previous = {s: signal.signal(s, _on_sigterm) for s in _STOPS} if _main_thread() else {}
    try:
        tune_host_allocator()  # this process is ours: keep NumPy's temporaries off fresh mmap pages
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        with warnings.catch_warnings(record=True) as caught, \
                budget.limited(getattr(args, "max_memory", None)):
            budget.limit()  # a malformed $REFVAE_MAX_MEMORY is refused by every command alike
            warnings.simplefilter("default")  # once per place: a long run cannot pile them up
            code = int(args.func(args) or 0)
        for w in caught:  # the command succeeded: its warnings are shown after all
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return code
    except (RefvaeError, MemoryError, OSError, RecursionError) as exc:
        _say(f"refvae: error: {_one_line(exc)}")
        return 2
    except Terminated as exc:
        if previous:
            _ignore_further_stops()
        _say(f"refvae: terminated ({signal.Signals(exc.signum).name}); a training run keeps its "
             "last checkpoint, continue it with --resume")
        return 128 + int(exc.signum)
    except KeyboardInterrupt:
        if previous:
            _ignore_further_stops()
        _say("refvae: interrupted")
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _main_thread() -> bool:
    import threading  # noqa: PLC0415

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
