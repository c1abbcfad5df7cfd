"""The PyTorch twin of a refvae :class:`~refvae.math.sequential.Sequential`, for witness tests.

:func:`torch_twin` builds ``nn.Sequential`` from the layers' hyperparameters (never from refvae's
code) and loads refvae's parameters and buffers with ``load_state_dict(strict=True)``, so the names
and shapes must be exactly those of PyTorch; the heads become one ``nn.Linear`` on the stacked rows.
"""
import numpy as np

from refvae.math import layers as L


def torch_module(torch, layer):
    nn = torch.nn
    if isinstance(layer, L.Linear):
        return nn.Linear(layer.in_shape[0], layer.out_features, bias=layer.bias)
    if isinstance(layer, L.ConvTranspose2d):
        return nn.ConvTranspose2d(layer.in_shape[0], layer.out_channels, layer.kernel_size,
                                  layer.stride, layer.padding, layer.output_padding,
                                  bias=layer.bias, dilation=layer.dilation)
    if isinstance(layer, L.Conv2d):
        return nn.Conv2d(layer.in_shape[0], layer.out_channels, layer.kernel_size, layer.stride,
                         layer.padding, layer.dilation, bias=layer.bias)
    if isinstance(layer, L.Unflatten):
        return nn.Unflatten(1, layer.shape)
    if isinstance(layer, L.Flatten):
        return nn.Flatten()
    if isinstance(layer, L.MaxPool2d):
        return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    if isinstance(layer, L.AvgPool2d):
        return nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, L.BatchNorm2d):
        return nn.BatchNorm2d(layer.in_shape[0], eps=layer.eps)
    if isinstance(layer, L.BatchNorm1d):
        return nn.BatchNorm1d(layer.in_shape[0], eps=layer.eps)
    if isinstance(layer, L.ActivationLayer):
        name, params = layer.activation.name, dict(layer.activation.params)
        if name == "leaky_relu":
            return nn.LeakyReLU(params["negative_slope"])
        if name == "elu":
            return nn.ELU(params["alpha"])
        return {"tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "softplus": nn.Softplus(),
                "relu": nn.ReLU(), "identity": nn.Identity(), "silu": nn.SiLU(),
                "gelu": nn.GELU()}[name]
    raise AssertionError(layer)


class Twin:
    """``body`` (``nn.Sequential``) and, with heads, ``head`` (one ``nn.Linear``), in float64 and
    evaluation mode, holding the parameters of ``net``."""

    def __init__(self, torch, net, params):
        self.torch, self.net = torch, net
        self.body = torch.nn.Sequential(*[torch_module(torch, lay) for lay in net.layers]).double()
        sd = self.body.state_dict()
        n = len(net.prefix) + 1
        mine = {k[n:]: torch.tensor(np.asarray(params[k]))
                for k in (*net.param_shapes(), *net.buffer_shapes())
                if not any(k.startswith(h + ".") for h in net.head_names)}
        mine.update({k: v for k, v in sd.items() if k.endswith("num_batches_tracked")})
        self.body.load_state_dict(mine, strict=True)
        self.body.eval()
        self.head = None
        if net.heads:
            self.head = torch.nn.Linear(net.body_shape[0], net.out_dim).double()
            w = np.concatenate([np.asarray(params[f"{h}.weight"]) for h in net.head_names])
            b = np.concatenate([np.asarray(params[f"{h}.bias"]) for h in net.head_names])
            self.head.load_state_dict({"weight": torch.tensor(w), "bias": torch.tensor(b)})

    def __call__(self, x):
        """``x`` ``(M, *in_shape)`` -> ``(M, P)``."""
        z = self.body(x)
        return self.head(z) if self.head is not None else z.reshape(z.shape[0], -1)

    def grads(self, net):
        """Parameter gradients after ``backward``, under refvae's names."""
        out = {}
        for k in net.param_shapes():
            head = [h for h in net.head_names if k.startswith(h + ".")]
            if head:
                continue
            out[k] = self.body.get_parameter(k[len(net.prefix) + 1:]).grad.numpy()
        if self.head is not None:
            start = 0
            for h, (_, d) in zip(net.head_names, net.heads):
                out[f"{h}.weight"] = self.head.weight.grad.numpy()[start:start + d]
                out[f"{h}.bias"] = self.head.bias.grad.numpy()[start:start + d]
                start += d
        return out


def rel(a, b) -> float:
    """max |a − b| / max |b| (0 when both vanish)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.max(np.abs(b)) if b.size else 0.0
    return float(np.max(np.abs(a - b)) / scale) if scale > 0 else float(np.max(np.abs(a)))


def random_params(net, bk, seed=0):
    """Standard-normal-ish parameters (scaled by 1/√fan_in) and positive running variances."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in net.param_shapes().items():
        fan = int(np.prod(s[1:])) if len(s) > 1 else 1
        out[k] = bk.asarray(1.2 * rng.standard_normal(s) / np.sqrt(fan))
    for k, s in net.buffer_shapes().items():
        v = rng.uniform(0.3, 2.0, s) if k.endswith("running_var") else 0.3 * rng.standard_normal(s)
        out[k] = bk.asarray(v)
    return out


def assert_reverse_pass_matches_torch(torch, bk, net, params, seed, tol):
    """``net``'s forward and reverse pass at a random ``(2, 3, *in_shape)`` input and upstream
    vector against its PyTorch twin: output, input gradient and every parameter gradient within
    ``tol`` (relative). Returns ``(o, cache, d_out, back)`` for further checks."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, *net.in_shape))
    o, cache = net.forward(bk, params, x)
    d_out = rng.standard_normal(o.shape)
    back = net.backward(bk, params, cache, d_out)
    twin = Twin(torch, net, params)
    xt = torch.tensor(x.reshape(6, *net.in_shape), requires_grad=True)
    ot = twin(xt)
    (ot * torch.tensor(d_out.reshape(6, -1))).sum().backward()
    assert rel(o.reshape(6, -1), ot.detach().numpy()) <= tol
    assert rel(back.d_input.reshape(6, *net.in_shape), xt.grad.numpy()) <= tol
    ref = twin.grads(net)
    assert list(back.grads) == list(ref)
    for k, g in back.grads.items():
        assert g.shape == net.param_shapes()[k]
        assert rel(g, ref[k]) <= tol, k
    return o, cache, d_out, back
