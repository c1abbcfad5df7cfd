"""Where a training step's time goes (issue 28): ``refvae bench``'s step profiled by category.

    python -m validation.bench_profile                   # examples and deep, batch 128, both dtypes

On one thread the step runs under :mod:`cProfile` and each function's own time (``tottime``;
NumPy's calls inside a Python function count as that function's) is put in a category: the
matrix products (the MLP layers' forward, input-gradient and weight-gradient functions of
:mod:`refvae.fast.fused_pass`, whose own time is their BLAS calls), the elementwise kernels
(:mod:`refvae.fast.kernels`, the fused pass's kernels, reductions), the optimizer
(:mod:`refvae.fast.optim`), the noise, and the rest (Python between the calls, allocation). The
threading cost is what the step on two threads takes beyond half the one-thread step.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

try:
    from validation.common import table_text
except ImportError:  # pragma: no cover - run as a script from validation/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from validation.common import table_text

from refvae.cli.bench import ARCHITECTURES, refvae_step
from refvae.fast import parallel
from refvae.fast.threads import blas_thread_limit

CATEGORIES = ("matrix products", "elementwise", "optimizer", "noise", "rest")
_MATMUL = {("fused_pass.py", "forward"), ("fused_pass.py", "backward"),
           ("fused_pass.py", "weights")}


def category(file: str, function: str) -> str:
    """The category of one profiled function (``file`` its path, ``function`` its name)."""
    name = Path(file).name
    if (name, function) in _MATMUL:
        return "matrix products"
    if name == "optim.py" and "fast" in file:
        return "optimizer"
    if name == "backend.py" or "random" in function:
        return "noise"
    if (name in ("kernels.py", "elementwise.py") or function.endswith("_numpy")
            or "ufunc" in function or "reduce" in function or function == "sum"):
        return "elementwise"
    return "rest"


def wall_ms(step, steps: int) -> float:
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def breakdown(arch: str, batch: int, dtype: str, steps: int = 30) -> dict:
    """Milliseconds per step by category on one thread, the one- and two-thread step times and the
    threading cost."""
    config = ARCHITECTURES[arch]
    with blas_thread_limit(1), parallel.Workers(1) as one:
        step, _ = refvae_step(config, batch, "numpy", dtype, workers=one)
        one_ms = wall_ms(step, steps)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(steps):
            step()
        profile.disable()
    per = dict.fromkeys(CATEGORIES, 0.0)
    for (file, _, function), row in pstats.Stats(profile).stats.items():
        per[category(file, function)] += 1e3 * row[2] / steps   # row[2]: tottime
    scale = one_ms / sum(per.values())   # the profiler's own overhead shared out
    per = {k: v * scale for k, v in per.items()}
    with blas_thread_limit(1), parallel.Workers(2) as two:
        step, _ = refvae_step(config, batch, "numpy", dtype, workers=two)
        two_ms = wall_ms(step, steps)
    return {"arch": arch, "batch": batch, "dtype": dtype, **per, "one_ms": one_ms,
            "two_ms": two_ms, "threading": two_ms - one_ms / 2}


def rows_text(results: list[dict]) -> str:
    return table_text(["arch", "batch", "dtype", *[f"{c} ms" for c in CATEGORIES],
                       "1 thread ms", "2 threads ms", "threading ms"],
                      [[r["arch"], r["batch"], r["dtype"], *[f"{r[c]:.2f}" for c in CATEGORIES],
                        f"{r['one_ms']:.2f}", f"{r['two_ms']:.2f}", f"{r['threading']:.2f}"]
                       for r in results])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["examples", "deep"], choices=sorted(ARCHITECTURES))
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args(argv)
    results = [breakdown(a, 128, d, args.steps) for a in args.arch for d in args.dtype]
    print(rows_text(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
