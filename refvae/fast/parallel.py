"""Data parallelism on the CPU: a batch's loss and gradients on a pool of threads, and the
optimizer's update split the same way. The common model (what :func:`refvae.fast.step.fused`
accepts) runs the fused pass split by rows and then by output units
(:mod:`refvae.fast.fused_pass`: no per-shard weight gradients); every other model runs
:meth:`VAE.loss_and_grads <refvae.math.vae.VAE.loss_and_grads>` on row shards whose gradients are
summed.

Why threads work here: NumPy and BLAS release the GIL inside their kernels, so two shards' array
work runs on two cores at once, and so does everything between the matrix products (emission,
activations, Adam) that NumPy would otherwise run on one core. While a :class:`Workers` pool is
open the BLAS library runs one thread per call (:func:`~refvae.fast.threads.blas_threads`): left at
its default, OpenBLAS's idle workers keep spinning after each product and take the cores from the
other shard.

The loss and every gradient are sums over data, so the shards' sums are the batch's sums; only the
order of floating-point additions changes (agreement with one shard to rounding, tested in
``tests/test_parallel.py``). Estimators that keep state across steps from the whole batch
(:data:`~refvae.math.estimators.STATEFUL`) run as one shard, and so does everything on a GPU.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait

from ..math.estimators import STATEFUL
from ..util import gates
from ..util.results import LossResult
from ..util.checked import checked
from .step import fused, loss_and_grads_into
from .threads import blas_thread_limit


class Workers:
    """A pool of ``threads`` threads (none for one thread: everything runs inline).

    Use as a context manager: on entry with more than one thread the BLAS library is set to one
    thread per call, and on exit its previous count is restored and the pool is shut down.
    """

    def __init__(self, threads: int = 1):
        self.threads = threads = checked(threads, "threads", integer=True, minimum=1)
        # The calling thread takes a share of every map: the pool holds the other threads - 1.
        self._pool = ThreadPoolExecutor(threads - 1,
                                        thread_name_prefix="refvae") if threads > 1 else None
        self._blas_limit = None

    def __enter__(self) -> "Workers":
        if self.threads > 1:
            self._blas_limit = blas_thread_limit(1)
            self._blas_limit.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._blas_limit is not None:
            self._blas_limit.__exit__(None, None, None)
            self._blas_limit = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def map(self, fn, items) -> list:
        """``[fn(item) for item in items]``, the items taken in order by the calling thread and
        the pool's threads, each the next one free; once every item has finished, the exception of
        the first item (in order) that raised one is raised here."""
        items = list(items)
        if self._pool is None or len(items) < 2:
            return [fn(item) for item in items]
        results, errors = [None] * len(items), [None] * len(items)
        order, lock = iter(range(len(items))), threading.Lock()

        def drain() -> None:
            while True:
                with lock:
                    i = next(order, None)
                if i is None:
                    return
                try:
                    results[i] = fn(items[i])
                except BaseException as exc:  # noqa: BLE001 - re-raised below, in item order
                    errors[i] = exc

        helpers = [self._pool.submit(drain) for _ in range(min(self.threads, len(items)) - 1)]
        drain()
        wait(helpers)
        for exc in errors:
            if exc is not None:
                raise exc
        return results

    def split(self, n: int) -> list[slice]:
        """``range(n)`` as at most ``threads`` contiguous, non-empty slices of near-equal size."""
        parts = max(1, min(self.threads, n))
        bounds = [n * i // parts for i in range(parts + 1)]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def loss_and_grads(model, workers: Workers, params: dict, y, noise, estimator: str | None = None,
                   reduction: str = "mean", check: bool = True, temperature: float | None = None,
                   estimator_state: dict | None = None, detect_anomaly: bool = False,
                   grads_out: dict | None = None, grad_buffer=None,
                   condition=None) -> LossResult:
    """:meth:`VAE.loss_and_grads <refvae.math.vae.VAE.loss_and_grads>` of the whole batch, computed
    as row shards on ``workers``; the same arguments and result. ``grads_out`` (e.g.
    :attr:`FlatParams.grads <refvae.optim.rules.FlatParams.grads>`) receives the summed gradients in
    place of freshly allocated arrays, and is then the result's ``grads``. With ``grad_buffer``,
    the flat vector behind ``grads_out`` (:attr:`FlatParams.grad
    <refvae.optim.rules.FlatParams.grad>`), one shard writes its gradients there directly and
    finiteness is checked once on it (:func:`refvae.fast.step.loss_and_grads_into`).
    ``condition``: a conditional VAE's condition per row (split with the rows).
    """
    chosen = estimator or model.default_estimator
    if check:
        params = gates.check_params(model, params)
        y, noise = gates.check_batch(model, y, noise)
        condition = gates.check_condition(model, condition, y.shape[0])
    n = noise.shape[0]
    # On a GPU one shard already fills the device; shards would only add kernel launches.
    one_shard = chosen in STATEFUL or model.bk.name == "cupy"
    shards = [slice(0, n)] if one_shard else workers.split(n)
    into = grads_out is not None and grad_buffer is not None
    if into and (len(shards) == 1 or fused(model, chosen, detect_anomaly)):
        # The fused pass splits by rows and by output units itself (refvae.fast.fused_pass).
        return loss_and_grads_into(model, params, y, noise, grads_out, grad_buffer, estimator,
                                   reduction, temperature, estimator_state, detect_anomaly,
                                   None if one_shard else workers, condition)

    def run(rows: slice) -> LossResult:
        return model.loss_and_grads(params, y[rows], noise[rows], estimator, reduction, check=False,
                                    temperature=temperature, estimator_state=estimator_state,
                                    detect_anomaly=detect_anomaly, batch_size=n,
                                    condition=None if condition is None else condition[rows])

    parts = workers.map(run, shards)
    xp = model.bk.xp

    def add(name: str):
        out = grads_out[name] if grads_out is not None else None
        if len(parts) == 1:
            if out is None:
                return parts[0].grads[name]
            out[...] = parts[0].grads[name]
            return out
        total = xp.add(parts[0].grads[name], parts[1].grads[name], out=out)
        for part in parts[2:]:
            total += part.grads[name]
        return total

    names = list(parts[0].grads)
    grads = dict(zip(names, workers.map(add, names)))
    cat = (lambda arrays: arrays[0]) if len(parts) == 1 else xp.concatenate
    # Shards run on the host only, where checking the summed gradients costs no device sync.
    if len(parts) == 1:
        finite = parts[0].grads_finite
    elif grad_buffer is not None:
        finite = bool(xp.isfinite(grad_buffer).all())
    else:
        finite = all(bool(xp.isfinite(g).all()) for g in grads.values())
    return LossResult(sum(p.loss for p in parts), sum(p.kl for p in parts),
                      sum(p.reconstruction for p in parts),
                      cat([p.kl_per_datum for p in parts]),
                      cat([p.reconstruction_per_datum for p in parts]), grads, finite)
