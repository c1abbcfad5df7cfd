"""The exponential by inverse CDF (Eq. 8.23) and its pathwise and score-function gradients.

Evidence: the CDF of the transformed sample returns the uniform (so X ~ Expo(λ) exactly);
finite differences of ∂x/∂λ and of the score; Gauss–Laguerre quadrature (exact integrals) of
both gradient identities against the closed-form derivative of E[f] for f(x) = x² and f(x) =
e^{−sx}; Monte Carlo means of both estimators within 4 standard errors of the same closed forms.
"""
import numpy as np
import pytest

from refvae.backend import NoiseSource
from refvae.math.latent import exponential as expo

RATE = 1.7
S = 0.8
# (f, f', d/dλ E[f]) with E[X²] = 2/λ² and E[e^{−sX}] = λ/(λ + s)
CASES = {
    "x^2": (lambda x: x * x, lambda x: 2 * x, -4.0 / RATE ** 3),
    "exp(-sx)": (lambda x: np.exp(-S * x), lambda x: -S * np.exp(-S * x), S / (RATE + S) ** 2),
}


def test_inverse_cdf_returns_the_uniform(bk):
    u = np.concatenate([[1e-300, 1e-17, 1e-9], np.linspace(0.01, 0.99, 50), [1 - 1e-12]])
    x = bk.to_numpy(expo.sample(bk, RATE, bk.asarray(u)))
    # CDF F(x) = 1 − e^{−λx}, computed as −expm1(−λx) to keep full precision for small u.
    np.testing.assert_allclose(-np.expm1(-RATE * x), u, rtol=1e-12)
    assert (x >= 0).all()


def test_derivatives_match_finite_differences(np_bk):
    u = np.linspace(0.05, 0.95, 7)
    h = 1e-6
    x = expo.sample(np_bk, RATE, u)
    fd_x = (expo.sample(np_bk, RATE + h, u) - expo.sample(np_bk, RATE - h, u)) / (2 * h)
    np.testing.assert_allclose(expo.dx_drate(x, RATE), fd_x, rtol=1e-8)
    fd_s = (expo.log_density(np_bk, x, RATE + h) - expo.log_density(np_bk, x, RATE - h)) / (2 * h)
    np.testing.assert_allclose(expo.score(x, RATE), fd_s, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("case", list(CASES))
def test_both_identities_are_exact_under_gauss_laguerre_quadrature(np_bk, case):
    """``E_λ[φ(X)] = ∫_0^∞ e^{−t} φ(t/λ) dt``: 60-node Gauss–Laguerre is exact to
    rounding for these smooth integrands, so each estimator's expectation equals the closed-form
    derivative."""
    f, df, exact = CASES[case]
    t, wts = np.polynomial.laguerre.laggauss(60)
    x = (t / RATE)[:, None]
    pathwise = (wts[:, None] * df(x) * expo.dx_drate(x, RATE)).sum()
    score = (wts[:, None] * f(x) * expo.score(x, RATE)).sum()
    assert pathwise == pytest.approx(exact, rel=1e-12)
    assert score == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_monte_carlo_estimators_are_unbiased(np_bk, case):
    """Batches of 100 samples, 400 batches, seed 0: each estimator's batch means lie within 4
    standard errors of the closed form; the score estimator with the baseline β = E[f] (a
    constant, hence unbiased) as well."""
    f, df, exact = CASES[case]
    u = NoiseSource(0).uniform((100, 400), np_bk)
    x = expo.sample(np_bk, RATE, u)
    mean_f = 2 / RATE ** 2 if case == "x^2" else RATE / (RATE + S)
    for est in (expo.pathwise_gradient(x, RATE, df(x)), expo.score_gradient(x, RATE, f(x)),
                expo.score_gradient(x, RATE, f(x), baseline=mean_f)):
        se = est.std(ddof=1) / np.sqrt(est.size)
        assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)
