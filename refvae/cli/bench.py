"""``refvae bench``: time one training step (loss, hand-derived gradients, Adam update) and put it
beside a peer implementation run in the same process.

Reported per case: median step time, samples per second, peak memory of the step (tracemalloc,
which sees NumPy's allocations), achieved GFLOP/s against the machine's measured matrix-multiply
rate, and the ratio to the peer's step time. The peer is the PyTorch witness's step
(:func:`refvae.witness.modules.make_step`, which imports torch only when called), or a module file
given with ``--peer``; without torch, or without the file, the ratio column says so.
"""
from __future__ import annotations

import gc
import importlib.util
import math
import os
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

from ..util import inputs
from ..backend import NoiseSource, get_backend
from ..math.config import VAEConfig
from ..errors import ConfigError
from ..fast.model import fast_vae
from ..fast import parallel
from ..fast.threads import blas_thread_limit, usable_cores
from ..util.checked import cli_int
from ..fast.optim import make_optimizer
from ..optim.rules import FlatParams

SETTLE_S = 0.25   # pause before each engine's turn (idle worker threads stop spinning)
TURNS = 4
# Fewer timed or warm-up steps than these give unstable ratios (PyTorch's first steps are slow).
STABLE_STEPS, STABLE_WARMUP = 20, 5
ARCHITECTURES = {
    # pytorch/examples' VAE, and a deeper one.
    "examples": dict(data_dim=784, latent_dim=20, encoder_hidden=[400], decoder_hidden=[400]),
    "deep": dict(data_dim=784, latent_dim=32, encoder_hidden=[512, 256], decoder_hidden=[256, 512]),
}


@dataclass
class Timing:
    median_ms: float
    samples_per_s: float
    peak_mb: float | None
    gflops: float


def step_flops(config: dict, batch: int, samples: int = 1) -> float:
    """Multiply-add FLOPs of one step's matrix products: forward 2·M·in·out per layer, backward
    twice that (weight and input gradients), except the first encoder layer (no input gradient)."""
    enc = [config["data_dim"], *config["encoder_hidden"], 2 * config["latent_dim"]]
    dec = [config["latent_dim"], *config["decoder_hidden"], config["data_dim"]]
    total = 0.0
    for widths, rows in ((enc, batch), (dec, batch * samples)):
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            factor = 2 if (widths is enc and i == 0) else 3
            total += factor * 2.0 * rows * a * b
    return total


def matmul_rate(bk, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of an n×n matrix product in the backend's dtype (the machine's BLAS ceiling)."""
    a = bk.asarray(NoiseSource(0).normal((n, n)))
    b = bk.asarray(NoiseSource(1).normal((n, n)))
    a @ b
    bk.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        bk.synchronize()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / min(times) / 1e9


def time_interleaved(engines, steps: int, warmup: int, turns: int = TURNS) -> list[float]:
    """Median seconds per step of each engine ``(step, sync)``, timed in alternating turns.

    After ``warmup`` untimed steps each, the engines take ``turns`` turns of ``steps / turns``
    timed steps: on a shared or virtual machine the speed drifts by 10–20 % over seconds, and
    alternating lets every engine see the same drift. Each turn starts with a short pause and one
    untimed step: the other engine's idle worker threads (OpenMP, OpenBLAS) keep spinning for a
    while after their last task and would otherwise steal the cores."""
    for step, sync in engines:
        for _ in range(warmup):
            step()
        sync()
    per_turn = max(1, math.ceil(steps / turns))
    times: list[list[float]] = [[] for _ in engines]
    for _ in range(turns):
        for (step, sync), record in zip(engines, times):
            time.sleep(SETTLE_S)
            step()
            sync()
            for _ in range(per_turn):
                t0 = time.perf_counter()
                step()
                sync()
                record.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def peak_memory_mb(step) -> float:
    """Peak traced memory (MB) of one call of ``step`` (tracemalloc sees NumPy's allocations)."""
    gc.collect()
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


def refvae_step(config: dict, batch: int, backend="numpy", dtype="float32", estimator=None,
                samples: int = 1, seed: int = 0, workers: parallel.Workers | None = None):
    """A closure running one refvae training step on a fixed random batch with fresh noise
    (row shards on ``workers``' threads when given)."""
    model = fast_vae({**config, "activation": config.get("activation", "relu"),
                      "emission": "bernoulli"},
                     backend, dtype)
    noise = NoiseSource(seed)
    flat = FlatParams.from_dict(model.bk, model.init_params(noise))
    opt = make_optimizer("adam", model.bk, flat.size, lr=1e-3)
    y = model.bk.asarray(noise.uniform((batch, config["data_dim"])))
    temperature = 1.0 if model.config.latent == "categorical" else None
    pool = workers or parallel.Workers(1)

    def step():
        eps = model.draw_noise(noise, batch, samples)
        parallel.loss_and_grads(model, pool, flat.params, y, eps, estimator, check=False,
                                temperature=temperature, grads_out=flat.grads,
                                grad_buffer=flat.grad)
        opt.step(flat, workers=pool)

    return step, model.bk


def load_peer(path=None):
    """The peer module (``make_step(config, batch, dtype, device, samples, threads)``), or a reason
    string: :mod:`refvae.witness.modules` by default, else the module file at ``path``."""
    if not path:
        from ..witness import modules, torch_or_none  # noqa: PLC0415 - torch only when benchmarking

        return modules if torch_or_none() is not None else ("peer unavailable (PyTorch is not "
                                                            "installed)")
    path = Path(path)
    if not inputs.exists(path, "peer file", ConfigError):
        return f"no peer file at {path}"
    inputs.check_regular(path, "peer file", ConfigError)
    spec = importlib.util.spec_from_file_location("refvae_bench_peer", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"peer file {path} is not a Python module; give a .py file defining "
                          "make_step")
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as exc:
        return f"peer unavailable ({exc})"
    except Exception as exc:  # the peer is the user's own code: any failure is reported in one line
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"peer file {path} could not be loaded ({type(exc).__name__}: {detail}); "
                          "fix it or leave out --peer") from exc
    return module


def run_bench(arch_names=("examples", "deep"), batches=(128, 1024), dtypes=("float32", "float64"),
              backend="numpy", steps: int = 20, warmup: int = 5, peer=None, device="cpu",
              threads: int | None = None, out=None) -> list[dict]:
    """The main table: every architecture × batch × dtype, refvae beside the peer, both on
    ``threads`` threads (default: every core this process may use)."""
    # read at call time: pytest and callers swap sys.stdout
    out = sys.stdout if out is None else out
    threads = threads or default_threads()
    peer_mod = load_peer(peer)
    rows = []
    rates = {dt: matmul_rate(get_backend(backend, dt)) for dt in dtypes}
    for arch in arch_names:
        config = ARCHITECTURES[arch]
        for batch in batches:
            for dtype in dtypes:
                # One-thread BLAS per shard (with one thread: one thread in all, like the peer).
                with blas_thread_limit(1), parallel.Workers(threads if backend == "numpy"
                                                            else 1) as workers:
                    step, bk = refvae_step(config, batch, backend, dtype, workers=workers)
                    engines = [(step, bk.synchronize)]
                    if not isinstance(peer_mod, str):
                        engines.append(peer_mod.make_step(config, batch, dtype, device,
                                                          threads=threads))
                    medians = time_interleaved(engines, steps, warmup)
                    peak = peak_memory_mb(step) if backend == "numpy" else None
                sec = medians[0]
                row = {"arch": arch, "batch": batch, "dtype": dtype, "threads": threads,
                       "refvae_ms": 1e3 * sec,
                       "samples_per_s": batch / sec, "peak_mb": peak,
                       "gflops": step_flops(config, batch) / sec / 1e9, "blas_gflops": rates[dtype]}
                if isinstance(peer_mod, str):
                    row["peer_ms"], row["ratio"] = None, peer_mod
                else:
                    row["peer_ms"], row["ratio"] = 1e3 * medians[1], sec / medians[1]
                rows.append(row)
                print(format_row(row), file=out, flush=True)
    return rows


def run_estimators(latent_dims=(2, 5, 10, 20), batch: int = 128, dtype="float64", backend="numpy",
                   steps: int = 10, warmup: int = 2, out=None) -> list[dict]:
    """Step time of each estimator versus the latent dimension K (pytorch/examples widths); the
    estimators of one K take alternating turns, so that their ratios to pathwise see the same
    machine."""
    out = sys.stdout if out is None else out
    rows = []
    cases = [("gaussian", "pathwise", {}), ("gaussian", "price", {}), ("gaussian", "score-loo", {}),
             ("categorical", "gumbel-softmax", {"categories": 10})]
    samples_of = {"score-loo": 2}   # the others draw one sample
    for k in latent_dims:
        engines = []
        for latent, estimator, extra in cases:
            config = {**ARCHITECTURES["examples"], "latent_dim": k, "latent": latent,
                      "activation": "tanh", **extra}
            step, bk = refvae_step(config, batch, backend, dtype, estimator,
                                   samples=samples_of.get(estimator, 1))
            engines.append((step, bk.synchronize))
        secs = time_interleaved(engines, steps, warmup)
        for (latent, estimator, _), sec in zip(cases, secs):
            samples = samples_of.get(estimator, 1)
            rows.append({"K": k, "latent": latent, "estimator": estimator, "samples": samples,
                         "ms": 1e3 * sec, "vs_pathwise": sec / secs[0]})
            print(f"K={k:3d} {latent:12s} {estimator:15s} L={samples} {1e3 * sec:9.2f} ms  "
                  f"{sec / secs[0]:5.2f}× pathwise", file=out, flush=True)
    return rows


def default_threads() -> int:
    """The cores this process may run on (its CPU affinity), the thread count of both engines."""
    return usable_cores()


def format_row(r: dict) -> str:
    ratio = f"{r['ratio']:.2f}×" if isinstance(r["ratio"], float) else f"n/a ({r['ratio']})"
    peer = f"{r['peer_ms']:8.2f} ms" if r["peer_ms"] is not None else "     n/a"
    peak = f"{r['peak_mb']:7.1f} MB" if r["peak_mb"] is not None else "    n/a"
    return (f"{r['arch']:9s} batch {r['batch']:5d} {r['dtype']:8s} refvae {r['refvae_ms']:8.2f} ms "
            f"{r['samples_per_s']:9.0f} samples/s peak {peak}  {r['gflops']:6.1f} GFLOP/s "
            f"(BLAS {r['blas_gflops']:6.1f})  peer {peer}  ratio {ratio}")


def few_steps_warning(steps: int, warmup: int) -> str | None:
    """The warning printed when too few steps are timed for a stable ratio, else None."""
    if steps >= STABLE_STEPS and warmup >= STABLE_WARMUP:
        return None
    return (f"refvae bench: warning: {steps} timed step(s) after {warmup} warm-up step(s) give "
            "unstable "
            f"ratios (the peer's first steps are slow); pass --steps {STABLE_STEPS} --warmup "
            f"{STABLE_WARMUP} or more for numbers to compare")


def load_warning(threads: int, load: float | None = None, cores: int | None = None) -> str | None:
    """The warning printed when other work keeps the cores busy: the 1-minute load average
    ``load`` (default ``os.getloadavg()``) leaves fewer than ``threads`` of ``cores`` idle."""
    try:
        load = os.getloadavg()[0] if load is None else load
    except (AttributeError, OSError):  # no load average on this system
        return None
    cores = cores or os.cpu_count() or 1
    if cores - load >= threads - 0.5:
        return None
    return (f"refvae bench: warning: the machine is busy (load average {load:.1f} on {cores} "
            f"core(s), {threads} thread(s) wanted); other processes share the cores, so the times "
            "are slower and noisier than on an idle machine")


def _cmd_bench(args) -> int:
    for arch in args.arch:
        for batch in args.batch:
            VAEConfig.from_dict(ARCHITECTURES[arch]).check_batch("--batch", batch)
    for dtype in args.dtype:  # bad input is refused before the warning and the table start
        get_backend(args.backend, dtype)
    if args.peer and inputs.exists(args.peer, "peer file", ConfigError):
        inputs.check_regular(args.peer, "peer file", ConfigError)
    threads = args.threads or default_threads()
    # Unstable ratios matter only where there is a ratio (a peer to compare with).
    peer_found = not isinstance(load_peer(args.peer), str)
    warnings = [few_steps_warning(args.steps, args.warmup) if peer_found else None,
                load_warning(threads)]
    for warning in filter(None, warnings):
        print(warning, file=sys.stderr)
    print(f"refvae bench: backend {args.backend}, {threads} thread(s) for each "
          f"engine, {args.steps} timed "
          f"steps after {args.warmup} warm-up; ratio = refvae step time / peer step time (lower is "
          "better)")
    run_bench(args.arch, args.batch, args.dtype, args.backend, args.steps, args.warmup, args.peer,
              "cuda" if args.backend == "cupy" else "cpu", threads)
    if args.estimators:
        run_estimators(backend=args.backend, steps=max(3, args.steps // 2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="time training steps against a PyTorch peer in the same "
                                     "process")
    p.add_argument("--arch", nargs="+", default=["examples", "deep"], choices=sorted(ARCHITECTURES),
                   help="architectures: examples (784-400-20), deep (784-512-256-32) (default "
                        "both)")
    p.add_argument("--batch", type=cli_int(1), nargs="+", default=[128, 1024],
                   help="batch sizes (default 128 1024)")
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"],
                   choices=["float32", "float64"],
                   help="floating-point types (default both)")
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"],
                   help="array library (default numpy)")
    p.add_argument("--steps", type=cli_int(1), default=STABLE_STEPS,
                   help=f"timed steps per case (default {STABLE_STEPS}; fewer give unstable "
                        "ratios)")
    p.add_argument("--warmup", type=cli_int(0), default=STABLE_WARMUP,
                   help=f"untimed steps first (default {STABLE_WARMUP})")
    p.add_argument("--peer", default=None,
                   help="peer module file defining make_step (default: the PyTorch witness, "
                        "refvae.witness.modules)")
    p.add_argument("--estimators", action="store_true", help="also each estimator's step time "
                                                             "versus K")
    p.add_argument("--threads", type=cli_int(1), default=None,
                   help="CPU threads for refvae's row shards and for the peer (default: every "
                        "core)")
    p.set_defaults(func=_cmd_bench)
