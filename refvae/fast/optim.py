"""The optimizers' fast path: each plain update rule of :mod:`refvae.optim.rules`, computed in place.

A plain :meth:`~refvae.optim.rules.Optimizer.update` writes its formula with whole-buffer temporaries.
Here the same arithmetic, operation for operation, runs

* over blocks of :data:`BLOCK` values on the CPU, so that the dozen passes of an update stay in
  cache instead of streaming the whole buffers through memory each time (one block on a GPU, where
  every pass is a kernel launch);
* into scratch buffers allocated once per thread, so that a step allocates no arrays;
* optionally in contiguous parts on the threads of a :class:`~refvae.fast.parallel.Workers` pool.

Every value gets the same operations on the same operands in the same order as in the plain rule,
so the two are bit-identical (``tests/test_fast_optim.py`` checks it over hypothesis-drawn states).
"""
from __future__ import annotations

import threading

from ..optim.rules import SGD, Adagrad, Adam, FlatParams, Optimizer, resolve

# Values per update pass on the CPU (0.5 MB per float32 buffer): few passes stay in cache, few calls.
BLOCK = 131072


class _Blocked:
    """The blocked, scratch-buffered, threaded :meth:`step` shared by the fast optimizers; each
    defines ``_fused(p, g, lr, state)``, the in-place form of its parent's ``update``."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._local = threading.local()

    def step(self, flat: FlatParams, lr: float | None = None, workers=None) -> None:
        """One update of ``flat.data`` in place from ``flat.grad``; ``lr`` overrides the base rate.

        ``workers`` (:class:`refvae.fast.parallel.Workers`) splits the update into contiguous parts
        run on its threads (CPU only); every value gets the same arithmetic either way.
        """
        self._ensure(flat)
        self.t += 1
        lr = float(self.lr if lr is None else lr)
        block = self._block()

        def run(part: slice) -> None:
            for a in range(part.start, part.stop, block):
                b = min(a + block, part.stop)
                self._fused(flat.data[a:b], flat.grad[a:b], lr, {k: v[a:b] for k, v in self._state.items()})

        if workers is None or self._bk.name == "cupy":
            run(slice(0, self._size))
        else:
            workers.map(run, workers.split(self._size))

    def _block(self) -> int:
        return self._size if self._bk.name == "cupy" else min(self._size, BLOCK)

    def _tmp(self, k: int, n: int):
        """The first ``n`` values of this thread's scratch buffer ``k`` (allocated once, one block
        long, for the current backend and dtype)."""
        local = self._local
        key = (self._bk.name, self._dtype, self._block())
        if getattr(local, "key", None) != key:
            local.key, local.buffers = key, []
        while len(local.buffers) <= k:
            local.buffers.append(self._bk.xp.empty(key[2], dtype=self._dtype))
        return local.buffers[k][:n]

    def _decayed_grad(self, p, g):
        """``g + λθ`` (the L2 term) in scratch buffer 0, or ``g`` when ``λ = 0``."""
        if not self.weight_decay:
            return g
        G = self._tmp(0, p.size)
        self._bk.xp.multiply(self.weight_decay, p, out=G)
        G += g
        return G


class FastSGD(_Blocked, SGD):
    """:meth:`SGD.update <refvae.optim.rules.SGD.update>` in place."""

    def _fused(self, p, g, lr, state):
        xp = self._bk.xp
        g = self._decayed_grad(p, g)
        T = self._tmp(1, p.size)
        if self.momentum:
            b = state["momentum_buffer"]
            if self.t == 1:
                b[...] = g
            else:
                b *= self.momentum
                xp.multiply(1.0 - self.dampening, g, out=T)
                b += T
            if self.nesterov:
                xp.multiply(self.momentum, b, out=T)
                T += g
                g = T
            else:
                g = b
        xp.multiply(lr, g, out=T)
        p -= T


class FastAdam(_Blocked, Adam):
    """:meth:`Adam.update <refvae.optim.rules.Adam.update>` in place."""

    def _fused(self, p, g, lr, state):
        xp = self._bk.xp
        if self.decoupled and self.weight_decay:
            p *= 1.0 - lr * self.weight_decay
        elif self.weight_decay:
            g = self._decayed_grad(p, g)
        m, v, T = state["exp_avg"], state["exp_avg_sq"], self._tmp(1, p.size)
        xp.subtract(g, m, out=T)
        T *= 1.0 - self.beta1
        m += T
        v *= self.beta2
        xp.multiply(1.0 - self.beta2, g, out=T)
        T *= g
        v += T
        scale, eps = self.step_sizes(lr)
        xp.sqrt(v, out=T)
        T += eps
        xp.divide(m, T, out=T)
        T *= scale
        p -= T


class FastAdagrad(_Blocked, Adagrad):
    """:meth:`Adagrad.update <refvae.optim.rules.Adagrad.update>` in place."""

    def _fused(self, p, g, lr, state):
        xp = self._bk.xp
        g = self._decayed_grad(p, g)
        s, T = state["sum"], self._tmp(1, p.size)
        xp.multiply(g, g, out=T)
        s += T
        xp.sqrt(s, out=T)
        T += self.eps
        xp.divide(g, T, out=T)
        T *= self.decayed_lr(lr)
        p -= T


FAST = {SGD: FastSGD, Adam: FastAdam, Adagrad: FastAdagrad}


def make_optimizer(name: str, bk=None, size: int | None = None, **kw) -> Optimizer:
    """The fast path of the optimizer called ``name`` (:func:`refvae.optim.rules.resolve` checks the
    name and options): what the training loop uses."""
    cls, kw = resolve(name, kw)
    return FAST[cls](**kw, bk=bk, size=size)
