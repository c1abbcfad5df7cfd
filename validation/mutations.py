"""Mutation check: put named bugs into a copy of refvae, one at a time, and see what catches them.

    python -m validation.mutations              # every bug: all unit tests and all quick claims
    python -m validation.mutations --fast       # pytest -x, claims in a likely order, stop at first
    python -m validation.mutations --check      # only: is every snippet found exactly once?
    python -m validation.mutations --only a q --fast
    python -m validation.mutations --fast --every-claim   # the first failing test, every claim
    python -m validation.mutations --only a d --no-tests --claims claim01_errata   # claim 1: a, d?

Each mutation is a list of edits (file, exact old snippet, new snippet). The script refuses (exit 2,
one line naming the mutation and file) when a snippet is not found exactly once in the clean tree,
so a refactor that moves the code makes the check fail instead of passing vacuously. For every bug
the repository is copied to a temporary directory, the edits applied there, and the unit tests
(``pytest -q``) and the quick claims (``python -m validation.claimNN --quick``) run against the
copy. The table (which tests and claims each bug fails) is written into the section of
``validation/REPORT.md`` between the markers below, which ``run_all`` keeps when it rewrites the
report. Not part of CI: a full run takes hours on two cores.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from validation.common import DEFAULT_DATA

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- mutation-check:start -->", "<!-- mutation-check:end -->"
COPY = ("refvae", "validation", "tests", "pyproject.toml", "README.md", "docs")


@dataclass(frozen=True)
class Mutation:
    what: str
    edits: tuple          # ((file, old, new), ...)
    claims: tuple = ()    # the quick claims most likely to catch it, tried first with --fast
    tests: tuple = ()     # the unit-test files most likely to catch it, run first


GAUSS, EST, CAT = ("refvae/math/latent/gaussian.py", "refvae/math/estimators.py",
                   "refvae/math/latent/categorical.py")
LOOP, PATHS, WIRING = "refvae/train/loop.py", "tests/test_paths.py", "tests/test_option_wiring.py"
MUTATIONS = {
    "a": Mutation("sampler std = exp(ℓ) (erratum E3 put back)",
                  ((GAUSS, "return Scale(bk.xp.exp(log_std), log_std,",
                    "return Scale(bk.xp.exp(h), log_std,"),),
                  ("claim01_errata", "claim13_coverage", "claim09_pytorch_examples"),
                  ("tests/test_bonnet_price.py", "tests/test_vae.py")),
    "b": Mutation("KL ∂/∂ℓ × 1.05",
                  ((GAUSS, '"logvar": bk.xp.expm1(2.0 * sc.log_std) * sc.dlog}',
                    '"logvar": 1.05 * bk.xp.expm1(2.0 * sc.log_std) * sc.dlog}'),),
                  ("claim13_coverage", "claim06_ppca", "claim09_pytorch_examples"),
                  ("tests/test_estimators_closed_form.py", "tests/test_vae.py")),
    "c": Mutation("Price term × 0.9",
                  ((GAUSS, '"logvar": sc.var * sc.dlog * hessian(full=False).sum(axis=1)}',
                    '"logvar": 0.9 * sc.var * sc.dlog * hessian(full=False).sum(axis=1)}'),),
                  ("claim13_coverage", "claim02_bonnet_price"),
                  ("tests/test_bonnet_price.py", "tests/test_estimators_closed_form.py")),
    "d": Mutation("Gumbel-softmax VJP without 1/s",
                  ((CAT, "return y * (upstream - (upstream * y).sum(axis=-1, keepdims=True)) / "
                         "temperature",
                    "return y * (upstream - (upstream * y).sum(axis=-1, keepdims=True))"),),
                  ("claim01_errata", "claim11_categorical_mnist", "claim13_coverage"),
                  ("tests/test_gumbel.py", "tests/test_categorical.py")),
    "e1": Mutation("score-loo baseline includes the sample itself",
                   ((EST, "return leave_one_out_mean(f)[..., None]", "return f.mean(axis=1, "
                                                                     "keepdims=True)[..., None]"),),
                   ("claim13_coverage", "claim03_unbiasedness"),
                   ("tests/test_estimators_closed_form.py", "tests/test_estimators.py")),
    "e2": Mutation("score-optimal β estimated from its own half",
                   ((EST, "beta[:, first] = coef(second)[:, None, :]",
                     "beta[:, first] = coef(first)[:, None, :]"),
                    (EST, "beta[:, second] = coef(first)[:, None, :]",
                     "beta[:, second] = coef(second)[:, None, :]")),
                   ("claim13_coverage", "claim03_unbiasedness"),
                   ("tests/test_estimators_closed_form.py", "tests/test_estimators.py")),
    "e3": Mutation("leave-one-out mean includes the sample itself (the categorical score's "
                   "baseline)",
                   ((EST, "return (f.sum(axis=1, keepdims=True) - f) / (samples - 1)",
                     "return f.sum(axis=1, keepdims=True) / samples"),),
                   ("claim11_categorical_mnist", "claim13_coverage"),
                   ("tests/test_categorical_enumeration.py", "tests/test_categorical.py")),
    "f": Mutation("Bernoulli gradient 0.99 σ(λ) − y",
                  (("refvae/math/emission.py", "return EmissionTerms(f, (1.0 - y) * expit(o) - y * "
                                               "expit(-o))",
                    "return EmissionTerms(f, 0.99 * expit(o) - y)"),),
                  ("claim01_errata", "claim13_coverage", "claim09_pytorch_examples"),
                  ("tests/test_emission.py",)),
    "g": Mutation("IWAE without −log k",
                  (("refvae/math/objectives.py", "out.append(acc - math.log(k))",
                    "out.append(acc)"),),
                  ("claim13_coverage", "claim08_iwae"), ("tests/test_objectives.py",)),
    "h": Mutation("Adam without bias correction",
                  (("refvae/optim/rules.py", "return lr * bc2_sqrt / (1.0 - self.beta1 ** self.t), "
                                             "self.eps * bc2_sqrt",
                    "return lr, self.eps"),),
                  ("claim13_coverage", "claim09_pytorch_examples"), ("tests/test_optim.py",)),
    "i": Mutation("∂f/∂log α without D/2",
                  (("refvae/math/emission.py", "df_dla = (0.5 * d - sq * inv_alpha)",
                    "df_dla = (-sq * inv_alpha)"),),
                  ("claim01_errata", "claim13_coverage", "claim06_ppca"),
                  ("tests/test_emission.py",)),
    "j": Mutation("decoder Hessian without the φ″ term",
                  (("refvae/math/mlp.py", "if not self.activation.piecewise_linear:", "if False:"),
                   ),
                  ("claim02_bonnet_price",), ("tests/test_mlp_hessian.py",)),
    "k": Mutation("KL value without −1",
                  ((GAUSS, "return 0.5 * (sc.var + nu * nu - 1.0 - 2.0 * sc.log_std).sum(axis=-1)",
                    "return 0.5 * (sc.var + nu * nu - 2.0 * sc.log_std).sum(axis=-1)"),),
                  ("claim12_superfluous_latents", "claim03_unbiasedness", "claim06_ppca",
                   "claim09_pytorch_examples"), ("tests/test_vae.py", "tests/test_estimators_closed"
                                                                      "_form.py")),
    "l": Mutation("straight-through forward uses the relaxed sample",
                  ((CAT, "x = (y if mode in RELAXED_MODES else hard)",
                    'x = (y if mode in RELAXED_MODES + ("straight-through",) else hard)'),),
                  ("claim11_categorical_mnist", "claim13_coverage"),
                  ("tests/test_categorical_enumeration.py", "tests/test_categorical.py")),
    "m": Mutation("planar flow: constraint term dropped from ∂/∂w",
                  (("refvae/math/latent/flow.py", "g_w[:, t] = g_w[:, t] + gw_t",
                    "g_w[:, t] = g_w[:, t]"),),
                  ("claim13_coverage",), ("tests/test_flow.py",)),
    "n": Mutation("relaxed-KL gradient without 1/s",
                  ((CAT, "return dq_deta + (v - y * v.sum(axis=-1, keepdims=True)) / temperature",
                    "return dq_deta + (v - y * v.sum(axis=-1, keepdims=True))"),),
                  ("claim11_categorical_mnist", "claim13_coverage", "claim05_gumbel"),
                  ("tests/test_gumbel.py", "tests/test_categorical.py")),
    "o": Mutation("pathwise ∂/∂ℓ × 1.05",
                  ((GAUSS, '"logvar": sc.std * sc.dlog * (g * state.eps).sum(axis=1)}',
                    '"logvar": 1.05 * sc.std * sc.dlog * (g * state.eps).sum(axis=1)}'),),
                  ("claim03_unbiasedness", "claim13_coverage", "claim09_pytorch_examples"),
                  ("tests/test_estimators_closed_form.py", "tests/test_bonnet_price.py")),
    "p": Mutation("score-running updates its mean before using it",
                  ((EST, "        out = score_function(bk, latent.score(bk, state), signals.f, "
                         "signals.weight,\n",
                    "        if control_variate == \"score-running\":\n"
                    "            _update_running(bk, signals.f, signals.state)\n"
                    "        out = score_function(bk, latent.score(bk, state), signals.f, "
                    "signals.weight,\n"),
                   (EST, "        if control_variate == \"score-running\":\n"
                         "            _update_running(bk, signals.f, signals.state)\n        "
                         "return out",
                    "        return out")),
                  ("claim13_coverage", "claim03_unbiasedness"),
                  ("tests/test_estimators_closed_form.py", "tests/test_estimators.py")),
    "q": Mutation("no minibatch shuffling",
                  (("refvae/train/loop.py", "order = noise.permutation(n)",
                    "order = np.sort(noise.permutation(n))"),),
                  ("claim13_coverage", "claim09_pytorch_examples"), ("tests/test_minibatch_order.p"
                                                                     "y", "tests/test_train.py")),
    **{  # issue 23: the training loop's wiring of options, paths quick mode never took, hints
        key: Mutation(what, edits, ("claim15_paths",), tests)
        for key, (what, edits, tests) in {
            "r1": ("step schedule gets the default γ, not --lr-gamma",
                   ((LOOP, '"step": {"step_size": options.lr_step_size, "gamma": options.lr_gamma}',
                     '"step": {"step_size": options.lr_step_size}'),), (WIRING,)),
            "r2": ("evaluation ignores --eval-samples",
                   ((LOOP, "NoiseSource([options.seed, epoch, 1]),\n                             "
                           "options.eval_samples, condition=condition)",
                     "NoiseSource([options.seed, epoch, 1]), condition=condition)"),),
                   (WIRING,)),
            "r3": ("temperature fixed at its start value in the steps",
                   ((LOOP, "temperature=temperature(step) if temperature else None",
                     "temperature=temperature(0) if temperature else None"),), (WIRING,)),
            "r4": ("--binarize ignored when the data are prepared",
                   ((LOOP, "data = apply_binarization(data, options.binarize, seed=options.seed + "
                           "1)",
                     'data = apply_binarization(data, "none", seed=options.seed + 1)'),),
                   (WIRING,)),
            "r5": ("--weight-decay dropped on its way to the optimizer",
                   ((LOOP, "weight_decay=options.weight_decay)", "weight_decay=0.0)"),),
                   (WIRING,)),
            "r6": ("the third and later shards' gradients dropped",
                   (("refvae/fast/parallel.py", "for part in parts[2:]:", "for part in parts[3:]:"),
                    ),
                   (PATHS, "tests/test_parallel.py")),
            "r7": ("IWAE chunks combined by max instead of log-sum-exp",
                   (("refvae/math/objectives.py",
                     "acc = part if acc is None else xp.logaddexp(acc, part)",
                     "acc = part if acc is None else xp.maximum(acc, part)"),), (PATHS,)),
            "r8": ("SGD dampening ignored (plain rule)",
                   (("refvae/optim/rules.py", "self.momentum * b + (1.0 - self.dampening) * g",
                     "self.momentum * b + g"),), (PATHS, "tests/test_optim.py")),
            "r9": ("SGD dampening ignored (fast rule)",
                   (("refvae/fast/optim.py", "xp.multiply(1.0 - self.dampening, g, out=T)",
                     "xp.multiply(1.0, g, out=T)"),), (PATHS, "tests/test_fast_optim.py")),
            "r10": ("resume restarts the step count at 0",
                    ((LOOP, "start_epoch, step, estimator_state = state.epoch, state.step, "
                            "state.estimator_state",
                      "start_epoch, step, estimator_state = state.epoch, 0, state.estimator_state"),
                     ),
                    (PATHS, "tests/test_train.py")),
            "r11": ("resume restarts the generator instead of restoring its state",
                    ((LOOP, "noise.set_state(state.noise_state)",
                      "noise.set_state(NoiseSource(options.seed).state())"),),
                    ("tests/test_train.py", WIRING)),
            "r12": ("dynamic binarisation drawn once, in the first epoch",
                    ((LOOP, "y_epoch = bk.asarray(binarize(data.train, noise))",
                      "y_epoch = y_dev = bk.asarray(binarize(data.train, noise))"),), (PATHS,)),
            "r13": ("oracle: variance-as-scale sampler labelled as logvar-as-scale",
                    (("refvae/oracle/diagnose.py",
                      '"your sampler uses exp(logvar), the variance, as the "',
                      '"your sampler uses logvar itself as the "'),
                     ("refvae/oracle/samplers.py",
                      '"your sampler uses exp(logvar), the variance, as the standard deviation "',
                      '"your sampler uses logvar itself as the standard deviation "')),
                    (PATHS, "tests/test_oracle_check_torch.py")),
        }.items()
    },
}


class SnippetError(Exception):
    pass


def apply(root: Path, key: str, mutation: Mutation) -> None:
    """Apply the edits in order under ``root``; each old snippet must occur exactly once."""
    for file, old, new in mutation.edits:
        path = root / file
        if not path.exists():
            raise SnippetError(f"mutation {key}: {file} does not exist; re-target the mutation "
                               f"in {__file__}")
        text = path.read_text()
        count = text.count(old)
        if count != 1:
            raise SnippetError(f"mutation {key}: snippet {old.strip()[:60]!r} found {count} times "
                               f"in {file} "
                               f"(must be exactly once); re-target the mutation in {__file__}")
        path.write_text(text.replace(old, new))


def check_all(keys) -> None:
    """Every mutation applies cleanly to a scratch copy of the files it edits."""
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            for file, _, _ in MUTATIONS[key].edits:
                dest = Path(tmp) / key / file
                if not dest.exists() and (ROOT / file).exists():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / file, dest)
            apply(Path(tmp) / key, key, MUTATIONS[key])


def copy_tree(dest: Path) -> None:
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name,
                            ignore=shutil.ignore_patterns("__pycache__", "figures", "*.png"))
        elif src.exists():
            shutil.copy(src, dest / name)


def _env(root: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), MPLBACKEND="Agg")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_tests(root: Path, mutation: Mutation, first_failure: bool) -> tuple[list, float]:
    """The failing unit tests' ids (``file::test``), and the seconds spent."""
    t0 = time.perf_counter()
    likely = [t for t in mutation.tests if (root / t).exists()]
    # With first_failure the likely files run alone first: collecting the whole suite is slow.
    for paths in ([likely, ["tests"]] if first_failure and likely else [["tests"]]):
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
               *(["-x"] if first_failure else []),
               *paths]
        out = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True)
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out.stdout, flags=re.M)
        if out.returncode not in (0, 1, 5) and not failed:
            failed = [f"pytest exit {out.returncode}"]
        if failed:
            break
    return failed, time.perf_counter() - t0


def claim_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "validation").glob("claim*.py"))


def run_claims(root: Path, mutation: Mutation, first_failure: bool, only=None,
               data_dir: Path = DEFAULT_DATA) -> tuple[list, float]:
    """The quick claims that FAIL (``name``) or crash (``name (crash)``), and the seconds spent;
    with ``first_failure`` the likely claims go first and the run stops at the first that fails;
    ``only``: these claims alone."""
    t0 = time.perf_counter()
    names = [c for c in claim_names() if not only or c in only]
    order = [c for c in mutation.claims if c in names] + [c for c in names if c
                                                          not in mutation.claims]
    failed = []
    with tempfile.TemporaryDirectory() as figs:
        for name in order:
            # The copy lives elsewhere, so the claims' default data directory (beside the
            # repository) is passed.
            out = subprocess.run([sys.executable, "-m", f"validation.{name}", "--quick",
                                  "--fig-dir", figs,
                                  "--data-dir", str(data_dir)],
                                 cwd=root, env=_env(root), capture_output=True, text=True)
            if out.returncode != 0:
                crashed = "Traceback" in out.stderr and "FAIL:" not in out.stdout
                failed.append(f"{name} (crash)" if crashed else name)
                if first_failure:
                    break
    return failed, time.perf_counter() - t0


def table(results: dict, first_failure: bool, every_claim: bool = False) -> str:
    tests = "unit tests stop at the first failure (`pytest -x`, the likely files first)"
    if first_failure and every_claim:
        flags, mode = " --fast --every-claim", (f"{tests}; every quick claim runs, so the claims "
                                                "cell lists all that fail")
    elif first_failure:
        flags, mode = " --fast", (f"{tests}, claims run in the likely order and stop at the first "
                                  "that fails, so each "
                                  "cell names what failed first, not everything that would")
    else:
        flags, mode = "", "every unit test and every quick claim"
    lines = [START, "## Mutation check", "",
             f"Each bug put into a copy of refvae alone (`python -m validation.mutations{flags}`; "
             f"{mode}). A bug is caught when it fails at least one unit test and at least one "
             "quick claim.", "",
             "| bug | what | unit tests that fail | quick claims that fail | caught by both | time "
             "(s) |",
             "|---|---|---|---|---|---|"]
    for key, (tests, claims, seconds) in results.items():
        both = "yes" if tests and any(not c.endswith("(crash)") for c in claims) else "**NO**"
        lines.append(f"| {key} | {MUTATIONS[key].what} | {', '.join(tests) or '—'} | "
                     f"{', '.join(claims) or '—'} | {both} | {seconds:.0f} |")
    return "\n".join(lines + ["", END])


def write_section(report: Path, section: str) -> None:
    text = report.read_text() if report.exists() else ""
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    report.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", choices=sorted(MUTATIONS), help="these bugs only")
    p.add_argument("--fast", action="store_true", help="stop each bug's tests and claims at the "
                                                       "first failure")
    p.add_argument("--every-claim", action="store_true",
                   help="with --fast: the unit tests still stop at the first failure, every quick "
                        "claim runs")
    p.add_argument("--check", action="store_true", help="only check that every snippet is found "
                                                        "exactly once")
    p.add_argument("--jobs", type=int, default=1, help="bugs checked at the same time (default 1)")
    p.add_argument("--no-tests", action="store_true", help="skip the unit tests (claims only)")
    p.add_argument("--no-claims", action="store_true", help="skip the claims (unit tests only)")
    p.add_argument("--claims", nargs="*", choices=claim_names(), help="these quick claims only "
                                                                      "(the table is not written)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help=f"the claims' data (default {DEFAULT_DATA})")
    p.add_argument("--report", default=str(ROOT / "validation" / "REPORT.md"),
                   help="where the table goes")
    args = p.parse_args(argv)
    keys = args.only or list(MUTATIONS)
    try:
        check_all(keys)
    except SnippetError as exc:
        print(f"mutations: {exc}", file=sys.stderr)
        return 2
    print(f"mutations: all {len(keys)} mutations' snippets found exactly once")
    if args.check:
        return 0
    missing = [name for name in ("mnist", "binarized_mnist", "frey_face")
               if not (args.data_dir / name).is_dir()]
    if missing and not args.no_claims:
        # A claim without its data SKIPs (exit 0): it would count as not catching every bug.
        print(f"mutations: {args.data_dir} has no {', '.join(missing)}: the claims that need them "
              "would skip and "
              "catch nothing; pass --data-dir with the data sets (refvae data download)",
              file=sys.stderr)
        return 2
    def one(key):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            copy_tree(root)
            apply(root, key, MUTATIONS[key])
            t0 = time.perf_counter()
            tests = [] if args.no_tests else run_tests(root, MUTATIONS[key], args.fast)[0]
            claims = [] if args.no_claims else run_claims(root, MUTATIONS[key],
                                                          args.fast and not args.every_claim,
                                                          args.claims, args.data_dir)[0]
        print(f"{key}: tests {tests or 'none'}; claims {claims or 'none'} "
              f"({time.perf_counter() - t0:.0f} s)",
              flush=True)
        return tests, claims, time.perf_counter() - t0

    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(keys, pool.map(one, keys)))
    section = table(results, args.fast, args.every_claim)
    print(section)
    if not (args.no_tests or args.no_claims or args.claims) and set(keys) == set(MUTATIONS):
        write_section(Path(args.report), section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
