"""Run directories: what ``refvae train --out DIR`` writes, and the rules that keep a run whole.

A run directory stands on its own: ``config.json`` (the model), ``train.json`` (the options, the
thread count, the backend and dtype, and the data by name, absolute path and image shape) and
``checkpoint.npz`` are all that ``train --resume``, ``evaluate`` and ``sample`` need, from any
working directory.

Nothing destroys a run by accident:

* training into a directory that holds a run needs ``--resume`` (continue it in place) or
  ``--overwrite`` (replace it); a non-empty directory that is not a run is refused;
* a lock file beside the directory (``.NAME.refvae-lock``, holding the trainer's PID, locked with
  ``flock`` so that a dead holder's lock is stale at once) turns a second trainer away;
* a fresh run is written into a sibling staging directory and moved into place only after its
  first checkpoint: over an existing run, by an atomic exchange of the two directories (Linux
  ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, undone on the next start if interrupted
  between them). A kill at any moment leaves the old run or the new one, whole.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import uuid
from pathlib import Path

from .errors import CheckpointError, ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

RUN_MARKERS = ("config.json", "checkpoint.npz")
_NEW, _OLD, _LOCK = ".refvae-new-", ".refvae-old-", ".refvae-lock"


def _sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}{tag}"


def classify(out) -> str:
    """``"absent"``, ``"empty"``, ``"run"`` (a refvae run) or ``"other"`` (anything else)."""
    out = Path(out)
    if not out.exists():
        return "absent"
    if not out.is_dir():
        return "other"
    if all((out / m).is_file() for m in RUN_MARKERS):
        return "run"
    return "other" if any(out.iterdir()) else "empty"


def check_target(out, resume: bool, overwrite: bool) -> str:
    """The state of ``out`` (see :func:`classify`), or a ConfigError when training there would
    destroy something or cannot continue."""
    state = classify(out)
    if resume:
        if state != "run":
            raise ConfigError(f"--resume: {out} holds no refvae run (config.json and checkpoint.npz); "
                              "train without --resume first")
        if overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one of them")
    elif state == "run" and not overwrite:
        raise ConfigError(f"{out} already holds a refvae run; pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --out")
    elif state == "other":
        raise ConfigError(f"{out} exists and is not an empty directory or a refvae run; "
                          "choose another --out (nothing there was touched)")
    return state


class RunLock:
    """Exclusive right to train into ``out`` for the life of the ``with`` block."""

    def __init__(self, out):
        self.out = Path(out)
        self.path = _sibling(self.out, _LOCK)
        self.fd = None

    def __enter__(self) -> "RunLock":
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create {self.out.parent}: {exc.strerror or exc}; "
                                  "choose a writable --out") from exc
        while self.fd is None:
            fd = self._open()
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    self._refuse()
                try:  # the holder before us may have unlinked the file we locked: lock the new one
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
        _recover(self.out)
        return self

    def _open(self) -> int:
        try:
            if fcntl is not None:
                return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            return _open_exclusive(self.path)  # pragma: no cover - Windows
        except FileExistsError:  # pragma: no cover - Windows: a live holder
            self._refuse()
        except OSError as exc:
            raise CheckpointError(f"cannot create the lock file {self.path}: {exc.strerror or exc}; "
                                  "choose a writable --out") from exc

    def _refuse(self):
        try:
            holder = self.path.read_text().strip() or "?"
        except OSError:
            holder = "?"
        raise ConfigError(f"{self.out} is in use by another trainer (process {holder}, lock file "
                          f"{self.path}); wait for it to finish or choose another --out")

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _open_exclusive(path: Path) -> int:  # pragma: no cover - Windows
    """Create ``path`` exclusively; a lock left by a dead process is removed first."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, OSError):
            path.unlink(missing_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        raise


def _recover(out: Path) -> None:
    """Undo what a killed trainer left beside ``out``; called with the lock held."""
    old = sorted(out.parent.glob(f".{out.name}{_OLD}*"))
    if old and not out.exists():  # killed between the two renames of a non-atomic swap
        os.rename(old.pop(), out)
    for stale in old + sorted(out.parent.glob(f".{out.name}{_NEW}*")):
        shutil.rmtree(stale, ignore_errors=True)


def make_staging(out) -> Path:
    """A fresh empty directory beside ``out`` (mode from the umask) for a new run."""
    out = Path(out)
    staging = _sibling(out, _NEW + f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    return staging


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux ``renameat2``); False where that is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system or kernel cannot
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(staging, out) -> Path:
    """Move the new run in ``staging`` to ``out``, replacing what is there; returns ``out``."""
    staging, out = Path(staging), Path(out)
    if classify(out) in ("absent", "empty"):
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    elif _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now the old run
    else:  # pragma: no cover - platforms without renameat2
        old = _sibling(out, _OLD + uuid.uuid4().hex[:8])
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    return out


def discard(staging) -> None:
    """Remove a staging directory that was never published (the run failed before its first
    checkpoint)."""
    if staging is not None and Path(staging).exists():
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# What train.json records about the data
# ---------------------------------------------------------------------------------------------
def data_record(data) -> dict:
    """The data set by name, an absolute source (built-in names stay names) and image shape."""
    source = str(getattr(data, "source", "") or "")
    if source and Path(source).exists():
        source = str(Path(source).resolve())
    shape = getattr(data, "image_shape", None)
    return {"name": getattr(data, "name", None), "source": source or None,
            "image_shape": list(shape) if shape else None,
            "n_train": int(len(data.train)),
            "n_test": 0 if getattr(data, "test", None) is None else int(len(data.test))}


def data_source(info: dict, data_dir=None):
    """The ``load_dataset`` spec of a run's data (train.json of any version; None: digits).

    With ``data_dir`` (``--data-dir`` alone: data that moved) a built-in data set is given by its
    recorded name, to be looked for in ``data_dir``; a path that no longer exists by its last
    part, relative to ``data_dir``."""
    from .data import NAMED  # noqa: PLC0415 - data.py imports numpy and the readers

    data = info.get("data")
    if not isinstance(data, dict):
        return data
    name, source = data.get("name"), data.get("source")
    if data_dir is not None and isinstance(name, str) and name.lower() in NAMED:
        return name
    if data_dir is not None and isinstance(source, str) and not Path(source).exists():
        return Path(source).name
    return source


def image_shape(info: dict):
    """The run's image shape from train.json, or None when it does not record one."""
    data = info.get("data")
    shape = data.get("image_shape") if isinstance(data, dict) else None
    return tuple(shape) if shape else None
