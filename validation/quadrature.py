"""Gauss–Hermite quadrature for Gaussian expectations, and the test functions with closed-form
Bonnet and Price sides, shared by claim 2 (validation/claim02_bonnet_price.py) and its unit test
(tests/test_bonnet_price.py).

Each test function has
``derivs(x (M, K)) -> (f (M,), ∂f/∂x (M, K), ∂²f/∂x∂xᵀ (M, K, K))`` and
``exact(ν, Υ) -> (∂E/∂ν, ∂E/∂Υ)`` for ``x ~ N(ν, Υ)`` (``∂/∂Υ`` the symmetric
gradient).
"""
from __future__ import annotations

import math

import numpy as np


def gauss_hermite(k: int, nodes: int):
    """Nodes ``(nodes^k, k)`` and weights ``(nodes^k,)`` of the tensor-product Gauss–Hermite rule
    for ``N(0, I_k)`` (probabilists' Hermite polynomials; the weights sum to 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / math.sqrt(2 * math.pi)
    grid = np.stack(np.meshgrid(*([z] * k), indexing="ij"), axis=-1).reshape(-1, k)
    weights = np.prod(np.stack(np.meshgrid(*([w] * k), indexing="ij"), axis=-1).reshape(-1, k),
                      axis=-1)
    return grid, weights


def problem(k: int, seed: int):
    """A generator, a mean and a well-conditioned, correlated covariance in K dimensions."""
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(k, k)) * 0.4
    return rng, rng.normal(size=k) * 0.5, b @ b.T + 0.3 * np.eye(k)


class Quadratic:
    """``f = (x−c)ᵀA(x−c)``: ``E = (ν−c)ᵀA(ν−c) + tr(AΥ)``,
    ``∂E/∂ν = 2A(ν−c)``, ``∂E/∂Υ = A``."""

    name = "quadratic"

    def __init__(self, k, rng):
        b = rng.normal(size=(k, k))
        self.a, self.c = b @ b.T / k + np.eye(k), rng.normal(size=k)

    def derivs(self, x):
        d = x - self.c
        return ((d @ self.a * d).sum(-1), 2 * d @ self.a,
                np.broadcast_to(2 * self.a, (*x.shape, x.shape[-1])))

    def exact(self, nu, ups):
        return 2 * self.a @ (nu - self.c), self.a


class Cosine:
    """``f = cos(kᵀx)``: ``E = cos(kᵀν) e^{−½kᵀΥk}``, so
    ``∂E/∂ν = −sin(kᵀν) e^{…} k`` and
    ``∂E/∂Υ = −½ cos(kᵀν) e^{…} k kᵀ``."""

    name = "cosine"

    def __init__(self, k, rng):
        self.k = rng.normal(size=k) * 1.2

    def derivs(self, x):
        t = x @ self.k
        return (np.cos(t), -np.sin(t)[:, None] * self.k,
                -np.cos(t)[:, None, None] * np.outer(self.k, self.k))

    def exact(self, nu, ups):
        t, damp = nu @ self.k, math.exp(-0.5 * self.k @ ups @ self.k)
        return -math.sin(t) * damp * self.k, -0.5 * math.cos(t) * damp * np.outer(self.k, self.k)
