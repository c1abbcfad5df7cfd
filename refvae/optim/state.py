"""The state of an optimizer: step count, hyperparameters and state buffers, bound to the
parameters' backend, size and dtype, and their ``state_dict`` round trip (host NumPy arrays and
Python numbers only, so a checkpoint stores them in an ``.npz`` without pickle and restores them bit
for bit). The update rules that use this state are in :mod:`refvae.optim.rules`.
"""
from __future__ import annotations

from ..backend import Backend
from ..errors import CheckpointError, ConfigError, ShapeError


class OptimizerState:
    """Step count ``t``, hyperparameters and state buffers.

    Subclasses define ``name``, ``_HYPER`` (hyperparameters saved with the state: floats, or 0/1
    ints for the names in ``_FLAGS``), ``_BUFFERS`` (state buffer names) and ``_validate``. The
    buffers are allocated for ``size`` values on ``bk``, or at the first step when those are not
    given (a state loaded before then waits for it).
    """

    name = "optimizer"
    _HYPER: tuple[str, ...] = ()
    _FLAGS: tuple[str, ...] = ()
    _BUFFERS: tuple[str, ...] = ()

    def __init__(self, bk: Backend | None = None, size: int | None = None):
        self.t = 0                 # number of steps taken
        self._bk = bk
        self._size = None if size is None else int(size)
        self._dtype = None
        self._state: dict = {}     # buffer name -> device array
        self._pending: dict = {}   # loaded host buffers waiting for the first step's backend
        if bk is not None and size is not None:
            self._allocate(bk, self._size, bk.dtype)

    def _active_buffers(self) -> tuple[str, ...]:
        return self._BUFFERS

    def _init_value(self, name: str) -> float:
        return 0.0

    def _allocate(self, bk: Backend, size: int, dtype) -> None:
        self._bk, self._size, self._dtype = bk, size, dtype
        self._state = {name: bk.xp.full(size, self._init_value(name), dtype=dtype)
                       for name in self._active_buffers()}

    def _ensure(self, flat) -> None:
        """Bind the state to the backend, size and dtype of ``flat`` (a
        :class:`~refvae.optim.rules.FlatParams`), allocating or moving it once."""
        bk, size, dtype = flat.bk, flat.size, flat.data.dtype
        if self._state and self._size != size:
            raise ShapeError(f"{self.name} state holds {self._size} values but the parameters "
                             f"have {size}; use a fresh optimizer for a different model")
        if (self._bk != bk or self._size != size or self._dtype != dtype
                or len(self._state) != len(self._active_buffers())):
            host = {k: self._bk.to_numpy(v) for k, v in self._state.items()}
            self._allocate(bk, size, dtype)
            for k, v in host.items():
                self._state[k][...] = bk.asarray(v, dtype=dtype)
        if self._pending:
            for k, v in self._pending.items():
                if tuple(v.shape) != (size,):
                    raise CheckpointError(f"{self.name} state {k!r} has {v.shape[0]} values but "
                                          f"the parameters have {size}; load the state of the "
                                          "same model")
                self._state[k][...] = bk.asarray(v, dtype=dtype)
            self._pending = {}

    def hyperparameters(self) -> dict:
        return {k: (int(getattr(self, k)) if k in self._FLAGS else float(getattr(self, k)))
                for k in self._HYPER}

    def state_dict(self) -> dict:
        """Step count, hyperparameters and state buffers as Python numbers and host NumPy copies."""
        d: dict = {"step": int(self.t)}
        d.update(self.hyperparameters())
        for k, v in self._state.items():
            d[k] = self._bk.to_numpy(v).copy()
        for k, v in self._pending.items():
            d[k] = v.copy()
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore a :meth:`state_dict` (values may be Python numbers or 0-d arrays, e.g. from npz).

        The step count, the hyperparameters and the buffers are all restored; on any mismatch a
        :class:`~refvae.errors.CheckpointError` is raised and the optimizer is left unchanged.
        """
        missing = sorted({"step", *self._HYPER} - set(d))
        if missing:
            raise CheckpointError(f"{self.name} state does not match "
                                  f"(missing {', '.join(missing)}); "
                                  f"load a state saved by {self.name}")
        try:
            step = int(d["step"])
            hyper = {k: float(d[k]) for k in self._HYPER}
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.name} state has a non-numeric step or hyperparameter "
                                  f"({exc}); the state is corrupt") from exc
        for k in self._FLAGS:
            hyper[k] = bool(hyper[k])
        old = {k: getattr(self, k) for k in self._HYPER}
        for k, v in hyper.items():
            setattr(self, k, v)
        try:
            pending = self._check_loaded_buffers(d, step)
        except (CheckpointError, ConfigError) as exc:
            for k, v in old.items():
                setattr(self, k, v)
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(str(exc)) from exc
        self.t = step
        if self._size is not None and self._bk is not None:
            self._allocate(self._bk, self._size, self._dtype or self._bk.dtype)
            for k, v in pending.items():
                self._state[k][...] = self._bk.asarray(v, dtype=self._dtype)
            self._pending = {}
        else:
            self._state, self._pending = {}, pending

    def _check_loaded_buffers(self, d: dict, step: int) -> dict:
        """Validate a loaded state against the (new) hyperparameters; return its buffers."""
        active = self._active_buffers()
        extra = sorted(set(d) - {"step", *self._HYPER, *active})
        if extra:
            raise CheckpointError(f"{self.name} state does not match "
                                  f"(unexpected {', '.join(extra)}); "
                                  f"load a state saved by {self.name}")
        self._validate()
        absent = [k for k in active if k not in d]
        if step < 0 or (step > 0 and absent):
            raise CheckpointError(f"{self.name} state at step {step} lacks {', '.join(absent)}; "
                                  "the state is incomplete")
        pending = {}
        for k in active:
            if k not in d:
                continue
            v = d[k]
            shape = tuple(getattr(v, "shape", ()))
            if len(shape) != 1:
                raise CheckpointError(f"{self.name} state {k!r} has shape {shape}, expected a "
                                      "flat vector; the state is corrupt")
            if self._size is not None and shape != (self._size,):
                raise CheckpointError(f"{self.name} state {k!r} has {shape[0]} values but the "
                                      f"parameters have {self._size}; load the state of the "
                                      "same model")
            pending[k] = v
        return pending
