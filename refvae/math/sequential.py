"""A network as a sequence of layers with named linear output heads, like :class:`MLP`.

docs/DERIVATIONS.md#sequential-networks-reverse-pass-jacobians-and-hessians: layers
``z_{i+1} = F_i(z_i)``, ``z_0 = x``, ``i = 0..n−1`` (:mod:`refvae.math.layers`), then, when heads
are given, ``o = W z_n + b`` with ``W`` the heads' weights stacked by rows; without heads ``o`` is
``z_n`` flattened. Parameters are named as the ``state_dict`` of ``nn.Sequential``:
``{prefix}.{i}.weight`` for layer ``i`` and ``{prefix}.{head}.weight`` for each head. Inputs may
have any leading batch shape ``(..., *in_shape)``; outputs are ``(..., P)``.

The layer list comes from :func:`build_layers` (a JSON list of layer objects, see
:mod:`refvae.math.layer_spec`) or from :mod:`refvae.math.layers` objects directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError, ShapeError
from .layer_spec import parse_layer, shape_error
from .layers import ActivationLayer, Layer, MaxPool2d, uniform_init
from .mlp import bilinear, output_curvature, split_heads, stacked_heads


def build_layers(spec: list[dict], in_shape) -> list[Layer]:
    """Layers from a JSON list such as ``[{"type": "conv2d", "out_channels": 32,
    "kernel_size": 4, "stride": 2, "padding": 1}, {"type": "relu"}, {"type": "flatten"}]``,
    each input size taken from the layer before; any bad entry is a one-line
    :class:`~refvae.errors.ConfigError` naming the layer index and field
    (docs/DERIVATIONS.md#sequential-networks-reverse-pass-jacobians-and-hessians)."""
    if not isinstance(spec, (list, tuple)):
        raise ConfigError(f"layers must be a list of layer objects, got {type(spec).__name__}")
    try:
        shape = tuple(int(n) for n in in_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input shape must be a list of positive integers, got {in_shape!r}") \
            from None
    if not shape or min(shape) < 1:
        raise ConfigError(f"input shape must be a list of positive integers, got {in_shape!r}")
    layers = []
    for i, entry in enumerate(spec):
        layer = parse_layer(i, entry, shape)
        if min(layer.out_shape) < 1:
            raise shape_error(i, layer.kind, f"output shape {layer.out_shape} from input "
                              f"{shape} is empty (kernel larger than the padded input?)")
        layers.append(layer)
        shape = layer.out_shape
    return layers


@dataclass(frozen=True)
class Sequential:
    """Architecture of one network; parameters (and batch-norm buffers) live outside, in a flat
    ``state_dict``-style dict that :meth:`forward` reads."""

    prefix: str
    in_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    heads: tuple[tuple[str, int], ...] = ()

    @classmethod
    def build(cls, prefix: str, in_shape, layers, heads=()) -> "Sequential":
        """``layers`` is a JSON-style list (see :func:`build_layers`) or a list of layers."""
        in_shape = tuple(int(n) for n in in_shape)
        if all(isinstance(layer, Layer) for layer in layers):
            layers = tuple(layers)
        else:
            layers = tuple(build_layers(layers, in_shape))
        shape = in_shape
        for i, layer in enumerate(layers):
            if tuple(layer.in_shape) != shape:
                raise ShapeError(f"{prefix}: layer {i} ({layer.kind}) takes input shape "
                                 f"{tuple(layer.in_shape)}, the layer before gives {shape}")
            shape = tuple(layer.out_shape)
        heads = tuple((str(n), int(d)) for n, d in heads)
        if heads and len(shape) != 1:
            raise ConfigError(f"{prefix}: output heads need a vector, the last layer gives shape "
                              f"{shape}; end the layers with a flatten")
        return cls(prefix, in_shape, layers, heads)

    # ----- layout ---------------------------------------------------------------------------
    @property
    def body_shape(self) -> tuple[int, ...]:
        """Shape of ``z_n``, the last layer's output (the input shape with no layers)."""
        return tuple(self.layers[-1].out_shape) if self.layers else self.in_shape

    @property
    def out_dim(self) -> int:
        return sum(d for _, d in self.heads) if self.heads else math.prod(self.body_shape)

    @property
    def twice_differentiable(self) -> bool:
        """False when a layer is max pooling or an activation that is not C²."""
        def smooth(layer):
            if isinstance(layer, ActivationLayer):
                return layer.activation.twice_differentiable
            return not isinstance(layer, MaxPool2d)
        return all(smooth(layer) for layer in self.layers)

    @property
    def head_names(self) -> list[str]:
        return [f"{self.prefix}.{n}" for n, _ in self.heads]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Trainable tensors in ``state_dict`` order (layers by index, then the heads)."""
        shapes = {f"{self.prefix}.{i}.{k}": s for i, layer in enumerate(self.layers)
                  for k, s in layer.param_shapes().items()}
        width = self.body_shape[0]
        for name, (_, d) in zip(self.head_names, self.heads):
            shapes[f"{name}.weight"] = (d, width)
            shapes[f"{name}.bias"] = (d,)
        return shapes

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Fixed buffers (batch norm's running statistics): read by :meth:`forward`, never
        given a gradient or trained."""
        return {f"{self.prefix}.{i}.{k}": s for i, layer in enumerate(self.layers)
                for k, s in layer.buffer_shapes().items()}

    def init_params(self, noise, bk) -> dict:
        """PyTorch's default initialisation of each layer type, then the heads (``nn.Linear``)."""
        params = {}
        for i, layer in enumerate(self.layers):
            params.update({f"{self.prefix}.{i}.{k}": v
                           for k, v in layer.init_params(noise, bk).items()})
        for name, (_, d) in zip(self.head_names, self.heads):
            params[f"{name}.weight"] = uniform_init(noise, bk, (d, self.body_shape[0]),
                                                self.body_shape[0])
            params[f"{name}.bias"] = uniform_init(noise, bk, (d,), self.body_shape[0])
        return params

    def init_buffers(self, bk) -> dict:
        """Running mean 0 and variance 1, as a fresh ``nn.BatchNorm``."""
        return {f"{self.prefix}.{i}.{k}": v for i, layer in enumerate(self.layers)
                for k, v in layer.init_buffers(bk).items()}

    def _local(self, params, i: int) -> dict:
        layer = self.layers[i]
        return {k: params[f"{self.prefix}.{i}.{k}"]
                for k in (*layer.param_shapes(), *layer.buffer_shapes())}

    def _out_weight(self, bk, params):
        return stacked_heads(bk, params, self.head_names)

    def split_heads(self, o) -> dict:
        """Concatenated output ``(..., P)`` -> ``{head: (..., d_head)}`` (views)."""
        if not self.heads:
            raise ShapeError(f"{self.prefix}: a network without heads has nothing to split")
        return split_heads(o, self.heads)

    # ----- forward and reverse pass ---------------------------------------------------------
    def forward(self, bk, params, x):
        """``o`` for input ``x`` of shape ``(..., *in_shape)``; returns ``(o, cache)``.
        ``params`` holds the parameters and the buffers
        (docs/DERIVATIONS.md#sequential-networks-reverse-pass-jacobians-and-hessians)."""
        nd = len(self.in_shape)
        if tuple(x.shape[x.ndim - nd:]) != self.in_shape or x.ndim < nd:
            raise ShapeError(f"{self.prefix}: input has shape {tuple(x.shape)}, expected "
                             f"(..., {', '.join(map(str, self.in_shape))})")
        lead = x.shape[:x.ndim - nd]
        z = x.reshape(-1, *self.in_shape)
        caches = []
        for i, layer in enumerate(self.layers):
            z, c = layer.forward(bk, self._local(params, i), z)
            caches.append(c)
        m = z.shape[0]
        cache = {"lead": lead, "m": m, "layers": caches, "w_out": None}
        if self.heads:
            w_out, b_out = self._out_weight(bk, params)
            cache.update(body=z, w_out=w_out)
            o = z @ w_out.T + b_out
        else:
            o = z.reshape(m, -1)
        return o.reshape(*lead, self.out_dim), cache

    def backward(self, bk, params, cache, d_out, input_grad: bool = True) -> "SequentialBackward":
        """Reverse pass for ``d_out = ∂J/∂o`` of shape ``(..., P)``: each layer's ``backward``
        in reverse order; parameter gradients summed over every leading batch dimension
        (docs/DERIVATIONS.md#sequential-networks-reverse-pass-jacobians-and-hessians)."""
        m = cache["m"]
        delta = d_out.reshape(-1, self.out_dim)
        if delta.shape[0] != m:
            raise ShapeError(f"{self.prefix}: upstream gradient has shape {tuple(d_out.shape)}, "
                             f"expected {(*cache['lead'], self.out_dim)}")
        grads: dict = {}
        if self.heads:
            g_w, g_b = delta.T @ cache["body"], delta.sum(axis=0)
            start = 0
            for name, (_, width) in zip(self.head_names, self.heads):
                grads[f"{name}.weight"] = g_w[start:start + width]
                grads[f"{name}.bias"] = g_b[start:start + width]
                start += width
            delta = delta @ cache["w_out"]
        g = delta.reshape(m, *self.body_shape)
        upstream = [None] * len(self.layers)
        for i in range(len(self.layers) - 1, -1, -1):
            upstream[i] = g.reshape(m, -1)
            layer_grads, g = self.layers[i].backward(bk, self._local(params, i),
                                                     cache["layers"][i], g, input_grad or i > 0)
            grads.update({f"{self.prefix}.{i}.{k}": v for k, v in layer_grads.items()})
        d_input = g.reshape(*cache["lead"], *self.in_shape) if input_grad else None
        return SequentialBackward({k: grads[k] for k in self.param_shapes()}, d_input, upstream)

    # ----- forward-mode Jacobians and the input Hessian -------------------------------------
    def input_jacobians(self, bk, params, cache) -> list:
        """``J_i = ∂z_i/∂x`` for ``i = 0..n`` (``z_0 = x``, ``z_i`` the input of layer ``i``,
        ``z_n`` the last layer's output), then ``∂o/∂x`` when there are heads: the last entry is
        always ``∂o/∂x``. Shapes ``(B, size_i, K)`` as the MLP's, ``B = 1`` until a layer makes
        the Jacobian depend on the datum. Each layer's ``jvp`` pushes all ``K`` input directions."""
        xp = bk.xp
        k = math.prod(self.in_shape)
        t = xp.eye(k, dtype=bk.dtype).reshape(1, k, *self.in_shape)
        tangents = [t]
        for i, layer in enumerate(self.layers):
            t = layer.jvp(bk, self._local(params, i), cache["layers"][i], t)
            tangents.append(t)
        jac = [tt.reshape(tt.shape[0], k, -1).transpose(0, 2, 1) for tt in tangents]
        if self.heads:
            jac.append(cache["w_out"] @ jac[-1])
        return jac

    def input_hessian(self, bk, params, cache, back: "SequentialBackward", curvature,
                      form: str = "diag", full: bool = False, jacobians=None):
        """Exact Hessian ``∂²f/∂x∂xᵀ`` of ``f = e(o(x))``:
        ``H = J_oᵀ C J_o + Σ_{activation layers i} J_iᵀ diag(u_i ⊙ φ''(z_i)) J_i``
        with ``u_i = ∂f/∂z_{i+1}`` from :meth:`backward`; linear layers and max pooling add
        nothing. ``curvature`` and ``form`` (``"diag"``, ``"block2"``, ``"full"``) and the return
        (diagonal ``(..., K)`` or, with ``full``, ``(..., K, K)``) are as
        :meth:`refvae.math.mlp.MLP.input_hessian`
        (docs/DERIVATIONS.md#sequential-networks-reverse-pass-jacobians-and-hessians)."""
        lead, m = cache["lead"], cache["m"]
        jac = self.input_jacobians(bk, params, cache) if jacobians is None else jacobians
        hess = output_curvature(bk, jac[-1], curvature, form, full, lead, m, self.prefix)
        for i, layer in enumerate(self.layers):
            if isinstance(layer, ActivationLayer) and not layer.activation.piecewise_linear:
                c = cache["layers"][i]
                w = back.upstream[i] * layer.d2(bk, c).reshape(m, -1)
                hess = hess + bilinear(bk, jac[i], jac[i], w, full)
        k = math.prod(self.in_shape)
        return hess.reshape(*lead, k, k) if full else hess.reshape(*lead, k)


@dataclass
class SequentialBackward:
    """Result of :meth:`Sequential.backward`: parameter gradients (``param_shapes`` order; buffers
    get none), ``∂f/∂x`` (or ``None``), and ``upstream[i] = ∂f/∂z_{i+1}``, the gradient with
    respect to layer ``i``'s output, flattened to ``(M, size)`` (used by the Hessian)."""

    grads: dict
    d_input: object
    upstream: list = field(default_factory=list)
