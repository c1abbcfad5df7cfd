"""What bounds the CPU step (issue 28): the parts no change to refvae's own code can make faster.

    python -m validation.bench_limits                 # both architectures and dtypes, batch 128

Three measurements, each refvae's primitive beside PyTorch's or beside itself, interleaved:

- **the matrix products alone**: every product of one step (forward ``h Wᵀ``, input gradient
  ``δ W`` except the first encoder layer's, weight gradient ``δᵀ h``; their FLOPs are
  ``refvae bench``'s ``step_flops``) through NumPy's BLAS and through PyTorch's, each on the same
  number of threads. ``floor`` is NumPy's products over PyTorch's *whole step* (the step table's
  time, same run): the ratio refvae would reach if everything but its products took no time;
- **the transcendental functions** the Bernoulli emission needs (one ``exp`` and one ``log`` per
  output value), NumPy against PyTorch, one thread, ns per value;
- **Python threads**: a run of small NumPy calls (a 64-row shard's elementwise call) alone, on
  two threads, and in two processes (where ``fork`` exists); ``slowdown`` is the time for two
  runs at once over one run alone (1.0: perfect scaling, 2.0: none), the median (range) of
  alternating turns. NumPy hands the GIL over around every call, so threads pay per call where
  processes do not.
"""
from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

try:
    from validation.bench_profile import wall_ms
    from validation.common import table_text
except ImportError:  # pragma: no cover - run as a script from validation/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from validation.bench_profile import wall_ms
    from validation.common import table_text

from refvae.cli.bench import ARCHITECTURES
from refvae.fast.threads import blas_thread_limit


def products(config: dict, batch: int) -> list[tuple[str, int, int, int]]:
    """``(kind, M, K, N)`` of every matrix product of one step: ``(M×K) @ (K×N)``."""
    enc = [config["data_dim"], *config["encoder_hidden"], 2 * config["latent_dim"]]
    dec = [config["latent_dim"], *config["decoder_hidden"], config["data_dim"]]
    out = []
    for widths in (enc, dec):
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            out.append(("forward", batch, a, b))
            if not (widths is enc and i == 0):
                out.append(("input grad", batch, b, a))
            out.append(("weight grad", b, batch, a))
    return out


def products_ms(arch: str, batch: int, dtype: str, threads: int, repeats: int = 15) -> dict:
    """Milliseconds of one step's matrix products in NumPy and in PyTorch on ``threads`` threads
    (alternating turns), and their FLOPs."""
    import torch  # noqa: PLC0415 - the peer, only when measuring

    rng = np.random.default_rng(0)
    mats = [(rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype),
             np.empty((m, n), dtype=dtype)) for _, m, k, n in products(ARCHITECTURES[arch], batch)]
    tmats = [(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)) for a, b, c in mats]

    def ours():
        for a, b, c in mats:
            np.matmul(a, b, out=c)

    def theirs():
        for a, b, c in tmats:
            torch.mm(a, b, out=c)

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with blas_thread_limit(threads):
            turns = [(wall_ms(ours, repeats), wall_ms(theirs, repeats)) for _ in range(3)]
    finally:
        torch.set_num_threads(before)
    return {"arch": arch, "batch": batch, "dtype": dtype, "threads": threads,
            "numpy_ms": statistics.median(t[0] for t in turns),
            "torch_ms": statistics.median(t[1] for t in turns),
            "flops": sum(2.0 * m * k * n for _, m, k, n in products(ARCHITECTURES[arch], batch))}


def transcendentals(dtype: str, values: int = 128 * 784, repeats: int = 15) -> list[dict]:
    """ns per value of ``exp`` and ``log`` on one thread, NumPy against PyTorch."""
    import torch  # noqa: PLC0415

    x = np.random.default_rng(0).uniform(0.5, 2.0, values).astype(dtype)
    tx, out, tout = torch.from_numpy(x), np.empty_like(x), torch.empty(values, dtype=getattr(
        torch, dtype))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for name in ("exp", "log"):
            ours = wall_ms(lambda: getattr(np, name)(x, out=out), repeats)
            theirs = wall_ms(lambda: getattr(torch, name)(tx, out=tout), repeats)
            rows.append({"function": name, "dtype": dtype, "numpy_ns": 1e6 * ours / values,
                         "torch_ns": 1e6 * theirs / values})
    finally:
        torch.set_num_threads(before)
    return rows


def _small_calls(dtype: str, calls: int):
    a = np.random.default_rng(0).standard_normal((64, 400)).astype(dtype)
    h = np.empty_like(a)

    def run():
        for _ in range(calls):
            np.maximum(a, 0.0, out=h)
    return run


def concurrency(dtype: str, calls: int = 5000, turns: int = 7) -> dict:
    """Seconds for one run of ``calls`` small NumPy calls alone, and the slowdowns of two runs at
    once on two threads and in two processes (``None`` without ``fork``)."""
    run = _small_calls(dtype, calls)
    run()

    def timed(start) -> float:
        t0 = time.perf_counter()
        start()
        return time.perf_counter() - t0

    def threads():
        pair = [threading.Thread(target=run) for _ in range(2)]
        for t in pair:
            t.start()
        for t in pair:
            t.join()

    def processes():
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.write(ready_w, b"r")
                os.read(go_r, 1)
                run()
            finally:
                os._exit(0)
        os.read(ready_r, 1)   # the fork's own cost is not timed

        def both():
            os.write(go_w, b"g")
            run()
            os.waitpid(pid, 0)
        try:
            return timed(both)
        finally:
            for fd in (ready_r, ready_w, go_r, go_w):
                os.close(fd)

    fork = hasattr(os, "fork")
    record = []
    with blas_thread_limit(1):
        for _ in range(turns):   # alternating, so that the machine's drift hits all three alike
            alone = timed(run)
            record.append((alone, timed(threads) / alone, processes() / alone if fork else None))
    thr, proc = [t[1] for t in record], [t[2] for t in record]
    return {"dtype": dtype, "calls": calls, "alone_s": statistics.median(t[0] for t in record),
            "threads": (statistics.median(thr), min(thr), max(thr)),
            "processes": (statistics.median(proc), min(proc), max(proc)) if fork else None}


def products_text(rows: list[dict], peer_ms: dict | None = None) -> str:
    """The products' table; ``peer_ms`` maps ``(arch, batch, dtype, threads)`` to PyTorch's whole
    step (ms) for the ``floor`` column."""
    out = []
    for r in rows:
        key = (r["arch"], r["batch"], r["dtype"], r["threads"])
        step = (peer_ms or {}).get(key)
        out.append([*key, f"{r['numpy_ms']:.2f}", f"{r['torch_ms']:.2f}",
                    f"{r['numpy_ms'] / r['torch_ms']:.2f}×",
                    f"{r['flops'] / r['numpy_ms'] / 1e6:.1f}",
                    f"{r['numpy_ms'] / step:.2f}×" if step else "n/a"])
    return table_text(["arch", "batch", "dtype", "threads", "NumPy products ms",
                       "PyTorch products ms", "ratio", "NumPy GFLOP/s", "floor"], out)


def _spread(m) -> str:
    return "n/a" if m is None else f"{m[0]:.2f} ({m[1]:.2f}–{m[2]:.2f})"


def others_text(trans: list[dict], conc: list[dict]) -> str:
    t = table_text(["function", "dtype", "NumPy ns/value", "PyTorch ns/value", "ratio"],
                   [[r["function"], r["dtype"], f"{r['numpy_ns']:.2f}", f"{r['torch_ns']:.2f}",
                     f"{r['numpy_ns'] / r['torch_ns']:.1f}×"] for r in trans])
    c = table_text(["dtype", "small calls", "one run alone s", "two threads slowdown",
                    "two processes slowdown"],
                   [[r["dtype"], r["calls"], f"{r['alone_s']:.3f}", _spread(r["threads"]),
                     _spread(r["processes"])] for r in conc])
    return t + "\n\n" + c


def main(argv=None) -> int:
    rows = [products_ms(a, 128, d, t) for a in ARCHITECTURES for d in ("float32", "float64")
            for t in (2, 1)]
    print(products_text(rows))
    print()
    print(others_text([r for d in ("float32", "float64") for r in transcendentals(d)],
                      [concurrency(d) for d in ("float32", "float64")]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
