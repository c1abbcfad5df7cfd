"""Each layer of refvae.math.layers, and the new activations, against PyTorch in float64.

A one-layer :class:`~refvae.math.sequential.Sequential` (no heads) is built from a JSON spec and
its PyTorch twin (``tests/torch_layers.py``) loads refvae's parameters with ``load_state_dict``
(strict): output, every parameter gradient and the input gradient for a random upstream vector
agree to 1e-10 relative, and so does the input Jacobian with ``torch.autograd.functional.jacobian``.
The transposed convolution is checked as the adjoint of the convolution for random geometries.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refvae.backend import NoiseSource
from refvae.errors import ConfigError
from refvae.math import layers as L
from refvae.math.activations import ACTIVATIONS, get_activation, make_activation
from refvae.math.sequential import Sequential
from torch_layers import Twin, assert_reverse_pass_matches_torch, random_params, rel

TOL = 1e-10
ACT_NAMES = ["tanh", "sigmoid", "softplus", "relu", "identity", "silu", "gelu", "elu",
             "leaky_relu"]
CASES = {
    "linear": ([{"type": "linear", "out_features": 4}], (3,)),
    "linear_no_bias": ([{"type": "linear", "out_features": 2, "bias": False}], (5,)),
    "conv2d": ([{"type": "conv2d", "out_channels": 3, "kernel_size": 3}], (2, 5, 6)),
    "conv2d_strided": ([{"type": "conv2d", "out_channels": 3, "kernel_size": [3, 2],
                         "stride": 2, "padding": 1, "dilation": [1, 2]}], (2, 7, 6)),
    "conv2d_dilated": ([{"type": "conv2d", "out_channels": 2, "kernel_size": 2, "stride": [1, 3],
                         "padding": [2, 0], "dilation": 2, "bias": False}], (3, 5, 7)),
    "conv_transpose2d": ([{"type": "conv_transpose2d", "out_channels": 3, "kernel_size": 3}],
                         (2, 3, 4)),
    "conv_transpose2d_output_padding": ([{"type": "conv_transpose2d", "out_channels": 2,
                                          "kernel_size": 4, "stride": 2, "padding": 1,
                                          "output_padding": 1}], (3, 3, 3)),
    "conv_transpose2d_dilated": ([{"type": "convtranspose2d", "out_channels": 2,
                                   "kernel_size": [3, 2], "stride": [1, 2], "padding": [1, 0],
                                   "dilation": [2, 1], "output_padding": [1, 1]}], (2, 3, 4)),
    "flatten": ([{"type": "flatten"}], (2, 3, 2)),
    "unflatten": ([{"type": "unflatten", "shape": [3, 2, 2]}], (12,)),
    "max_pool2d": ([{"type": "max_pool2d", "kernel_size": 2}], (2, 4, 6)),
    "max_pool2d_overlapping": ([{"type": "maxpool2d", "kernel_size": 3, "stride": [1, 2],
                                 "padding": 1, "dilation": [1, 2]}], (2, 6, 7)),
    "avg_pool2d": ([{"type": "avg_pool2d", "kernel_size": [2, 3], "stride": [1, 2],
                     "padding": 1}], (2, 5, 6)),
    "batch_norm2d": ([{"type": "batch_norm2d", "eps": 1e-3}], (3, 4, 2)),
    "batch_norm1d": ([{"type": "batchnorm1d"}], (5,)),
    "batch_norm1d_length": ([{"type": "batch_norm1d"}], (3, 4)),
    **{f"act_{a}": ([{"type": a}], (2, 3, 4)) for a in ACT_NAMES},
    "act_leaky_relu_0.2": ([{"type": "leaky_relu", "negative_slope": 0.2}], (7,)),
    "act_elu_0.7": ([{"type": "elu", "alpha": 0.7}], (7,)),
}


def _net_and_params(bk, name, seed=0):
    spec, in_shape = CASES[name]
    net = Sequential.build("net", in_shape, spec)
    return net, random_params(net, bk, seed)


@pytest.mark.parametrize("name", list(CASES))
def test_layer_against_torch(np_bk, name):
    torch = pytest.importorskip("torch")
    net, params = _net_and_params(np_bk, name)
    o, _, _, back = assert_reverse_pass_matches_torch(torch, np_bk, net, params, 1, TOL)
    assert o.shape == (2, 3, net.out_dim)
    assert list(back.grads) == list(net.param_shapes())


@pytest.mark.parametrize("name", list(CASES))
def test_layer_jacobian_against_torch(np_bk, name):
    torch = pytest.importorskip("torch")
    net, params = _net_and_params(np_bk, name, seed=2)
    x = np.random.default_rng(3).standard_normal((2, *net.in_shape))
    _, cache = net.forward(np_bk, params, x)
    jac = net.input_jacobians(np_bk, params, cache)
    assert len(jac) == len(net.layers) + 1
    twin = Twin(torch, net, params)
    for m in range(2):
        ref = torch.autograd.functional.jacobian(
            lambda v: twin(v.reshape(1, *net.in_shape)).reshape(-1),
            torch.tensor(x[m].ravel())).numpy()
        got = jac[-1][min(m, jac[-1].shape[0] - 1)]
        assert got.shape == ref.shape
        assert rel(got, ref) <= TOL


# ----- the transposed convolution is the adjoint of the convolution ----------------------------
geometry = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=st.integers(1, 3), o=st.integers(1, 3),
       size=st.tuples(st.integers(1, 8), st.integers(1, 8)), gh=geometry, gw=geometry,
       seed=st.integers(0, 2**16))
def test_transposed_convolution_is_the_adjoint(np_bk, c, o, size, gh, gw, seed):
    """⟨conv(x), y⟩ = ⟨x, conv_T(y)⟩ with the same weight, for every geometry whose output
    is not empty; the transposed convolution with output padding (H + 2p − d(k − 1) − 1) mod s
    restores the input size exactly."""
    (kh, sh, ph, dh), (kw, sw, pw, dw) = gh, gw
    conv = L.Conv2d((c, *size), o, (kh, kw), (sh, sw), (ph, pw), (dh, dw), bias=False)
    if min(conv.out_shape) < 1:
        return
    op = tuple((n + 2 * p - d * (k - 1) - 1) % s
               for n, k, s, p, d in zip(size, (kh, kw), (sh, sw), (ph, pw), (dh, dw)))
    conv_t = L.ConvTranspose2d(conv.out_shape, c, (kh, kw), (sh, sw), (ph, pw), (dh, dw),
                               bias=False, output_padding=op)
    assert conv_t.out_shape == (c, *size)
    rng = np.random.default_rng(seed)
    w = {"weight": rng.standard_normal((o, c, kh, kw))}
    x = rng.standard_normal((2, c, *size))
    y = rng.standard_normal((2, *conv.out_shape))
    cx, _ = conv.forward(np_bk, w, x)
    ty, _ = conv_t.forward(np_bk, w, y)
    lhs, rhs = float(np.sum(cx * y)), float(np.sum(x * ty))
    assert abs(lhs - rhs) <= 1e-12 * (np.sum(np.abs(cx * y)) + 1.0)
    # and the conv's input gradient is the transposed conv's forward map
    _, dx = conv.backward(np_bk, w, {"x": x}, y)
    assert rel(dx, ty) <= 1e-13


# ----- PyTorch default initialisation ----------------------------------------------------------
@pytest.mark.parametrize("name", ["linear", "conv2d_strided", "conv_transpose2d_output_padding",
                                  "batch_norm2d"])
def test_init_matches_pytorch_default(np_bk, name):
    torch = pytest.importorskip("torch")
    from torch_layers import torch_module

    spec, in_shape = CASES[name]
    net = Sequential.build("net", in_shape, spec)
    params = net.init_params(NoiseSource(0), np_bk)
    buffers = net.init_buffers(np_bk)
    module = torch_module(torch, net.layers[0])
    sd = module.state_dict()
    for k, v in {**params, **buffers}.items():
        ref = sd[k.split(".", 2)[2]]
        assert v.shape == tuple(ref.shape), k
    if isinstance(net.layers[0], L.BatchNorm):
        for k, v in {**params, **buffers}.items():
            np.testing.assert_array_equal(v, sd[k.split(".", 2)[2]].numpy())
        return
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
    for k, v in params.items():
        bound = 1.0 / math.sqrt(fan_in)
        assert np.max(np.abs(v)) <= bound and np.max(np.abs(v)) > 0.5 * bound, k


# ----- the new activations -----------------------------------------------------------------------
NEW = {"gelu": {}, "elu": {}, "elu_0.7": {"alpha": 0.7}, "leaky_relu": {},
       "leaky_relu_0.2": {"negative_slope": 0.2}}


def _act(key):
    return make_activation(key.split("_0")[0] if "_0" in key else key, **NEW[key])


def _torch_act(torch, act):
    F = torch.nn.functional
    p = dict(act.params)
    return {"gelu": lambda t: F.gelu(t), "elu": lambda t: F.elu(t, p.get("alpha", 1.0)),
            "leaky_relu": lambda t: F.leaky_relu(t, p.get("negative_slope", 0.01))}[act.name]


@pytest.mark.parametrize("key", list(NEW))
def test_new_activations_against_torch_double_backward(np_bk, key):
    torch = pytest.importorskip("torch")
    act = _act(key)
    a = np.concatenate([np.linspace(-6.0, 6.0, 41), [0.0, -0.0, 1e-9, -1e-9, -30.0, 30.0]])
    h = act.value(np_bk, a)
    t = torch.tensor(a, requires_grad=True)
    y = _torch_act(torch, act)(t)
    (g,) = torch.autograd.grad(y.sum(), t, create_graph=True)
    g2 = torch.autograd.grad(g.sum(), t)[0] if g.requires_grad else torch.zeros_like(t)
    np.testing.assert_allclose(h, y.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(act.d1(np_bk, a, h), g.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(act.d2(np_bk, a, h), g2.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("key", list(NEW))
def test_new_activations_against_central_differences(np_bk, key):
    act = _act(key)
    a = np.array([-4.0, -1.3, -0.4, 0.3, 0.9, 2.5, 5.0])     # away from the kink at 0
    eps = 1e-6
    h = act.value(np_bk, a)
    num1 = (act.value(np_bk, a + eps) - act.value(np_bk, a - eps)) / (2 * eps)
    num2 = (act.d1(np_bk, a + eps, None) - act.d1(np_bk, a - eps, None)) / (2 * eps)
    np.testing.assert_allclose(act.d1(np_bk, a, h), num1, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(act.d2(np_bk, a, h), num2, rtol=1e-7, atol=1e-8)


def test_new_activation_flags_and_registry():
    gelu, elu, leaky = (make_activation(n) for n in ("gelu", "elu", "leaky_relu"))
    assert gelu.twice_differentiable and not gelu.piecewise_linear
    assert not elu.twice_differentiable and not elu.piecewise_linear
    assert not leaky.twice_differentiable and leaky.piecewise_linear
    assert dict(leaky.params) == {"negative_slope": 0.01} and dict(elu.params) == {"alpha": 1.0}
    assert sorted(ACTIVATIONS) == sorted(["tanh", "sigmoid", "softplus", "relu", "identity",
                                          "silu"])          # the MLP's choices are unchanged
    assert make_activation("tanh") is get_activation("tanh")
    for bad, kw in (("swish", {}), ("gelu", {"approximate": "tanh"}), ("relu", {"alpha": 1})):
        with pytest.raises(ConfigError) as info:
            make_activation(bad, **kw)
        assert "\n" not in str(info.value)


def test_kinks_follow_pytorch_at_zero(np_bk):
    z = np.array([0.0])
    assert make_activation("elu", alpha=0.7).d1(np_bk, z, None)[0] == 0.7
    assert make_activation("leaky_relu", negative_slope=0.2).d1(np_bk, z, None)[0] == 0.2
    assert make_activation("elu").d2(np_bk, z, None)[0] == 0.0        # PyTorch's double backward
