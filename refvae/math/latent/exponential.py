"""The exponential distribution by inverse CDF (Eq. 8.23;
docs/DERIVATIONS.md#inverse-cdf-transforms): a pathwise transform that is not a location-scale
family, with both of its gradient estimators.

``u ~ U(0, 1)``, ``x = g(u, λ) = −log(1 − u)/λ`` gives ``x ~ Expo(λ)`` (rate λ, mean 1/λ).
For ``E[f(X)]`` with ``X ~ Expo(λ)``:

- pathwise (Eq. 8.23 with the law of the unconscious statistician):
  ``d/dλ E[f] = E[f'(x) ∂x/∂λ]`` with ``∂x/∂λ = −x/λ``;
- score function (§8.2.1): ``d/dλ E[f] = E[f(x) ∂ log q(x)/∂λ]`` with
  ``log q = log λ − λx`` and ``∂ log q/∂λ = 1/λ − x``.

A standalone building block (no VAE uses it yet): every function takes the backend ``bk`` and
arrays that broadcast; the caller owns the uniform noise ``u`` (``NoiseSource.uniform``, never 0).
The estimators average over ``axis`` (the sample axis, 0 by default).
"""
from __future__ import annotations


def sample(bk, rate, u):
    """Eq. 8.23: ``x = −log(1 − u)/λ``, written ``−log1p(−u)/λ`` (exact for small u)."""
    return -bk.xp.log1p(-u) / rate


def dx_drate(x, rate):
    """``∂x/∂λ = log(1 − u)/λ² = −x/λ`` at fixed u."""
    return -x / rate


def log_density(bk, x, rate):
    """``log q(x; λ) = log λ − λ x`` for ``x ≥ 0``."""
    return bk.xp.log(rate) - rate * x


def score(x, rate):
    """``∂ log q(x; λ)/∂λ = 1/λ − x`` (its expectation is 0)."""
    return 1.0 / rate - x


def pathwise_gradient(x, rate, df_dx, axis: int = 0):
    """Pathwise estimate of ``d/dλ E[f(X)]``: the mean over ``axis`` of ``f'(x) · (−x/λ)``."""
    return (df_dx * dx_drate(x, rate)).mean(axis=axis)


def score_gradient(x, rate, f, baseline=0.0, axis: int = 0):
    """Score-function estimate of ``d/dλ E[f(X)]``: the mean over ``axis`` of
    ``(f(x) − β)(1/λ − x)``; unbiased for any ``β`` independent of the sample it
    multiplies."""
    return ((f - baseline) * score(x, rate)).mean(axis=axis)
