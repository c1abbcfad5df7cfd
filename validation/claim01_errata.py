"""Claim 1: the chapter's misprints E1–E6 (docs/DERIVATIONS.md#errata). Each corrected row measures
refvae's own function (MLP backward pass and input Hessian, the emissions' surprisals and
gradients, the diagonal and full-covariance samplers, the Gumbel-softmax VJP, the categorical
latent's Gumbel-max sample) against an independent reference: central finite differences, SciPy's
densities, closed-form moments in Monte Carlo standard errors, a chi-square test. The printed form,
written out here on the same inputs, must fail the same reference. Also the Bernoulli emission (no
erratum) and the one misprint found in our own earlier notes (the sign of the gaussian_diag
curvature's off-diagonal entry).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

from refvae import NoiseSource, get_backend
from refvae.math.emission import make_emission
from refvae.gradcheck import numerical_gradient, numerical_hessian
from refvae.math.latent import Categorical, DiagonalGaussian, FullCovarianceGaussian
from refvae.math.latent.categorical import relaxed_sample, relaxed_sample_vjp
from refvae.math.mlp import MLP

try:
    from validation.common import Claim, Context, main, rel
except ImportError:  # run as a script from validation/
    from common import Claim, Context, main, rel

TITLE = "Errata E1–E6: the printed forms fail, the corrected forms agree with independent references"
SOURCE = "docs/DERIVATIONS.md#errata; chapter §8.2.2 (after Eq. 8.26, boxed results), Eqs. 8.18, 8.28–8.29"
FULL_MODE = "3.2 s (10⁶ Monte Carlo draws per sampler); measured"  # runtime of --full on two cores

BK = get_backend()
# Agreement of a corrected form with central differences: float64 differences at eps = 1e-6 are
# good to ~1e-8 relative; 1e-6 leaves a margin. A printed form "fails" when it is off by more than
# 1e-2 relative (the misprints are sign or factor errors, orders of magnitude beyond rounding).
FD_TOL, WRONG = 1e-6, 1e-2
# Monte Carlo rows: every moment within 4 standard errors of its closed form (a chance failure of
# 6e-5 per normal statistic, ~1e-3 over the rows' 17 statistics); a printed form fails when some
# moment lies beyond those 4 SE. Chi-square: p > 1e-3.
N_SE, CHI2_P = 4.0, 1e-3
REL, Z = "rel. error", "max |z|"


def fd_row(tag, quantity, printed, corrected, reference):
    """A row judged by relative error against a float64 reference (tolerance FD_TOL)."""
    return [tag, quantity, printed, corrected, REL, FD_TOL, reference]


def _decoder(seed):
    noise = NoiseSource(seed)
    mlp = MLP.build("decoder", 3, [6], [("out", 5)], "tanh")
    return mlp, mlp.init_params(noise, BK), noise.normal((4, 3)), noise.normal((4, 5))


def e1_rows(seed):
    """E1: ∂E/∂θ, ∂E/∂x and ∂²E/∂x∂xᵀ of E_emiss = ||y − μ||²/(2α): the printed forms are the
    derivatives of −E_emiss."""
    alpha = 0.7
    mlp, params, x, y = _decoder(seed)

    def energy(p, xx=x):
        mu, _ = mlp.forward(BK, p, xx)
        return float(((y - mu) ** 2).sum() / (2 * alpha))

    mu, cache = mlp.forward(BK, params, x)
    corrected = mlp.backward(BK, params, cache, -(y - mu) / alpha)   # −(1/α)(y − μ)ᵀ ∂μ
    printed = mlp.backward(BK, params, cache, (y - mu) / alpha)      # +(1/α)(y − μ)ᵀ ∂μ
    fd_theta = numerical_gradient(energy, params, names=["decoder.out.weight"])["decoder.out.weight"]

    def grad_x(xx):
        m, c = mlp.forward(BK, params, xx)
        return mlp.backward(BK, params, c, -(y - m) / alpha).d_input

    fd_x = numerical_gradient(lambda p: energy(params, p["x"]), {"x": x})["x"]
    hess_c = mlp.input_hessian(BK, params, cache, corrected, 1.0 / alpha, full=True)
    fd_h = numerical_hessian(grad_x, x)
    return [
        fd_row("E1", "∂E/∂θ (decoder.out.weight)", rel(printed.grads["decoder.out.weight"], fd_theta),
               rel(corrected.grads["decoder.out.weight"], fd_theta), "finite differences"),
        fd_row("E1", "∂E/∂x_k", rel(printed.d_input, fd_x), rel(corrected.d_input, fd_x), "finite differences"),
        fd_row("E1", "∂²E/∂x_j∂x_k", rel(-hess_c, fd_h), rel(hess_c, fd_h), "differences of ∂E/∂x"),
    ]


def e2_row(seed):
    """E2: the boxed reconstruction's normalizer is (D/2) log(τα), not (K/2) log(τα). refvae's
    Gaussian surprisal (α fixed, and α learned as log α) against SciPy's log-density."""
    rng = np.random.default_rng(seed)
    d, k, alpha = 5, 2, 0.3
    y, mu = rng.normal(size=(1, d)), rng.normal(size=(1, d))
    exact = -stats.norm.logpdf(y, mu, math.sqrt(alpha)).sum()
    em = make_emission("gaussian", alpha)
    refvae_f = [float(em.terms(BK, mu, y).f[0]),
                float(make_emission("gaussian").terms(BK, mu, y, np.float64(math.log(alpha))).f[0])]
    printed = 0.5 * k * math.log(2 * math.pi * alpha) + ((mu - y) ** 2).sum() / (2 * alpha)
    return fd_row("E2", "refvae's Gaussian −log p(y∣x), α fixed and learned (D=5, K=2)", rel(printed, exact),
                  max(rel(f, exact) for f in refvae_f), "SciPy log-density")


def _z_max(estimate, target, se) -> float:
    return float(np.max(np.abs(np.asarray(estimate) - target) / se))


def e3_rows(seed, samples):
    """E3: the reparameterized sample is Υ^{1/2} z + ν; Υ z + ν has variance υ⁴, not υ². refvae's
    diagonal sampler (mean ν, variance exp ℓ) and full-covariance sampler (covariance RRᵀ), each
    against its closed-form moments in standard errors; the printed form is Υ z + ν on the same z."""
    n = samples
    diag = DiagonalGaussian(2)
    nu, lv = np.array([[0.5, -1.0]]), np.log(np.array([[0.25, 4.0]]))
    eps = diag.draw_noise(NoiseSource([seed, 1, 3]), 1, n, BK)
    x = diag.sample(BK, {"mean": nu, "logvar": lv}, eps).x[0]
    var = np.exp(lv[0])
    # SE of a sample mean: υ/√n; of a sample variance of normal data: υ²√(2/(n − 1)).
    se_mean, se_var = np.sqrt(var / n), var * math.sqrt(2.0 / (n - 1))
    z_diag = max(_z_max(x.mean(axis=0), nu[0], se_mean), _z_max(x.var(axis=0, ddof=1), var, se_var))
    printed_x = nu[0] + var * eps[0]                                    # Υ z + ν
    z_diag_printed = _z_max(printed_x.var(axis=0, ddof=1), var, se_var)

    full = FullCovarianceGaussian(3)
    rng = np.random.default_rng([seed, 1, 3])
    raw, nu3 = rng.normal(scale=0.5, size=(1, full.n_tril)), rng.normal(size=(1, 3))
    r = np.zeros((3, 3))
    r[np.tril_indices(3)] = raw[0]
    r[np.diag_indices(3)] = np.exp(np.diag(r))
    cov = r @ r.T
    eps3 = full.draw_noise(NoiseSource([seed, 2, 3]), 1, n, BK)
    x3 = full.sample(BK, {"mean": nu3, "scale_tril": raw}, eps3).x[0]
    # SE of a sample covariance entry of normal data: √((Σ_ii Σ_jj + Σ_ij²)/n); of the mean: √(Σ_ii/n).
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / n)
    z_full = max(_z_max(x3.mean(axis=0), nu3[0], np.sqrt(np.diag(cov) / n)),
                 _z_max(np.cov(x3, rowvar=False), cov, se_cov))
    z_full_printed = _z_max(np.cov(nu3[0] + eps3[0] @ cov.T, rowvar=False), cov, se_cov)
    return [["E3", f"refvae's diagonal sampler: mean vs ν, variance vs exp ℓ ({n} draws)", z_diag_printed,
             z_diag, "max |z|", N_SE, "closed-form moments"],
            ["E3", f"refvae's full-covariance sampler: mean vs ν, covariance vs RRᵀ ({n} draws)",
             z_full_printed, z_full, "max |z|", N_SE, "closed-form moments"]]


def e4_row(seed):
    """E4: dσ_l/dg_m of σ(g/s): the middle expression's numerator is exp{g_m/s}, not exp{g_m}.
    refvae's relaxed sample and its VJP, applied to every unit upstream gradient (the Jacobian's
    rows) and to a random one, against central differences of SciPy's softmax((η + G0)/s)."""
    s, c = 0.5, 3
    rng = np.random.default_rng([seed, 4])
    eta, g0 = rng.normal(size=(2, 1, c)), NoiseSource([seed, 4]).gumbel((2, 1, c))
    y = relaxed_sample(BK, eta, g0, s)                                   # (2, 1, C)
    jac = relaxed_sample_vjp(np.broadcast_to(y, (2, c, c)), np.broadcast_to(np.eye(c), (2, c, c)), s)
    u = rng.normal(size=(2, 1, c))
    vjp_u = relaxed_sample_vjp(y, u, s)[:, 0]

    def soft(e):
        return special.softmax((e + g0) / s, axis=-1)

    h = 1e-6
    fd = np.stack([(soft(eta + h * e) - soft(eta - h * e))[:, 0] / (2 * h) for e in np.eye(c)], axis=-1)
    g = (eta + g0)[:, 0]
    sig = soft(eta)[:, 0]
    printed = sig[:, :, None] * (np.eye(c) / s - np.exp(g)[:, None, :] / (s * np.exp(g / s).sum(-1)[:, None, None]))
    corrected = max(rel(jac, fd), rel(vjp_u, np.einsum("nl,nlm->nm", u[:, 0], fd)))
    return fd_row("E4", "refvae's ∂Y_l/∂η_m (relaxed_sample_vjp) at s = 0.5", rel(printed, fd), corrected,
                  "finite differences of SciPy's softmax")


def e5_row(seed, samples):
    """E5: argmax over the C classes: refvae's Gumbel-max (the categorical latent's hard sample, from
    its own Gumbel noise) against softmax(η): per-class frequencies in standard errors and a
    chi-square test."""
    eta = np.array([[0.5, -1.0, 1.5, 0.0]])
    probs = special.softmax(eta[0])
    latent = Categorical(1, 4)
    g0 = latent.draw_noise(NoiseSource([seed, 5]), 1, samples, BK)
    hard = latent.sample(BK, {"logits": eta}, g0, estimator="hard").hard
    counts = hard.reshape(samples, 4).sum(axis=0)
    p_value = stats.chisquare(counts, samples * probs).pvalue
    z = _z_max(counts / samples, probs, np.sqrt(probs * (1 - probs) / samples))
    return ["E5", f"refvae's hard sample over C = 4 classes ({samples} draws)", None, z, "max |z|", N_SE,
            f"softmax(η); chi-square p = {p_value:.3f}"], p_value


def bernoulli_row(seed):
    """No erratum: the third emission, so that every emission's gradient is measured. refvae's
    Bernoulli surprisal and ∂f/∂λ against SciPy's bernoulli.logpmf and its central differences."""
    rng = np.random.default_rng([seed, 6])
    lam, y = rng.normal(scale=2.0, size=(1, 6)), rng.integers(0, 2, size=(1, 6)).astype(float)
    terms = make_emission("bernoulli").terms(BK, lam, y)
    full = lambda l: float(-stats.bernoulli.logpmf(y, special.expit(l)).sum())  # noqa: E731
    fd = np.array([(full(lam + 1e-6 * e) - full(lam - 1e-6 * e)) / 2e-6 for e in np.eye(6)])
    corrected = max(rel(terms.df_do[0], fd), rel(terms.f[0], full(lam)))
    return fd_row("—", "refvae's Bernoulli −log p(y∣λ) and ∂f/∂λ", None, corrected,
                  "SciPy bernoulli.logpmf and its differences")


def e6_rows():
    """E6: with α learned (or Σ(x) per dimension) the normalizer ½ log|2πΣ| changes the gradients:
    E_emiss alone gives the wrong ∂/∂log α and ∂/∂s."""
    rng = np.random.default_rng(3)
    y, mu = rng.normal(size=(1, 5)), rng.normal(size=(1, 5))
    la = np.float64(-0.4)
    full = lambda a: float(-stats.norm.logpdf(y, mu, math.exp(0.5 * a)).sum())  # noqa: E731
    fd = (full(la + 1e-6) - full(la - 1e-6)) / 2e-6
    e_only = -float(((y - mu) ** 2).sum() * math.exp(-la) / 2)          # ∂E_emiss/∂log α
    corrected = float(make_emission("gaussian").terms(BK, mu, y, la).df_dlog_alpha[0])
    s = rng.normal(size=(1, 5))
    full_s = lambda ss: float(-stats.norm.logpdf(y, mu, np.exp(0.5 * ss)).sum())  # noqa: E731
    fd_s = np.array([(full_s(s + 1e-6 * e) - full_s(s - 1e-6 * e)) / 2e-6 for e in np.eye(5)])
    e_only_s = -0.5 * ((y - mu) ** 2 * np.exp(-s))[0]
    corrected_s = make_emission("gaussian_diag").terms(BK, np.concatenate([mu, s], -1), y).df_do[0, 5:]
    return [
        fd_row("E6", "∂f/∂log α (learned α)", rel(e_only, fd), rel(corrected, fd), "finite differences of SciPy"),
        fd_row("E6", "∂f/∂s_d (gaussian_diag)", rel(e_only_s, fd_s), rel(corrected_s, fd_s),
               "finite differences of SciPy"),
    ]


def equations_md_row():
    """Our earlier notes printed the (μ_d, s_d) cross-curvature of gaussian_diag as −(y − μ)e^{−s}; the
    derivative ∂/∂s [(μ − y)e^{−s}] is +(y − μ)e^{−s}."""
    rng = np.random.default_rng(4)
    y, mu, s = rng.normal(size=(1, 2)), rng.normal(size=(1, 2)), rng.normal(size=(1, 2))
    em = make_emission("gaussian_diag")
    o = np.concatenate([mu, s], -1)

    def grad(oo):
        return em.terms(BK, oo, y).df_do

    fd = numerical_hessian(grad, o)[0]
    fd_cross = np.array([fd[0, 2], fd[1, 3]])
    corrected = em.curvature(BK, o, y)[0, :, 0, 1]
    printed = -(y - mu)[0] * np.exp(-s[0])
    return fd_row("EQ.md", "gaussian_diag ∂²f/∂μ_d∂s_d", rel(printed, fd_cross), rel(corrected, fd_cross),
                  "differences of ∂f/∂o")


def confirmed(row) -> bool:
    """The corrected form within its tolerance, and the printed form (where there is one) outside:
    beyond 1e-2 relative for a deterministic row, beyond the same 4 SE for a Monte Carlo row."""
    printed, corrected, measure, tol = row[2], row[3], row[4], row[5]
    return corrected <= tol and (printed is None or printed > (WRONG if measure == REL else tol))


def run(ctx: Context) -> Claim:
    samples = 20_000 if ctx.quick else 1_000_000
    row5, p5 = e5_row(ctx.seed, samples)
    rows = (e1_rows(ctx.seed) + [e2_row(ctx.seed)] + e3_rows(ctx.seed, samples) + [e4_row(ctx.seed), row5]
            + e6_rows() + [bernoulli_row(ctx.seed), equations_md_row()])
    ok = bool(p5 > CHI2_P)
    for row in rows:
        good = confirmed(row)
        ok &= good
        row.append("yes" if good else "NO")
    return Claim(TITLE, SOURCE, ok,
                 "every corrected row measures refvae's own function (MLP backward pass and input Hessian, "
                 "the three emissions, the diagonal and full-covariance samplers, the Gumbel-softmax VJP, the "
                 "categorical latent's Gumbel-max sample) and agrees with an independent reference; every "
                 "printed form, evaluated on the same inputs, is off by a sign, a factor or a missing term "
                 "(E5 is notational: the row shows that refvae's argmax over the C classes reproduces "
                 "softmax(η); the Bernoulli row has no erratum and completes the emissions)",
                 threshold=f"deterministic rows: corrected within {FD_TOL:g} relative of the reference (float64 "
                           f"central differences are good to ~1e-8), printed off by more than {WRONG:g}; Monte "
                           f"Carlo rows ({samples} draws): every moment of the corrected form within {N_SE:g} "
                           f"standard errors of its closed form, some moment of the printed form beyond them; "
                           f"chi-square p > {CHI2_P:g}",
                 tables=[("Printed versus corrected, measured against the reference",
                          ["erratum", "quantity", "printed", "corrected", "measure", "tolerance",
                           "reference", "confirmed"], rows)])


if __name__ == "__main__":
    raise SystemExit(main(run))
