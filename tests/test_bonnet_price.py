"""Bonnet's and Price's theorems (Eqs. 8.13–8.17) under Gauss–Hermite quadrature.

For X ~ N(ν, Υ): Bonnet ``∂/∂ν E[f(X)] = E[∂f/∂x]`` and Price
``∂/∂Υ E[f(X)] = ½ E[∂²f/∂x∂xᵀ]`` (``∂/∂Υ`` the symmetric gradient:
``dE = tr(G dΥ)`` for symmetric ``dΥ``). Tensor-product Gauss–Hermite quadrature computes the
expectations, in 1, 2 and 3 dimensions, for ``(x−k)ᵀA(x−k)`` and ``cos(kᵀx)`` (to rounding;
left-hand sides in closed form) and for a tanh MLP with a squared-error output, whose derivatives
come from refvae's reverse pass and exact input Hessian (to ~1e-9 relative with the node counts
below, checked by doubling them; left-hand sides by central differences of the quadrature).

Then the estimators as implemented: fed the quadrature nodes as "samples" and the quadrature
weights as sample weights, ``price`` (diagonal: ``½ υ² ⟨H_kk⟩``; full: ``tril(2GR)`` mapped
onto the ``scale_tril`` head) and ``pathwise`` give the exact gradient of ``E[f]`` with respect to
the encoder heads.
"""
import numpy as np
import pytest

from refvae.backend import NoiseSource
from refvae.math.latent import DiagonalGaussian, FullCovarianceGaussian
from refvae.math.mlp import MLP
from validation.quadrature import Cosine, Quadratic, gauss_hermite, problem

# Nodes per axis: enough for the MLP's expectations to converge to ~1e-9 relative (checked by
# doubling); the polynomial and cosine cases converge far sooner.
NODES = {1: 50, 2: 40, 3: 24}


class SmallMLP:
    """``f = ½||MLP(x) − c||²``, tanh, widths K-5-4-2; ``f'`` from the reverse pass, ``f''``
    from the exact input Hessian (docs/DERIVATIONS.md#mlp-input-hessians)."""

    def __init__(self, k, rng, bk):
        self.bk = bk
        self.mlp = MLP.build("f", k, (5, 4), [("out", 2)], "tanh")
        self.params = self.mlp.init_params(NoiseSource(int(rng.integers(1000))), bk)
        self.c = rng.normal(size=2)

    def derivs(self, x):
        o, cache = self.mlp.forward(self.bk, self.params, x)
        back = self.mlp.backward(self.bk, self.params, cache, o - self.c)
        hess = self.mlp.input_hessian(self.bk, self.params, cache, back, 1.0, full=True)
        return 0.5 * ((o - self.c) ** 2).sum(-1), back.d_input, hess

    def exact(self, nu, ups):
        """Central differences of the quadrature expectation (no closed form)."""
        h = 1e-5
        d_nu = np.array([(expect(self, nu + h * e, ups) - expect(self, nu - h * e, ups)) / (2 * h)
                         for e in np.eye(len(nu))])
        k = len(nu)
        d_ups = np.zeros((k, k))
        for i in range(k):
            for j in range(i, k):
                e = np.zeros((k, k))
                e[i, j] = e[j, i] = 1.0
                d = (expect(self, nu, ups + h * e) - expect(self, nu, ups - h * e)) / (2 * h)
                d_ups[i, j] = d_ups[j, i] = d if i == j else d / 2
        return d_nu, d_ups


def expect(fn, nu, ups, what=0):
    """Quadrature of ``f`` (what=0), ``f'`` (1) or ``f''`` (2) under N(ν, Υ)."""
    z, w = gauss_hermite(len(nu), NODES[len(nu)])
    x = nu + z @ np.linalg.cholesky(ups).T
    return np.tensordot(w, fn.derivs(x)[what], axes=1)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("family", ["quadratic", "cosine", "mlp"])
def test_bonnet_and_price_under_quadrature(np_bk, k, family):
    rng, nu, ups = problem(k, seed=10 * k)
    fn = {"quadratic": lambda: Quadratic(k, rng), "cosine": lambda: Cosine(k, rng),
          "mlp": lambda: SmallMLP(k, rng, np_bk)}[family]()
    d_nu, d_ups = fn.exact(nu, ups)
    np.testing.assert_allclose(expect(fn, nu, ups, 1), d_nu, rtol=1e-8, atol=1e-10)  # Bonnet
    np.testing.assert_allclose(0.5 * expect(fn, nu, ups, 2), d_ups, rtol=1e-8, atol=1e-10)  # Price


@pytest.mark.parametrize("latent_cls", [DiagonalGaussian, FullCovarianceGaussian])
def test_price_and_pathwise_estimators_give_the_exact_head_gradient(np_bk, latent_cls):
    """``E[f]`` as a function of the encoder heads; quadrature nodes as samples, weights folded
    into ``g`` and ``H`` as the model folds in 1/L. Pathwise matches by the chain rule; price only
    because Price's theorem holds (Stein's lemma), to quadrature accuracy (60 nodes per axis: Υ is
    near I here, wider than in the test above)."""
    k = 2
    rng = np.random.default_rng(3)
    fn = SmallMLP(k, rng, np_bk)
    latent = latent_cls(k)
    heads = {h: 0.3 * rng.normal(size=(1, d)) for h, d in latent.heads()}
    z, w = gauss_hermite(k, nodes=60)
    eps = z[None]

    def value(hd):
        return float(np.dot(w, fn.derivs(latent.sample(np_bk, hd, eps).x[0])[0]))

    state = latent.sample(np_bk, heads, eps)
    _, g, hess = fn.derivs(state.x[0])
    g_w, hess_w = (w[:, None] * g)[None], (w[:, None, None] * hess)[None]
    h = 1e-5
    exact = {}
    for name, arr in heads.items():
        col = np.zeros_like(arr)
        for i in range(arr.shape[1]):
            plus = {n: v.copy() for n, v in heads.items()}
            minus = {n: v.copy() for n, v in heads.items()}
            plus[name][0, i] += h
            minus[name][0, i] -= h
            col[0, i] = (value(plus) - value(minus)) / (2 * h)
        exact[name] = col
    price = latent.price(np_bk, state, g_w,
                         lambda full=False: hess_w if full
                         else np.diagonal(hess_w, axis1=-2, axis2=-1))
    pathwise = latent.pathwise(np_bk, state, g_w)
    for name in heads:
        np.testing.assert_allclose(pathwise[name], exact[name], rtol=1e-8, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(price[name], exact[name], rtol=1e-8, atol=1e-10, err_msg=name)
