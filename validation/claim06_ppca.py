"""Claim 6: a linear VAE is probabilistic PCA (Lucas et al. 2019, "Don't Blame the ELBO!").

On synthetic pPCA data, a VAE with linear encoder and decoder, gaussian emission and learned α,
trained by refvae's pathwise gradients, reaches an ELBO equal to the exact maximum log-likelihood
of pPCA (Tipping & Bishop 1999, closed form) and its decoder spans the principal subspace. The
ELBO is evaluated in closed form (linear decoder: the expectation is analytic), not by sampling.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.linalg import subspace_angles

from refvae import NoiseSource
from refvae.optim import FlatParams, make_optimizer
from refvae.schedules import make_schedule
from refvae.vae import VAE

try:
    from validation.closed_forms import expected_loss
    from validation.common import Claim, Context, main, savefig
except ImportError:  # pragma: no cover
    from closed_forms import expected_loss
    from common import Claim, Context, main, savefig

TITLE = "A linear VAE trains to the exact pPCA maximum likelihood and spans the principal subspace"
SOURCE = "Lucas et al. 2019 (NeurIPS), Tipping & Bishop 1999 (JRSS-B) closed-form pPCA; chapter Eq. 8.20"
FULL_MODE = "357 s; FAILS at this scale (measured 2026-11-28, the same with session 1's code): ELBO −2883.8 against the pPCA maximum −22.6 nats, so the D = 20 run does not converge with the quick mode's settings (Adam 0.1, cosine); open"  # runtime of --full on two cores
# Lucas et al.'s statement is exact at the optimum; 0.01 nats per datum is the issue's tolerance for
# what stochastic-gradient training leaves, and 0.05 rad (≈3°) for the largest principal angle.
TOL_NATS, TOL_ANGLE = 0.01, 0.05


def ppca_data(n, d, k, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, k)) * np.array([3.0, 2.0, 1.2][:k])
    b = rng.normal(size=d)
    return rng.normal(size=(n, k)) @ w.T + b + 0.5 * rng.normal(size=(n, d))


def ppca_max_log_likelihood(y, k):
    """Tipping & Bishop (1999), Eqs. 7–8: σ² = mean of the D − K smallest eigenvalues of the sample
    covariance S; log-likelihood per datum −½ [D log 2π + log|C| + tr(C⁻¹ S)], C = W Wᵀ + σ² I."""
    n, d = y.shape
    s = np.cov(y.T, bias=True)
    lam, u = np.linalg.eigh(s)
    lam, u = lam[::-1], u[:, ::-1]
    sigma2 = lam[k:].mean()
    w = u[:, :k] * np.sqrt(lam[:k] - sigma2)
    c = w @ w.T + sigma2 * np.eye(d)
    ll = -0.5 * (d * math.log(2 * math.pi) + np.linalg.slogdet(c)[1] + np.trace(np.linalg.solve(c, s)))
    return ll, u[:, :k], sigma2


def exact_elbo(params, y) -> float:
    """ELBO per datum with E_q f in closed form (linear decoder: the expectation is analytic)."""
    return -expected_loss("gaussian", {k: np.asarray(v) for k, v in params.items()}, y)


def run(ctx: Context) -> Claim:
    n, d, k = (2000, 8, 3) if ctx.quick else (5000, 20, 3)
    steps = 6000 if ctx.quick else 15000
    y = ppca_data(n, d, k, ctx.seed)
    ll, u_k, sigma2 = ppca_max_log_likelihood(y, k)
    model = VAE(dict(data_dim=d, latent_dim=k, encoder_hidden=[], decoder_hidden=[],
                     emission="gaussian", learn_alpha=True, alpha=1.0))
    noise = NoiseSource(ctx.seed)
    flat = FlatParams.from_dict(model.bk, model.init_params(noise))
    opt = make_optimizer("adam", model.bk, flat.size, lr=0.1)
    schedule = make_schedule("cosine", 0.1, total_steps=steps, min_lr=1e-5)
    curve = []
    for step in range(steps):
        res = model.loss_and_grads(flat.params, y, model.draw_noise(noise, n, 4), check=False)
        flat.set_grads(res.grads)
        opt.step(flat, lr=schedule(step))
        if step % 50 == 0 or step == steps - 1:
            curve.append((step, exact_elbo(flat.params, y)))
    elbo = curve[-1][1]
    angle = float(subspace_angles(flat.params["decoder.out.weight"], u_k).max())
    alpha = math.exp(float(flat.params["decoder.log_alpha"]))
    gap = ll - elbo
    ok = -1e-9 <= gap + 1e-9 and gap < TOL_NATS and angle < TOL_ANGLE

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps_, values = zip(*curve)
    ax.plot(steps_, values, label="linear VAE: exact ELBO per datum")
    ax.axhline(ll, color="k", ls="--", label="pPCA maximum log-likelihood")
    ax.set_ylim(ll - 2.0, ll + 0.3)
    ax.set_xlabel("step")
    ax.set_ylabel("nats per datum")
    ax.legend()
    fig_path = savefig(fig, ctx, "claim06_ppca.png")
    return Claim(TITLE, SOURCE, ok,
                 f"after {steps} full-batch Adam steps (L = 4, cosine schedule) the ELBO is {elbo:.5f} "
                 f"nats per datum against the pPCA maximum {ll:.5f} (gap {gap:.2e}); the largest principal "
                 f"angle between the decoder's columns and the top-{k} eigenvectors is {angle:.2e} rad",
                 threshold=f"0 ≤ gap < {TOL_NATS} nats per datum (the ELBO is a lower bound; at the optimum "
                           f"it is tight), largest principal angle < {TOL_ANGLE} rad",
                 tables=[("Linear VAE against closed-form pPCA", ["quantity", "linear VAE", "pPCA (closed form)"],
                          [["log-likelihood / ELBO per datum", elbo, ll], ["noise variance α = σ²", alpha, sigma2],
                           ["N, D, K", f"{n}, {d}, {k}", ""]])],
                 figures=[("The linear VAE's exact ELBO approaches the pPCA maximum likelihood", fig_path)])


if __name__ == "__main__":
    raise SystemExit(main(run))
