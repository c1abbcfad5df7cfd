"""Sequential networks (refvae.math.sequential) against PyTorch float64 and central differences.

Whole networks (convolutions, pooling, batch norm, activations, heads) against their PyTorch twin:
output, parameter and input gradients, input Jacobians and — for smooth networks — the exact
input Hessian of ``f(x) = e(o(x))`` with ``e(o) = g·o + ½ oᵀ C o`` in each curvature form,
against ``torch.autograd.functional.hessian``; then central differences, the layer-list parser's
errors, and the same numbers on every backend (NumPy, the strict CuPy stand-in, CuPy).
"""
import numpy as np
import pytest

from refvae.errors import ConfigError, ShapeError
from refvae.math.sequential import Sequential, build_layers
from torch_layers import Twin, assert_reverse_pass_matches_torch, random_params, rel

TOL = 1e-10
HEADS = [("mean", 3), ("logvar", 3)]
NETS = {
    "encoder": ((1, 6, 5), HEADS, [
        {"type": "conv2d", "out_channels": 3, "kernel_size": 3, "stride": 1, "padding": 1},
        {"type": "batch_norm2d"}, {"type": "relu"},
        {"type": "max_pool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 2, "kernel_size": 2, "dilation": [1, 1]},
        {"type": "leaky_relu", "negative_slope": 0.2}, {"type": "flatten"},
        {"type": "linear", "out_features": 5}, {"type": "elu"}]),
    "decoder": ((3,), (), [
        {"type": "linear", "out_features": 8}, {"type": "gelu"},
        {"type": "unflatten", "shape": [2, 2, 2]},
        {"type": "conv_transpose2d", "out_channels": 2, "kernel_size": 3, "stride": 2,
         "padding": 1, "output_padding": 1}, {"type": "batch_norm2d"}, {"type": "silu"},
        {"type": "avg_pool2d", "kernel_size": 2, "stride": 1},
        {"type": "conv_transpose2d", "out_channels": 1, "kernel_size": 2}, {"type": "flatten"}]),
    "smooth_conv": ((1, 4, 4), HEADS, [
        {"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1, "stride": 2},
        {"type": "tanh"}, {"type": "conv2d", "out_channels": 2, "kernel_size": 2},
        {"type": "softplus"}, {"type": "flatten"}, {"type": "linear", "out_features": 4},
        {"type": "gelu"}, {"type": "silu"}]),
    "smooth_decoder": ((2,), [("out", 4)], [
        {"type": "linear", "out_features": 4}, {"type": "tanh"},
        {"type": "unflatten", "shape": [1, 2, 2]},
        {"type": "conv_transpose2d", "out_channels": 2, "kernel_size": 2, "stride": 2},
        {"type": "gelu"}, {"type": "avg_pool2d", "kernel_size": 2}, {"type": "flatten"},
        {"type": "linear", "out_features": 3}, {"type": "sigmoid"}]),
}
SMOOTH = ["smooth_conv", "smooth_decoder"]


def build(bk, name, seed=0):
    in_shape, heads, spec = NETS[name]
    net = Sequential.build("dec", in_shape, spec, heads)
    return net, random_params(net, bk, seed)


@pytest.mark.parametrize("name", list(NETS))
def test_network_against_torch(np_bk, name):
    torch = pytest.importorskip("torch")
    net, params = build(np_bk, name)
    o, cache, d_out, _ = assert_reverse_pass_matches_torch(torch, np_bk, net, params, 4, TOL)
    if net.heads:
        parts = net.split_heads(o)
        assert list(parts) == [h for h, _ in net.heads]
        assert [v.shape for v in parts.values()] == [(2, 3, d) for _, d in net.heads]
    assert net.backward(np_bk, params, cache, d_out, input_grad=False).d_input is None


@pytest.mark.parametrize("name", list(NETS))
def test_input_jacobians_against_torch(np_bk, name):
    torch = pytest.importorskip("torch")
    net, params = build(np_bk, name, seed=1)
    x = np.random.default_rng(5).standard_normal((3, *net.in_shape))
    _, cache = net.forward(np_bk, params, x)
    jac = net.input_jacobians(np_bk, params, cache)
    assert len(jac) == len(net.layers) + 1 + bool(net.heads)
    twin = Twin(torch, net, params)
    for m in range(3):
        ref = torch.autograd.functional.jacobian(
            lambda v: twin(v.reshape(1, *net.in_shape)).reshape(-1),
            torch.tensor(x[m].ravel())).numpy()
        assert rel(jac[-1][min(m, jac[-1].shape[0] - 1)], ref) <= TOL


class Quadratic:
    """``e(o) = g·o + ½ oᵀ C o`` per datum, ``C`` given in one of the curvature forms."""

    def __init__(self, form, m, p, seed):
        rng = np.random.default_rng(seed)
        self.form, self.g = form, rng.standard_normal((m, p))
        if form == "diag":
            self.c = rng.uniform(-1.0, 2.0, (m, p))
            self.dense = self.c[:, :, None] * np.eye(p)
        elif form == "block2":
            b = rng.standard_normal((m, p // 2, 2, 2))
            self.c = b + np.swapaxes(b, -1, -2)
            d = p // 2
            self.dense = np.zeros((m, p, p))
            for i in range(d):
                for r in range(2):
                    for s in range(2):
                        self.dense[:, i + r * d, i + s * d] = self.c[:, i, r, s]
        else:
            c = rng.standard_normal((m, p, p))
            self.c = self.dense = c + np.swapaxes(c, -1, -2)

    def grad(self, o):
        return self.g + np.einsum("mpq,mq->mp", self.dense, o)


@pytest.mark.parametrize("form", ["diag", "block2", "full"])
@pytest.mark.parametrize("name", SMOOTH)
def test_hessian_against_torch(np_bk, name, form):
    torch = pytest.importorskip("torch")
    net, params = build(np_bk, name, seed=2)
    assert net.twice_differentiable
    m = 2
    x = np.random.default_rng(6).standard_normal((m, *net.in_shape))
    o, cache = net.forward(np_bk, params, x)
    e = Quadratic(form, m, net.out_dim, seed=7)
    back = net.backward(np_bk, params, cache, e.grad(o))
    full = net.input_hessian(np_bk, params, cache, back, e.c, form=form, full=True)
    diag = net.input_hessian(np_bk, params, cache, back, e.c, form=form)
    twin = Twin(torch, net, params)
    for i in range(m):
        g, c = torch.tensor(e.g[i]), torch.tensor(e.dense[i])

        def f(v):
            out = twin(v.reshape(1, *net.in_shape))[0]
            return g @ out + 0.5 * out @ c @ out
        ref = torch.autograd.functional.hessian(f, torch.tensor(x[i].ravel())).numpy()
        assert rel(full[i], ref) <= TOL
        assert rel(diag[i], np.diag(ref)) <= TOL


@pytest.mark.parametrize("name", SMOOTH)
def test_hessian_and_gradient_against_central_differences(np_bk, name):
    """The input gradient against differences of f, the Hessian against differences of the
    analytic input gradient (both exact to O(h²) for these smooth networks)."""
    net, params = build(np_bk, name, seed=3)
    x = np.random.default_rng(8).standard_normal((1, *net.in_shape))
    e = Quadratic("full", 1, net.out_dim, seed=9)

    def f_and_grad(v):
        o, cache = net.forward(np_bk, params, v)
        back = net.backward(np_bk, params, cache, e.grad(o))
        return float(e.g[0] @ o[0] + 0.5 * o[0] @ e.dense[0] @ o[0]), back, cache

    _, back, cache = f_and_grad(x)
    hess = net.input_hessian(np_bk, params, cache, back, e.c, form="full", full=True)[0]
    k, h = x.size, 1e-5
    for j in range(k):
        step = np.zeros(k)
        step[j] = h
        fp, bp, _ = f_and_grad(x + step.reshape(x.shape))
        fm, bm, _ = f_and_grad(x - step.reshape(x.shape))
        assert abs((fp - fm) / (2 * h) - back.d_input.ravel()[j]) <= 1e-7 * (1 + abs(fp))
        col = (bp.d_input - bm.d_input).ravel() / (2 * h)
        np.testing.assert_allclose(hess[:, j], col, rtol=1e-6, atol=1e-7)
    # parameter gradients, a few entries of every tensor
    for key, g in back.grads.items():
        flat = np.asarray(params[key]).ravel()
        for idx in range(0, flat.size, max(1, flat.size // 3)):
            old = flat[idx]
            flat[idx] = old + h
            fp = f_and_grad(x)[0]
            flat[idx] = old - h
            fm = f_and_grad(x)[0]
            flat[idx] = old
            assert abs((fp - fm) / (2 * h) - g.ravel()[idx]) <= 1e-7 * (1 + abs(fp)), key


def test_same_numbers_on_every_backend(bk, np_bk):
    """Forward, reverse pass and Hessian on this backend equal NumPy's (strict CuPy stand-in:
    every operation is one CuPy supports)."""
    results = []
    for b in (np_bk, bk):
        net, params = build(b, "smooth_decoder", seed=4)
        x = b.asarray(np.random.default_rng(10).standard_normal((2, 2, *net.in_shape)))
        o, cache = net.forward(b, params, x)
        back = net.backward(b, params, cache, o)
        hess = net.input_hessian(b, params, cache, back, 1.0)
        results.append([b.to_numpy(a) for a in (o, back.d_input, hess,
                                                *back.grads.values())])
    for got, ref in zip(results[1], results[0]):
        assert rel(got, ref) <= 1e-12
    net, params = build(bk, "encoder", seed=4)
    x = bk.asarray(np.random.default_rng(11).standard_normal((2, *net.in_shape)))
    o, cache = net.forward(bk, params, x)
    net.backward(bk, params, cache, o)
    net.input_jacobians(bk, params, cache)


def test_twice_differentiable_flags():
    assert not Sequential.build("e", NETS["encoder"][0], NETS["encoder"][2]).twice_differentiable
    for spec in ([{"type": "max_pool2d", "kernel_size": 2}], [{"type": "elu"}],
                 [{"type": "leaky_relu"}], [{"type": "relu"}]):
        assert not Sequential.build("n", (1, 2, 2), spec).twice_differentiable
    for spec in ([{"type": "avg_pool2d", "kernel_size": 2}], [{"type": "gelu"}],
                 [{"type": "batch_norm2d"}, {"type": "silu"}], []):
        assert Sequential.build("n", (1, 2, 2), spec).twice_differentiable


def test_parameter_names_are_nn_sequential_indices(np_bk):
    net = Sequential.build("encoder", (1, 6, 5), NETS["encoder"][2], HEADS)
    assert list(net.param_shapes()) == [
        "encoder.0.weight", "encoder.0.bias", "encoder.1.weight", "encoder.1.bias",
        "encoder.4.weight", "encoder.4.bias", "encoder.7.weight", "encoder.7.bias",
        "encoder.mean.weight", "encoder.mean.bias", "encoder.logvar.weight", "encoder.logvar.bias"]
    assert list(net.buffer_shapes()) == ["encoder.1.running_mean", "encoder.1.running_var"]
    assert net.out_dim == 6
    assert Sequential.build("d", NETS["decoder"][0], NETS["decoder"][2]).out_dim == 16


BAD = [
    ({"type": "conv2d", "kernel_size": 3}, "layer 1 (conv2d): out_channels: missing"),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "stride": 0}, "stride"),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": [3, 3, 3]}, "kernel_size"),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "groups": 2}, "groups"),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "in_channels": 3}, "in_channels"),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 9}, "output shape"),
    ({"type": "conv2d", "out_channels": True, "kernel_size": 3}, "out_channels"),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "strides": 2}, "strides"),
    ({"type": "conv_transpose2d", "out_channels": 2, "kernel_size": 3, "output_padding": 1},
     "output_padding"),
    ({"type": "linear", "out_features": 3}, "flatten"),
    ({"type": "max_pool2d", "kernel_size": 2, "padding": 2}, "padding"),
    ({"type": "max_pool2d", "kernel_size": 2, "ceil_mode": True}, "ceil_mode"),
    ({"type": "avg_pool2d", "kernel_size": 2, "count_include_pad": False}, "count_include_pad"),
    ({"type": "batch_norm2d", "training": True}, "batch statistics couple the rows"),
    ({"type": "batch_norm2d", "track_running_stats": False}, "track_running_stats"),
    ({"type": "batch_norm2d", "eps": 0}, "eps"),
    ({"type": "batch_norm1d"}, "batch_norm1d"),
    ({"type": "unflatten", "shape": [2, 2]}, "shape"),
    ({"type": "leaky_relu", "negative_slope": "x"}, "negative_slope"),
    ({"type": "relu", "alpha": 1.0}, "alpha"),
    ({"type": "gelu", "approximate": "tanh"}, "approximate"),
    ({"type": "lstm"}, "unknown layer type"),
    ({"kind": "relu"}, "type"),
    ("relu", "object"),
]


@pytest.mark.parametrize("entry,needle", BAD)
def test_bad_layer_fields_are_one_line_config_errors(entry, needle):
    spec = [{"type": "tanh"}, entry]
    with pytest.raises(ConfigError) as info:
        build_layers(spec, (1, 4, 4))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("layer 1") and needle in msg, msg


@pytest.mark.parametrize("spec,shape", [("conv2d", (1, 4, 4)), ([], (0, 3)), ([], "x")])
def test_bad_list_or_input_shape(spec, shape):
    with pytest.raises(ConfigError):
        build_layers(spec, shape)


def test_build_checks_the_chain_and_the_heads():
    from refvae.math.layers import Flatten, Linear

    with pytest.raises(ShapeError, match="layer 1"):
        Sequential.build("n", (4,), [Linear((4,), 3), Linear((4,), 2)])
    with pytest.raises(ConfigError, match="flatten"):
        Sequential.build("n", (1, 2, 2), [{"type": "tanh"}], HEADS)
    net = Sequential.build("n", (1, 2, 2), [Flatten((1, 2, 2))], HEADS)
    assert net.param_shapes()["n.mean.weight"] == (3, 4)
    with pytest.raises(ShapeError):
        net.forward(None, {}, np.zeros((2, 4)))
