"""The gates every input file passes: one for reading a file, one for JSON.

:func:`open_input` is the only way refvae opens a file it was given: the path must name a regular
file (a FIFO, a device such as ``/dev/zero``, a socket or a directory is refused instead of read
forever), be readable, and be no larger than the limit (default: the memory budget). Every
problem, including a missing execute permission on a folder on the way, is one line of the
caller's error type.

:func:`loads_json` is strict: duplicate keys, ``NaN``/``Infinity``, numbers of more than
:data:`MAX_DIGITS` digits and nesting deeper than :data:`MAX_DEPTH` are refused.
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from . import budget
from ..errors import CheckpointError

MAX_DEPTH = 64
MAX_DIGITS = 30
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a directory"))


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def stat_path(path, what: str = "file", error=CheckpointError):
    """``os.stat`` of ``path``, or None when it does not exist; any other failure (a folder on the
    way without execute permission, a name the file system refuses) is ``error``."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL byte in the name
        reason = _reason(exc) if isinstance(exc, OSError) else "invalid name"
        raise error(f"cannot look at {what} {show(path)}: {reason}; check the path and the "
                    "permissions of the folders on it") from exc


def exists(path, what: str = "file", error=CheckpointError) -> bool:
    return stat_path(path, what, error) is not None


def is_dir(path, what: str = "folder", error=CheckpointError) -> bool:
    st = stat_path(path, what, error)
    return st is not None and stat.S_ISDIR(st.st_mode)


def is_file(path, what: str = "file", error=CheckpointError) -> bool:
    st = stat_path(path, what, error)
    return st is not None and stat.S_ISREG(st.st_mode)


def show(path) -> str:
    """The path as printable text (a name that is not valid UTF-8 shown with escapes)."""
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _not_regular(mode) -> str | None:
    for test, name in _KINDS:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def check_regular(path, what: str = "file", error=CheckpointError) -> os.stat_result:
    """``os.stat`` of ``path`` when it is an existing regular file, else ``error``."""
    st = stat_path(path, what, error)
    if st is None:
        raise error(f"{what} {show(path)} does not exist; check the path")
    kind = _not_regular(st.st_mode)
    if kind:
        raise error(f"{what} {show(path)} is {kind}, not a regular file; give a file's path")
    return st


def open_input(path, what: str = "file", error=CheckpointError, limit: int | None = None):
    """Open ``path`` for binary reading after the checks above; the caller closes it."""
    check_regular(path, what, error)
    try:
        # O_NONBLOCK: a file swapped for a FIFO after the stat cannot block the open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {show(path)}: {_reason(exc)}; check its "
                    "permissions") from exc
    st = os.fstat(fd)
    kind = _not_regular(st.st_mode)
    if kind:
        os.close(fd)
        raise error(f"{what} {show(path)} is {kind}, not a regular file; give a file's path")
    cap = budget.limit() if limit is None else limit
    if st.st_size > cap:
        os.close(fd)
        budget.check(f"{what} {show(path)}", st.st_size, "give a smaller file")
        raise error(f"{what} {show(path)} has {st.st_size} bytes, more than the {cap} allowed; "
                    "check the path")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_input(path, what: str = "file", error=CheckpointError, limit: int | None = None) -> bytes:
    """The bytes of ``path`` through :func:`open_input`."""
    with open_input(path, what, error, limit) as f:
        try:
            return f.read()
        except OSError as exc:
            raise error(f"cannot read {what} {show(path)}: {_reason(exc)}; check the file") from exc


def read_text(path, what: str = "file", error=CheckpointError, limit: int | None = None) -> str:
    """:func:`read_input` decoded as UTF-8 (a BOM is allowed)."""
    raw = read_input(path, what, error, limit)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {show(path)} is not UTF-8 text (byte {exc.start}); save it as "
                    "UTF-8") from exc


# ---------------------------------------------------------------------------------------------
# Strict JSON
# ---------------------------------------------------------------------------------------------
class _Bad(ValueError):
    pass


def _pairs(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Bad(f"the key {k!r} appears twice")
        out[k] = v
    return out


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise _Bad(f"a number has {len(text.lstrip('-'))} digits (at most {MAX_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 2 * MAX_DIGITS:
        raise _Bad(f"a number is {len(text)} characters long (at most {2 * MAX_DIGITS})")
    value = float(text)
    if not math.isfinite(value):
        raise _Bad(f"the number {text} overflows to infinity")
    return value


def _constant(name: str):
    raise _Bad(f"{name} is not JSON; write finite numbers")


def _depth(obj) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                break
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def loads_json(text: str, what: str = "JSON", error=CheckpointError):
    """Parse ``text`` strictly (see the module docstring); ``what`` names it in the error."""
    try:
        obj = json.loads(text, object_pairs_hook=_pairs, parse_int=_int, parse_float=_float,
                         parse_constant=_constant)
    except RecursionError as exc:
        raise error(f"{what} is nested too deeply (at most {MAX_DEPTH} levels); fix or regenerate "
                    "it") from exc
    except _Bad as exc:
        raise error(f"{what} is not strict JSON: {exc}; fix or regenerate it") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{what} is malformed at line {exc.lineno}, column {exc.colno} ({exc.msg}); "
                    "fix or regenerate it") from exc
    if _depth(obj) > MAX_DEPTH:
        raise error(f"{what} is nested too deeply (at most {MAX_DEPTH} levels); fix or regenerate "
                    "it")
    return obj


def load_json(path, what: str = "JSON file", error=CheckpointError, limit: int = 64 * 2**20):
    """Read ``path`` through :func:`open_input` (at most ``limit`` bytes) and :func:`loads_json`."""
    text = read_text(path, what, error, limit)
    return loads_json(text, f"{what} {show(Path(path))}", error)


def dumps_json(obj, **kw) -> str:
    """``json.dumps`` that refuses NaN and infinities (which are not JSON)."""
    return json.dumps(obj, allow_nan=False, **kw)
