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
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import CheckpointError

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


def atomic_write(path, write: Callable[[Any], None], what: str) -> Path:
    """Write ``path`` through ``write(fileobj)`` into a temp file, fsync, then ``os.replace``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise CheckpointError(f"cannot write {what} {path}: directory {directory} does not exist; "
                              "create it first")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CheckpointError(f"cannot write {what} {path}: {exc.strerror or exc}; "
                              "check the directory's permissions and free space") from exc
    try:
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
            raise CheckpointError(f"cannot write {what} {path}: {exc.strerror or exc}; the previous "
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
    """Read a JSON file; a missing or malformed file is a :class:`CheckpointError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CheckpointError(f"JSON file {path} does not exist; check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read JSON file {path}: {exc}; check the file") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"JSON file {path} is malformed at line {exc.lineno}, column "
                              f"{exc.colno} ({exc.msg}); fix or regenerate it") from exc


def _host_array(name: str, a) -> np.ndarray:
    if type(a).__module__.split(".")[0] == "cupy":  # device arrays are copied to the host here
        a = a.get()
    a = np.asarray(a)
    if a.dtype.hasobject or a.dtype.kind == "V":
        raise CheckpointError(f"array {name!r} has dtype {a.dtype}, which cannot be stored without "
                              "pickle; convert it to a numeric or string array")
    return a


def atomic_write_npz(path, arrays: dict, meta: dict | None = None, *, compress: bool = False) -> Path:
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
def load_npz_checked(path, *, require_meta: bool = True) -> tuple[dict, dict]:
    """Read an ``.npz`` written by :func:`atomic_write_npz`: ``(arrays, meta)``.

    Raises :class:`CheckpointError` (one line, naming the file) when the file is missing, is not a
    zip archive (truncated or random bytes), fails its CRC, holds pickled object arrays, or lacks
    the ``__meta__`` entry or its ``refvae_format`` version 1. With ``require_meta=False`` a plain
    ``numpy.savez`` file (e.g. a user's ``params.npz``) is accepted and ``meta`` is ``{}``; every
    other check still applies.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"file {path} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not an .npz file; give the file's path")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}; check its permissions") from exc
    if head == b"\x93NUMPY":
        raise CheckpointError(f"{path} is a single .npy array, not an .npz archive; save it with "
                              "numpy.savez or refvae")
    if not zipfile.is_zipfile(path):
        what = "is empty" if path.stat().st_size == 0 else "is not an .npz (zip) archive"
        raise CheckpointError(f"{path} {what} (truncated or corrupt); restore it from a good copy "
                              "or write it again")
    arrays: dict[str, np.ndarray] = {}
    name = None
    try:
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                value = z[name]
                if not isinstance(value, np.ndarray):
                    raise CheckpointError(f"{path} holds an entry {name!r} that is not a .npy array; "
                                          "save arrays with numpy.savez or refvae")
                arrays[name] = value
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CheckpointError(f"{path} holds a pickled object array {name!r}, which refvae never "
                                  "loads; save numeric arrays only (numpy.savez without object "
                                  "dtype)") from exc
        raise CheckpointError(f"{path} is corrupt (entry {name!r}: {exc}); restore it from a good "
                              "copy or write it again") from exc
    # NotImplementedError: a header asking for a zip feature or version Python cannot read.
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, NotImplementedError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is corrupt (entry {name!r}: {detail}); restore it from a "
                              "good copy or write it again") from exc
    meta: dict = {}
    if META_KEY in arrays:
        raw = arrays.pop(META_KEY)
        if raw.shape != () or raw.dtype.kind != "U":
            raise CheckpointError(f"{path} has a malformed {META_KEY} entry (shape {raw.shape}, "
                                  f"dtype {raw.dtype}); write the file with refvae")
        try:
            meta = json.loads(str(raw))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} has unreadable metadata ({exc.msg}); write the file "
                                  "with refvae") from exc
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path} has metadata that is not a JSON object; write the file "
                                  "with refvae")
        version = meta.get(FORMAT_KEY)
        if version is None:
            raise CheckpointError(f"{path} has no {FORMAT_KEY!r} version in its metadata; write "
                                  "the file with refvae")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path} has format version {version!r}, but this refvae reads "
                                  f"version {FORMAT_VERSION}; use the refvae release that wrote it")
    elif require_meta:
        raise CheckpointError(f"{path} has no {META_KEY} entry with a {FORMAT_KEY!r} version, so "
                              "it was not written by refvae; write it with refvae.io.atomic_write_npz")
    return arrays, meta


def ensure_writable_dir(path) -> Path:
    """Create directory ``path`` if needed and check that a file can be written in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"output directory {path} is an existing file; choose another path")
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
