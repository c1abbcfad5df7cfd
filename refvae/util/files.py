"""Host-side files: JSON configs and ``.npz`` checkpoints, written atomically, never pickled.

Every write goes to a temporary file in the destination's directory, is flushed and ``fsync``-ed,
and then replaces the destination with :func:`os.replace` (atomic on POSIX and Windows), after which
the directory is ``fsync``-ed where the platform allows. A process killed at any moment therefore
leaves either the previous file or the new one, never a mix (a stray ``.<name>.*.tmp`` file may be
left next to it).

Checkpoints are ``.npz`` archives of plain numeric arrays plus one entry ``__meta__``: a 0-d unicode
array holding a JSON object with ``"refvae_format": 1``. They are read with
``allow_pickle=False``; every way a file can be wrong is reported as a one-line
:class:`~refvae.errors.CheckpointError` naming the file and the problem.

This is host-side I/O, not computation, so it uses NumPy directly rather than through the backend.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import budget, inputs
from ..backend import to_host
from ..errors import CheckpointError

FORMAT_VERSION = 1
FORMAT_KEY = "refvae_format"
META_KEY = "__meta__"


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_mode() -> int:
    """The mode of a new file under the current umask (0644 under umask 022): what ``open`` gives,
    and what a ``mkstemp`` file (0600) is changed to before it is renamed into place."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


STALE_SECONDS = 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to another user
    return True


def remove_stale_tmp(path) -> list[Path]:
    """Remove ``.<name>.<pid>.*.tmp`` files left next to ``path`` by writes that were killed: those
    of a process that no longer runs, or (without a pid) older than :data:`STALE_SECONDS`."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    removed = []
    try:
        candidates = list(directory.glob(f".{glob_escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        try:
            if pid.isdigit():
                stale = int(pid) != os.getpid() and not _alive(int(pid))
            else:
                stale = time.time() - tmp.stat().st_mtime > STALE_SECONDS
            if stale:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def atomic_write(path, write: Callable[[Any], None], what: str) -> Path:
    """Write ``path`` through ``write(fileobj)`` into a temp file, fsync, then ``os.replace``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not inputs.is_dir(directory, "folder"):
        raise CheckpointError(f"cannot write {what} {inputs.show(path)}: directory "
                              f"{inputs.show(directory)} does not exist; create it first")
    remove_stale_tmp(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp")
    except OSError as exc:
        raise CheckpointError(f"cannot write {what} {path}: {exc.strerror or exc}; "
                              "check the directory's permissions and free space") from exc
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; a written file gets the umask's mode
            os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, CheckpointError):
            raise CheckpointError(f"cannot write {what} {inputs.show(path)}: {exc.strerror or exc};"
                                  " the previous "
                                  "file is unchanged, check permissions and free space") from exc
        raise
    _fsync_dir(directory)
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (e.g. a metrics log rewritten each epoch)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), "file")


def save_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (trailing newline, key order kept)."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot write JSON {path}: {exc}; pass only dicts, lists, strings, "
                              "finite numbers, booleans and None") from exc
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), "JSON file")


def load_json(path):
    """Read a JSON file strictly (:func:`refvae.util.inputs.load_json`: duplicate keys, NaN, huge
    numbers and deep nesting refused); every problem is a one-line :class:`CheckpointError`."""
    return inputs.load_json(path, "JSON file", CheckpointError)


def _host_array(name: str, a) -> np.ndarray:
    a = to_host(a)
    if a.dtype.hasobject or a.dtype.kind == "V":
        raise CheckpointError(f"array {name!r} has dtype {a.dtype}, which cannot be stored without "
                              "pickle; convert it to a numeric or string array")
    return a


def atomic_write_npz(path, arrays: dict, meta: dict | None = None, *,
                     compress: bool = False) -> Path:
    """Write ``arrays`` and the JSON metadata ``meta`` to the ``.npz`` file ``path`` atomically.

    ``meta`` (a JSON-serializable dict) is stored as the 0-d unicode array ``__meta__`` with
    ``"refvae_format": 1`` added; no entry is pickled. Array names may contain ``/`` (e.g.
    ``grad/encoder.0.weight``). Returns the path written.
    """
    path = Path(path)
    meta = dict(meta or {})
    meta[FORMAT_KEY] = FORMAT_VERSION
    try:
        meta_text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot write {path}: metadata is not JSON-serializable ({exc}); "
                              "pass only plain numbers, strings, lists and dicts") from exc
    host = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or not name or name == META_KEY:
            raise CheckpointError(f"cannot write {path}: invalid array name {name!r}; use a "
                                  f"non-empty string other than {META_KEY!r}")
        host[name] = _host_array(name, a)
    host[META_KEY] = np.array(meta_text)
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED

    def write(f):
        # The .npz layout: a zip archive of one .npy file per array (what numpy.savez writes).
        with zipfile.ZipFile(f, "w", compression=compression, allowZip64=True) as zf:
            for name, a in host.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, a, allow_pickle=False)

    return atomic_write(path, write, "checkpoint")


# ---------------------------------------------------------------------------------------------
# Checked reads
# ---------------------------------------------------------------------------------------------
MAX_MEMBERS = 4096


def load_npz_checked(path, *, require_meta: bool = True, names=None,
                     expected: str = "") -> tuple[dict, dict]:
    """Read an ``.npz`` written by :func:`atomic_write_npz`: ``(arrays, meta)``.

    Raises :class:`CheckpointError` (one line, naming the file) when the file is missing or not a
    regular file, is not a zip archive (truncated or random bytes), fails its CRC, holds pickled
    object arrays, an array whose header exceeds the memory budget, or lacks the ``__meta__`` entry
    or its ``refvae_format`` version 1. With ``require_meta=False`` a plain ``numpy.savez`` file
    (e.g. a user's ``params.npz``) is accepted and ``meta`` is ``{}``; every other check still
    applies.

    The archive is checked as a whole before any entry is inflated: at most :data:`MAX_MEMBERS`
    entries, no name twice, every name allowed by ``names`` (a function of the array name, or
    None: any; ``expected`` says what is allowed), and the entries' declared sizes together within
    the memory budget (and, as they are read, their ``.npy`` headers' sizes together).
    """
    path = Path(path)
    shown = inputs.show(path)
    with inputs.open_input(path, "file", CheckpointError) as f:
        head = f.read(6)
        if head == b"\x93NUMPY":
            raise CheckpointError(f"{shown} is a single .npy array, not an .npz archive; save it "
                                  "with numpy.savez or refvae")
        f.seek(0)
        if not zipfile.is_zipfile(f):
            what = "is empty" if not head else "is not an .npz (zip) archive"
            raise CheckpointError(f"{shown} {what} (truncated or corrupt); restore it from a good "
                                  "copy or write it again")
        f.seek(0)
        arrays = _read_members(f, shown, names, expected)
    meta: dict = {}
    if META_KEY in arrays:
        meta = _read_meta(arrays.pop(META_KEY), shown)
    elif require_meta:
        raise CheckpointError(f"{shown} has no {META_KEY} entry with a {FORMAT_KEY!r} version, so "
                              "it was not written by refvae; write it with "
                              "refvae.util.files.atomic_write_npz")
    return arrays, meta


def _read_members(f, shown: str, names=None, expected: str = "") -> dict:
    """Every ``.npy`` member of the open zip ``f``: the archive checked as a whole first (entry
    count, names, declared sizes together), then each header against what is left of the budget."""
    arrays: dict[str, np.ndarray] = {}
    name = None
    try:
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
            _check_archive(infos, shown, names, expected)
            declared = 0
            for info in infos:
                name = info.filename[:-4]
                with zf.open(info) as member:
                    declared += check_npy_header(member, f"{shown} entry {name!r}")
                budget.check(f"{shown}: its arrays together", declared, "give a smaller file")
                with zf.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CheckpointError(f"{shown} holds a pickled object array {name!r}, which refvae "
                                  "never loads; save numeric arrays only (numpy.savez without "
                                  "object "
                                  "dtype)") from exc
        raise CheckpointError(f"{shown} is corrupt (entry {name!r}: {_first_line(exc)}); restore "
                              "it "
                              "from a good copy or write it again") from exc
    # RuntimeError: an entry flagged as encrypted; NotImplementedError: a zip feature or version
    # Python cannot read; OverflowError/MemoryError: a header with absurd sizes.
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, NotImplementedError,
            RuntimeError, OverflowError, MemoryError) as exc:
        if isinstance(exc, (CheckpointError, budget.BudgetError)):
            raise
        raise CheckpointError(f"{shown} is corrupt (entry {name!r}: {_first_line(exc)}); restore "
                              "it "
                              "from a good copy or write it again") from exc
    return arrays


def _check_archive(infos, shown: str, names, expected: str) -> None:
    """Refuse, before anything is inflated: too many entries, an entry that is not ``.npy``, a
    name twice, a name ``names`` does not allow, declared sizes beyond the budget together."""
    if len(infos) > MAX_MEMBERS:
        raise CheckpointError(f"{shown} holds {len(infos)} entries (at most {MAX_MEMBERS}); save "
                              "fewer arrays")
    seen = set()
    for info in infos:
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if not info.filename.endswith(".npy"):
            raise CheckpointError(f"{shown} holds an entry {name!r} that is not a .npy array; save "
                                  "arrays with numpy.savez or refvae")
        if name in seen:
            raise CheckpointError(f"{shown} holds the entry {name!r} twice; write the file again "
                                  "with numpy.savez or refvae")
        seen.add(name)
        if names is not None and name != META_KEY and not names(name):
            raise CheckpointError(f"{shown} holds an unexpected entry {name!r}"
                                  + (f"; expected {expected}" if expected else "; give a file "
                                     "with only the arrays it should hold"))
    total = sum(int(info.file_size) for info in infos)
    budget.check(f"{shown} ({len(infos)} entries together, inflated)", total, "give a smaller file")


def check_npy_header(stream, field: str) -> int:
    """Read a ``.npy`` header from ``stream`` and refuse object arrays (``ValueError("pickle")``)
    and arrays beyond the memory budget, before anything is allocated; returns the array's
    bytes."""
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
        else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    if dtype.hasobject:
        raise ValueError("pickle")
    budget.check_array(field, shape, dtype.itemsize, hint="give a smaller file")
    return math.prod(int(s) for s in shape) * dtype.itemsize


def load_npy_checked(path, error=CheckpointError) -> np.ndarray:
    """One ``.npy`` array through the file gate, its header checked before it is read."""
    shown = inputs.show(Path(path))
    with inputs.open_input(path, "file", error) as f:
        try:
            check_npy_header(f, shown)
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise error(f"{shown} holds a pickled object array, which refvae never loads; save "
                            "numeric arrays only") from exc
            raise error(f"{shown} is not a readable .npy array of numbers ({_first_line(exc)}); "
                        "save "
                        "it with numpy.save") from exc
        except (OSError, EOFError, OverflowError, MemoryError) as exc:
            if isinstance(exc, (CheckpointError, budget.BudgetError)):
                raise
            raise error(f"{shown} is not a readable .npy array of numbers ({_first_line(exc)}); "
                        "save "
                        "it with numpy.save") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _read_meta(raw: np.ndarray, shown: str) -> dict:
    if raw.shape != () or raw.dtype.kind != "U":
        raise CheckpointError(f"{shown} has a malformed {META_KEY} entry (shape {raw.shape}, "
                              f"dtype {raw.dtype}); write the file with refvae")
    meta = inputs.loads_json(str(raw), f"{shown} has unreadable metadata, which", CheckpointError)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{shown} has metadata that is not a JSON object; write the file "
                              "with refvae")
    version = meta.get(FORMAT_KEY)
    if version is None:
        raise CheckpointError(f"{shown} has no {FORMAT_KEY!r} version in its metadata; write "
                              "the file with refvae")
    if type(version) is not int or version != FORMAT_VERSION:  # noqa: E721 - true is not 1
        raise CheckpointError(f"{shown} has format version {version!r}, but this refvae reads "
                              f"version {FORMAT_VERSION}; use the refvae release that wrote it")
    return meta


def ensure_writable_dir(path) -> Path:
    """Create directory ``path`` if needed and check that a file can be written in it."""
    path = Path(path)
    st = inputs.stat_path(path, "output directory")
    if st is not None and not inputs.is_dir(path):
        raise CheckpointError(f"output directory {inputs.show(path)} is an existing file; choose "
                              "another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create output directory {path}: {exc.strerror or exc}; "
                              "choose a writable path") from exc
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".refvae-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(f"output directory {path} is not writable: {exc.strerror or exc}; "
                              "fix its permissions or choose another path") from exc
    return path
