"""Claim 12: superfluous latent dimensions do not cause overfitting (Kingma & Welling 2014, §5).

Kingma & Welling trained MNIST models with latent sizes from 3 to 200 and remarked that
superfluous latent variables did not result in overfitting, which they explain by the
regularising nature of the variational bound: the KL term keeps unneeded latent units close to
the prior. Overfitting shows as a gap between the bound on the training data and on test data.
This claim trains the same model (:mod:`validation.mnist_models`) for several latent sizes and
measures, on the test data and on as many training data, the lower bound per datum, its
train–test gap, and the active units (Burda et al. 2016). It checks that the largest latent size
overfits no more than the smaller size with the best test bound: its gap is no larger, within the
noise of the comparison (the standard error of the paired per-datum differences, and the
seed-to-seed spread of the largest model trained a second time with another seed).

The gap also grows as training fits the training data more closely, so it is read beside the
train bounds of the table. Quick mode trains on 500 images for 80 epochs, a regime where overfitting appears within a
minute (gaps of ~10 nats); full mode uses the shared models (all 50,000 images, 50 epochs).
"""
from __future__ import annotations

import math

from refvae import NoiseSource
from refvae.objectives import active_units, neg_elbo_terms

try:
    from validation.common import Claim, Context, main, savefig, skipped
    from validation.mnist_models import NO_MNIST, single_threaded, trained_model
except ImportError:  # pragma: no cover - run as a script from validation/
    from common import Claim, Context, main, savefig, skipped
    from mnist_models import NO_MNIST, single_threaded, trained_model

TITLE = "Superfluous latent dimensions do not cause overfitting: test bound and active units against latent size"
SOURCE = ("Kingma & Welling 2014 (ICLR), \"Auto-Encoding Variational Bayes\", §5 and Figure 2 (MNIST, latent sizes "
          "3–200); active units: Burda et al. 2016, §5.2")
FULL_MODE = "4779 s (seven latent sizes 2…200 plus a second K = 200 seed, 50 epochs on all of MNIST; PASS: train − test gap 5.18 → 1.40 nats as K grows, 21/200 active units); measured"  # runtime of --full on two cores

# Tolerance of the gap comparison: 4 standard errors of its data and Monte Carlo noise (chance
# failure 6e-5 for a normal statistic) plus 3 seed SDs of training noise, the SD estimated from the
# two seeds of the largest model as |difference|/√2. A model overfitting through its superfluous
# units widens the gap by nats; the tolerance is the noise of this measurement, nothing more.
N_SE, SEED_SDS = 4.0, 3.0
ELBO_SAMPLES = 4


def latent_sizes(quick: bool) -> tuple[int, ...]:
    return (2, 10, 50) if quick else (2, 5, 10, 20, 50, 100, 200)


def regime(quick: bool) -> dict:
    """Training-set size and epochs: a small set trained long (quick), the shared scale (full)."""
    return dict(n_train=500, epochs=80) if quick else {}


def bounds(model, ctx) -> dict:
    """Per-datum lower bounds on the test data and on as many training data (or all of them, if
    fewer), and the active units."""
    vae, params, data = model.vae, model.params, model.data
    n = data.n_test
    out = {}
    for split, y in (("train", data.train[:n]), ("test", data.test)):
        kl, rec = neg_elbo_terms(vae, params, y, NoiseSource([ctx.seed, 12, 1]), samples=ELBO_SAMPLES)
        out[split] = -(kl + rec)
    out["active"] = active_units(vae, params, data.test)[0]
    return out


def _se(a) -> float:
    return float(a.std(ddof=1) / math.sqrt(a.size))


def run(ctx: Context) -> Claim:
    with single_threaded():
        sizes = latent_sizes(ctx.quick)
        models = {k: trained_model(ctx, k, **regime(ctx.quick)) for k in sizes}
        if any(m is None for m in models.values()):
            return skipped(TITLE, SOURCE, NO_MNIST)
        res = {k: bounds(m, ctx) for k, m in models.items()}
        k_max = sizes[-1]
        second = bounds(trained_model(ctx, k_max, seed=ctx.seed + 1, **regime(ctx.quick)), ctx)
    return _judge(ctx, sizes, res, second, models[k_max].description)


def _judge(ctx, sizes, res, second, description) -> Claim:
    k_max, smaller = sizes[-1], sizes[:-1]
    test = {k: float(r["test"].mean()) for k, r in res.items()}
    gap = {k: float(r["train"].mean() - r["test"].mean()) for k, r in res.items()}
    second_gap = float(second["train"].mean() - second["test"].mean())
    gap_seed_sd = abs(gap[k_max] - second_gap) / math.sqrt(2)
    k_ref = max(smaller, key=test.get)
    # Paired over the same training and test data: the gap difference's data and Monte Carlo error.
    se = math.hypot(_se(res[k_max]["train"] - res[k_ref]["train"]), _se(res[k_max]["test"] - res[k_ref]["test"]))
    tol = N_SE * se + SEED_SDS * gap_seed_sd
    ok = gap[k_max] <= gap[k_ref] + tol
    active = {k: r["active"] for k, r in res.items()}
    fig = _figure(ctx, sizes, res, active)
    n_test, n_train = len(res[k_max]["test"]), len(res[k_max]["train"])
    return Claim(
        TITLE, SOURCE, ok,
        f"latent sizes {', '.join(map(str, sizes))}, each trained as the K = {k_max} model is ({description}); "
        f"bounds with {ELBO_SAMPLES} draws per datum on {n_test} test and {n_train} training data. Train–test gap "
        f"{', '.join(f'{gap[k]:+.2f}' for k in sizes)} nats; K = {k_max} against K = {k_ref} (the best test bound "
        f"among the smaller sizes): {gap[k_max] - gap[k_ref]:+.2f} (tolerance {tol:.2f}; the second seed's gap "
        f"{second_gap:+.2f}). Test bound {', '.join(f'{test[k]:.2f}' for k in sizes)} (reported, not judged: a "
        f"larger latent space also trains more slowly, which is not overfitting); active units "
        f"{', '.join(f'{active[k]}/{k}' for k in sizes)}",
        threshold=(f"gap at K = {k_max} ≤ gap at the best smaller size + ({N_SE:g} SE of the paired gap difference + "
                   f"{SEED_SDS:g} seed SDs of the gap, from two seeds of the K = {k_max} model)"),
        tables=[("Lower bound per datum (nats) against the latent size",
                 ["K", "train bound", "test bound", "SE (test)", "train − test", "active units"],
                 [[k, float(res[k]["train"].mean()), test[k], _se(res[k]["test"]), gap[k], active[k]] for k in sizes]
                 + [[f"{k_max} (seed {ctx.seed + 1})", float(second["train"].mean()), float(second["test"].mean()),
                     _se(second["test"]), second_gap, second["active"]]])],
        figures=[("Train and test lower bounds (left axis) and active units (right axis) against the latent size",
                  fig)])


def _figure(ctx, sizes, res, active):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(sizes, [res[k]["train"].mean() for k in sizes], "-o", label="train bound")
    ax.errorbar(sizes, [res[k]["test"].mean() for k in sizes], [2 * _se(res[k]["test"]) for k in sizes],
                fmt="-s", capsize=3, label="test bound (±2 SE)")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(k) for k in sizes])
    ax.set_xlabel("latent size K")
    ax.set_ylabel("lower bound per datum (nats)")
    ax2 = ax.twinx()
    ax2.plot(sizes, [active[k] for k in sizes], "k:^", label="active units")
    ax2.plot(sizes, sizes, color="0.7", lw=0.8, label="K (all units)")
    ax2.set_ylabel("units")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")
    return savefig(fig, ctx, "claim12_superfluous_latents.png")


if __name__ == "__main__":
    raise SystemExit(main(run))
