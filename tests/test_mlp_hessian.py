"""Exact input Jacobians and input Hessians of the MLP (docs/DERIVATIONS.md#mlp-input-hessians).

``f(x) = e(o(x))`` per datum, with ``e`` built here so that its gradient and curvature are known:
``e(o) = g·o + ½ oᵀ C o`` (``∂e/∂o = g + C o``, ``∂²e/∂o∂oᵀ = C``) with ``C`` in
each of the three curvature forms the MLP accepts — ``diag`` (per-output vector, or a scalar such
as ``1/α`` broadcast over everything), ``block2`` (a 2×2 block per ``d`` coupling output ``d``
with output ``D + d``) and ``full`` — plus the real surprisals of the three emissions.

Every Hessian (full matrix and diagonal) is checked against central differences of the analytic
input gradient (``refvae.gradcheck.check_hessian``) and against
``torch.autograd.functional.hessian`` in float64 to 1e-10 relative.
"""
import math

import numpy as np
import pytest

from refvae.errors import ShapeError
from refvae.gradcheck import assert_hessian
from refvae.math.mlp import MLP

ACTS = ["tanh", "sigmoid", "softplus", "silu", "relu", "identity"]
WIDTHS = (4, 3, 5)
K = 3                       # input (latent) dimension
HEADS = [("mean", 2), ("logvar", 2)]  # P = 4 = 2D, D = 2
P, D = 4, 2
FORMS = ["diag", "diag_scalar", "diag_shared", "block2", "full", "full_shared"]
BATCHES = {"2d": (3,), "3d": (2, 2)}


def build(depth, act):
    return MLP.build("decoder", K, WIDTHS[:depth], HEADS, act)


def random_params(mlp, bk, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in mlp.param_shapes().items():
        sd = 1.5 / math.sqrt(s[1]) if len(s) == 2 else 0.5
        out[k] = bk.asarray(sd * rng.standard_normal(s))
    return out


class Quadratic:
    """``e(o) = g·o + ½ oᵀ C o`` per datum; ``C`` stored in one of the MLP's curvature forms."""

    def __init__(self, form, batch, seed):
        rng = np.random.default_rng(seed)
        self.form = form
        self.g = rng.standard_normal((*batch, P))
        if form == "diag":
            self.c = rng.uniform(-1.0, 2.0, (*batch, P))       # any sign: e need not be convex
        elif form == "diag_scalar":
            self.c = 1.0 / 0.7                                  # 1/α, a Python float
        elif form == "diag_shared":
            self.c = rng.uniform(-1.0, 2.0, (P,))               # one vector for every datum
        elif form == "block2":
            b = rng.standard_normal((*batch, D, 2, 2))
            self.c = b + np.swapaxes(b, -1, -2)                 # symmetric 2×2 blocks
        elif form == "full":
            c = rng.standard_normal((*batch, P, P))
            self.c = c + np.swapaxes(c, -1, -2)
        elif form == "full_shared":
            c = rng.standard_normal((P, P))
            self.c = c + c.T
        else:
            raise AssertionError(form)

    @property
    def mlp_form(self):
        return self.form.split("_")[0]

    def dense(self, batch):
        """C as ``(*batch, P, P)`` NumPy, for the torch reference."""
        if self.mlp_form == "diag":
            diag = np.broadcast_to(self.c, (*batch, P))
            return diag[..., :, None] * np.eye(P)
        if self.form == "block2":
            out = np.zeros((*batch, P, P))
            for d in range(D):
                out[..., d, d] = self.c[..., d, 0, 0]
                out[..., d, D + d] = self.c[..., d, 0, 1]
                out[..., D + d, d] = self.c[..., d, 1, 0]
                out[..., D + d, D + d] = self.c[..., d, 1, 1]
            return out
        return np.broadcast_to(self.c, (*batch, P, P))

    def grad_o(self, o):
        """``∂e/∂o = g + C o``, computed from the compact form (not from :meth:`dense`)."""
        if self.mlp_form == "diag":
            return self.g + self.c * o
        if self.form == "block2":
            mu, s = o[..., :D], o[..., D:]
            c = self.c
            return self.g + np.concatenate([c[..., 0, 0] * mu + c[..., 0, 1] * s,
                                            c[..., 1, 0] * mu + c[..., 1, 1] * s], axis=-1)
        return self.g + np.einsum("...pq,...q->...p", self.c, o)

    def curvature(self, bk):
        return self.c if isinstance(self.c, float) else bk.asarray(self.c)

    def torch_e(self, torch, o, batch):
        g = torch.from_numpy(np.ascontiguousarray(self.g))
        c = torch.from_numpy(np.array(self.dense(batch)))
        return (g * o).sum() + 0.5 * torch.einsum("...p,...pq,...q->", o, c, o)


def grad_fn_for(bk, mlp, params, e):
    def grad_fn(x):
        o, cache = mlp.forward(bk, params, bk.asarray(x))
        d_out = bk.asarray(e.grad_o(bk.to_numpy(o)))
        return bk.to_numpy(mlp.backward(bk, params, cache, d_out).d_input)
    return grad_fn


def analytic_hessians(bk, mlp, params, x, e):
    o, cache = mlp.forward(bk, params, x)
    back = mlp.backward(bk, params, cache, bk.asarray(e.grad_o(bk.to_numpy(o))))
    curv = e.curvature(bk)
    full = mlp.input_hessian(bk, params, cache, back, curv, form=e.mlp_form, full=True)
    diag = mlp.input_hessian(bk, params, cache, back, curv, form=e.mlp_form)
    return bk.to_numpy(full), bk.to_numpy(diag)


def rel_close(got, ref, rtol, what=""):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


def problem(bk, depth, act, form, batch, seed):
    mlp = build(depth, act)
    params = random_params(mlp, bk, seed=seed)
    x = bk.asarray(1.2 * np.random.default_rng(seed + 100).standard_normal((*batch, K)))
    return mlp, params, x, Quadratic(form, batch, seed + 200)


# ----------------------------------------------------------------------------------------------
# Finite differences of the analytic input gradient
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("form", FORMS)
def test_hessian_against_finite_differences(bk, depth, act, form):
    batch = BATCHES["3d"] if form in ("diag", "block2", "full") else BATCHES["2d"]
    mlp, params, x, e = problem(bk, depth, act, form, batch, seed=depth * 7 + len(form))
    full, diag = analytic_hessians(bk, mlp, params, x, e)
    assert full.shape == (*batch, K, K) and diag.shape == (*batch, K)
    grad_fn = grad_fn_for(bk, mlp, params, e)
    x_host = bk.to_numpy(x)
    assert_hessian(grad_fn, x_host, full, name=f"{form} full")
    assert_hessian(grad_fn, x_host, diag, name=f"{form} diagonal")
    np.testing.assert_allclose(full, np.swapaxes(full, -1, -2), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(diag, np.diagonal(full, axis1=-2, axis2=-1), rtol=1e-12,
                               atol=1e-13)


# ----------------------------------------------------------------------------------------------
# torch.autograd.functional.hessian, float64
# ----------------------------------------------------------------------------------------------
def torch_forward(torch, mlp, params, x):
    act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid,
           "softplus": lambda t: torch.logaddexp(t, torch.zeros_like(t)), "relu": torch.relu,
           "identity": lambda t: t, "silu": torch.nn.functional.silu}[mlp.activation.name]
    tp = {k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}
    h = x
    pre = []
    for name in mlp.hidden_names:
        a = h @ tp[f"{name}.weight"].T + tp[f"{name}.bias"]
        pre.append(a)
        h = act(a)
    o = torch.cat([h @ tp[f"{n}.weight"].T + tp[f"{n}.bias"] for n in mlp.head_names], dim=-1)
    return o, pre


def torch_row_hessians(torch, scalar_of_x, x_host):
    """Per-datum Hessians ``(*B, K, K)`` of a function summed over rows, from the Hessian of the
    whole sum with respect to every input; rows must not interact (checked: off-diagonal blocks
    are zero)."""
    batch = x_host.shape[:-1]
    m = int(np.prod(batch))
    xt = torch.from_numpy(np.ascontiguousarray(x_host).reshape(m, K))
    hess = torch.autograd.functional.hessian(lambda xx: scalar_of_x(xx.reshape(*batch, K)), xt,
                                             vectorize=True)
    hess = hess.numpy()  # (m, K, m, K)
    blocks = np.stack([hess[i, :, i, :] for i in range(m)])
    off = hess.copy()
    for i in range(m):
        off[i, :, i, :] = 0.0
    assert np.abs(off).max() <= 1e-13 * max(1.0, np.abs(blocks).max())
    return blocks.reshape(*batch, K, K)


@pytest.mark.torch
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("form", FORMS)
def test_hessian_against_torch(bk, depth, act, form):
    torch = pytest.importorskip("torch")
    batch = BATCHES["3d"] if form in ("diag", "block2", "full") else BATCHES["2d"]
    mlp, params, x, e = problem(bk, depth, act, form, batch, seed=depth * 7 + len(form))
    full, diag = analytic_hessians(bk, mlp, params, x, e)
    host_params = {k: bk.to_numpy(v) for k, v in params.items()}
    ref = torch_row_hessians(
        torch, lambda xx: e.torch_e(torch, torch_forward(torch, mlp, host_params, xx)[0], batch),
        bk.to_numpy(x))
    rel_close(full, ref, 1e-10, f"{form} full")
    rel_close(diag, np.diagonal(ref, axis1=-2, axis2=-1), 1e-10, f"{form} diagonal")


# ----------------------------------------------------------------------------------------------
# Real surprisals: gaussian (scalar 1/α), bernoulli (diag), gaussian_diag (block2)
# ----------------------------------------------------------------------------------------------
class Surprisal:
    """The emissions of docs/DERIVATIONS.md#emissions with gradient and curvature derived here by
    hand.

    gaussian_diag over (μ_d, s_d), e = ½[(y−μ)² e^{−s} + s + log 2π]:
    ∂e/∂μ = −(y−μ)e^{−s}, ∂e/∂s = ½(1 − (y−μ)² e^{−s}),
    ∂²e/∂μ² = e^{−s}, ∂²e/∂μ∂s = +(y−μ)e^{−s}, ∂²e/∂s² = ½(y−μ)²
    e^{−s}.
    """

    def __init__(self, kind, batch, seed):
        rng = np.random.default_rng(seed)
        self.kind = kind
        self.alpha = 0.7
        if kind == "bernoulli":
            self.y = (rng.random((*batch, P)) < 0.5).astype(float)
        elif kind == "gaussian":
            self.y = rng.standard_normal((*batch, P))
        else:
            self.y = rng.standard_normal((*batch, D))

    @property
    def mlp_form(self):
        return {"gaussian": "diag", "bernoulli": "diag", "gaussian_diag": "block2"}[self.kind]

    def grad_o(self, o):
        if self.kind == "gaussian":
            return (o - self.y) / self.alpha
        if self.kind == "bernoulli":
            return 1.0 / (1.0 + np.exp(-o)) - self.y
        r, es = self.y - o[..., :D], np.exp(-o[..., D:])
        return np.concatenate([-r * es, 0.5 * (1.0 - r * r * es)], axis=-1)

    def curvature_from(self, o):
        if self.kind == "gaussian":
            return 1.0 / self.alpha
        if self.kind == "bernoulli":
            s = 1.0 / (1.0 + np.exp(-o))
            return s * (1.0 - s)
        r, es = self.y - o[..., :D], np.exp(-o[..., D:])
        return np.stack([np.stack([es, r * es], -1), np.stack([r * es, 0.5 * r * r * es], -1)], -2)

    def torch_e(self, torch, o):
        y = torch.from_numpy(self.y)
        if self.kind == "gaussian":
            return ((o - y) ** 2).sum() / (2 * self.alpha)
        if self.kind == "bernoulli":
            return (torch.logaddexp(o, torch.zeros_like(o)) - y * o).sum()
        mu, s = o[..., :D], o[..., D:]
        return 0.5 * ((y - mu) ** 2 * torch.exp(-s) + s + math.log(2 * math.pi)).sum()


@pytest.mark.torch
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("kind", ["gaussian", "bernoulli", "gaussian_diag"])
def test_real_surprisal_hessian_against_torch(np_bk, depth, act, kind):
    torch = pytest.importorskip("torch")
    bk, batch = np_bk, (2, 2)
    mlp = build(depth, act)
    params = random_params(mlp, bk, seed=depth + 50)
    x = 1.2 * np.random.default_rng(depth + 60).standard_normal((*batch, K))
    e = Surprisal(kind, batch, depth + 70)
    o, cache = mlp.forward(bk, params, x)
    back = mlp.backward(bk, params, cache, e.grad_o(o))
    curv = e.curvature_from(o)
    full = mlp.input_hessian(bk, params, cache, back, curv, form=e.mlp_form, full=True)
    diag = mlp.input_hessian(bk, params, cache, back, curv, form=e.mlp_form)
    ref = torch_row_hessians(torch, lambda xx: e.torch_e(torch, torch_forward(torch, mlp, params,
                                                                                xx)[0]), x)
    rel_close(full, ref, 1e-10, f"{kind} full")
    rel_close(diag, np.diagonal(ref, axis1=-2, axis2=-1), 1e-10, f"{kind} diagonal")
    # the input gradient too, through the same surprisal
    xt = torch.tensor(x, requires_grad=True)
    e.torch_e(torch, torch_forward(torch, mlp, params, xt)[0]).backward()
    rel_close(back.d_input, xt.grad.numpy(), 1e-10, f"{kind} input gradient")


# ----------------------------------------------------------------------------------------------
# Jacobians, structure, argument handling
# ----------------------------------------------------------------------------------------------
@pytest.mark.torch
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
def test_input_jacobians_against_torch(np_bk, depth, act):
    torch = pytest.importorskip("torch")
    mlp = build(depth, act)
    params = random_params(mlp, np_bk, seed=depth)
    x = 1.2 * np.random.default_rng(depth + 1).standard_normal((4, K))
    _, cache = mlp.forward(np_bk, params, x)
    jac = mlp.input_jacobians(np_bk, params, cache)
    assert len(jac) == depth + 1
    assert jac[0].shape == ((1, WIDTHS[0], K) if depth else (1, P, K))
    widths = list(WIDTHS[:depth]) + [P]
    for l in range(depth + 1):
        def layer(xx, l=l):
            o, pre = torch_forward(torch, mlp, params, xx[None])
            return (pre + [o])[l][0]
        for m in range(4):
            ref = torch.autograd.functional.jacobian(layer, torch.from_numpy(x[m])).numpy()
            got = jac[l][0 if jac[l].shape[0] == 1 else m]
            assert got.shape == (widths[l], K)
            rel_close(got, ref, 1e-12, f"A_{l + 1} datum {m}")


def test_precomputed_jacobians_give_the_same_hessian(np_bk):
    mlp, params, x, e = problem(np_bk, 2, "tanh", "full", (3,), seed=1)
    o, cache = mlp.forward(np_bk, params, x)
    back = mlp.backward(np_bk, params, cache, e.grad_o(o))
    jac = mlp.input_jacobians(np_bk, params, cache)
    for full in (False, True):
        a = mlp.input_hessian(np_bk, params, cache, back, e.c, form="full", full=full)
        b = mlp.input_hessian(np_bk, params, cache, back, e.c, form="full", full=full,
                              jacobians=jac)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_scalar_curvature_equals_explicit_forms(np_bk, act):
    """A scalar 1/α in 'diag' equals the same curvature written as a vector, as 2×2 blocks, and as
    a full matrix."""
    mlp, params, x, e = problem(np_bk, 3, act, "diag_scalar", (2, 2), seed=3)
    o, cache = mlp.forward(np_bk, params, x)
    back = mlp.backward(np_bk, params, cache, e.grad_o(o))
    c = 1.0 / 0.7
    blocks = np.zeros((D, 2, 2))
    blocks[:, 0, 0] = blocks[:, 1, 1] = c
    variants = [("diag", c), ("diag", np.float64(c)), ("diag", np.full(P, c)),
                ("diag", np.full((2, 2, P), c)), ("block2", blocks), ("full", c * np.eye(P))]
    for full in (False, True):
        ref = mlp.input_hessian(np_bk, params, cache, back, c, form="diag", full=full)
        for form, curv in variants:
            got = mlp.input_hessian(np_bk, params, cache, back, curv, form=form, full=full)
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13, err_msg=f"{form}")


def test_block2_cross_term_matters(np_bk):
    """Zeroing the off-diagonal of the 2×2 blocks changes the Hessian (so the cross term is
    used)."""
    mlp, params, x, e = problem(np_bk, 1, "tanh", "block2", (3,), seed=2)
    o, cache = mlp.forward(np_bk, params, x)
    back = mlp.backward(np_bk, params, cache, e.grad_o(o))
    no_cross = e.c.copy()
    no_cross[..., 0, 1] = no_cross[..., 1, 0] = 0.0
    a = mlp.input_hessian(np_bk, params, cache, back, e.c, form="block2", full=True)
    b = mlp.input_hessian(np_bk, params, cache, back, no_cross, form="block2", full=True)
    assert np.abs(a - b).max() > 1e-3


def test_block2_needs_even_output(np_bk):
    mlp = MLP.build("d", K, [4], [("out", 3)], "tanh")
    params = random_params(mlp, np_bk)
    x = np.zeros((2, K))
    o, cache = mlp.forward(np_bk, params, x)
    back = mlp.backward(np_bk, params, cache, o)
    with pytest.raises(ShapeError, match="even"):
        mlp.input_hessian(np_bk, params, cache, back, np.ones((1, 2, 2)), form="block2")


def test_unknown_curvature_form(np_bk):
    mlp = build(1, "tanh")
    params = random_params(mlp, np_bk)
    x = np.zeros((2, K))
    o, cache = mlp.forward(np_bk, params, x)
    back = mlp.backward(np_bk, params, cache, o)
    with pytest.raises(ValueError, match="unknown curvature form"):
        mlp.input_hessian(np_bk, params, cache, back, 1.0, form="banded")


def test_single_datum_hessian_shapes(np_bk):
    mlp = build(2, "silu")
    params = random_params(mlp, np_bk)
    x = np.array([0.2, -0.4, 1.1])
    o, cache = mlp.forward(np_bk, params, x)
    back = mlp.backward(np_bk, params, cache, o)
    full = mlp.input_hessian(np_bk, params, cache, back, 1.0, full=True)
    diag = mlp.input_hessian(np_bk, params, cache, back, 1.0)
    assert full.shape == (K, K) and diag.shape == (K,)
    o2, cache2 = mlp.forward(np_bk, params, x[None])
    back2 = mlp.backward(np_bk, params, cache2, o2)
    np.testing.assert_allclose(full, mlp.input_hessian(np_bk, params, cache2, back2, 1.0,
                                                       full=True)[0], rtol=1e-14, atol=1e-14)
