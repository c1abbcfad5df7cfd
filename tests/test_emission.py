"""Emission surprisals, their gradients and curvatures (docs/DERIVATIONS.md#emissions; errata E2,
E6)."""
import math

import numpy as np
import pytest
from scipy import stats

from refvae.backend import get_backend
from refvae.math.emission import make_emission

BK = get_backend()
RNG = np.random.default_rng(5)


def test_surprisals_are_negative_log_densities():
    """Against SciPy's log-densities: the normalizers count D (E2) and are kept (E6)."""
    y = RNG.normal(size=(3, 4))
    mu = RNG.normal(size=(3, 4))
    s = RNG.normal(size=(3, 4))
    f = make_emission("gaussian", alpha=0.3).terms(BK, mu, y).f
    np.testing.assert_allclose(f, -stats.norm.logpdf(y, mu, math.sqrt(0.3)).sum(-1), rtol=1e-13)
    f = make_emission("gaussian_diag").terms(BK, np.concatenate([mu, s], -1), y).f
    np.testing.assert_allclose(f, -stats.norm.logpdf(y, mu, np.exp(0.5 * s)).sum(-1), rtol=1e-13)
    yb = (RNG.random((3, 4)) < 0.5).astype(float)
    f = make_emission("bernoulli").terms(BK, mu, yb).f
    p = 1 / (1 + np.exp(-mu))
    np.testing.assert_allclose(f, -stats.bernoulli.logpmf(yb, p).sum(-1), rtol=1e-12)


def _torch_surprisal(name, o, y, log_alpha=None):
    import torch

    if name == "bernoulli":
        return (torch.nn.functional.softplus(o) - y * o).sum()
    if name == "gaussian":
        d = o.shape[-1]
        return (((y - o) ** 2).sum() / (2 * log_alpha.exp()) + 0.5 * d
                * (math.log(2 * math.pi) + log_alpha))
    mu, s = o[: o.shape[0] // 2], o[o.shape[0] // 2:]
    return 0.5 * (((y - mu) ** 2) * (-s).exp() + s + math.log(2 * math.pi)).sum()


@pytest.mark.parametrize("name", ["bernoulli", "gaussian", "gaussian_diag"])
def test_gradient_and_curvature_match_pytorch(name):
    """∂f/∂o and ∂²f/∂o∂oᵀ against torch.autograd in float64. For gaussian_diag this
    pins the sign of the (μ_d, s_d) off-diagonal entry: +(y − μ)e^{−s}, where our earlier
    notes printed −(y − μ)e^{−s}."""
    torch = pytest.importorskip("torch")
    em = make_emission(name, alpha=0.8)
    d = 3
    width = 2 * d if name == "gaussian_diag" else d
    o = RNG.normal(size=width)
    y = RNG.random(d) if name == "bernoulli" else RNG.normal(size=d)
    la = torch.tensor(math.log(0.8), dtype=torch.float64)
    fn = lambda t: _torch_surprisal(name, t, torch.tensor(y), la)  # noqa: E731
    ot = torch.tensor(o, requires_grad=True)
    (g,) = torch.autograd.grad(fn(ot), ot)
    hess = torch.autograd.functional.hessian(fn, torch.tensor(o)).numpy()
    terms = em.terms(BK, o, y)
    np.testing.assert_allclose(terms.df_do, g.numpy(), rtol=1e-13, atol=1e-15)
    c = em.curvature(BK, o, y)
    if em.curvature_form == "diag":
        dense = np.diag(np.broadcast_to(c, (width,)))
    else:
        dense = np.zeros((width, width))
        for k in range(d):
            for i in range(2):
                for j in range(2):
                    dense[k + i * d, k + j * d] = c[k, i, j]
    np.testing.assert_allclose(dense, hess, rtol=1e-12, atol=1e-14)
    if name == "gaussian_diag":
        mu, s = o[:d], o[d:]
        assert np.allclose(dense[0, d], (y[0] - mu[0]) * np.exp(-s[0]))


def test_learned_alpha_gradient():
    """∂f/∂log α = D/2 − ‖y − μ‖²/(2α), against a central difference."""
    em = make_emission("gaussian")
    y, mu = RNG.normal(size=(2, 5)), RNG.normal(size=(2, 5))
    la, h = 0.3, 1e-6
    g = em.terms(BK, mu, y, np.float64(la)).df_dlog_alpha
    fd = (em.terms(BK, mu, y, np.float64(la + h)).f
          - em.terms(BK, mu, y, np.float64(la - h)).f) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-8)


@pytest.mark.parametrize("logit", [-800.0, -50.0, 50.0, 800.0])
def test_bernoulli_extreme_logits(logit):
    em = make_emission("bernoulli")
    o = np.array([logit])
    for yv in (0.0, 1.0):
        t = em.terms(BK, o, np.array([yv]))
        expected = max(logit, 0.0) + math.log1p(math.exp(-abs(logit))) - yv * logit
        assert t.f == pytest.approx(expected, rel=1e-15)
        assert np.isfinite(t.df_do).all() and np.isfinite(em.curvature(BK, o, None)).all()


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bernoulli_in_many_row_blocks_matches_direct_formulas(dtype, fast):
    """A batch large enough for many cache-sized blocks (``refvae.fast.kernels.row_blocks``), data
    in [0, 1] broadcast over L samples, logits up to ±60: the plain emission and every block of the
    fast one give the direct float64 formulas."""
    from refvae.fast.kernels import FastBernoulli, row_blocks  # noqa: PLC0415
    bk = get_backend("numpy", dtype)
    n, samples, d = 97, 3, 301
    assert len(row_blocks(bk, n, samples * d)) > 2
    o = (RNG.normal(size=(n, samples, d)) * 20).clip(-60, 60)
    y = RNG.random((n, 1, d))
    y[: n // 2] = y[: n // 2] < 0.5
    t = (FastBernoulli() if fast else make_emission("bernoulli")).terms(
        bk, bk.asarray(o), bk.asarray(y))
    assert t.f.dtype == t.df_do.dtype == np.dtype(dtype) and t.f.shape == (n, samples)
    rtol = 1e-13 if dtype == "float64" else 2e-6
    f = (np.logaddexp(0.0, o) - y * o).sum(-1)
    np.testing.assert_allclose(t.f, f, rtol=rtol, atol=rtol * np.abs(o).sum(-1).max())
    o_rounded = o.astype(dtype).astype(float)
    y_rounded = y.astype(dtype).astype(float)
    df = 1.0 / (1.0 + np.exp(-o_rounded)) - y_rounded
    np.testing.assert_allclose(t.df_do, df, rtol=0, atol=4 * np.finfo(dtype).eps)


def test_bernoulli_gradient_at_signed_zero_and_full_precision_tails():
    """σ(±0) − y = ½ − y for both signed zeros; with y = 1[λ ≥ 0] the gradient
    ∓σ(−|λ|) keeps its full relative precision far in the tails (no cancellation against
    1)."""
    em = make_emission("bernoulli")
    for y in (0.0, 0.25, 1.0):
        df = em.terms(BK, np.array([0.0, -0.0]), np.array([y, y])).df_do
        np.testing.assert_array_equal(df, [0.5 - y, 0.5 - y])
    lam = np.array([-40.0, 40.0, -700.0, 700.0])
    df = em.terms(BK, lam, (lam >= 0).astype(float)).df_do
    expected = np.array([math.exp(-40.0), -math.exp(-40.0), math.exp(-700.0), -math.exp(-700.0)])
    np.testing.assert_allclose(df, expected, rtol=1e-14)
