"""Run every claim (``validation/claim*.py``) and write ``validation/REPORT.md`` with its figures.

    python -m validation.run_all            # quick mode (minutes on two cores; what CI runs)
    python -m validation.run_all --full     # the full-scale runs the report states

Exit status 1 when any claim FAILs; a claim whose data are absent is reported as SKIP.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
import traceback
from pathlib import Path

try:
    from validation.common import HERE, Claim, Context, claim_text, parse_context, table_text, timed
except ImportError:  # pragma: no cover - run as a script from validation/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from validation.common import HERE, Claim, Context, claim_text, parse_context, table_text, timed


def claim_modules() -> list[str]:
    return sorted(f"validation.{p.stem}" for p in HERE.glob("claim*.py"))


def run_claim(name: str, ctx: Context) -> Claim:
    module = importlib.import_module(name)
    try:
        return timed(module.run, ctx)
    except Exception as exc:  # a crashing claim is a FAIL with its reason, and the others still run
        return Claim(getattr(module, "TITLE", name), getattr(module, "SOURCE", ""), False,
                     f"the claim crashed: {type(exc).__name__}: {exc}",
                     tables=[("traceback", ["line"], [[line] for line in
                                                      traceback.format_exc().strip().splitlines()[
                                                          -6:]])])


def report(claims: list[Claim], ctx: Context, seconds: float, report_path: Path,
           full_modes: list) -> str:
    """The Markdown report; ``full_modes`` is each claim's ``FULL_MODE`` (its full-scale
    runtime)."""
    mode = "quick" if ctx.quick else "full"
    lines = [
        "# refvae validation report", "",
        "Each claim below reproduces a statement of the chapter (section 8.2), one of its errata, "
        "or a "
        "published result at small scale, with the numbers measured and the threshold it must "
        "meet. "
        "Regenerate with `python -m validation.run_all` (quick) or `python -m validation.run_all "
        "--full`. "
        "Performance against PyTorch is measured separately: `BENCH.md` (`python -m "
        "validation.bench_report`).", "",
        f"- mode: **{mode}**; total time {seconds / 60:.1f} min on {platform.machine()} "
        f"(Python {platform.python_version()}); data: `{ctx.data_dir}`",
        f"- result: {sum(c.status == 'PASS' for c in claims)} "
        f"PASS, {sum(c.status == 'FAIL' for c in claims)} "
        f"FAIL, {sum(c.status == 'SKIP' for c in claims)} SKIP", "",
        f"| # | claim | result | time (s), {mode} | full mode (`--full`) |",
        "|---|---|---|---|---|",
    ]
    for i, (c, full) in enumerate(zip(claims, full_modes), 1):
        lines.append(f"| {i} | {c.title} | {c.status} | {c.seconds:.1f} | {full} |")
    for i, c in enumerate(claims, 1):
        lines += ["", f"## {i}. {c.title}", "", f"**{c.status}.** {c.summary}", "",
                  f"*Source:* {c.source}"]
        if c.threshold:
            lines += ["", f"*Threshold:* {c.threshold}"]
        for caption, headers, rows in c.tables:
            lines += ["", f"*{caption}*", "", table_text(headers, rows)]
        for caption, path in c.figures:
            rel = Path(path).resolve()
            try:
                rel = rel.relative_to(report_path.resolve().parent)
            except ValueError:
                pass
            lines += ["", f"![{caption}]({rel})", "", f"*{caption}*"]
    return "\n".join(lines) + "\n"


def keep_mutation_section(report_path: Path, text: str) -> str:
    """``text`` followed by the mutation-check section of the report being replaced, if it has one
    (``validation/mutations.py`` writes it; regenerating the claims must not erase it)."""
    from validation.mutations import END, START  # noqa: PLC0415

    old = report_path.read_text() if report_path.exists() else ""
    if START not in old or END not in old:
        return text
    return text + "\n" + old[old.index(START):old.index(END) + len(END)] + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--report", default=str(HERE / "REPORT.md"))
    p.add_argument("--only", nargs="*", default=None, help="claim module names (e.g. "
                                                           "claim01_errata)")
    args, rest = p.parse_known_args(argv)
    ctx = parse_context(rest, description=__doc__)
    names = claim_modules()
    if args.only:
        names = [n for n in names if n.split(".")[-1] in args.only or n.split(".")[-1][:7]
                 in args.only]
    t0 = time.perf_counter()
    claims, full_modes = [], []
    for name in names:
        full_modes.append(getattr(importlib.import_module(name), "FULL_MODE", "not stated"))
        claim = run_claim(name, ctx)
        print(claim_text(claim) + f"\n  ({claim.seconds:.1f} s)\n", flush=True)
        claims.append(claim)
    report_path = Path(args.report)
    text = report(claims, ctx, time.perf_counter() - t0, report_path, full_modes)
    report_path.write_text(keep_mutation_section(report_path, text))
    failed = [c.title for c in claims if c.passed is False]
    print(f"validation: {len(claims) - len(failed)} passed or skipped, {len(failed)} failed; "
          f"report {report_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
