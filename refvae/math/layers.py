"""Network layers, each one set of equations: forward, reverse pass and tangent map side by side.

Every layer maps a batch ``x`` of shape ``(M, *in_shape)`` to ``(M, *out_shape)`` and has

* ``forward(bk, p, x) -> (y, cache)``;
* ``backward(bk, p, cache, dy, input_grad=True) -> (grads, dx)``: ``grads`` maps each local
  parameter name to ``∂J/∂param`` summed over the batch; ``dx = ∂J/∂x`` (``None`` when
  ``input_grad`` is false);
* ``jvp(bk, p, cache, t) -> t'``: tangents ``t`` of shape ``(B, K, *in_shape)``, ``B`` = 1 (the
  same for every datum) or ``M``, pushed through the layer's derivative at the cached point.

``p`` is the layer's own dict with local names (``weight``, ``bias``, ``running_mean``, …) in
PyTorch layout; :mod:`refvae.math.sequential` adds the ``{prefix}.{i}.`` of ``nn.Sequential``.
``linear`` marks layers whose second derivative is zero (affine maps, reshapes, average pooling);
max pooling is piecewise linear; only activations contribute curvature
(docs/DERIVATIONS.md#sequential-networks-reverse-pass-jacobians-and-hessians).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from . import conv as C
from .activations import Activation


def uniform_init(noise, bk, shape, fan_in: int):
    """PyTorch's default init for weights and biases: U(±1/√fan_in) (kaiming_uniform, a =
    √5)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return bk.asarray(bound * (2.0 * noise.uniform(shape) - 1.0))


def _per_channel(v, ndim_after: int):
    """A per-channel vector ``(C,)`` shaped to broadcast over ``ndim_after`` spatial axes."""
    return v.reshape(v.shape[0], *([1] * ndim_after))


def _fold(t, shape):
    """Tangents ``(B, K, *shape)`` -> a batch ``(B·K, *shape)`` for a layer's linear map."""
    return t.reshape(t.shape[0] * t.shape[1], *shape)


@dataclass(frozen=True)
class Layer:
    """Base class: a parameter-free identity; subclasses override what they need."""

    in_shape: tuple[int, ...]
    kind: ClassVar[str] = "layer"
    linear: ClassVar[bool] = True

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.in_shape

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def init_params(self, noise, bk) -> dict:
        return {}

    def init_buffers(self, bk) -> dict:
        return {}


# ----- affine maps ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Linear(Layer):
    """``y = W x + b``, ``W`` ``(out, in)`` (docs/DERIVATIONS.md#mlp-reverse-pass)."""

    out_features: int = 1
    bias: bool = True
    kind: ClassVar[str] = "linear"

    @property
    def out_shape(self):
        return (self.out_features,)

    def param_shapes(self):
        shapes = {"weight": (self.out_features, self.in_shape[0])}
        return {**shapes, "bias": (self.out_features,)} if self.bias else shapes

    def init_params(self, noise, bk):
        return {k: uniform_init(noise, bk, s, self.in_shape[0]) for k,
                s in self.param_shapes().items()}

    def forward(self, bk, p, x):
        y = x @ p["weight"].T
        return (y + p["bias"] if self.bias else y), {"x": x}

    def backward(self, bk, p, cache, dy, input_grad=True):
        grads = {"weight": dy.T @ cache["x"]}
        if self.bias:
            grads["bias"] = dy.sum(axis=0)
        return grads, (dy @ p["weight"] if input_grad else None)

    def jvp(self, bk, p, cache, t):
        return t @ p["weight"].T


@dataclass(frozen=True)
class Conv2d(Layer):
    """``y = conv(x; W) + b``, ``W`` ``(out, in, kh, kw)`` (docs/DERIVATIONS.md#convolution)."""

    out_channels: int = 1
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    bias: bool = True
    kind: ClassVar[str] = "conv2d"

    @property
    def out_shape(self):
        hw = [C.conv_out_size(n, k, s, p, d) for n, k, s, p, d in
              zip(self.in_shape[1:], self.kernel_size, self.stride, self.padding, self.dilation)]
        return (self.out_channels, *hw)

    def _geometry(self):
        return self.stride, self.padding, self.dilation

    def param_shapes(self):
        shapes = {"weight": (self.out_channels, self.in_shape[0], *self.kernel_size)}
        return {**shapes, "bias": (self.out_channels,)} if self.bias else shapes

    def init_params(self, noise, bk):
        fan_in = self.in_shape[0] * self.kernel_size[0] * self.kernel_size[1]
        return {k: uniform_init(noise, bk, s, fan_in) for k, s in self.param_shapes().items()}

    def forward(self, bk, p, x):
        y = C.conv2d(bk, x, p["weight"], *self._geometry())
        return (y + _per_channel(p["bias"], 2) if self.bias else y), {"x": x}

    def backward(self, bk, p, cache, dy, input_grad=True):
        grads = {"weight": C.conv2d_weight_grad(bk, cache["x"], dy, self.kernel_size,
                                                *self._geometry())}
        if self.bias:
            grads["bias"] = dy.sum(axis=(0, 2, 3))
        dx = None
        if input_grad:
            dx = C.conv2d_adjoint(bk, dy, p["weight"], self.in_shape[1:], *self._geometry())
        return grads, dx

    def jvp(self, bk, p, cache, t):
        y = C.conv2d(bk, _fold(t, self.in_shape), p["weight"], *self._geometry())
        return y.reshape(*t.shape[:2], *self.out_shape)


@dataclass(frozen=True)
class ConvTranspose2d(Conv2d):
    """``y = conv_Wᵀ(x) + b``, the adjoint of the convolution whose weight is ``W``
    ``(in, out, kh, kw)`` (docs/DERIVATIONS.md#transposed-convolution)."""

    output_padding: tuple[int, int] = (0, 0)
    kind: ClassVar[str] = "conv_transpose2d"

    @property
    def out_shape(self):
        hw = [C.conv_transpose_out_size(n, k, s, p, d, o) for n, k, s, p, d, o in
              zip(self.in_shape[1:], self.kernel_size, self.stride, self.padding, self.dilation,
                  self.output_padding)]
        return (self.out_channels, *hw)

    def param_shapes(self):
        shapes = {"weight": (self.in_shape[0], self.out_channels, *self.kernel_size)}
        return {**shapes, "bias": (self.out_channels,)} if self.bias else shapes

    def init_params(self, noise, bk):
        # PyTorch takes fan_in from the weight's second axis, here the output channels.
        fan_in = self.out_channels * self.kernel_size[0] * self.kernel_size[1]
        return {k: uniform_init(noise, bk, s, fan_in) for k, s in self.param_shapes().items()}

    def forward(self, bk, p, x):
        y = C.conv2d_adjoint(bk, x, p["weight"], self.out_shape[1:], *self._geometry())
        return (y + _per_channel(p["bias"], 2) if self.bias else y), {"x": x}

    def backward(self, bk, p, cache, dy, input_grad=True):
        # y = Aᵀx with A the convolution of weight W: ∂J/∂x = A dy and ∂J/∂W = ∂⟨A dy,
        # x⟩/∂W.
        grads = {"weight": C.conv2d_weight_grad(bk, dy, cache["x"], self.kernel_size,
                                                *self._geometry())}
        if self.bias:
            grads["bias"] = dy.sum(axis=(0, 2, 3))
        dx = None
        if input_grad:
            dx = C.conv2d(bk, dy, p["weight"], *self._geometry(), out_hw=self.in_shape[1:])
        return grads, dx

    def jvp(self, bk, p, cache, t):
        y = C.conv2d_adjoint(bk, _fold(t, self.in_shape), p["weight"], self.out_shape[1:],
                             *self._geometry())
        return y.reshape(*t.shape[:2], *self.out_shape)


# ----- reshaping, pooling, batch normalisation -------------------------------------------------
@dataclass(frozen=True)
class Flatten(Layer):
    """``(C, H, W) -> (C·H·W,)`` in C order, as ``nn.Flatten()``
    (docs/DERIVATIONS.md#reshaping-and-batch-normalisation)."""

    kind: ClassVar[str] = "flatten"

    @property
    def out_shape(self):
        return (math.prod(self.in_shape),)

    def forward(self, bk, p, x):
        return x.reshape(x.shape[0], *self.out_shape), {}

    def backward(self, bk, p, cache, dy, input_grad=True):
        return {}, (dy.reshape(dy.shape[0], *self.in_shape) if input_grad else None)

    def jvp(self, bk, p, cache, t):
        return t.reshape(*t.shape[:2], *self.out_shape)


@dataclass(frozen=True)
class Unflatten(Flatten):
    """``(n,) -> shape`` in C order, as ``nn.Unflatten(1, shape)``
    (docs/DERIVATIONS.md#reshaping-and-batch-normalisation)."""

    shape: tuple[int, ...] = ()
    kind: ClassVar[str] = "unflatten"

    @property
    def out_shape(self):
        return tuple(self.shape)


@dataclass(frozen=True)
class AvgPool2d(Layer):
    """Mean over each window, zero padding counted (docs/DERIVATIONS.md#pooling)."""

    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    kind: ClassVar[str] = "avg_pool2d"

    @property
    def out_shape(self):
        hw = [C.conv_out_size(n, k, s, p, 1) for n, k, s, p in
              zip(self.in_shape[1:], self.kernel_size, self.stride, self.padding)]
        return (self.in_shape[0], *hw)

    def forward(self, bk, p, x):
        return C.avg_pool2d(bk, x, self.kernel_size, self.stride, self.padding), {}

    def backward(self, bk, p, cache, dy, input_grad=True):
        if not input_grad:
            return {}, None
        return {}, C.avg_pool2d_adjoint(bk, dy, self.in_shape[1:], self.kernel_size, self.stride,
                                        self.padding)

    def jvp(self, bk, p, cache, t):
        return C.avg_pool2d(bk, t, self.kernel_size, self.stride, self.padding)


@dataclass(frozen=True)
class MaxPool2d(Layer):
    """Maximum over each window, −∞ padding; piecewise linear (docs/DERIVATIONS.md#pooling)."""

    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    kind: ClassVar[str] = "max_pool2d"
    linear: ClassVar[bool] = False

    @property
    def out_shape(self):
        hw = [C.conv_out_size(n, k, s, p, d) for n, k, s, p, d in
              zip(self.in_shape[1:], self.kernel_size, self.stride, self.padding, self.dilation)]
        return (self.in_shape[0], *hw)

    def _geometry(self):
        return self.kernel_size, self.stride, self.padding, self.dilation

    def forward(self, bk, p, x):
        y, arg = C.max_pool2d(bk, x, *self._geometry())
        return y, {"arg": arg}

    def backward(self, bk, p, cache, dy, input_grad=True):
        if not input_grad:
            return {}, None
        return {}, C.max_pool2d_adjoint(bk, dy, cache["arg"], self.in_shape[1:],
                                        *self._geometry())

    def jvp(self, bk, p, cache, t):
        return C.max_pool2d_gather(bk, t, cache["arg"][:, None], *self._geometry())


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Evaluation-mode batch normalisation, a per-channel affine map:
    ``y = (x − μ)/√(σ² + ε) · γ + β`` on channel axis 1, with the running statistics
    ``μ, σ²`` fixed buffers (docs/DERIVATIONS.md#reshaping-and-batch-normalisation)."""

    eps: float = 1e-5
    kind: ClassVar[str] = "batch_norm"

    def param_shapes(self):
        return {"weight": (self.in_shape[0],), "bias": (self.in_shape[0],)}

    def buffer_shapes(self):
        return {"running_mean": (self.in_shape[0],), "running_var": (self.in_shape[0],)}

    def init_params(self, noise, bk):
        c = self.in_shape[0]
        return {"weight": bk.xp.ones(c, dtype=bk.dtype), "bias": bk.xp.zeros(c, dtype=bk.dtype)}

    def init_buffers(self, bk):
        c = self.in_shape[0]
        return {"running_mean": bk.xp.zeros(c, dtype=bk.dtype),
                "running_var": bk.xp.ones(c, dtype=bk.dtype)}

    def _chan(self, v):
        return _per_channel(v, len(self.in_shape) - 1)

    def _inv_std(self, bk, p):
        return 1.0 / bk.xp.sqrt(p["running_var"] + self.eps)

    def forward(self, bk, p, x):
        xhat = (x - self._chan(p["running_mean"])) * self._chan(self._inv_std(bk, p))
        return xhat * self._chan(p["weight"]) + self._chan(p["bias"]), {"xhat": xhat}

    def backward(self, bk, p, cache, dy, input_grad=True):
        axes = (0, *range(2, dy.ndim))
        grads = {"weight": (dy * cache["xhat"]).sum(axis=axes), "bias": dy.sum(axis=axes)}
        dx = dy * self._chan(p["weight"] * self._inv_std(bk, p)) if input_grad else None
        return grads, dx

    def jvp(self, bk, p, cache, t):
        return t * self._chan(p["weight"] * self._inv_std(bk, p))


@dataclass(frozen=True)
class BatchNorm1d(BatchNorm):
    """``nn.BatchNorm1d`` in ``eval()`` mode: input ``(C,)`` or ``(C, L)``."""

    kind: ClassVar[str] = "batch_norm1d"


@dataclass(frozen=True)
class BatchNorm2d(BatchNorm):
    """``nn.BatchNorm2d`` in ``eval()`` mode: input ``(C, H, W)``."""

    kind: ClassVar[str] = "batch_norm2d"


# ----- elementwise activations ------------------------------------------------------------------
@dataclass(frozen=True)
class ActivationLayer(Layer):
    """``h = φ(a)`` elementwise: ``∂J/∂a = ∂J/∂h ⊙ φ'(a)``, tangents ``φ'(a) ⊙ t``
    (docs/DERIVATIONS.md#activations). ``φ'(a)`` is computed once and kept in the cache."""

    activation: Activation | None = None
    kind: ClassVar[str] = "activation"
    linear: ClassVar[bool] = False

    def forward(self, bk, p, x):
        h = self.activation.value(bk, x)
        return h, {"a": x, "h": h, "d1": None}

    def d1(self, bk, cache):
        if cache["d1"] is None:
            cache["d1"] = self.activation.d1(bk, cache["a"], cache["h"])
        return cache["d1"]

    def d2(self, bk, cache):
        return self.activation.d2(bk, cache["a"], cache["h"])

    def backward(self, bk, p, cache, dy, input_grad=True):
        return {}, (dy * self.d1(bk, cache) if input_grad else None)

    def jvp(self, bk, p, cache, t):
        return self.d1(bk, cache)[:, None] * t
