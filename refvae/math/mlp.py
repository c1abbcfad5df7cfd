"""A multilayer perceptron with hand-derived reverse pass, input Jacobians and exact input Hessian.

Notation of docs/DERIVATIONS.md#mlp-reverse-pass: layers
``l = 1..L`` in PyTorch ``nn.Linear`` layout (``W_l`` is ``(out, in)``), ``h_0 = x``,
``a_l = W_l h_{l−1} + b_l``, ``h_l = φ(a_l)`` for ``l < L``, linear output ``o = a_L``.

The output layer may be made of several named *heads* (``encoder.mean`` and ``encoder.logvar``,
``decoder.out`` and ``decoder.logvar``); they are the row blocks of one output matrix, so ``o`` is
their concatenation in the order given. Inputs may have any leading batch shape ``(..., in)``:
computation runs on the flattened ``(M, in)`` view and results are reshaped back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ShapeError
from .activations import Activation, get_activation

CURVATURE_FORMS = ("diag", "block2", "full")


@dataclass(frozen=True)
class MLP:
    """Architecture of one MLP; parameters live outside, in a flat ``state_dict``-style dict.

    Parameters are named ``{prefix}.{i}.weight|bias`` for hidden layer ``i = 0, 1, …`` and
    ``{prefix}.{head}.weight|bias`` for each output head.
    """

    prefix: str
    in_dim: int
    hidden: tuple[int, ...]
    heads: tuple[tuple[str, int], ...]
    activation: Activation

    @classmethod
    def build(cls, prefix: str, in_dim: int, hidden, heads, activation: str | Activation) -> "MLP":
        act = activation if isinstance(activation, Activation) else get_activation(activation)
        return cls(prefix, int(in_dim), tuple(int(h) for h in hidden),
                   tuple((str(n), int(d)) for n, d in heads), act)

    # ----- parameter layout -----------------------------------------------------------------
    @property
    def out_dim(self) -> int:
        return sum(d for _, d in self.heads)

    @property
    def twice_differentiable(self) -> bool:
        """Whether the map input -> output is C² (no hidden layer, or a C² activation)."""
        return not self.hidden or self.activation.twice_differentiable

    @property
    def hidden_names(self) -> list[str]:
        return [f"{self.prefix}.{i}" for i in range(len(self.hidden))]

    @property
    def head_names(self) -> list[str]:
        return [f"{self.prefix}.{n}" for n, _ in self.heads]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes in ``state_dict`` order (weights ``(out, in)``)."""
        shapes: dict[str, tuple[int, ...]] = {}
        fan_in = self.in_dim
        for name, width in zip(self.hidden_names, self.hidden):
            shapes[f"{name}.weight"] = (width, fan_in)
            shapes[f"{name}.bias"] = (width,)
            fan_in = width
        for name, (_, width) in zip(self.head_names, self.heads):
            shapes[f"{name}.weight"] = (width, fan_in)
            shapes[f"{name}.bias"] = (width,)
        return shapes

    def init_params(self, noise, bk) -> dict:
        """PyTorch's default ``nn.Linear`` initialisation: weight and bias ~ U(±1/√fan_in)."""
        params = {}
        for name, shape in self.param_shapes().items():
            fan_in = self.param_shapes()[name.rsplit(".", 1)[0] + ".weight"][1]
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            params[name] = bk.asarray(bound * (2.0 * noise.uniform(shape) - 1.0))
        return params

    def _out_weight(self, bk, params):
        return stacked_heads(bk, params, self.head_names)

    def split_heads(self, o) -> dict:
        return split_heads(o, self.heads)

    # ----- forward --------------------------------------------------------------------------
    def forward(self, bk, params, x):
        """``o = a_L`` for input ``x`` of shape ``(..., in)``
        (docs/DERIVATIONS.md#mlp-reverse-pass); returns ``(o, cache)``.

        The cache keeps ``h_0 = x`` and each hidden layer's ``a_l`` and ``h_l`` (flattened to 2-D).
        """
        if x.shape[-1] != self.in_dim:
            raise ShapeError(f"{self.prefix}: input has last dimension {x.shape[-1]}, "
                             f"expected {self.in_dim}")
        lead = x.shape[:-1]
        h = x.reshape(-1, self.in_dim)
        hs, pre = [h], []
        for name in self.hidden_names:
            a = h @ params[f"{name}.weight"].T
            a += params[f"{name}.bias"]
            h = self.activation.value(bk, a)
            pre.append(a)
            hs.append(h)
        w_out, b_out = self._out_weight(bk, params)
        o = h @ w_out.T
        o += b_out
        cache = {"lead": lead, "h": hs, "a": pre, "dphi": [None] * len(pre), "w_out": w_out}
        return o.reshape(*lead, self.out_dim), cache

    def _dphi(self, bk, cache, l):
        """φ'(a_l), computed once per forward pass and kept in the cache."""
        if cache["dphi"][l] is None:
            cache["dphi"][l] = self.activation.d1(bk, cache["a"][l], cache["h"][l + 1])
        return cache["dphi"][l]

    # ----- reverse pass ---------------------------------------------------------------------
    def backward(self, bk, params, cache, d_out, input_grad: bool = True) -> "MLPBackward":
        """Reverse pass for the upstream gradient ``d_out = ∂f/∂o`` of shape ``(..., P)``.

        docs/DERIVATIONS.md#mlp-reverse-pass: ``δ_L = ∂e/∂o``; ``u_l = W_{l+1}ᵀ δ_{l+1}`` (=
        ∂f/∂h_l); ``δ_l = u_l ⊙ φ'(a_l)``; ``g = W_1ᵀ δ_1``. Parameter gradients are
        summed over every leading batch dimension. ``input_grad=False`` skips the last product
        (encoders).
        """
        delta = d_out.reshape(-1, self.out_dim)
        if delta.shape[0] != cache["h"][0].shape[0]:
            raise ShapeError(f"{self.prefix}: upstream gradient has shape {tuple(d_out.shape)}, "
                             f"expected {(*cache['lead'], self.out_dim)}")
        grads: dict = {}
        hs = cache["h"]
        g_w = delta.T @ hs[-1]
        g_b = delta.sum(axis=0)
        start = 0
        for name, (_, width) in zip(self.head_names, self.heads):
            grads[f"{name}.weight"] = g_w[start:start + width]
            grads[f"{name}.bias"] = g_b[start:start + width]
            start += width
        upstream = [None] * len(self.hidden)
        w_above = cache["w_out"]
        for l in range(len(self.hidden) - 1, -1, -1):
            u = delta @ w_above
            upstream[l] = u
            delta = u * self._dphi(bk, cache, l)
            name = self.hidden_names[l]
            grads[f"{name}.weight"] = delta.T @ hs[l]
            grads[f"{name}.bias"] = delta.sum(axis=0)
            w_above = params[f"{name}.weight"]
        d_input = None
        if input_grad:
            d_input = (delta @ w_above).reshape(*cache["lead"], self.in_dim)
        ordered = {k: grads[k] for k in self.param_shapes()}
        return MLPBackward(ordered, d_input, upstream)

    # ----- forward-mode Jacobians and the input Hessian -------------------------------------
    def input_jacobians(self, bk, params, cache) -> list:
        """``A_l = ∂a_l/∂x`` for every layer, output last: ``A_1 = W_1``,
        ``A_l = W_l diag(φ'(a_{l−1})) A_{l−1}`` (docs/DERIVATIONS.md#mlp-input-jacobians).

        Shapes ``(M, out_l, in)``; ``A_1`` is ``(1, out_1, in)`` (the same for every datum).
        Cost: about ``in`` forward passes.
        """
        weights = [params[f"{n}.weight"] for n in self.hidden_names] + [cache["w_out"]]
        jac = [weights[0][None]]
        for l in range(1, len(weights)):
            scaled = self._dphi(bk, cache, l - 1)[:, :, None] * jac[-1]
            jac.append(weights[l] @ scaled)
        return jac

    def input_hessian(self, bk, params, cache, back: "MLPBackward", curvature,
                      form: str = "diag", full: bool = False, jacobians=None):
        """Exact Hessian ``∂²f/∂x∂xᵀ`` of ``f = e(o(x))``
        (docs/DERIVATIONS.md#mlp-input-hessians):

        ``H = A_Lᵀ C A_L + Σ_{l<L} A_lᵀ diag(u_l ⊙ φ''(a_l)) A_l``

        with ``C = ∂²e/∂o∂oᵀ`` given by ``curvature`` in one of three forms:
        ``"diag"`` — shape broadcastable to ``(..., P)``; ``"block2"`` — ``(..., D, 2, 2)``
        coupling output ``d`` with output ``D + d`` (P = 2D; the gaussian_diag emission's
        ``(μ_d, s_d)``); ``"full"`` — ``(..., P, P)``. ``back`` is this forward pass's
        :meth:`backward` result (it supplies ``u_l``). Returns the diagonal ``(..., K)`` (cost O(K)
        per hidden unit) or, with ``full=True``, the matrix ``(..., K, K)``.
        """
        lead = cache["lead"]
        m = cache["h"][0].shape[0]
        jac = self.input_jacobians(bk, params, cache) if jacobians is None else jacobians
        a_out = jac[-1]
        hess = output_curvature(bk, a_out, curvature, form, full, lead, m, self.prefix)
        if not self.activation.piecewise_linear:
            for l in range(len(self.hidden)):
                w = back.upstream[l] * self.activation.d2(bk, cache["a"][l], cache["h"][l + 1])
                hess = hess + bilinear(bk, jac[l], jac[l], w, full)
        k = self.in_dim
        return hess.reshape(*lead, k, k) if full else hess.reshape(*lead, k)


def split_heads(o, heads) -> dict:
    """Concatenated output ``(..., P)`` -> ``{head: (..., d_head)}`` for ``heads`` ``[(name,
    width), …]`` (views, no copies)."""
    out, start = {}, 0
    for name, width in heads:
        out[name] = o[..., start:start + width]
        start += width
    return out


def stacked_heads(bk, params, head_names) -> tuple:
    """The output matrix ``W_L`` of a network with named linear heads: the heads' weights stacked
    by rows, and their biases likewise (``(W_L, b_L)``)."""
    ws = [params[f"{n}.weight"] for n in head_names]
    bs = [params[f"{n}.bias"] for n in head_names]
    if len(ws) == 1:
        return ws[0], bs[0]
    return bk.xp.concatenate(ws, axis=0), bk.xp.concatenate(bs, axis=0)


@dataclass
class MLPBackward:
    """Result of :meth:`MLP.backward`: parameter gradients (``state_dict`` order), ``∂f/∂x``
    (or ``None``), and ``upstream[l] = u_l = ∂f/∂h_l`` per hidden layer (used by the
    Hessian)."""

    grads: dict
    d_input: object
    upstream: list = field(default_factory=list)


def output_curvature(bk, a_out, curvature, form: str, full: bool, lead, m: int, prefix: str):
    """``A_oᵀ C A_o`` (or its diagonal) for the three curvature forms of :meth:`MLP.input_hessian`
    (also :class:`~refvae.math.sequential.Sequential`'s); ``a_out`` is the output Jacobian
    ``(M or 1, P, K)``, ``lead`` the leading batch shape of the ``M`` rows."""
    xp = bk.xp
    p, k = a_out.shape[1:]
    curvature = xp.asarray(curvature, dtype=a_out.dtype)  # a Python float (1/α) must not upcast
    if form == "diag":
        c = xp.broadcast_to(curvature, (*lead, p)).reshape(m, p)
        return bilinear(bk, a_out, a_out, c, full)
    if form == "block2":
        if p % 2:
            raise ShapeError(f"{prefix}: block2 curvature needs an even output size, got {p}")
        d = p // 2
        c = xp.broadcast_to(curvature, (*lead, d, 2, 2)).reshape(m, d, 2, 2)
        a_mu, a_s = a_out[:, :d], a_out[:, d:]
        return (bilinear(bk, a_mu, a_mu, c[:, :, 0, 0], full)
                + bilinear(bk, a_mu, a_s, c[:, :, 0, 1], full)
                + bilinear(bk, a_s, a_mu, c[:, :, 1, 0], full)
                + bilinear(bk, a_s, a_s, c[:, :, 1, 1], full))
    if form == "full":
        c = xp.broadcast_to(curvature, (*lead, p, p)).reshape(m, p, p)
        a = xp.broadcast_to(a_out, (m, p, k))
        hess = a.transpose(0, 2, 1) @ c @ a
        return hess if full else xp.diagonal(hess, axis1=1, axis2=2).copy()
    raise ValueError(f"unknown curvature form {form!r}; choose one of {CURVATURE_FORMS}")


def bilinear(bk, a, b, w, full: bool):
    """``Aᵀ diag(w) B`` per datum — ``(M, K, K)`` — or its diagonal ``Σ_p w_p A_pk B_pk`` —
    ``(M, K)``.

    ``a`` and ``b`` are ``(M, P, K)`` or ``(1, P, K)`` (a Jacobian shared by all data); ``w`` is
    ``(M, P)``.
    """
    if not full:
        if a.shape[0] == 1 and b.shape[0] == 1:
            return w @ (a[0] * b[0])
        return bk.xp.einsum("mp,mpk->mk", w, a * b)
    if a.shape[0] == 1 and b.shape[0] == 1:
        return (a[0].T[None] * w[:, None, :]) @ b[0]
    return (a * w[:, :, None]).transpose(0, 2, 1) @ b
