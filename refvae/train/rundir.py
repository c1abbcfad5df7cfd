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
  between them). A kill at any moment leaves the old run or the new one, whole. Only what the
  directory held when training began is replaced; a file saved there since stops the move, and the
  new run is kept beside it (``NAME.refvae-run-XXXXXXXX``).
* where the directory cannot be swapped whole — ``--out`` is a mount point (rename fails with
  "Device or resource busy"), or its parent folder is not writable (no lock or staging folder can
  be made beside it) — the lock and the staging folder live inside it (``.refvae-lock``,
  ``.refvae-new-…``, which count as empty) and the first checkpoint's files are moved in one by
  one, each atomically (``os.replace``; copied first across file systems), the checkpoint last.
  A kill during that move can leave a new ``config.json`` beside the old checkpoint, which
  ``--resume`` then refuses in one line; the CLI says in one line when it writes in place.
"""
from __future__ import annotations

import ctypes
import hashlib
import errno
import os
import re
import shutil
import stat
import uuid
from pathlib import Path

from ..util import inputs
from ..errors import CheckpointError, ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

RUN_MARKERS = ("config.json", "checkpoint.npz")
_NEW, _OLD, _LOCK = ".refvae-new-", ".refvae-old-", ".refvae-lock"
_NEW_TAIL, _OLD_TAIL = r"[0-9]+-[0-9a-f]{8}", r"[0-9a-f]{8}"  # what make_staging, publish add
# refvae's own names inside a run directory written in place (lock, staging, a file being copied)
_INNER = re.compile(r"\.refvae-lock|\.refvae-new-[0-9]+-[0-9a-f]{8}|\..+\.refvae-tmp-[0-9a-f]{8}")
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


def _open_lock(path, flags: int, mode: int) -> int:
    """``os.open`` of the lock file (one place, so that a test can make the parent unwritable)."""
    return os.open(path, flags, mode)


def _mkdir(path: Path) -> None:
    """Make the staging folder (one place, so that a test can make the parent unwritable)."""
    path.mkdir()


def _move_dir(src: Path, dst: Path) -> None:
    """Rename a folder onto an empty one (fails with EBUSY when ``dst`` is a mount point)."""
    os.rename(src, dst)


def _mine(name: str) -> bool:
    return bool(_INNER.fullmatch(name))


def _base(out: Path) -> str:
    """``out``'s name as its siblings carry it: a name too long to take refvae's suffixes within
    the file system's 255 bytes is shortened and made unique by a hash."""
    name = out.name
    if len(os.fsencode(name)) <= 200:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    return os.fsdecode(os.fsencode(name)[:160]).rstrip("\udcff") + "~" + digest


def _sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{_base(out)}{tag}"


def classify(out) -> str:
    """``"absent"``, ``"empty"``, ``"run"`` (a refvae run) or ``"other"`` (anything else)."""
    out = Path(out)
    if not out.exists():
        return "absent"
    if not out.is_dir():
        return "other"
    if all((out / m).is_file() for m in RUN_MARKERS):
        return "run"
    return "other" if any(not _mine(p.name) for p in out.iterdir()) else "empty"


def check_target(out, resume: bool, overwrite: bool) -> str:
    """The state of ``out`` (see :func:`classify`), or a ConfigError when training there would
    destroy something or cannot continue."""
    state = classify(out)
    if resume:
        if state != "run":
            raise ConfigError(f"--resume: {out} holds no refvae run (config.json and "
                              "checkpoint.npz); "
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
        self.inside = False  # the lock lives in out itself (its parent is not writable)
        self.created = []  # the folders above out that this lock made (removed if left empty)

    def __enter__(self) -> "RunLock":
        folder = self.out.parent
        while not folder.exists() and folder != folder.parent:
            self.created.append(folder)
            folder = folder.parent
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create {self.out.parent}: {exc.strerror or exc}; "
                                  "choose a writable --out") from exc
        while self.fd is None:
            try:
                fd = self._open()
            except _ParentReadOnly:
                self.inside, self.path = True, self.out / _LOCK
                continue
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    self._refuse()
                try:  # the holder before us may have unlinked the file we locked: lock the new one
                    same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
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
        """The lock file, opened without following a symlink, and only when it is a regular file
        of this user's with one name (a planted link or hard link to another file is refused
        before anything is written to it)."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            if fcntl is not None:
                fd = _open_lock(self.path, flags | getattr(os, "O_NONBLOCK", 0), 0o666)
            else:  # pragma: no cover - Windows
                fd = _open_exclusive(self.path)
        except FileExistsError:  # pragma: no cover - Windows: a live holder
            self._refuse()
        except OSError as exc:
            if os.path.lexists(self.path) and not os.path.isfile(self.path) \
                    or os.path.islink(self.path):
                self._foreign("is not a regular file")
            if exc.errno in _READ_ONLY and not self.inside and os.path.isdir(self.out) \
                    and not os.path.islink(self.out):
                raise _ParentReadOnly() from exc  # an existing --out: the lock goes inside it
            raise CheckpointError(f"cannot create the lock file {inputs.show(self.path)}: "
                                  f"{exc.strerror or exc}; choose a writable --out") from exc
        st = os.fstat(fd)
        mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
        problem = ("is not a regular file" if not stat.S_ISREG(st.st_mode)
                   else "belongs to another user" if not mine
                   else "has other names (hard links)" if st.st_nlink > 1 else None)
        if problem:
            os.close(fd)
            self._foreign(problem)
        os.set_blocking(fd, True)
        return fd

    def _foreign(self, problem: str):
        raise ConfigError(f"the lock file {inputs.show(self.path)} {problem}, so refvae will not "
                          f"write to it; remove it (nothing was changed) or choose another --out")

    def _refuse(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0))
            try:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            finally:
                os.close(fd)
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
        if not self.out.exists():  # a refused or failed run leaves no folders behind
            for folder in self.created:  # deepest first
                try:
                    os.rmdir(folder)
                except OSError:
                    break


class _ParentReadOnly(Exception):
    """The lock file cannot be made beside ``out``; it is made inside it instead."""


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
    old, new = _left_beside(out, _OLD, _OLD_TAIL), _left_beside(out, _NEW, _NEW_TAIL)
    if old and not out.exists():  # killed between the two renames of a non-atomic swap
        os.rename(old.pop(), out)
    for stale in old + new:
        shutil.rmtree(stale, ignore_errors=True)
    for name in entries(out):  # a killed in-place run's staging folder and half-copied files
        if _mine(name) and name != _LOCK:
            stale = out / name
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _left_beside(out: Path, tag: str, tail: str) -> list:
    """The folders ``.NAME<tag><tail>`` beside ``out``, matched by name, not by a glob (a ``[``,
    ``*`` or ``?`` in NAME must not reach another run's staging folders)."""
    prefix = f".{_base(out)}{tag}"
    try:
        names = os.listdir(out.parent)
    except OSError:
        return []
    return sorted(out.parent / n for n in names
                  if n.startswith(prefix) and re.fullmatch(tail, n[len(prefix):]))


def make_staging(out, inside: bool = False) -> Path:
    """A fresh empty directory for a new run (mode from the umask): beside ``out``, or inside it
    when ``inside`` or when the parent folder is not writable (see :func:`in_place`)."""
    out = Path(out)
    name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not inside:
        staging = _sibling(out, _NEW + name)
        try:
            _mkdir(staging)
            return staging
        except OSError as exc:
            if exc.errno not in _READ_ONLY or not out.is_dir():
                raise
    staging = out / (_NEW + name)
    _mkdir(staging)
    return staging


def in_place(staging, out) -> bool:
    """Whether the run is written into ``out`` file by file (its staging folder is inside it)."""
    return staging is not None and Path(staging).parent == Path(out)


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


def entries(out) -> frozenset:
    """The names in the folder ``out`` (none when it is absent or not a folder): what
    :func:`publish` may replace."""
    try:
        return frozenset(os.listdir(out))
    except OSError:
        return frozenset()


IN_PLACE_NOTE = ("refvae: {out} cannot be replaced as a whole ({why}); the run is written in "
                 "place instead, each file atomically")


def publish(staging, out, before=frozenset(), say=None) -> Path:
    """Move the new run in ``staging`` to ``out``, replacing what is there; returns ``out``.

    ``before`` are the names ``out`` held when training began (:func:`entries`): those are
    replaced, nothing else. When ``out`` has gained a file since (a user saved one there during
    the first epoch) nothing in it is touched: the new run is kept in a visible sibling folder and
    a ConfigError says where."""
    staging, out = Path(staging), Path(out)
    if in_place(staging, out):
        return _publish_in_place(staging, out, before)
    if classify(out) == "absent" or classify(out) == "empty" and not entries(out):
        try:  # rename(2) replaces an empty folder atomically and refuses one that gained a file
            _move_dir(staging, out)
            return out
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # a mount point: cannot be renamed
                _note(say, out, "a mount point")
                return _publish_in_place(staging, out, before)
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    gained = entries(out) - before
    if gained:
        _keep_both(staging, out, gained)
    try:
        swapped = _exchange(staging, out)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        _note(say, out, "a mount point")
        return _publish_in_place(staging, out, before)
    if swapped:
        gained = entries(staging) - before  # staging now holds what was in out
        if gained:  # a file saved between the check and the exchange: swap back
            _exchange(staging, out)
            _keep_both(staging, out, gained)
        shutil.rmtree(staging, ignore_errors=True)  # now the old run
    else:  # pragma: no cover - platforms without renameat2
        old = _sibling(out, _OLD + uuid.uuid4().hex[:8])
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    return out


def _note(say, out, why: str) -> None:
    if say is not None:
        say(IN_PLACE_NOTE.format(out=inputs.show(out), why=why))


def _publish_in_place(staging: Path, out: Path, before) -> Path:
    """Move the new run's files from ``staging`` into ``out`` one by one, each atomically (copied
    to a temporary name in ``out`` first when ``staging`` is on another file system), the
    checkpoint last; then remove what the old run held that the new one does not."""
    gained = {n for n in entries(out) - before if not _mine(n)}
    if gained:
        if in_place(staging, out):
            kept = out / f"refvae-run-{uuid.uuid4().hex[:8]}"
            os.rename(staging, kept)
            raise ConfigError(f"{inputs.show(out)} gained files while the first epoch trained "
                              f"({', '.join(sorted(inputs.show(n) for n in gained)[:3])}); the "
                              f"new run is kept in {inputs.show(kept)}: continue it there with "
                              "--resume, or move your files and train again")
        _keep_both(staging, out, gained)
    new = sorted(os.listdir(staging), key=lambda n: (n in RUN_MARKERS, n == "checkpoint.npz", n))
    for name in new:
        _place(staging / name, out / name)
    for name in before - set(new):
        if not _mine(name):
            old = out / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    return out


def _place(src: Path, dst: Path) -> None:
    """``src`` to ``dst`` atomically: a rename where it can, else a copy under a temporary name in
    ``dst``'s folder, then a rename."""
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dst.parent / f".{dst.name}.refvae-tmp-{uuid.uuid4().hex[:8]}"
    try:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copy2(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise


def _keep_both(staging: Path, out: Path, gained) -> None:
    kept = out.parent / f"{_base(out)}.refvae-run-{uuid.uuid4().hex[:8]}"
    os.rename(staging, kept)
    names = ", ".join(sorted(inputs.show(n) for n in gained)[:3])
    names += ", …" if len(gained) > 3 else ""
    raise ConfigError(f"{inputs.show(out)} gained files while the first epoch trained ({names}); "
                      f"nothing in it was touched, and the new run is kept in {inputs.show(kept)}: "
                      "continue it there with --resume, or move your files and train again")


def discard(staging) -> None:
    """Remove a staging directory that was never published (the run failed before its first
    checkpoint)."""
    if staging is not None and Path(staging).exists():
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# What train.json records about the data
# ---------------------------------------------------------------------------------------------
def data_record(data, conditional: bool = False) -> dict:
    """The data set by name, an absolute source (built-in names stay names) and image shape; for a
    conditional run also ``condition``, the source of its condition (``labels`` or ``vectors``:
    :mod:`refvae.data.condition`), so that a resumed run loads the same."""
    source = str(getattr(data, "source", "") or "")
    if source and Path(source).exists():
        source = str(Path(source).resolve())
    shape = getattr(data, "image_shape", None)
    return {"name": getattr(data, "name", None), "source": source or None,
            "image_shape": list(shape) if shape else None,
            "n_train": int(len(data.train)),
            "n_test": 0 if getattr(data, "test", None) is None else int(len(data.test)),
            **({"condition": getattr(data, "condition_source", None)} if conditional else {})}


def data_source(info: dict, data_dir=None):
    """The ``load_dataset`` spec of a run's data (from :func:`read_train_json`; train.json of any
    version); None when train.json records none (removed, null, or an old refvae's file).

    With ``data_dir`` (``--data-dir`` alone: data that moved) a built-in data set is given by its
    recorded name, to be looked for in ``data_dir``; a path that no longer exists by its last
    part, relative to ``data_dir``."""
    from ..data.load import NAMED  # noqa: PLC0415 - data/load.py imports numpy and the readers

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


def no_data_record(run) -> ConfigError:
    """The refusal to guess a run's data when its train.json records none."""
    return ConfigError(f"{inputs.show(Path(run) / TRAIN_JSON)} records no data set (removed, "
                       "null or written by an older refvae); pass --data NAME|PATH with the data "
                       "the run trained on")


# ---------------------------------------------------------------------------------------------
# Reading a run's files: input like any other, validated field by field
# ---------------------------------------------------------------------------------------------
TRAIN_JSON, CONFIG_JSON = "train.json", "config.json"
_STRING_OPTIONS = {"optimizer": False, "schedule": False, "binarize": False, "estimator": True}
_FLAG_OPTIONS = ("progress", "detect_anomaly")


def _bad(path: Path, field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{inputs.show(path)}: field {field!r} {problem}; repair the file or "
                           "train the run again")


def read_train_json(run, required: bool = False) -> dict:
    """``train.json`` of the run directory ``run``, checked field by field (``{}`` when the file
    is absent and not ``required``): ``options`` (the training options, each checked as
    :class:`~refvae.train.TrainOptions` checks it), ``data`` (a record as :func:`data_record`
    writes it, an older refvae's name or path, or None), ``backend`` and ``dtype``. Every problem
    is one CheckpointError line naming the file and the field."""
    from ..backend import BACKENDS, DTYPES  # noqa: PLC0415
    from .loop import TrainOptions  # noqa: PLC0415 - the loop imports this module

    path = Path(run) / TRAIN_JSON
    if not inputs.exists(path, "run file"):
        if required:
            raise CheckpointError(f"{inputs.show(Path(run))} has no {TRAIN_JSON} (written by an "
                                  "old refvae); start a new run")
        return {}
    info = inputs.load_json(path, "run file", CheckpointError)
    if not isinstance(info, dict):
        raise CheckpointError(f"{inputs.show(path)} is not a JSON object; repair the file or train "
                              "the run again")
    options = info.get("options", {})
    if not isinstance(options, dict):
        raise _bad(path, "options", "must be an object of training options")
    for name, none in _STRING_OPTIONS.items():
        value = options.get(name)
        if name in options and not (isinstance(value, str) or none and value is None):
            raise _bad(path, f"options.{name}", f"must be a name, got {value!r}")
    for name in _FLAG_OPTIONS:
        if name in options and not isinstance(options[name], bool):
            raise _bad(path, f"options.{name}", f"must be true or false, got {options[name]!r}")
    try:
        TrainOptions.from_dict(options)
    except ConfigError as exc:
        raise CheckpointError(f"{inputs.show(path)}: field 'options': {exc}; repair the file or "
                              "train the run again") from exc
    _check_data_record(path, info.get("data"))
    for field, names, default in (("backend", BACKENDS, "numpy"),
                                  ("dtype", tuple(DTYPES), "float64")):
        value = info.get(field, default)
        if value not in names or not isinstance(value, str):
            raise _bad(path, field, f"must be one of {', '.join(names)}, got {value!r}")
    return info


def _check_data_record(path: Path, data) -> None:
    if data is None:
        return
    if isinstance(data, str):  # an older refvae's spec
        if not data:
            raise _bad(path, "data", "is an empty name")
        return
    if not isinstance(data, dict):
        raise _bad(path, "data", f"must be an object (name, source, image_shape), got {data!r}")
    for field in ("name", "source"):
        value = data.get(field)
        if value is not None and not (isinstance(value, str) and value):
            raise _bad(path, f"data.{field}", f"must be a non-empty string or null, got {value!r}")
    shape = data.get("image_shape")
    if shape is not None:
        good = isinstance(shape, list) and len(shape) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 2**20 for s in shape)
        if not good:
            raise _bad(path, "data.image_shape", f"must be [rows, cols] of positive integers or "
                                                 f"null, got {shape!r}")
    for field in ("n_train", "n_test"):
        value = data.get(field)
        if value is not None and (type(value) is not int or value < 0):  # noqa: E721 - not bool
            raise _bad(path, f"data.{field}", f"must be an integer 0 or more, got {value!r}")
    if data.get("condition") not in (None, "labels", "vectors"):
        raise _bad(path, "data.condition", f"must be labels, vectors or null, got "
                                           f"{data.get('condition')!r}")


def condition_source(info: dict):
    """The source of a conditional run's condition (``labels``, ``vectors``), else None."""
    data = info.get("data")
    return data.get("condition") if isinstance(data, dict) else None


def read_config(run):
    """``config.json`` of the run directory ``run`` as a :class:`~refvae.config.VAEConfig`; a
    field that is wrong is one CheckpointError line naming the file and the field."""
    from ..math.config import VAEConfig  # noqa: PLC0415

    path = Path(run) / CONFIG_JSON
    if not inputs.exists(path, "run file"):
        raise CheckpointError(f"{inputs.show(Path(run))} is not a training run directory (no "
                              f"{CONFIG_JSON}); pass the --out directory of `refvae train`")
    try:
        return VAEConfig.from_dict(inputs.load_json(path, "run file", CheckpointError))
    except ConfigError as exc:
        raise CheckpointError(f"{inputs.show(path)}: {exc}; repair the file or train the run "
                              "again") from exc
