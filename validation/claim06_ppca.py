"""Claim 6: a linear VAE is probabilistic PCA (Lucas et al. 2019, "Don't Blame the ELBO!").

On synthetic pPCA data, a VAE with linear encoder and decoder, gaussian emission and learned α,
trained by refvae's pathwise gradients, reaches an ELBO equal to the exact maximum log-likelihood
of pPCA (Tipping & Bishop 1999, closed form) and its decoder spans the principal subspace. The
ELBO is evaluated in closed form (linear decoder: the expectation is analytic), not by sampling.

A PyTorch witness (:mod:`validation.linear_witness`) runs the same protocol from the same
initialisation with the same noise: teacher-forced (its autograd gradient at refvae's parameters,
every recorded step) and free-running (its own Adam). The data are centred and divided by one
global scale before training. On raw data (values up to ~10) Adam at this learning rate drove the
linear log-variance head so far in one step that exp(ℓ) overflowed the loss (1e7 at step 20), and
Adam's second moment then froze the decoder: the run stalled 50 nats short at D = 20. Both engines
did exactly that, step for step (teacher-forced gradients within 1e-12): the protocol, not refvae,
was at fault. A global affine change of the data shifts every log-likelihood and ELBO by the
same constant (D log c) and leaves the principal subspace unchanged, so the claim is unaffected.

With standardised data, Adam 0.03 and 4,000 steps, D = 8 and 20 converged (gaps 1.5e-5 and 3.2e-5)
but D = 50 stopped 0.117 nats per datum short, refvae and the witness alike (witness gap 0.117,
teacher-forced gradients within 5e-12), with the principal subspace already found (angle 8e-5 rad)
and α equal to the pPCA σ². What was left: the decoder's columns were not yet orthogonal (largest
off-diagonal of WᵀW 24 % of its diagonal). The exact posterior's covariance is α(WᵀW +
αI)⁻¹, so a diagonal Gaussian can equal it only for orthogonal columns (the ELBO's maximum has
them, Lucas et al. 2019); the shortfall split into 0.069 nats of decoder and 0.049 of KL. Turning
the columns is the stiffest-conditioned direction of the problem, and worse as D grows (the
posterior variances fall like 1/D). It is not Monte Carlo noise: L = 16 samples left 0.121 nats.
Adam 0.03 oscillated (gap spikes of 1.5 nats mid-run); at 0.01 with 12,000 steps the off-diagonal
fell to 0.3 % and the gap to 2.3e-4 nats (8,000 steps: 3.4e-3). That protocol is used for every D.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.linalg import subspace_angles

from refvae import NoiseSource
from refvae.util.files import load_npz_checked
from refvae.fast.optim import make_optimizer
from refvae.optim.rules import FlatParams
from refvae.optim.schedules import make_schedule
from refvae.math.vae import VAE

try:
    from validation import linear_witness as witness
    from validation.closed_forms import expected_loss, expected_loss_gradient
    from validation.common import Claim, Context, main, rel_tensors, savefig
    from validation.mnist_models import single_threaded
except ImportError:  # pragma: no cover
    import linear_witness as witness
    from mnist_models import single_threaded
    from closed_forms import expected_loss, expected_loss_gradient
    from common import Claim, Context, main, rel_tensors, savefig

TITLE = "A linear VAE trains to the exact pPCA maximum likelihood and spans the principal subspace"
SOURCE = ("Lucas et al. 2019 (NeurIPS), Tipping & Bishop 1999 (JRSS-B) closed-form pPCA; chapter "
          "Eq. 8.20")
# runtime of --full on two cores
FULL_MODE = ("326 s (D = 8, 20, 50 in a process each on two cores; gaps 1.1e-5, 2.3e-5 and 2.3e-4 "
             "nats per datum, "
             "largest angle 1.7e-4 rad; PASS); measured on 2026-12-01")
# Lucas et al.'s statement is exact at the optimum. 2e-3 nats per datum is what the annealed
# full-batch run may leave (the clean runs end at 1e-5–2.3e-4, so a 5 % error in the KL gradient,
# which moves the optimum by more, fails); 0.05 rad (≈3°) for the largest principal angle; the
# closed-form gradient is near zero when no step along it gains more than a tenth of that
# (TOL_GAIN):
# a size-free reading of "near zero" (the raw gradient ends at ~2 % of its initial size, in the
# stiff log-variance directions, while the ELBO is within 1e-5 nats of its maximum).
TOL_NATS, TOL_ANGLE, TOL_GAIN = 2e-3, 0.05, 2e-4
# The CLI run and the witness run are independent minibatch runs (own shuffles and noise), each
# ending within a few 1e-3 nats of the optimum: 0.02 nats between them.
TOL_CLI = 0.02
# Teacher-forced: the same float64 computation in two engines agrees to rounding.
TOL_TEACHER = 1e-9
# The protocol, identical for every D: full batch, L = 4, Adam, linear warm-up then cosine.
LR, WARMUP, STEPS, MIN_LR, SAMPLES = 0.01, 100, 12000, 1e-5, 4


def ppca_data(n, d, k, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, k)) * np.array([3.0, 2.0, 1.2][:k])
    b = rng.normal(size=d)
    return rng.normal(size=(n, k)) @ w.T + b + 0.5 * rng.normal(size=(n, d))


def ppca_max_log_likelihood(y, k):
    """Tipping & Bishop (1999), Eqs. 7–8: σ² = mean of the D − K smallest eigenvalues of the
    sample covariance S; log-likelihood per datum −½ [D log 2π + log|C| + tr(C⁻¹ S)], C = W
    Wᵀ + σ² I."""
    n, d = y.shape
    s = np.cov(y.T, bias=True)
    lam, u = np.linalg.eigh(s)
    lam, u = lam[::-1], u[:, ::-1]
    sigma2 = lam[k:].mean()
    w = u[:, :k] * np.sqrt(lam[:k] - sigma2)
    c = w @ w.T + sigma2 * np.eye(d)
    ll = -0.5 * (d * math.log(2 * math.pi) + np.linalg.slogdet(c)[1]
                 + np.trace(np.linalg.solve(c, s)))
    return ll, u[:, :k], sigma2


def standardise(y):
    """Centred, divided by one global scale (the root mean variance of the coordinates)."""
    y = y - y.mean(axis=0)
    return y / math.sqrt(float((y ** 2).mean()))


def exact_elbo(params, y) -> float:
    """ELBO per datum with E_q f in closed form (linear decoder: the expectation is analytic)."""
    return -expected_loss("gaussian", {k: np.asarray(v) for k, v in params.items()}, y)



def grad_max(params, y) -> float:
    """Largest |component| of the closed-form ELBO's gradient (:func:`expected_loss_gradient`)."""
    g = expected_loss_gradient("gaussian", {k: np.asarray(v) for k, v in params.items()}, y)
    return max(float(np.abs(v).max()) for v in g.values())


def gradient_gain(params, y) -> float:
    """The most the closed-form ELBO gains by a step ``θ − t ∇F`` along its own gradient, over
    step sizes ``t`` from 1e-7 to 10 (zero at a stationary point)."""
    p = {k: np.asarray(v, dtype=float) for k, v in params.items()}
    g = expected_loss_gradient("gaussian", p, y)
    base = expected_loss("gaussian", p, y)
    best = min(expected_loss("gaussian", {k: p[k] - t * g[k] for k in p}, y) for t
               in np.logspace(-7, 1, 33))
    return max(0.0, base - best)


def linear_vae(d: int, k: int) -> VAE:
    return VAE(dict(data_dim=d, latent_dim=k, encoder_hidden=[], decoder_hidden=[],
                    emission="gaussian", learn_alpha=True, alpha=1.0))


def fit(y, k: int, seed: int, steps: int = STEPS, record: int = 150) -> dict:
    """The protocol in refvae and, where torch is present, in the witness from the same initial
    parameters with the same noise. Returns the curves (step, ELBO, log α) of both, the largest
    teacher-forced relative gradient difference, and the final parameters."""
    n, d = y.shape
    model = linear_vae(d, k)
    noise = NoiseSource(seed)
    flat = FlatParams.from_dict(model.bk, model.init_params(noise))
    init = {name: np.array(v) for name, v in flat.params.items()}
    opt = make_optimizer("adam", model.bk, flat.size, lr=LR)
    schedule = make_schedule("cosine", LR, warmup_steps=WARMUP, total_steps=steps - WARMUP,
                             min_lr=MIN_LR)
    twin = witness.FreeRunning(init, LR) if witness.torch_or_none() else None
    out = {"refvae": [], "witness": [], "teacher": 0.0, "grad0": grad_max(init, y)}
    for step in range(steps):
        eps = model.draw_noise(noise, n, SAMPLES)
        res = model.loss_and_grads(flat.params, y, eps, check=False)
        last = step == steps - 1
        if twin is not None and (step % record == 0 or last):
            ref = witness.gradients(flat.params, y, eps)
            out["teacher"] = max(out["teacher"], rel_tensors(res.grads, ref))
        if twin is not None:
            twin.step(y, eps, witness.warmup_cosine(step, LR, WARMUP, steps, MIN_LR))
        flat.set_grads(res.grads)
        opt.step(flat, lr=schedule(step))
        if step % record == 0 or last:
            out["refvae"].append((step, exact_elbo(flat.params, y),
                                  float(flat.params["decoder.log_alpha"])))
            if twin is not None:
                tp = twin.params()
                out["witness"].append((step, exact_elbo(tp, y), float(tp["decoder.log_alpha"])))
    out["params"] = {name: np.array(v) for name, v in flat.params.items()}
    out["init"] = init
    return out


def cli_run(y, k: int, seed: int, workdir: Path) -> tuple[list, float, float, dict]:
    """``refvae train`` on an .npz of the data, and the witness with the same options: the command
    and both runs' exact ELBO per datum."""
    data = workdir / "ppca.npz"
    np.savez(data, train=y, test=y[:100])
    opts = ["--latent-dim", str(k), "--encoder-hidden", "--decoder-hidden", "--emission",
            "gaussian",
            "--learn-alpha", "--optimizer", "adam", "--lr", "0.03", "--schedule", "cosine",
            "--epochs", "60",
            "--batch-size", "100", "--samples", "1", "--seed", str(seed)]
    cmd = ["refvae", "train", "--data", str(data), *opts, "--out", str(workdir / "run"), "--quiet",
           "--no-figures"]
    subprocess.run([sys.executable, "-m", "refvae.cli.main", *cmd[1:]], check=True,
                   capture_output=True, text=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"))
    arrays, _ = load_npz_checked(workdir / "run" / "checkpoint.npz", require_meta=False)
    model = linear_vae(y.shape[1], k)
    params = {name: arrays[f"param/{name}"] for name in model.param_shapes()}
    init = model.init_params(NoiseSource(seed))
    twin = witness.train_minibatch(init, y, epochs=60, batch_size=100, lr=0.03, samples=1,
                                   seed=seed + 1)
    return cmd, exact_elbo(params, y), exact_elbo(twin, y), params


def _figure(ctx, runs, lls):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for (d, run), ll in zip(runs.items(), lls):
        for engine, style in (("refvae", "-"), ("witness", ":")):
            if run[engine]:
                s, e, la = zip(*run[engine])
                axes[0].plot(s, np.array(e) - ll, style, label=f"D = {d}, {engine}")
                axes[1].plot(s, la, style, label=f"D = {d}, {engine}")
    axes[0].set_yscale("symlog", linthresh=1e-4)
    axes[0].set_ylabel("exact ELBO − pPCA maximum (nats per datum)")
    axes[1].set_ylabel("log α")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return savefig(fig, ctx, "claim06_ppca.png")


def _fit_dim(args):
    n, d, k, seed = args
    y = standardise(ppca_data(n, d, k, seed))
    with single_threaded():
        out = fit(y, k, seed)
    print(f"claim 6, D = {d}: gap {ppca_max_log_likelihood(y, k)[0] - out['refvae'][-1][1]:.3e}",
          flush=True)
    return out


def run(ctx: Context) -> Claim:
    n, k = 2000, 3
    dims = (8,) if ctx.quick else (8, 20, 50)
    # The sizes are independent runs: in full mode each gets its own process.
    jobs = [(n, d, k, ctx.seed) for d in dims]
    if len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

        with ProcessPoolExecutor(len(jobs)) as pool:
            fits = list(pool.map(_fit_dim, jobs))
    else:
        fits = [_fit_dim(jobs[0])]
    rows, runs, lls, ok = [], {}, [], True
    for d, out in zip(dims, fits):
        y = standardise(ppca_data(n, d, k, ctx.seed))
        ll, u_k, sigma2 = ppca_max_log_likelihood(y, k)
        runs[d] = out
        lls.append(ll)
        elbo = out["refvae"][-1][1]
        gap = ll - elbo
        angle = float(subspace_angles(out["params"]["decoder.out.weight"], u_k).max())
        grad = grad_max(out["params"], y) / out["grad0"]
        gain = gradient_gain(out["params"], y)
        twin_gap = ll - out["witness"][-1][1] if out["witness"] else None
        good = (-1e-9 <= gap < TOL_NATS and angle < TOL_ANGLE and gain < TOL_GAIN
                and (not out["witness"] or out["teacher"] < TOL_TEACHER))
        ok &= good
        rows.append([d, ll, elbo, gap, twin_gap, angle, grad, gain,
                     out["teacher"] if out["witness"] else None,
                     math.exp(out["params"]["decoder.log_alpha"]), sigma2, "yes" if good else "NO"])
    y = standardise(ppca_data(n, dims[0], k, ctx.seed))
    summary_cli, cli_rows = "the CLI comparison needs torch (absent)", []
    if witness.torch_or_none():
        with tempfile.TemporaryDirectory() as tmp, single_threaded():
            cmd, cli_elbo, twin_elbo, _ = cli_run(y, k, ctx.seed, Path(tmp))
        cli_ok = abs(cli_elbo - twin_elbo) < TOL_CLI
        ok &= cli_ok
        cli_rows = [["refvae train (CLI)", cli_elbo], ["PyTorch witness, same options", twin_elbo],
                    ["pPCA maximum", lls[0]]]
        summary_cli = (f"`{' '.join(cmd)}` reaches {cli_elbo:.4f} nats per datum, the witness with "
                       "the same "
                       f"options {twin_elbo:.4f} (|Δ| {abs(cli_elbo - twin_elbo):.1e} "
                       f"{'<' if cli_ok else '≥'} {TOL_CLI})")
    fig_path = _figure(ctx, runs, lls)
    return Claim(TITLE, SOURCE, ok,
                 f"with one protocol (standardised data, full batch, L = {SAMPLES}, "
                 f"Adam {LR}, {WARMUP} warm-up "
                 f"steps, cosine to {MIN_LR} over {STEPS} steps) every D in {list(dims)} ends "
                 "within "
                 f"{max(r[3] for r in rows):.1e} nats per datum of the pPCA maximum with principal "
                 "angles below "
                 f"{max(r[5] for r in rows):.1e} rad; refvae's gradients equal the PyTorch "
                 "witness's at every "
                 f"recorded step; {summary_cli}. Why this protocol: on raw data Adam drove "
                 "exp(ℓ) "
                 "to overflow "
                 "and froze the decoder (both engines, step for step); at Adam 0.03 and 4,000 "
                 "steps D = 50 stopped "
                 "0.117 nats short (both engines), its decoder columns not yet orthogonal, which a "
                 "diagonal "
                 "posterior needs (its exact covariance is α(WᵀW + αI)⁻¹): the slowest "
                 "direction "
                 "of the "
                 "problem, slower as D grows",
                 threshold=f"0 ≤ gap < {TOL_NATS} nats per datum (the ELBO is a lower bound, "
                           "tight "
                           "at the optimum); "
                           f"largest principal angle < {TOL_ANGLE} rad; a step along the "
                           "closed-form gradient "
                           f"gains < {TOL_GAIN} nats; teacher-forced relative difference "
                           f"< {TOL_TEACHER}; CLI run within "
                           f"{TOL_CLI} nats of the witness run",
                 tables=[("Linear VAE against closed-form pPCA (nats per datum on the standardised "
                          "data)",
                          ["D", "pPCA maximum", "refvae ELBO", "gap", "witness gap",
                           "largest angle (rad)",
                           "max |∇F| / initial", "gain along ∇F", "teacher-forced rel. diff.",
                           "α",
                           "pPCA σ²", "pass"], rows)]
                 + ([("The CLI path (D = %d, minibatches of 100, 60 epochs, Adam 0.03, L = "
                      "1)" % dims[0],
                      ["run", "exact ELBO per datum"], cli_rows)] if cli_rows else []),
                 figures=[("Exact ELBO minus the pPCA maximum, and log α, against steps: refvae "
                           "(solid) and the "
                           "PyTorch witness free-running from the same start with the same noise "
                           "(dotted)",
                           fig_path)])


if __name__ == "__main__":
    raise SystemExit(main(run))
