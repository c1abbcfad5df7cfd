"""Shared plumbing of the validation claims: the context a claim runs in, its result, and the
standalone entry point that prints PASS/FAIL with the numbers.

A claim module defines ``TITLE``, ``SOURCE`` and ``run(ctx) -> Claim``; ``run_all.py`` collects
them into ``validation/REPORT.md``. Every PASS threshold is written in the claim with its reason.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


@dataclass
class Context:
    """``quick``: the CI-sized variant; ``data_dir``: where MNIST & co. live (may be absent);
    ``fig_dir``: where PNG figures go; ``seed``: the base seed of every random draw."""

    quick: bool = True
    data_dir: Path | None = None
    fig_dir: Path = HERE / "figures"
    seed: int = 0

    def data(self, name: str) -> Path | None:
        """``data_dir/name`` when it exists, else ``None`` (the claim then skips, saying so)."""
        if self.data_dir is None:
            return None
        path = Path(self.data_dir) / name
        return path if path.exists() else None


@dataclass
class Claim:
    """What a claim found. ``passed`` is ``None`` when it was skipped (``summary`` says why)."""

    title: str
    source: str
    passed: bool | None
    summary: str
    threshold: str = ""
    tables: list = field(default_factory=list)    # (caption, headers, rows)
    figures: list = field(default_factory=list)   # (caption, path)
    seconds: float = 0.0

    def __post_init__(self):
        # A NumPy bool (``np.True_ & False``) is not ``False``: ``main`` and ``run_all`` test
        # ``passed is False``, so a claim judged with NumPy comparisons would FAIL yet exit 0.
        if self.passed is not None:
            self.passed = bool(self.passed)

    @property
    def status(self) -> str:
        return "SKIP" if self.passed is None else ("PASS" if self.passed else "FAIL")


def rel(a, b) -> float:
    """``max |a − b|`` relative to the largest ``|b|`` (the reference)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def mean_se(a) -> tuple[float, float]:
    """The mean of ``a`` and its standard error ``sd/√n`` (``ddof = 1``)."""
    a = np.asarray(a, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size))


def rel_tensors(a: dict, b: dict) -> float:
    """The largest :func:`rel` over the tensors of ``b`` (the reference), each against ``a``'s."""
    return max(rel(a[name], b[name]) for name in b)


def skipped(title: str, source: str, why: str) -> Claim:
    return Claim(title, source, None, why)


def fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"
    return str(v)


def table_text(headers, rows) -> str:
    """A Markdown table (also readable on a terminal)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def claim_text(c: Claim) -> str:
    parts = [f"{c.status}: {c.title}", f"  source: {c.source}", f"  {c.summary}"]
    if c.threshold:
        parts.append(f"  threshold: {c.threshold}")
    for caption, headers, rows in c.tables:
        parts += ["", caption, table_text(headers, rows)]
    return "\n".join(parts)


def timed(run, ctx: Context) -> Claim:
    t0 = time.perf_counter()
    claim = run(ctx)
    claim.seconds = time.perf_counter() - t0
    return claim


def parse_context(argv=None, description: str = "") -> Context:
    p = argparse.ArgumentParser(description=description)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True, help="CI-sized run (default)")
    mode.add_argument("--full", action="store_true", help="the full-scale run of the report")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="data sets "
                                                                 f"(default {DEFAULT_DATA})")
    p.add_argument("--fig-dir", default=str(HERE / "figures"), help="where figures are written")
    p.add_argument("--seed", type=int, default=0)
    args, _ = p.parse_known_args(argv)
    fig_dir = Path(args.fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    return Context(quick=not args.full, data_dir=Path(args.data_dir), fig_dir=fig_dir,
                   seed=args.seed)


def main(run, argv=None) -> int:
    """Standalone entry point of one claim: prints it and exits 0 on PASS or SKIP, 1 on FAIL."""
    ctx = parse_context(argv)
    claim = timed(run, ctx)
    print(claim_text(claim))
    print(f"  ({claim.seconds:.1f} s, {'quick' if ctx.quick else 'full'} mode)")
    return 1 if claim.passed is False else 0


def savefig(fig, ctx: Context, name: str) -> Path:
    path = Path(ctx.fig_dir) / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plt.close(fig)
    return path
