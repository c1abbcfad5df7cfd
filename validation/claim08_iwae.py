"""Claim 8: the importance-weighted bound increases with the number of samples k (Burda, Grosse &
Salakhutdinov 2016, Theorem 1), on the shared trained MNIST model; active units reported.

``L_k(y) = E log (1/k) Σ_i p(y, x_i)/q(x_i|y)`` satisfies ``log p(y) ≥ L_{k+1} ≥ L_k`` and
``L_1`` is the ELBO. On test data, per datum and paired across k (the same data for every k,
fresh samples per k), this claim measures each step of the k ladder and checks that

1. each increase is positive by more than 3 standard errors of the paired per-datum difference;
2. ``L_1`` equals the ELBO with the closed-form KL (estimated from many samples) within 4 SE;
3. (quick mode) per datum, on the very draws of the bound,
   ``max_j log w_j − log k ≤ L_k ≤ max_j log w_j`` (the log-mean-exp of k numbers lies between
   their maximum less ``log k`` and their maximum), which the two statistical tests cannot see: an
   IWAE without its ``− log k`` still increases with k;
4. on a linear-Gaussian model whose encoder is the exact posterior
   (``closed_forms.exact_posterior_case``) every weight equals ``p(y)``, so
   ``L_k = log N(y; b, WWᵀ + αI)`` to rounding for every k;

and reports the active units of Burda et al. §5.2 (``Cov_y E_q[x_k|y] > 0.01``) with the average
KL that each unit carries.
"""
from __future__ import annotations

import math

import numpy as np

from refvae import NoiseSource
from refvae.math.objectives import active_units, iwae_bound, log_weights, neg_elbo_terms
from refvae.math.vae import VAE

try:
    from validation.closed_forms import exact_posterior_case
    from validation.common import Claim, Context, main, mean_se, savefig
    from validation.mnist_models import run_on_shared_model
except ImportError:  # pragma: no cover - run as a script from validation/
    from closed_forms import exact_posterior_case
    from common import Claim, Context, main, mean_se, savefig
    from mnist_models import run_on_shared_model

TITLE = "The importance-weighted bound increases with k on a trained MNIST model; active units"
SOURCE = ("Burda, Grosse & Salakhutdinov 2016 (ICLR), \"Importance Weighted Autoencoders\", "
          "Theorem 1 and "
          "§5.2 (active units)")
# runtime of --full on two cores
FULL_MODE = ("484 s with the shared MNIST model already trained (k up to 5,000 on 1,000 test "
             "images); measured")

# An increase counts when the mean paired difference exceeds 3 SE: a bound that did not increase
# would pass by chance with probability ≤ 0.13% (one-sided normal tail). L_1 against the ELBO is a
# two-sided agreement test at 4 SE (chance failure 6e-5).
INCREASE_SE, AGREE_SE = 3.0, 4.0
ACTIVE_THRESHOLD = 0.01    # Burda et al. §5.2
ELBO_SAMPLES = 100         # draws per datum of the reference ELBO (closed-form KL)
IWAE_BATCH = 100  # iwae_bound's default batch_size: the bracket redraws its noise in the same order
# Float64 log-sum-exp of ≤ 100 terms of ~100 nats is exact to ~1e-13 relative; 1e-9 is rounding
# slack only.
BRACKET_RTOL = 1e-9
EXACT_TOL = 1e-9           # as claim 13 part D: with equal weights L_k is log p(y) up to rounding
EXACT_KS = (1, 7, 100)


def max_log_weights(vae, params, y, noise: NoiseSource, k: int) -> np.ndarray:
    """Per-datum ``max_j log w_j`` on the draws that ``iwae_bound(vae, params, y, noise, k)`` uses:
    the same source drawn in the same order, batch by batch. Valid while iwae_bound takes all k
    samples of a batch in one chunk (k ≤ 100 on MNIST, the quick ladder)."""
    out = []
    for start in range(0, y.shape[0], IWAE_BATCH):
        yb = vae.bk.asarray(y[start:start + IWAE_BATCH])
        lw = log_weights(vae, params, yb, vae.draw_noise(noise, yb.shape[0], k))
        out.append(vae.bk.to_numpy(lw).max(axis=1))
    return np.concatenate(out)


def bracket_violation(bound: np.ndarray, top: np.ndarray, k: int) -> float:
    """Largest excess of ``bound`` outside ``[top − log k, top]``, relative to ``max(1, |top|)``;
    ≤ 0 when every datum is inside."""
    return float(np.max(np.maximum(bound - top, top - math.log(k) - bound)
                        / np.maximum(1.0, np.abs(top))))


def exact_posterior_errors(seed: int) -> dict:
    """``max |L_k − log p(y)|`` over the data of the exact-posterior linear-Gaussian model, per
    k."""
    config, params, y, log_p = exact_posterior_case(seed)
    vae = VAE(config)
    return {k: float(np.abs(iwae_bound(vae, params, y, NoiseSource([seed, 8, 1, k]), k=k)
                            - log_p).max())
            for k in EXACT_KS}


def ladder(quick: bool) -> tuple[tuple[int, ...], int]:
    """The k values and the number of test data: k up to 100 on 500 data (quick), up to Burda
    et al.'s 5000 on 1000 data (full)."""
    return ((1, 10, 100), 500) if quick else ((1, 5, 50, 500, 5000), 1000)


def per_unit_kl(vae, params, y) -> np.ndarray:
    """Average over the data of each latent unit's KL,
    ``½ (υ_k² + ν_k² − 1 − log υ_k²)``."""
    heads, _ = vae.encode(params, vae.bk.asarray(y))
    nu, lv = (vae.bk.to_numpy(heads[h]) for h in ("mean", "logvar"))
    return (0.5 * (np.exp(lv) + nu ** 2 - 1.0 - lv)).mean(axis=0)


def run(ctx: Context) -> Claim:
    return run_on_shared_model(ctx, TITLE, SOURCE, _run)


def _run(ctx: Context, model) -> Claim:
    vae, params = model.vae, model.params
    ks, n_eval = ladder(ctx.quick)
    test = model.data.test   # a random subset: binarized MNIST's test file is sorted by class
    y = test[NoiseSource([ctx.seed, 8]).permutation(len(test))[:n_eval]]
    bounds = {k: iwae_bound(vae, params, y, NoiseSource([ctx.seed, 8, k]), k=k) for k in ks}
    kl, rec = neg_elbo_terms(vae, params, y, NoiseSource([ctx.seed, 8, 0]), samples=ELBO_SAMPLES)
    elbo = -(kl + rec)
    # Quick mode only: the full ladder's large k are split into chunks that draw noise in another
    # order.
    brackets = {k: bracket_violation(bounds[k],
                                     max_log_weights(vae, params, y, NoiseSource([ctx.seed, 8, k]),
                                                     k), k)
                for k in ks} if ctx.quick else {}
    exact_err = exact_posterior_errors(ctx.seed)

    rows, steps_ok = [], []
    for lo, hi in zip(ks, ks[1:]):
        d = bounds[hi] - bounds[lo]
        mean, se = mean_se(d)
        steps_ok.append(mean > INCREASE_SE * se)
        rows.append([f"L_{hi} − L_{lo}", mean, se, mean / se, "pass" if steps_ok[-1] else "FAIL"])
    d1 = bounds[1] - elbo
    l1_gap, l1_se = mean_se(d1)
    l1_ok = abs(l1_gap) <= AGREE_SE * l1_se
    rows.append(["L_1 − ELBO (closed-form KL)", l1_gap, l1_se, l1_gap / l1_se,
                 "pass" if l1_ok else "FAIL"])

    n_active, variances = active_units(vae, params, y, ACTIVE_THRESHOLD)
    unit_kl = per_unit_kl(vae, params, y)
    active = variances > ACTIVE_THRESHOLD
    fig_path = _figure(ctx, ks, bounds, variances, unit_kl)
    means = {k: float(b.mean()) for k, b in bounds.items()}
    bracket_ok = all(v <= BRACKET_RTOL for v in brackets.values())
    exact_ok = all(e <= EXACT_TOL for e in exact_err.values())
    # The summary names the number of test data: every bound and the ELBO are over that many.
    counted = all(len(b) == n_eval for b in bounds.values()) and len(elbo) == n_eval
    ok = all(steps_ok) and l1_ok and bracket_ok and exact_ok and counted
    checks = ([["data per bound and ELBO", f"the {n_eval} named",
                sorted({len(b) for b in bounds.values()}),
                n_eval, "pass" if counted else "FAIL"]]
              + [[f"L_{k} in [max log w − log {k}, max log w]", "every datum (relative excess)",
                  v,
                  BRACKET_RTOL,
                "pass" if v <= BRACKET_RTOL else "FAIL"]
               for k, v in brackets.items()]
              + [[f"linear-Gaussian, exact posterior: L_{k}", "|L_k − log N(y; b, WWᵀ + αI)|",
                  e,
                  EXACT_TOL,
                  "pass" if e <= EXACT_TOL else "FAIL"] for k, e in exact_err.items()])
    bracket_text = ("every datum's L_k inside [max_j log w_j − log k, max_j log w_j] on its own "
                    "draws "
                    f"(worst relative excess {max(brackets.values()):+.1e}); " if brackets else "")
    k_max = ks[-1]
    return Claim(
        TITLE, SOURCE, ok,
        f"on {n_eval} test data of {model.description}: the bound rises from L_1 = {means[1]:.2f} "
        "to "
        f"L_{k_max} = {means[k_max]:.2f} nats "
        f"({', '.join(f'L_{k} = {means[k]:.2f}' for k in ks)}), each step "
        f"by ≥ {min(r[3] for r in rows[:-1]):.1f} SE; L_1 − ELBO = {l1_gap:+.3f} "
        f"± {l1_se:.3f}; {bracket_text}"
        "on the exact-posterior linear-Gaussian model max |L_k − log p(y)| "
        f"= {max(exact_err.values()):.1e} "
        f"(k = {', '.join(map(str, EXACT_KS))}); "
        f"{n_active} of {vae.config.latent_dim} latent units active (Cov > {ACTIVE_THRESHOLD}), "
        "carrying "
        f"{unit_kl[active].sum():.2f} of the {unit_kl.sum():.2f} nats of average KL",
        threshold=(f"every step of the k ladder positive by more than {INCREASE_SE:g} SE of the "
                   "paired per-datum "
                   f"difference (one-sided); |L_1 − ELBO| ≤ {AGREE_SE:g} SE; (quick mode) per "
                   "datum and k, "
                   "max_j log w_j − log k ≤ L_k ≤ max_j log w_j on the same draws, up "
                   f"to {BRACKET_RTOL:g} relative; "
                   "on a linear-Gaussian model with the exact posterior as encoder |L_k − log "
                   f"p(y)| ≤ {EXACT_TOL:g} "
                   f"for k = {', '.join(map(str, EXACT_KS))}; active units are reported, not "
                   "judged"),
        tables=[("Importance-weighted bound per datum (nats) against k",
                 ["k", "L_k", "SE over data"],
                 [[k, means[k], float(bounds[k].std(ddof=1) / math.sqrt(n_eval))] for k in ks]
                 + [[f"ELBO ({ELBO_SAMPLES} draws, closed-form KL)", float(elbo.mean()),
                     float(elbo.std(ddof=1) / math.sqrt(n_eval))]]),
                ("Paired differences (the claim's tests)",
                 ["difference", "mean", "SE", "z", "result"], rows),
                ("Deterministic checks of the bound's normalization",
                 ["check", "over", "worst value", "threshold",
                   "result"], checks),
                ("Active units", ["units", "count", "average KL (nats)"],
                 [["active", int(active.sum()), float(unit_kl[active].sum())],
                  ["inactive", int((~active).sum()), float(unit_kl[~active].sum())]])],
        figures=[("Left: the importance-weighted bound against k. Right: the activity Cov_y "
                  "E[x_k|y] of each "
                  "latent unit, sorted, with the 0.01 threshold", fig_path)])


def _figure(ctx, ks, bounds, variances, unit_kl):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    n = len(bounds[ks[0]])
    a.errorbar(ks, [bounds[k].mean() for k in ks],
               [2 * bounds[k].std(ddof=1) / math.sqrt(n) for k in ks],
               fmt="-o", capsize=3)
    a.set_xscale("log")
    a.set_xlabel("k (importance samples)")
    a.set_ylabel("L_k per datum (nats), ±2 SE over data")
    order = np.argsort(variances)[::-1]
    b.semilogy(np.arange(1, len(order) + 1), variances[order], "o-", ms=3, label="Cov_y E[x_k|y]")
    b.semilogy(np.arange(1, len(order) + 1), np.maximum(unit_kl[order], 1e-12), "s", ms=3,
               alpha=0.6,
               label="average KL of the unit (nats)")
    b.axhline(ACTIVE_THRESHOLD, color="k", ls="--", lw=1, label="threshold 0.01")
    b.set_xlabel("latent unit (sorted by activity)")
    b.legend(fontsize=8)
    fig.tight_layout()
    return savefig(fig, ctx, "claim08_iwae.png")


if __name__ == "__main__":
    raise SystemExit(main(run))
