"""Claim 11: the categorical VAE comparison of Jang et al. (2017), Table 1, at small scale.

A VAE with 20 categorical variables of 10 classes each on binarized MNIST, trained three times with
the same architecture, data, seed, optimizer, number of steps and number of decoder evaluations per
datum and step (L = 2 samples: the score function's leave-one-out baseline needs two):

- ``gumbel-softmax`` — the decoder sees the relaxed sample (Eq. 8.29), the gradient is the chain
  rule through it (with the analytic categorical KL, Jang et al.'s objective);
- ``straight-through`` — the decoder sees the one-hot ``argmax(η + G0)`` (Eq. 8.28), the backward
  pass uses the relaxed sample's derivative;
- ``score`` — one-hot samples, REINFORCE with the leave-one-out control variate.

The relaxation temperature follows Jang et al.'s schedule ``s = max(0.5, exp(−r t))`` (updated in
steps), with ``r`` chosen so that ``s`` reaches 0.5 half-way through this run's shorter budget. All
three are evaluated the same way: the negative ELBO on the test set with hard (one-hot) samples
and the analytic KL — the true bound of the discrete model, what Jang et al. report — averaged
over several samples per datum. Jang et al. reach 101.5 (Gumbel-softmax), 107.8 (straight-through
Gumbel-softmax) and 110.6 nats (score function) after 100 epochs on the full data; a two-core
machine gets a few epochs, so the numbers here are far from those, and the question is which
ordering appears at this budget.

Training alone would let a wrong gradient through (a Gumbel-softmax VJP missing its 1/s or a score
baseline that includes its own sample still train, only worse), so the claim also judges refvae's
categorical estimators where an exact answer exists (:mod:`validation.categorical_exact`): on a
categorical VAE small enough to enumerate, the score estimator's mean against the exact gradient,
and Gumbel-softmax (analytic and relaxed KL), straight-through and score against the PyTorch witness
on the same parameters and Gumbel noise. These run in both modes, and without MNIST too.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from refvae import NoiseSource
from refvae.math.config import VAEConfig
from refvae.math.objectives import neg_elbo_terms
from refvae.train.loop import TrainOptions, load_run, train

try:
    from validation import categorical_exact
    from validation.common import Claim, Context, main, mean_se, savefig
    from validation.mnist_models import binary_mnist, data_note, single_threaded
except ImportError:  # run as a script from validation/
    import categorical_exact
    from common import Claim, Context, main, mean_se, savefig
    from mnist_models import binary_mnist, data_note, single_threaded

TITLE = (
    "Categorical VAE (20 × 10) on binarized MNIST: Gumbel-softmax, straight-through and score "
    "function under the same budget, beside Jang et al. Table 1")
SOURCE = ("Jang, Gu & Poole 2017 (ICLR), Table 1 and section 4.3; chapter Eqs. 8.27–8.29; "
          "docs/DERIVATIONS.md#gumbel-max-and-gumbel-softmax")
# runtime of --full on two cores
FULL_MODE = ("990 s (all 50,000/10,000, 8 epochs, three estimators: gumbel-softmax 120.1 < "
             "straight-through 121.6 < score 135.7 nats, Jang et al.'s order); measured before the "
             "small-model checks were added (a few seconds more, the same in both modes)")

ESTIMATORS = ["gumbel-softmax", "straight-through", "score"]
JANG_TABLE1 = {"gumbel-softmax": 101.5, "straight-through": 107.8, "score": 110.6}
LATENT_DIM, CATEGORIES, SAMPLES = 20, 10, 2


@dataclass(frozen=True)
class Budget:
    """The data, network and training of one mode (the same for every estimator)."""

    n_train: int | None
    n_test: int | None
    hidden: tuple          # encoder widths; the decoder mirrors them
    epochs: int
    lr: float
    batch_size: int = 100
    eval_samples: int = 10


# Quick (CI): a 10,000 / 2,000 random subset, one hidden layer, four epochs (400 steps); Adam at
# 3e-3 because at 1e-3 400 steps barely leave the latent-free plateau (measured: 175–191 nats
# against the plateau's 206). Full: Jang et al.'s network (784-512-256-200, ReLU; their notebook's
# Adam 1e-3, batch 100) on all 50,000 / 10,000, for the 8 epochs (4,000 steps, 8 % of theirs) that
# fit in about 30 minutes on two shared cores (measured: 0.14 s per step single-threaded; 2 epochs
# of one estimator, with its evaluations, 150–170 s).
QUICK = Budget(n_train=10_000, n_test=2_000, hidden=(256,), epochs=4, lr=3e-3)
FULL = Budget(n_train=None, n_test=None, hidden=(512, 256), epochs=8, lr=1e-3)

# PASS: every estimator trains — its losses are finite and its final test negative ELBO is at
# least MARGIN nats below the latent-free baseline (independent Bernoulli pixels at the training
# set's frequencies, the best a decoder that ignores its input can do; every model starts above it,
# at
# ~543 nats, and a model that does not use its code cannot go below it). 10 nats is fifty times the
# standard error of a paired test-set difference (~0.2 nats on 2,000 data).
# The ordering is reported, not judged, because it is not robust at this budget. Quick mode, seeds
# 0, 1, 2 (gumbel-softmax / straight-through / score, nats): 161.1 / 155.3 / 164.3, 161.6 / 163.0 /
# 169.5, 172.6 / 159.6 / 171.8 — Jang et al.'s order once; straight-through best twice; the
# seed-to-seed spread (up to 11 nats) exceeds every gap. On the full data with Jang et al.'s
# network, two epochs (seed 0) gave 148.6 / 150.7 / 167.1: their order, the score function clearly
# behind, the other two within the quick-scale spread. The paired standard errors in the report
# measure test-set sampling only, not this training randomness.
MARGIN = 10.0


def config(budget: Budget, data_dim: int) -> VAEConfig:
    return VAEConfig(data_dim=data_dim, latent_dim=LATENT_DIM, categories=CATEGORIES,
                     latent="categorical",
                     encoder_hidden=budget.hidden, decoder_hidden=tuple(reversed(budget.hidden)),
                     activation="relu", emission="bernoulli")


def options(budget: Budget, n_train: int, estimator: str, seed: int) -> TrainOptions:
    """Jang et al.'s temperature schedule, compressed: s0 = 1, s_min = 0.5, reached half-way, ~50
    updates over the run."""
    steps = budget.epochs * math.ceil(n_train / budget.batch_size)
    return TrainOptions(epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr,
                        optimizer="adam",
                        samples=SAMPLES, seed=seed, estimator=estimator, temperature=1.0,
                        temperature_rate=math.log(2.0) / (0.5 * steps), temperature_min=0.5,
                        temperature_every=max(1, steps // 50), progress=False)


def marginal_baseline(train_y: np.ndarray, test_y: np.ndarray) -> float:
    """Test negative log-likelihood per datum of independent Bernoulli pixels at the training
    frequencies (clipped to [1e-3, 1 − 1e-3] so that a pixel never on in training costs a finite
    amount on test)."""
    p = np.clip(train_y.mean(axis=0), 1e-3, 1 - 1e-3)
    return float(-(test_y * np.log(p) + (1 - test_y) * np.log1p(-p)).sum(axis=1).mean())


def train_one(budget: Budget, data, estimator: str, seed: int) -> dict:
    """Train one estimator with refvae's training loop; the history and the final test negative
    ELBO per datum (hard samples, ``eval_samples`` per datum)."""
    cfg = config(budget, data.dim)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir, single_threaded():
        history = train(cfg, options(budget, data.n_train, estimator, seed), data, run_dir)
        vae, params, _ = load_run(run_dir)
        kl, rec = neg_elbo_terms(vae, params, data.test, NoiseSource([seed, 11]),
                                 samples=budget.eval_samples)
        # The per-epoch table says "1 hard sample per datum": the last epoch's recorded value again,
        # from the same parameters and the loop's evaluation noise, with one sample.
        kl1, rec1 = neg_elbo_terms(vae, params, data.test, NoiseSource([seed, budget.epochs, 1]),
                                   samples=1)
    return {"estimator": estimator, "history": history, "per_datum": kl + rec,
            "kl": float(kl.mean()),
            "neg_elbo": float((kl + rec).mean()), "seconds": time.perf_counter() - t0,
            "one_sample_last": float((kl1 + rec1).mean())}


def caption_failures(budget: Budget, n_train: int, results: list[dict], seed: int) -> list[str]:
    """What the summary and the per-epoch table print beside their captions, judged: the step count,
    the temperature recorded per epoch (the schedule's, annealing from 1 to 0.5) and the per-epoch
    test ELBO's one sample per datum."""
    failures = []
    per_epoch = math.ceil(n_train / budget.batch_size)
    for r in results:
        opts = options(budget, n_train, r["estimator"], seed)
        every = opts.temperature_every

        def schedule(t):   # Jang et al.'s s = max(s_min, s0 exp(−r t)), updated every n steps
            return max(opts.temperature_min,
                       opts.temperature * math.exp(-opts.temperature_rate * every * (t // every)))
        hist, name = r["history"], r["estimator"]
        if [h["step"] for h in hist] != [per_epoch * (i + 1) for i in range(budget.epochs)]:
            failures.append(f"{name}: recorded steps {[h['step'] for h in hist]} are not "
                            f"{per_epoch} per epoch")
        temps = [h.get("temperature") for h in hist]
        formula = all(t is not None and math.isclose(t, schedule(h["step"]), rel_tol=1e-12)
                      for t, h in zip(temps, hist))
        if not (formula and temps[0] < 1.0 and temps[-1] == 0.5):
            failures.append(f"{name}: the recorded temperatures {temps} are not the schedule's "
                            "(1 annealed to 0.5)")
        last = hist[-1]["test_neg_elbo"]
        if abs(r["one_sample_last"] - last) > 1e-9 * abs(last):
            failures.append(f"{name}: the last epoch's test ELBO {last:.6g} is not the one-sample "
                            f"value {r['one_sample_last']:.6g}")
    return failures


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-datum difference ``a − b`` on the same test data (0 when
    the two are identical on every datum)."""
    return mean_se(a - b)


def figure(ctx: Context, results: list[dict], baseline: float):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r, color in zip(results, ["C0", "C1", "C2"]):
        epochs = [h["epoch"] for h in r["history"]]
        ax.plot(epochs, [h["test_neg_elbo"] for h in r["history"]], marker="o", color=color,
                label=r["estimator"])
        ax.axhline(JANG_TABLE1[r["estimator"]], color=color, ls="--", lw=0.8)
    ax.axhline(baseline, color="k", ls=":", label="latent-free baseline")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test negative ELBO, hard samples (nats)")
    ax.set_title("dashed: Jang et al. 2017 Table 1 after 100 epochs", fontsize=9)
    ax.legend(fontsize=8)
    return savefig(fig, ctx, "claim11_categorical_mnist.png")


def run(ctx: Context) -> Claim:
    budget = QUICK if ctx.quick else FULL
    exact = categorical_exact.study(ctx.seed)
    exact_summary, exact_threshold, exact_tables = categorical_exact.report(exact)
    data = binary_mnist(ctx, budget.n_train, budget.n_test)
    if data is None:
        failures = exact["failures"]
        return Claim(TITLE, SOURCE, not failures,
                     f"{exact_summary}. The MNIST training comparison is skipped: neither "
                     "binarized MNIST nor "
                     f"MNIST is in {ctx.data_dir} (see ../shared/data/README.md)"
                     + ("" if not failures else f". FAILED: {'; '.join(failures)}") + ".",
                     exact_threshold, exact_tables)
    baseline = marginal_baseline(data.train, data.test)
    results = [train_one(budget, data, est, ctx.seed) for est in ESTIMATORS]

    failures = list(exact["failures"]) + caption_failures(budget, data.n_train, results, ctx.seed)
    for r in results:
        finite = all(math.isfinite(h["train_loss"]) and math.isfinite(h["test_neg_elbo"]) for h
                     in r["history"])
        if not (finite and np.isfinite(r["per_datum"]).all()):
            failures.append(f"{r['estimator']}: non-finite loss")
        elif r["neg_elbo"] > baseline - MARGIN:
            failures.append(f"{r['estimator']}: {r['neg_elbo']:.2f} nats is not {MARGIN:g} below "
                            "the baseline")

    by = {r["estimator"]: r for r in results}
    observed = sorted(ESTIMATORS, key=lambda e: by[e]["neg_elbo"])
    published = sorted(ESTIMATORS, key=lambda e: JANG_TABLE1[e])
    pairs = []
    for a, b in [("gumbel-softmax", "straight-through"), ("gumbel-softmax", "score"),
                 ("straight-through", "score")]:
        diff, se = paired(by[a]["per_datum"], by[b]["per_datum"])
        if se == 0.0:
            failures.append(f"{a} and {b} gave the same test loss on every datum (paired SE 0), "
                            "but they "
                            "differ by construction (Gumbel-softmax's decoder sees relaxed "
                            "samples, "
                            "straight-through's one-hot ones; the score function relaxes nothing): "
                            "one of them "
                            "is not the estimator it is named")
        jang = JANG_TABLE1[a] - JANG_TABLE1[b]
        agrees = (diff < 0) == (jang < 0)
        pairs.append([f"{a} − {b}", diff, se, diff / se if se else None, jang,
                      "yes" if agrees else "no"])
    agreeing = sum(p[-1] == "yes" for p in pairs)
    steps = results[0]["history"][-1]["step"]
    last_s = results[0]["history"][-1].get("temperature")
    enc = "-".join(str(w) for w in budget.hidden)
    dec = "-".join(str(w) for w in reversed(budget.hidden))
    setting = (f"{data.n_train} train / {data.n_test} test{data_note(ctx)}, 784-{enc}-200 / "
               f"200-{dec}-784 ReLU, "
               f"Adam {budget.lr:g}, batch {budget.batch_size}, {budget.epochs} epochs ({steps} "
               "steps), "
               f"L = {SAMPLES} decoder evaluations per datum and step for all three, temperature 1 "
               f"→ {last_s:.2g}")
    order = " < ".join(f"{e} ({by[e]['neg_elbo']:.1f})" for e in observed)
    summary = (f"{exact_summary}. MNIST: {setting}. Test negative ELBO with hard samples "
               f"({budget.eval_samples} per datum): {order} nats; "
               f"latent-free baseline {baseline:.1f}. Jang et al.'s ordering "
               f"({' < '.join(published)}) "
               f"is {'reproduced' if observed == published else 'not reproduced'} "
               f"at this budget ({agreeing} of 3 pairwise orders agree). The gaps are many paired "
               "standard errors "
               "of the test set, but a different training seed moves each result by up to ~11 "
               "nats at quick "
               f"scale, so this ordering belongs to this seed"
               + ("" if not failures else f". FAILED: {'; '.join(failures)}") + ".")
    threshold = (f"{exact_threshold}; MNIST: each estimator trains and differs from the others (no "
                 "paired "
                 f"SE of 0): finite losses and a final test negative ELBO at least {MARGIN:g} nats "
                 "below "
                 "the latent-free baseline (independent Bernoulli pixels at the training "
                 "frequencies); the "
                 "printed step count, the temperature recorded per epoch (the schedule's formula, "
                 "annealed "
                 "from 1 to 0.5) and the per-epoch test ELBO's one sample per datum are what they "
                 "say. The "
                 "ordering is reported, not judged: over seeds 0, 1, 2 at quick scale it changed "
                 "with the seed "
                 "(straight-through best twice, Jang et al.'s order once; spread up to 11 nats, "
                 "larger than "
                 f"the gaps).")
    tables = exact_tables + [
        ("Test negative ELBO (nats, hard samples) beside Jang et al. 2017 Table 1 (100 epochs, "
         "full data)",
         ["estimator", "refvae, this run", "KL", "wall time (s)", "Jang et al. Table 1"],
         [[e, by[e]["neg_elbo"], by[e]["kl"], by[e]["seconds"], JANG_TABLE1[e]] for e in ESTIMATORS]
         + [["latent-free baseline", baseline, 0.0, None, None]]),
        ("Pairwise differences on the same test data (negative: the first is better); the paired "
         "SE is "
         "test-set sampling only — the training seed moves each number by more",
         ["pair", "difference (nats)", "paired SE", "difference / SE", "Jang et al.", "same sign"],
         pairs),
        ("Test negative ELBO per epoch (1 hard sample per datum)",
         ["epoch", "temperature"] + ESTIMATORS,
         [[i + 1, results[0]["history"][i].get("temperature")]
          + [r["history"][i]["test_neg_elbo"] for r in results]
          for i in range(budget.epochs)]),
    ]
    figs = [("Test negative ELBO (hard samples) per epoch; dashed lines: Jang et al.'s results "
             "after 100 epochs "
             "on the full data", figure(ctx, results, baseline))]
    return Claim(TITLE, SOURCE, not failures, summary, threshold, tables, figs)


if __name__ == "__main__":
    raise SystemExit(main(run))
