"""MLP (refvae.math.mlp): layout, initialisation, forward pass, parameter and input gradients.

Gradients are checked two independent ways: central differences through ``refvae.gradcheck``
(every entry) and PyTorch autograd in float64 on the same parameters, loaded into a torch module
whose ``state_dict`` must accept refvae's names and shapes unchanged (``nn.Linear`` layout).

The scalar is ``e(o) = Σ r⊙o + ½ Σ q⊙o²`` summed over the batch, so
``∂e/∂o = r + q⊙o`` depends on the output (a wrong forward pass shows up in the gradient too).
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refvae.backend import NoiseSource, get_backend
from strict_cupy import DEVICE_ULPS
from refvae.errors import ConfigError, ShapeError
from refvae.gradcheck import assert_gradients
from refvae.math.mlp import MLP, MLPBackward

ACTS = ["tanh", "sigmoid", "softplus", "relu", "identity", "silu"]
WIDTHS = (4, 3, 5)  # hidden widths used for depth 1..3
IN = 3
HEADS = {1: [("out", 2)], 2: [("out", 2), ("logvar", 3)]}
BATCH = {"2d": (4,), "3d": (2, 3)}


def build(depth, act, n_heads, prefix="decoder", in_dim=IN):
    return MLP.build(prefix, in_dim, WIDTHS[:depth], HEADS[n_heads], act)


def random_params(mlp, bk, seed=0, scale=1.5):
    """Gaussian parameters, weights with sd ``scale/√fan_in`` and biases with sd 0.5: larger than
    the default init, so pre-activations are O(1) and every activation works away from its linear
    regime, while the loss stays O(10) (central differences lose ε·|f|/h to rounding)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in mlp.param_shapes().items():
        sd = scale / math.sqrt(s[1]) if len(s) == 2 else 0.5
        out[k] = bk.asarray(sd * rng.standard_normal(s))
    return out


def make_problem(mlp, bk, batch, seed=1):
    rng = np.random.default_rng(seed)
    x = bk.asarray(1.2 * rng.standard_normal((*batch, mlp.in_dim)))
    r = bk.asarray(rng.standard_normal((*batch, mlp.out_dim)))
    q = bk.asarray(rng.uniform(0.2, 1.0, (*batch, mlp.out_dim)))
    return x, r, q


def loss_value(bk, mlp, params, x, r, q):
    o, _ = mlp.forward(bk, params, x)
    return bk.to_float((r * o + 0.5 * q * o * o).sum())


def analytic(bk, mlp, params, x, r, q):
    o, cache = mlp.forward(bk, params, x)
    return mlp.backward(bk, params, cache, r + q * o)


def rel_close(got, ref, rtol, what=""):
    """Entrywise ``|got − ref| ≤ rtol·(|ref| + max|ref|)``: relative at the tensor's scale."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


# ----------------------------------------------------------------------------------------------
# Layout and names
# ----------------------------------------------------------------------------------------------
def test_param_shapes_names_and_order():
    mlp = MLP.build("decoder", 3, [4, 5], [("out", 2), ("logvar", 6)], "tanh")
    shapes = mlp.param_shapes()
    assert list(shapes.items()) == [
        ("decoder.0.weight", (4, 3)), ("decoder.0.bias", (4,)),
        ("decoder.1.weight", (5, 4)), ("decoder.1.bias", (5,)),
        ("decoder.out.weight", (2, 5)), ("decoder.out.bias", (2,)),
        ("decoder.logvar.weight", (6, 5)), ("decoder.logvar.bias", (6,)),
    ]
    assert mlp.out_dim == 8
    assert mlp.hidden_names == ["decoder.0", "decoder.1"]
    assert mlp.head_names == ["decoder.out", "decoder.logvar"]


def test_depth_zero_is_affine_heads_only():
    mlp = MLP.build("enc", 7, [], [("mean", 2), ("logvar", 2)], "relu")
    assert list(mlp.param_shapes().items()) == [
        ("enc.mean.weight", (2, 7)), ("enc.mean.bias", (2,)),
        ("enc.logvar.weight", (2, 7)), ("enc.logvar.bias", (2,))]


def test_build_accepts_activation_object_and_rejects_unknown():
    from refvae.math.activations import get_activation

    mlp = MLP.build("m", 2, (3,), (("o", 1),), get_activation("silu"))
    assert mlp.activation.name == "silu"
    with pytest.raises(ConfigError):
        MLP.build("m", 2, (3,), (("o", 1),), "swish")


def _torch_module(torch, mlp):
    """A torch module with the same structure: ``{prefix}`` is a ModuleDict of nn.Linear layers
    named ``0, 1, …`` and by head, so its state_dict keys are refvae's parameter names."""
    act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid,
           "softplus": lambda t: torch.logaddexp(t, torch.zeros_like(t)), "relu": torch.relu,
           "identity": lambda t: t, "silu": torch.nn.functional.silu}[mlp.activation.name]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layers, fan = {}, mlp.in_dim
            for i, w in enumerate(mlp.hidden):
                layers[str(i)] = torch.nn.Linear(fan, w)
                fan = w
            for name, w in mlp.heads:
                layers[name] = torch.nn.Linear(fan, w)
            setattr(self, mlp.prefix, torch.nn.ModuleDict(layers))

        def forward(self, x):
            layers = getattr(self, mlp.prefix)
            h = x
            for i in range(len(mlp.hidden)):
                h = act(layers[str(i)](h))
            return torch.cat([layers[name](h) for name, _ in mlp.heads], dim=-1)

    return Net().double()


def _load(torch, mlp, bk, params):
    net = _torch_module(torch, mlp)
    # strict=True: every name must exist and every shape must match nn.Linear's (out, in) layout
    net.load_state_dict({k: torch.from_numpy(np.array(bk.to_numpy(v))) for k, v in params.items()},
                        strict=True)
    return net


@pytest.mark.torch
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("n_heads", [1, 2])
def test_state_dict_matches_pytorch(depth, n_heads):
    torch = pytest.importorskip("torch")
    mlp = build(depth, "tanh", n_heads)
    net = _torch_module(torch, mlp)
    sd = net.state_dict()
    assert list(sd) == list(mlp.param_shapes())
    assert {k: tuple(v.shape) for k, v in sd.items()} == mlp.param_shapes()


# ----------------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------------
def test_init_bounds_fill_the_range_and_are_uniform():
    """U(±1/√fan_in) for weights and biases (PyTorch's nn.Linear default)."""
    from scipy import stats

    bk = get_backend("numpy", "float64")
    mlp = MLP.build("d", 16, [400], [("out", 300)], "tanh")
    params = mlp.init_params(NoiseSource(123), bk)
    for name, fan_in in (("d.0.weight", 16), ("d.0.bias", 16), ("d.out.weight", 400),
                         ("d.out.bias", 400)):
        v = params[name].ravel()
        b = 1.0 / math.sqrt(fan_in)
        assert params[name].dtype == np.float64
        assert np.all(np.abs(v) <= b), name
        n = v.size
        # The extremes of n uniforms sit within b·O(1/n) of the bounds. P(no draw above edge·b)
        # = (1 − (1 − edge)/2)^n: for the weights (n ≥ 6400, edge 0.99) 0.995^6400 ≈ 1e-14;
        # for the biases (n = 300, 400; edge 0.9) 0.95^300 ≈ 2e-7. The seed is fixed, so this only
        # documents that a correct initialiser passes for essentially any seed.
        edge = 0.9 if n < 1000 else 0.99
        assert v.max() > edge * b and v.min() < -edge * b, name
        # Mean 0 and variance b²/3, each within 5 standard errors (sd of the mean b/√(3n);
        # sd of the sample variance of U(−b, b) is b²·√(4/45/n)).
        assert abs(v.mean()) < 5 * b / math.sqrt(3 * n), name
        assert abs(v.var() - b * b / 3) < 5 * b * b * math.sqrt(4 / 45 / n), name
        # And the shape of the distribution: Kolmogorov–Smirnov against U(−b, b).
        assert stats.kstest(v, stats.uniform(loc=-b, scale=2 * b).cdf).pvalue > 1e-4, name


def test_init_same_seed_same_params_different_seed_different():
    bk = get_backend("numpy", "float64")
    mlp = build(2, "tanh", 2)
    p1 = mlp.init_params(NoiseSource(7), bk)
    p2 = mlp.init_params(NoiseSource(7), bk)
    p3 = mlp.init_params(NoiseSource(8), bk)
    assert list(p1) == list(mlp.param_shapes())
    for k in p1:
        assert p1[k].shape == mlp.param_shapes()[k]
        np.testing.assert_array_equal(p1[k], p2[k])
        assert not np.array_equal(p1[k], p3[k])


@pytest.mark.torch
def test_init_bound_matches_pytorch_default():
    """PyTorch's kaiming_uniform_(a=√5) weight bound is exactly 1/√fan_in; compare the observed
    ranges of a torch nn.Linear and refvae's init for the same fan-in."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lin = torch.nn.Linear(25, 2000)
    b = 1.0 / math.sqrt(25)
    w_t, b_t = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    assert np.abs(w_t).max() <= b and np.abs(b_t).max() <= b
    assert np.abs(w_t).max() > 0.999 * b
    mlp = MLP.build("m", 25, [], [("o", 2000)], "tanh")
    w = mlp.init_params(NoiseSource(0), get_backend("numpy"))["m.o.weight"]
    assert np.abs(w).max() <= b and np.abs(w).max() > 0.999 * b


# ----------------------------------------------------------------------------------------------
# Forward pass
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
def test_forward_matches_explicit_numpy(np_bk, depth, act):
    from refvae.math.activations import get_activation

    mlp = build(depth, act, 2)
    params = random_params(mlp, np_bk)
    x, _, _ = make_problem(mlp, np_bk, (2, 3))
    o, cache = mlp.forward(np_bk, params, x)
    assert o.shape == (2, 3, mlp.out_dim)
    h = x.reshape(-1, IN)
    phi = get_activation(act)
    for i in range(depth):
        h = phi.value(np_bk, np.einsum("oi,mi->mo", params[f"decoder.{i}.weight"], h)
                      + params[f"decoder.{i}.bias"])
    heads = [np.einsum("oi,mi->mo", params[f"decoder.{n}.weight"], h) + params[f"decoder.{n}.bias"]
             for n, _ in HEADS[2]]
    np.testing.assert_allclose(o.reshape(-1, mlp.out_dim), np.concatenate(heads, axis=1),
                               rtol=1e-13, atol=1e-13)
    split = mlp.split_heads(o)
    assert list(split) == ["out", "logvar"]
    assert split["out"].shape == (2, 3, 2) and split["logvar"].shape == (2, 3, 3)
    np.testing.assert_array_equal(np.concatenate([split["out"], split["logvar"]], -1), o)


def test_wrong_input_dim_is_shape_error(np_bk):
    mlp = build(1, "tanh", 1)
    params = random_params(mlp, np_bk)
    with pytest.raises(ShapeError, match="expected 3"):
        mlp.forward(np_bk, params, np_bk.asarray(np.zeros((4, 2))))


def test_wrong_upstream_shape_is_shape_error(np_bk):
    mlp = build(1, "tanh", 1)
    params = random_params(mlp, np_bk)
    o, cache = mlp.forward(np_bk, params, np_bk.asarray(np.zeros((4, IN))))
    with pytest.raises(ShapeError):
        mlp.backward(np_bk, params, cache, np_bk.asarray(np.zeros((5, mlp.out_dim))))


def test_single_datum_without_batch_dims(np_bk):
    mlp = build(2, "tanh", 1)
    params = random_params(mlp, np_bk)
    x = np_bk.asarray([0.3, -0.2, 0.9])
    o, cache = mlp.forward(np_bk, params, x)
    assert o.shape == (mlp.out_dim,)
    back = mlp.backward(np_bk, params, cache, np_bk.asarray(np.ones(mlp.out_dim)))
    assert back.d_input.shape == (IN,)
    o2, _ = mlp.forward(np_bk, params, x[None])
    np.testing.assert_allclose(o, o2[0], rtol=1e-14, atol=1e-15)


# ----------------------------------------------------------------------------------------------
# Gradients against finite differences (refvae.gradcheck)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("batch", list(BATCH))
@pytest.mark.parametrize("n_heads", [1, 2])
def test_gradients_against_finite_differences(bk, depth, act, batch, n_heads):
    mlp = build(depth, act, n_heads)
    params = random_params(mlp, bk, seed=depth + 10 * n_heads)
    x, r, q = make_problem(mlp, bk, BATCH[batch], seed=depth + 3)
    back = analytic(bk, mlp, params, x, r, q)
    assert isinstance(back, MLPBackward)
    assert list(back.grads) == list(mlp.param_shapes())  # state_dict order
    for k, s in mlp.param_shapes().items():
        assert back.grads[k].shape == s, k
    if act == "relu":  # central differences across a kink are meaningless: stay 1e-4 away
        _, cache = mlp.forward(bk, params, x)
        assert all(float(bk.xp.abs(a).min()) > 1e-4 for a in cache["a"])
    # parameter gradients, every entry. On a GPU each evaluation of the loss rounds its exp/tanh up
    # to DEVICE_ULPS differently, which the central difference turns into ~1e-8 absolute noise.
    tol = {} if bk.name == "numpy" else {"atol": DEVICE_ULPS * 2e-8}
    assert_gradients(lambda p: loss_value(bk, mlp, p, x, r, q), params, back.grads, **tol)
    # input gradient, every entry
    assert back.d_input.shape == x.shape
    assert_gradients(lambda d: loss_value(bk, mlp, params, d["x"], r, q), {"x": x},
                     {"x": back.d_input})
    # upstream u_l = ∂f/∂h_l, one per hidden layer, (M, width_l)
    assert len(back.upstream) == depth
    for u, w in zip(back.upstream, WIDTHS):
        assert u.shape == (math.prod(BATCH[batch]), w)


def test_input_grad_false_skips_input_gradient(np_bk):
    mlp = build(2, "tanh", 2)
    params = random_params(mlp, np_bk)
    x, r, q = make_problem(mlp, np_bk, (4,))
    o, cache = mlp.forward(np_bk, params, x)
    full = mlp.backward(np_bk, params, cache, r + q * o)
    o, cache = mlp.forward(np_bk, params, x)
    enc = mlp.backward(np_bk, params, cache, r + q * o, input_grad=False)
    assert enc.d_input is None
    for k in full.grads:
        np.testing.assert_array_equal(enc.grads[k], full.grads[k])


def test_parameter_gradients_sum_over_all_batch_dims(np_bk):
    """Gradients for a (N, L, in) batch equal the sum of per-datum gradients."""
    mlp = build(2, "softplus", 2)
    params = random_params(mlp, np_bk, seed=4)
    x, r, q = make_problem(mlp, np_bk, (2, 3), seed=5)
    total = analytic(np_bk, mlp, params, x, r, q).grads
    acc = {k: np.zeros(s) for k, s in mlp.param_shapes().items()}
    for i in range(2):
        for j in range(3):
            g = analytic(np_bk, mlp, params, x[i, j], r[i, j], q[i, j]).grads
            for k in acc:
                acc[k] += g[k]
    for k in acc:
        np.testing.assert_allclose(total[k], acc[k], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Gradients against PyTorch autograd (float64)
# ----------------------------------------------------------------------------------------------
def _torch_grads(torch, mlp, bk, params, x, r, q):
    net = _load(torch, mlp, bk, params)
    xt = torch.tensor(bk.to_numpy(x), requires_grad=True)
    o = net(xt)
    rt, qt = torch.from_numpy(bk.to_numpy(r)), torch.from_numpy(bk.to_numpy(q))
    loss = (rt * o + 0.5 * qt * o * o).sum()
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in net.named_parameters()}
    return o.detach().numpy(), grads, xt.grad.numpy()


@pytest.mark.torch
@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("batch", list(BATCH))
@pytest.mark.parametrize("n_heads", [1, 2])
def test_gradients_against_torch(bk, depth, act, batch, n_heads):
    torch = pytest.importorskip("torch")
    mlp = build(depth, act, n_heads)
    params = random_params(mlp, bk, seed=depth + 10 * n_heads)
    x, r, q = make_problem(mlp, bk, BATCH[batch], seed=depth + 3)
    o, _ = mlp.forward(bk, params, x)
    back = analytic(bk, mlp, params, x, r, q)
    o_t, g_t, dx_t = _torch_grads(torch, mlp, bk, params, x, r, q)
    rel_close(bk.to_numpy(o), o_t, 1e-12, "output")
    assert list(g_t) == list(back.grads)  # named_parameters order == refvae's order
    for k in g_t:
        rel_close(bk.to_numpy(back.grads[k]), g_t[k], 1e-10, k)
    rel_close(bk.to_numpy(back.d_input), dx_t, 1e-10, "input gradient")


@pytest.mark.torch
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(0, 3), act=st.sampled_from(ACTS), n_heads=st.sampled_from([1, 2]),
       widths=st.lists(st.integers(1, 6), min_size=3, max_size=3),
       in_dim=st.integers(1, 4), n=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_random_architectures_against_torch(np_bk, depth, act, n_heads, widths, in_dim, n, seed):
    torch = pytest.importorskip("torch")
    mlp = MLP.build("m", in_dim, widths[:depth], HEADS[n_heads], act)
    params = random_params(mlp, np_bk, seed=seed)
    x, r, q = make_problem(mlp, np_bk, (n,), seed=seed + 1)
    back = analytic(np_bk, mlp, params, x, r, q)
    _, g_t, dx_t = _torch_grads(torch, mlp, np_bk, params, x, r, q)
    for k in g_t:
        rel_close(back.grads[k], g_t[k], 1e-10, k)
    rel_close(back.d_input, dx_t, 1e-10, "input gradient")


@pytest.mark.torch
@pytest.mark.parametrize("act", ACTS)
def test_default_init_forward_matches_torch(act):
    """With the library's own initialisation (not just hand-made parameters)."""
    torch = pytest.importorskip("torch")
    bk = get_backend("numpy", "float64")
    mlp = MLP.build("encoder", 5, [8, 6], [("mean", 2), ("logvar", 2)], act)
    params = mlp.init_params(NoiseSource(3), bk)
    x = NoiseSource(4).normal((6, 5), bk)
    o, _ = mlp.forward(bk, params, x)
    net = _load(torch, mlp, bk, params)
    rel_close(o, net(torch.from_numpy(x)).detach().numpy(), 1e-12, "output")
