"""Evaluation objectives against closed forms: a linear-Gaussian model whose exact posterior is
representable by the diagonal encoder, so log p(y) (the pPCA marginal) is known exactly."""
import math

import numpy as np
import pytest
from scipy import stats

from refvae import NoiseSource
from refvae.math.objectives import active_units, elbo_surgery, evaluate, iwae_bound, neg_elbo_terms
from refvae.math.vae import VAE


def linear_gaussian_model(exact_posterior: bool, d=5, k=2, alpha=0.5, seed=0):
    """μ(x) = W x + b with orthogonal columns of W, so the exact posterior
    N(Σ Wᵀ(y − b)/α, Σ), Σ = (I + WᵀW/α)⁻¹, is diagonal; the encoder is set to it (or
    perturbed)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, k)))
    w = q * np.array([2.0, 0.7])[:k]
    b = rng.normal(size=d)
    cov = np.linalg.inv(np.eye(k) + w.T @ w / alpha)
    assert np.allclose(cov, np.diag(np.diag(cov)))
    model = VAE(dict(data_dim=d, latent_dim=k, encoder_hidden=[], decoder_hidden=[],
                     emission="gaussian", alpha=alpha))
    params = {
        "encoder.mean.weight": cov @ w.T / alpha, "encoder.mean.bias": -cov @ w.T @ b / alpha,
        "encoder.logvar.weight": np.zeros((k, d)), "encoder.logvar.bias": np.log(np.diag(cov)),
        "decoder.out.weight": w, "decoder.out.bias": b,
    }
    if not exact_posterior:
        params["encoder.logvar.bias"] = params["encoder.logvar.bias"] + 0.8
        params["encoder.mean.bias"] = params["encoder.mean.bias"] + 0.3
    y = rng.multivariate_normal(b, w @ w.T + alpha * np.eye(d), size=40)
    log_p = stats.multivariate_normal(b, w @ w.T + alpha * np.eye(d)).logpdf(y)
    return model, params, y, log_p


def test_exact_posterior_makes_every_bound_tight():
    """With q = p(x|y), log p(y,x) − log q(x|y) = log p(y) for every x: every importance weight,
    hence the importance-weighted bound for any k, equals the pPCA marginal likelihood up to
    rounding; the ELBO (closed-form KL + Monte Carlo reconstruction) equals it in expectation."""
    model, params, y, log_p = linear_gaussian_model(exact_posterior=True)
    np.testing.assert_allclose(iwae_bound(model, params, y, NoiseSource(2), k=7), log_p, rtol=1e-11)
    samples = 20_000
    kl, rec = neg_elbo_terms(model, params, y[:5], NoiseSource(1), samples=samples)
    spread = model.forward(params, y[:5], NoiseSource(9).normal((5, samples, 2))).f.std(axis=1)
    assert (np.abs(-(kl + rec) - log_p[:5]) < 4 * spread / math.sqrt(samples)).all()


def test_iwae_bound_increases_with_k_and_stays_below_log_p():
    """Burda et al. Theorem 1 on a mismatched posterior: means over the data, ordered, and below
    the exact log-likelihood (allowing 4 standard errors of Monte Carlo noise)."""
    model, params, y, log_p = linear_gaussian_model(exact_posterior=False)
    bounds = {k: iwae_bound(model, params, y, NoiseSource(k), k=k) for k in (1, 10, 1000)}
    means = [bounds[k].mean() for k in (1, 10, 1000)]
    assert means[0] < means[1] < means[2]
    gap = log_p - bounds[1000]
    assert gap.mean() > -4 * gap.std(ddof=1) / math.sqrt(gap.size)
    assert means[2] > log_p.mean() - 0.05 * abs(log_p.mean())


def test_iwae_chunking_does_not_change_the_result(monkeypatch):
    import refvae.math.objectives as obj

    model, params, y, _ = linear_gaussian_model(exact_posterior=False)
    whole = iwae_bound(model, params, y, NoiseSource(3), k=50)
    monkeypatch.setattr(obj, "_ELEMENTS_PER_CHUNK", 40 * 10 * 7)  # forces chunks of 7 samples
    chunked = iwae_bound(model, params, y, NoiseSource(3), k=50)
    # Same noise stream, different grouping of draws: equal only in distribution, so compare the
    # data means within Monte Carlo error rather than bit for bit.
    assert abs(whole.mean() - chunked.mean()) < 0.05


def test_active_units_counts_informative_dimensions():
    model, params, y, _ = linear_gaussian_model(exact_posterior=True)
    count, var = active_units(model, params, y)
    assert count == 2 and (var > 0.01).all()
    params = dict(params)
    params["encoder.mean.weight"] = params["encoder.mean.weight"].copy()
    params["encoder.mean.weight"][1] = 0.0
    count, var = active_units(model, params, y)
    assert count == 1 and var[1] == pytest.approx(0.0, abs=1e-20)


def test_elbo_surgery_identity():
    """Eq. 8.21: average KL = aggregate-posterior KL + mutual information (within 4 standard
    errors), the mutual information at most log N."""
    model, params, y, _ = linear_gaussian_model(exact_posterior=False)
    out = elbo_surgery(model, params, y, NoiseSource(4), samples=200)
    se = math.hypot(out["aggregate_kl_se"], out["mutual_information_se"])
    assert abs(out["avg_kl"] - (out["aggregate_kl"] + out["mutual_information"])) < 4 * se
    assert 0 <= out["mutual_information"] <= out["log_n"] + 4 * out["mutual_information_se"]


def test_evaluate_reports_every_field():
    model, params, y, log_p = linear_gaussian_model(exact_posterior=True)
    out = evaluate(model, params, y, iwae_k=5)
    assert set(out) == {"neg_elbo", "kl", "reconstruction", "nll_iwae", "active_units", "n"}
    assert out["nll_iwae"] == pytest.approx(-log_p.mean(), rel=1e-10)
    assert out["neg_elbo"] == pytest.approx(out["kl"] + out["reconstruction"], rel=1e-14)
    assert out["n"] == 40


def test_elbo_surgery_of_a_conditional_vae_runs_over_the_pairs():
    """With a condition the mixture runs over the pairs (y_n, c_n): the closed-form average KL is
    the loss's KL term under the same conditions, eq. 8.21 holds within 4 standard errors, and
    shuffling the conditions across rows changes the answer."""
    model = VAE(dict(data_dim=4, latent_dim=2, encoder_hidden=[6], decoder_hidden=[6],
                     condition_dim=3, activation="tanh"))
    params = model.init_params(NoiseSource(0))
    rng = np.random.default_rng(1)
    y = rng.uniform(size=(40, 4))
    c = np.eye(3)[rng.integers(0, 3, 40)] * 3.0
    out = elbo_surgery(model, params, y, NoiseSource(4), samples=100, condition=c)
    kl, _ = neg_elbo_terms(model, params, y, NoiseSource(5), condition=c)
    assert out["avg_kl"] == pytest.approx(kl.mean(), rel=1e-12)
    se = math.hypot(out["aggregate_kl_se"], out["mutual_information_se"])
    assert abs(out["avg_kl"] - (out["aggregate_kl"] + out["mutual_information"])) < 4 * se
    shuffled = elbo_surgery(model, params, y, NoiseSource(4), samples=100, condition=c[::-1])
    assert shuffled["avg_kl"] != pytest.approx(out["avg_kl"], rel=1e-6)
