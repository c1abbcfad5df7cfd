"""The optimizers' fast path: each plain update rule of :mod:`refvae.optim.rules`, computed in
place.

A plain :meth:`~refvae.optim.rules.Optimizer.update` writes its formula with whole-buffer
temporaries. Here the same arithmetic, operation for operation, runs

* over blocks of :data:`BLOCK` values on one CPU thread, so that the dozen passes of an update
  stay in cache instead of streaming the whole buffers through memory each time (one block on a
  GPU, where every pass is a kernel launch);
* into scratch buffers allocated once per thread, so that a step allocates no arrays;
* optionally in contiguous parts on the threads of a :class:`~refvae.fast.parallel.Workers` pool,
  each part in one block (``validation/BENCH.md``: on two threads small blocks cost more in GIL
  hand-offs than they save in cache misses).

Every value gets the same operations on the same operands in the same order as in the plain rule,
so the two are bit-identical (``tests/test_fast_optim.py`` checks it over hypothesis-drawn states).
On a GPU Adam's update is one elementwise kernel (:data:`ADAM`, the same formula in CUDA C).
"""
from __future__ import annotations

import threading

from ..optim.rules import SGD, Adagrad, Adam, FlatParams, Optimizer, resolve
from .elementwise import Elementwise, scalar

# Values per update pass on the CPU (0.5 MB per float32 buffer): few passes stay in cache, few
# calls.
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
        threaded = workers is not None and workers.threads > 1 and self._bk.name != "cupy"
        parts = workers.split(self._size) if threaded else [slice(0, self._size)]
        # Threads take their whole part at once: every NumPy call hands the GIL over, and blocks
        # small enough for the cache make the two threads wait on each other more than they gain.
        block = max(p.stop - p.start for p in parts) if threaded else self._block()
        self._scratch_size = block

        def run(part: slice) -> None:
            for a in range(part.start, part.stop, block):
                b = min(a + block, part.stop)
                self._fused(flat.data[a:b], flat.grad[a:b], lr,
                            {k: v[a:b] for k, v in self._state.items()})

        if threaded:
            workers.map(run, parts)
        else:
            run(parts[0])

    def _block(self) -> int:
        return self._size if self._bk.name == "cupy" else min(self._size, BLOCK)

    def _tmp(self, k: int, n: int):
        """The first ``n`` values of this thread's scratch buffer ``k`` (allocated once, as long
        as this step's blocks, for the current backend and dtype)."""
        local = self._local
        key = (self._bk.name, self._dtype, self._scratch_size)
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


# Adam's weight-decay modes: none, decoupled (AdamW: θ ← (1 − ηλ)θ), L2 (g ← g + λθ).
_PLAIN, _DECOUPLED, _L2 = 0, 1, 2


def _adam_numpy(xp, g, c1, b2, c2, scale, eps, decay, wd, mode, p, m, v, T=None) -> None:
    """:data:`ADAM` in NumPy (``T``: a scratch buffer like ``p``, and for L2 a second one is
    allocated): :meth:`Adam.update <refvae.optim.rules.Adam.update>` in place."""
    if mode == _DECOUPLED:
        p *= decay
    elif mode == _L2:
        G = xp.multiply(wd, p)
        G += g
        g = G
    T = xp.empty_like(p) if T is None else T
    xp.subtract(g, m, out=T)
    T *= c1
    m += T
    v *= b2
    xp.multiply(c2, g, out=T)
    T *= g
    v += T
    xp.sqrt(v, out=T)
    T += eps
    xp.divide(m, T, out=T)
    T *= scale
    p -= T


ADAM = Elementwise(
    "refvae_adam", "T g, T c1, T b2, T c2, T scale, T eps, T decay, T wd, int32 mode",
    "T p, T m, T v",
    """
    T G = g;
    if (mode == 1) { p = p * decay; } else if (mode == 2) { G = wd * p + g; }
    m = m + (G - m) * c1;
    v = v * b2 + (c2 * G) * G;
    p = p - (m / (sqrt(v) + eps)) * scale;
    """, _adam_numpy)


class FastAdam(_Blocked, Adam):
    """:meth:`Adam.update <refvae.optim.rules.Adam.update>` in place (one kernel on a GPU)."""

    def _fused(self, p, g, lr, state):
        xp = self._bk.xp
        m, v = state["exp_avg"], state["exp_avg_sq"]
        scale, eps = self.step_sizes(lr)
        if self._bk.name == "cupy":
            mode = (_DECOUPLED if self.decoupled else _L2) if self.weight_decay else _PLAIN
            c = [scalar(self._bk, x) for x in (1.0 - self.beta1, self.beta2, 1.0 - self.beta2,
                                               scale, eps, 1.0 - lr * self.weight_decay,
                                               self.weight_decay)]
            ADAM(self._bk, g, *c, xp.int32(mode), p, m, v)
            return
        if self.decoupled and self.weight_decay:
            p *= 1.0 - lr * self.weight_decay
        elif self.weight_decay:
            g = self._decayed_grad(p, g)
        _adam_numpy(xp, g, 1.0 - self.beta1, self.beta2, 1.0 - self.beta2, scale, eps, 1.0, 0.0,
                    _PLAIN, p, m, v, self._tmp(1, p.size))


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
