"""Gumbel noise, Gumbel-max (Eq. 8.28), the relaxed sample (Eq. 8.29) and its VJP (erratum E4), the
concrete density (Maddison et al. 2017) and the categorical and relaxed KLs.

Evidence, strongest first:
* exact: Gumbel noise against mpmath at the extreme uniforms; the concrete density for C = 2 against
  an independent closed form (Y_1 = σ((Δη + L)/s) with L = G_1 − G_2 standard logistic); the
  density integrates to 1 and puts mass π_k on "coordinate k is the largest", by quadrature
  (C = 2, 3) at temperatures 0.2 … 5; the categorical KL against a direct sum;
* independent engine: torch's softmax autograd and ``RelaxedOneHotCategorical.log_prob``;
* central finite differences of the VJP, the density's partial derivatives and the relaxed KL's
  pathwise gradient; the chapter's misprinted derivative fails the same check (E4);
* statistics with fixed seeds: a chi-square test of Gumbel-max frequencies against softmax(η) at
  the 1e-3 level (and its power: argmax with Gaussian noise is rejected);
* hypothesis properties: KL ≥ 0, shift invariance, rows on the simplex.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from refvae.backend import NoiseSource
from strict_cupy import DEVICE_ULPS
from refvae.errors import DataError
from refvae.gradcheck import numerical_gradient
from refvae.math.latent.categorical import (categorical_kl_uniform, categorical_kl_uniform_grad,
                                            concrete_log_density, concrete_log_density_grads,
                                            gumbel_from_uniform, gumbel_max, log_relaxed_sample,
                                            log_softmax, relaxed_kl_sample, relaxed_kl_sample_grad,
                                            relaxed_sample, relaxed_sample_vjp)

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
logit_rows = st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=7)


def host(bk, a):
    return bk.to_numpy(a)


# ----- Gumbel noise from uniforms ----------------------------------------------------------------
def test_gumbel_from_uniform_exact_at_both_ends(bk):
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    u = np.array([5e-324, 1e-300, 1e-10, 0.3, 0.5, 0.5000000001, 0.9, 1 - 1e-10,
                  1 - 2.0 ** -52, 1 - 2.0 ** -53])
    g = host(bk, gumbel_from_uniform(bk, u))
    exact = np.array([float(-mp.log(-mp.log(mp.mpf(float(x))))) for x in u])
    # A GPU's two logs may each be DEVICE_ULPS from NumPy's: allowed on device backends.
    rtol = 4e-16 if bk.name == "numpy" else (2 * DEVICE_ULPS + 2) * 2.0 ** -52
    np.testing.assert_allclose(g, exact, rtol=rtol, atol=0)
    assert g[-1] > 36.7  # the largest Gumbel a double uniform can give, not inf


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_gumbel_from_uniform_rejects_outside_open_interval(bk, bad):
    with pytest.raises(DataError, match=r"\(0, 1\)"):
        gumbel_from_uniform(bk, np.array([0.5, bad]))


def test_gumbel_from_uniform_is_standard_gumbel(np_bk):
    """Kolmogorov–Smirnov against scipy's Gumbel CDF, fixed seed, 1e-3 level; a shifted copy
    fails."""
    g = gumbel_from_uniform(np_bk, NoiseSource(11).uniform(20000))
    assert stats.kstest(g, stats.gumbel_r.cdf).pvalue > 1e-3
    assert stats.kstest(g + 0.05, stats.gumbel_r.cdf).pvalue < 1e-3


# ----- Gumbel-max (Eq. 8.28) ---------------------------------------------------------------------
def _chi2_pvalue(counts, probs):
    return stats.chisquare(counts, counts.sum() * probs).pvalue


@pytest.mark.parametrize("eta", [[1.0, -0.5, 0.2, 2.0, -3.0], [0.0, 0.0], [5.0, 0.0, -2.0]])
def test_gumbel_max_frequencies_match_softmax(bk, eta):
    """Chi-square of 200000 Gumbel-max draws against softmax(η): p > 1e-3 (seed 5)."""
    eta = np.array(eta)
    g0 = NoiseSource(5).gumbel((200000, eta.size), bk)
    onehot = host(bk, gumbel_max(bk, bk.asarray(eta), g0))
    assert np.array_equal(onehot.sum(-1), np.ones(200000))
    probs = np.exp(eta - eta.max()) / np.exp(eta - eta.max()).sum()
    assert _chi2_pvalue(onehot.sum(0), probs) > 1e-3


def test_chi_square_has_power_against_the_wrong_noise(np_bk):
    """The same test rejects argmax(η + Gaussian noise): the chi-square test can fail."""
    eta = np.array([1.0, -0.5, 0.2, 2.0, -3.0])
    onehot = gumbel_max(np_bk, eta, NoiseSource(5).normal((200000, 5)))
    probs = np.exp(eta) / np.exp(eta).sum()
    assert _chi2_pvalue(onehot.sum(0), probs) < 1e-6


# ----- the relaxed sample (Eq. 8.29) -------------------------------------------------------------
@FAST
@given(eta=logit_rows, shift=st.floats(-50, 50), s=st.floats(0.05, 10.0))
def test_relaxed_sample_on_simplex_shift_invariant_and_argmax(np_bk, eta, shift, s):
    eta = np.array(eta)
    g0 = NoiseSource(len(eta)).gumbel((3, len(eta)))
    y = relaxed_sample(np_bk, eta, g0, s)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-13)
    assert (y >= 0).all()
    np.testing.assert_allclose(relaxed_sample(np_bk, eta + shift, g0, s), y, rtol=1e-9, atol=1e-13)
    z = eta + g0
    top2 = np.sort(z, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-9  # ties have probability zero
    assert np.array_equal(y.argmax(-1)[clear], gumbel_max(np_bk, eta, g0).argmax(-1)[clear])


def test_relaxed_sample_tends_to_one_hot_and_log_space_survives(bk):
    eta = bk.asarray([[0.5, 2.0, -1.0]])
    g0 = bk.asarray([[0.3, -0.2, 1.0]])     # η + G0 = (0.8, 1.8, 0): gaps ≥ 1
    hard = host(bk, gumbel_max(bk, eta, g0))
    y = host(bk, relaxed_sample(bk, eta, g0, 1e-3))
    np.testing.assert_allclose(y, hard, atol=1e-300)
    log_y = host(bk, log_relaxed_sample(bk, eta, g0, 1e-4))
    # Y underflows, log Y exact
    np.testing.assert_allclose(log_y, [[-1e4, 0.0, -1.8e4]], rtol=1e-12)


def _misprinted_vjp(g, upstream, s):
    """The chapter's derivative as printed: h̃_m = exp{g_m} / Σ_k exp{g_k/s} (erratum E4)."""
    y = np.exp(log_softmax_np(g / s))
    h = np.exp(g) / np.exp(g / s).sum(-1, keepdims=True)
    return y * (upstream - (upstream * h).sum(-1, keepdims=True)) / s


def log_softmax_np(z):
    return (z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - z.max(-1, keepdims=True))


@pytest.mark.parametrize("s", [0.3, 1.0, 2.5])
def test_vjp_finite_differences_and_erratum_e4(np_bk, s):
    """``(1/s) Y ⊙ (u − ⟨u, Y⟩)`` is the derivative of f(Y(g)) for f(Y) = ⟨a, Y⟩ + ⟨Y,
    B Y⟩/2; the printed formula (exp{g_m} in the numerator) fails the same check at s ≠ 1."""
    rng = np.random.default_rng(1)
    g, a = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    b = rng.standard_normal((5, 5))

    def f(p):
        y = np.exp(log_softmax(np_bk, p["g"] / s))
        return float((a * y).sum() + 0.5 * np.einsum("nc,cd,nd->", y, b, y))

    y = np.exp(log_softmax(np_bk, g / s))
    upstream = a + 0.5 * y @ (b + b.T)
    numeric = numerical_gradient(f, {"g": g})["g"]
    np.testing.assert_allclose(relaxed_sample_vjp(y, upstream, s), numeric, rtol=1e-7, atol=1e-9)
    wrong_error = np.abs(_misprinted_vjp(g, upstream, s) - numeric).max()
    assert (wrong_error > 1e-3) if s != 1.0 else (wrong_error < 1e-8)


def test_vjp_matches_torch(bk):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    g, u = rng.standard_normal((3, 2, 6)), rng.standard_normal((3, 2, 6))
    gt = torch.tensor(g, requires_grad=True)
    (torch.softmax(gt / 0.4, -1) * torch.tensor(u)).sum().backward()
    y = relaxed_sample(bk, bk.asarray(g), bk.asarray(np.zeros_like(g)), 0.4)
    np.testing.assert_allclose(host(bk, relaxed_sample_vjp(y, bk.asarray(u), 0.4)), gt.grad.numpy(),
                               rtol=1e-13, atol=1e-15)


# ----- the concrete density (Maddison et al. 2017) -----------------------------------------------
def _logit_plane_log_pdf(eta, s, t):
    """Log-density of ``t = (log Y_k − log Y_C)_{k<C}`` on R^{C−1}, ``t`` ``(..., C−1)``: the
    concrete log-density plus ``Σ_k log Y_k`` (the Jacobian of the first C−1 coordinates of
    softmax([t, 0]) is ``Π_{k≤C} Y_k``)."""
    from refvae.backend import get_backend
    bk = get_backend("numpy")
    z = np.concatenate([t, np.zeros(t.shape[:-1] + (1,))], -1)
    log_y = log_softmax(bk, z)
    return concrete_log_density(bk, log_y, np.asarray(eta, dtype=float), s) + log_y.sum(-1)


def _half_line(h=0.05):
    """Nodes ``e^v`` and trapezoid weights ``h e^v`` for ∫_0^∞ dt, v on [−40, 8]: the
    integrands below are analytic and decay doubly exponentially in v, so the trapezoid rule
    converges exponentially in 1/h (measured: total-mass error 1.8e-9 at h = 0.1, 6e-14 at h = 0.05;
    moving the ends to −80 or 12 changes nothing)."""
    v = np.arange(-40.0, 8.0 + h / 2, h)
    return np.exp(v), h * np.exp(v)


def _c3_region_masses(eta, s):
    """Mass of the concrete distribution where Y_1, Y_2, Y_3 is the largest, each region mapped onto
    (0, ∞)²: Y_3 largest ⇔ t_1, t_2 < 0; Y_1 largest ⇔ t_1 > 0, t_2 < t_1; Y_2 symmetric."""
    e, w = _half_line()
    a, b = np.meshgrid(e, e, indexing="ij")
    weights = np.outer(w, w)
    pts = {1: np.stack([a, a - b], -1), 2: np.stack([a - b, a], -1), 3: np.stack([-a, -b], -1)}
    return np.array([(np.exp(_logit_plane_log_pdf(eta, s, pts[k])) * weights).sum() for k
                     in (1, 2, 3)])


@pytest.mark.parametrize("s", [0.2, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("eta", [[0.0, 0.0], [1.5, -0.7]])
def test_concrete_c2_closed_form_normalization_and_argmax_mass(np_bk, s, eta):
    d = eta[0] - eta[1]
    y1 = np.array([1e-12, 1e-4, 0.1, 0.3, 0.5, 0.77, 0.99, 1 - 1e-9])
    log_y = np.log(np.stack([y1, 1 - y1], -1))
    t = np.log(y1) - np.log1p(-y1)
    independent = np.log(s) + stats.logistic.logpdf(s * t - d) - np.log(y1) - np.log1p(-y1)
    # log-densities cross zero: an absolute floor of a few ulps of the terms summed (|terms| ≲ 30)
    np.testing.assert_allclose(concrete_log_density(np_bk, log_y, np.array(eta), s), independent,
                               rtol=1e-12, atol=1e-13)

    def pdf(x):
        return math.exp(float(_logit_plane_log_pdf(eta, s, np.array([x]))))
    total = integrate.quad(pdf, -np.inf, np.inf, epsabs=1e-12, epsrel=1e-12)[0]
    assert total == pytest.approx(1.0, abs=1e-9)
    pi1 = 1.0 / (1.0 + math.exp(-d))
    assert (integrate.quad(pdf, 0.0, np.inf, epsabs=1e-12, epsrel=1e-12)[0]
            == pytest.approx(pi1, abs=1e-9))


@pytest.mark.parametrize("s, eta", [(0.2, [0.8, -0.4, 0.1]), (1.0, [0.8, -0.4, 0.1]),
                                    (0.5, [3.0, 0.0, -2.0]), (3.0, [3.0, 0.0, -2.0])])
def test_concrete_c3_normalization_and_argmax_mass(s, eta):
    """2-D quadrature on the logit plane: total mass 1 and mass π_k where Y_k is the largest."""
    masses = _c3_region_masses(eta, s)
    pi = np.exp(eta) / np.exp(eta).sum()
    assert masses.sum() == pytest.approx(1.0, abs=1e-11)
    np.testing.assert_allclose(masses, pi, atol=1e-11)


def test_c3_quadrature_detects_a_wrong_density():
    """The same quadrature rejects the density with (s − 1) in place of (s + 1) (power check)."""
    from refvae.backend import get_backend
    bk, eta, s = get_backend("numpy"), np.array([0.8, -0.4, 0.1]), 0.5
    e, w = _half_line()
    a, b = np.meshgrid(e, e, indexing="ij")
    t = np.stack([-a, -b], -1)
    log_y = log_softmax(bk, np.concatenate([t, np.zeros(t.shape[:-1] + (1,))], -1))
    wrong = concrete_log_density(bk, log_y, eta, s) + 2.0 * log_y.sum(-1)   # an extra Π Y_k
    pi3 = np.exp(eta[2]) / np.exp(eta).sum()
    assert abs((np.exp(wrong) * np.outer(w, w)).sum() - pi3) > 1e-3


@pytest.mark.parametrize("c", [2, 3, 6])
@pytest.mark.parametrize("s", [0.25, 1.0, 4.0])
def test_concrete_matches_torch_relaxed_one_hot(bk, c, s):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(c)
    eta = rng.standard_normal((5, c)) * 2
    log_y = host(bk, log_relaxed_sample(bk, bk.asarray(eta), NoiseSource(c).gumbel((5, c), bk), s))
    dist = torch.distributions.RelaxedOneHotCategorical(torch.tensor(s, dtype=torch.float64),
                                                        logits=torch.tensor(eta),
                                                        validate_args=False)
    expected = dist.log_prob(torch.tensor(np.exp(log_y))).numpy()
    mine = host(bk, concrete_log_density(bk, bk.asarray(log_y), bk.asarray(eta), s))
    np.testing.assert_allclose(mine, expected, rtol=1e-12)


def test_concrete_partial_derivatives_finite_differences(np_bk):
    rng = np.random.default_rng(3)
    log_y, eta, s = rng.standard_normal((2, 4)) - 1.0, rng.standard_normal((2, 4)), 0.7
    numeric = numerical_gradient(lambda p: concrete_log_density(np_bk, p["ly"], p["eta"], s).sum(),
                                 {"ly": log_y, "eta": eta})
    d_ly, d_eta = concrete_log_density_grads(np_bk, log_y, eta, s)
    np.testing.assert_allclose(d_ly, numeric["ly"], rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(d_eta, numeric["eta"], rtol=1e-7, atol=1e-8)


# ----- KL: analytic categorical and relaxed ------------------------------------------------------
@FAST
@given(eta=logit_rows)
def test_categorical_kl_direct_sum_nonnegative_and_gradient(np_bk, eta):
    eta = np.array(eta)
    log_pi = log_softmax(np_bk, eta)
    pi = np.exp(log_pi)
    kl = float(categorical_kl_uniform(np_bk, log_pi))
    direct = sum(p * math.log(len(eta) * p) for p in pi if p > 0)
    assert kl == pytest.approx(direct, rel=1e-10, abs=1e-12) and kl >= -1e-15
    grad = categorical_kl_uniform_grad(np_bk, log_pi)
    assert abs(grad.sum()) <= 1e-12 * (1 + np.abs(grad).max())   # shift invariance


def test_categorical_kl_gradient_finite_differences(np_bk):
    eta = np.random.default_rng(4).standard_normal((3, 5)) * 2
    numeric = numerical_gradient(lambda p: categorical_kl_uniform(np_bk,
                                                                  log_softmax(np_bk, p["e"])).sum(),
                                 {"e": eta})["e"]
    np.testing.assert_allclose(categorical_kl_uniform_grad(np_bk, log_softmax(np_bk, eta)), numeric,
                               rtol=1e-7, atol=1e-9)
    assert (float(categorical_kl_uniform(np_bk, log_softmax(np_bk, np.zeros(4))))
            == pytest.approx(0, abs=1e-15))


@pytest.mark.parametrize("s, s_p", [(0.5, 0.5), (0.7, 1.3), (2.0, 0.4)])
def test_relaxed_kl_pathwise_gradient_finite_differences(np_bk, s, s_p):
    rng = np.random.default_rng(5)
    eta, g0 = rng.standard_normal((3, 4)), NoiseSource(6).gumbel((3, 4))

    def kl(p):
        return relaxed_kl_sample(np_bk, log_relaxed_sample(np_bk, p["e"], g0, s), p["e"], s,
                                 s_p).sum()

    numeric = numerical_gradient(kl, {"e": eta})["e"]
    analytic = relaxed_kl_sample_grad(np_bk, log_relaxed_sample(np_bk, eta, g0, s), eta, s, s_p)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_relaxed_kl_zero_when_posterior_is_prior_and_positive_on_average(np_bk):
    g0 = NoiseSource(7).gumbel((20000, 3))
    log_y = log_relaxed_sample(np_bk, np.zeros(3), g0, 0.6)
    np.testing.assert_allclose(relaxed_kl_sample(np_bk, log_y, np.zeros(3), 0.6, 0.6), 0.0,
                               atol=1e-12)
    eta = np.array([2.0, -1.0, 0.0])
    per = relaxed_kl_sample(np_bk, log_relaxed_sample(np_bk, eta, g0, 0.6), eta, 0.6, 0.6)
    assert per.min() < 0 < per.mean() - 4 * per.std() / math.sqrt(per.size)
