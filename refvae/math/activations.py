"""Hidden-layer activations φ with their first and second derivatives, side by side.

docs/DERIVATIONS.md#activations lists ``φ, φ', φ''``; the MLP's reverse pass needs ``φ'`` and
the input Hessian (Eq. 8.17) needs ``φ''``. Every derivative is written in a form that keeps full
relative precision at large |a| (e.g. ``sech² a`` rather than ``1 − tanh² a``, which is exactly
0 in floating point once ``tanh a`` rounds to ±1), so the derivatives stay correct at ±50 and
beyond.

Each function takes the backend ``bk`` and the pre-activation ``a``; derivative functions also take
the value ``h = φ(a)`` so that they can reuse it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class Activation:
    """``value(bk, a)``, ``d1(bk, a, h)`` = φ'(a), ``d2(bk, a, h)`` = φ''(a).

    ``piecewise_linear`` marks φ'' = 0 almost everywhere, so the Hessian may skip its hidden terms.
    ``twice_differentiable`` is false where φ' jumps (relu): there φ'' is a Dirac delta in the
    distributional sense, the pointwise φ'' misses it, and Price's theorem (Eq. 8.17) computed
    from the pointwise Hessian is biased (docs/DERIVATIONS.md#bonnet-and-price).
    """

    name: str
    value: Callable
    d1: Callable
    d2: Callable
    piecewise_linear: bool = False
    twice_differentiable: bool = True
    params: tuple = ()          # ((name, value), ...) of a parameterised activation (leaky slope)


def _sech2(bk, a):
    """sech² a = 4e/(1+e)² with e = exp(−2|a|): no cancellation, no overflow."""
    e = bk.xp.exp(-2.0 * bk.xp.abs(a))
    return 4.0 * e / (1.0 + e) ** 2


def _sig_pair(bk, a):
    """σ(a) and σ(−a) = 1 − σ(a), each to full relative precision."""
    return bk.special.expit(a), bk.special.expit(-a)


# tanh: φ' = sech² a, φ'' = −2 tanh(a) sech² a.
TANH = Activation(
    "tanh",
    value=lambda bk, a: bk.xp.tanh(a),
    d1=lambda bk, a, h: _sech2(bk, a),
    d2=lambda bk, a, h: -2.0 * h * _sech2(bk, a),
)


def _sigmoid_d2(bk, a, h):
    # σ'' = σ(1−σ)(1−2σ) and 1 − 2σ(a) = −tanh(a/2).
    s, sm = _sig_pair(bk, a)
    return -(s * sm) * bk.xp.tanh(0.5 * a)


SIGMOID = Activation(
    "sigmoid",
    value=lambda bk, a: bk.special.expit(a),
    d1=lambda bk, a, h: h * bk.special.expit(-a),
    d2=_sigmoid_d2,
)


def softplus(bk, a):
    """``softplus(a) = log(1 + e^a) = max(a, 0) + log1p(e^{−|a|})``: no overflow, and full
    relative precision for every finite ``a`` (the second term is exact where it is below an ulp of
    the first)."""
    xp = bk.xp
    return xp.maximum(a, 0.0) + xp.log1p(xp.exp(-xp.abs(a)))


def _softplus_d2(bk, a, h):
    s, sm = _sig_pair(bk, a)
    return s * sm


# softplus(a) = log(1 + e^a) = logaddexp(0, a); φ' = σ(a), φ'' = σ(a)σ(−a).
SOFTPLUS = Activation(
    "softplus",
    value=softplus,
    d1=lambda bk, a, h: bk.special.expit(a),
    d2=_softplus_d2,
)

# relu: φ' = 1[a > 0] (PyTorch's convention at 0), φ'' = 0 almost everywhere.
RELU = Activation(
    "relu",
    value=lambda bk, a: bk.xp.maximum(a, 0.0),
    d1=lambda bk, a, h: (a > 0).astype(a.dtype),
    d2=lambda bk, a, h: bk.xp.zeros_like(a),
    piecewise_linear=True,
    twice_differentiable=False,
)

IDENTITY = Activation(
    "identity",
    value=lambda bk, a: a,
    d1=lambda bk, a, h: bk.xp.ones_like(a),
    d2=lambda bk, a, h: bk.xp.zeros_like(a),
    piecewise_linear=True,
)


def _silu_d1(bk, a, h):
    s, sm = _sig_pair(bk, a)
    return s * (1.0 + a * sm)


def _silu_d2(bk, a, h):
    # d/da [σ(1 + aσ(−a))] = σσ(−a)(2 + a(1 − 2σ)) = σσ(−a)(2 − a tanh(a/2)).
    s, sm = _sig_pair(bk, a)
    return s * sm * (2.0 - a * bk.xp.tanh(0.5 * a))


# silu (swish): φ(a) = a σ(a); smooth, so its Hessian terms are informative, unlike relu's.
SILU = Activation(
    "silu",
    value=lambda bk, a: a * bk.special.expit(a),
    d1=_silu_d1,
    d2=_silu_d2,
)

ACTIVATIONS = {act.name: act for act in (TANH, SIGMOID, SOFTPLUS, RELU, IDENTITY, SILU)}


def leaky_relu(negative_slope: float = 0.01) -> Activation:
    """leaky relu: φ = a (a > 0), s·a (a ≤ 0); φ' = 1[a > 0] + s·1[a ≤ 0] (PyTorch: s at
    0)."""
    s = float(negative_slope)
    return Activation(
        "leaky_relu",
        value=lambda bk, a: bk.xp.where(a > 0, a, s * a),
        d1=lambda bk, a, h: bk.xp.where(a > 0, 1.0, s).astype(a.dtype),
        d2=lambda bk, a, h: bk.xp.zeros_like(a),
        piecewise_linear=True,
        twice_differentiable=False,
        params=(("negative_slope", s),),
    )


def elu(alpha: float = 1.0) -> Activation:
    """elu: φ = a (a > 0), α(eᵃ − 1) (a ≤ 0); φ' = 1 or αeᵃ, φ'' = 0 or αeᵃ. At
    exactly 0 PyTorch takes φ'(0) = α and φ''(0) = 0, and so does this.

    Not C² for any α: φ'' jumps from α to 0 at 0 (and for α ≠ 1 φ' jumps too)."""
    al = float(alpha)

    def neg(bk, a):  # αeᵃ on a ≤ 0, where exp cannot overflow (a > 0 is masked first)
        return al * bk.xp.exp(bk.xp.minimum(a, 0.0))

    return Activation(
        "elu",
        value=lambda bk, a: bk.xp.where(a > 0, a, al * bk.xp.expm1(bk.xp.minimum(a, 0.0))),
        d1=lambda bk, a, h: bk.xp.where(a > 0, 1.0, neg(bk, a)).astype(a.dtype),
        d2=lambda bk, a, h: bk.xp.where(a < 0, neg(bk, a), 0.0).astype(a.dtype),
        twice_differentiable=False,
        params=(("alpha", al),),
    )


_INV_SQRT_2PI = 0.3989422804014327  # 1/√(2π)


def _std_normal_pdf(bk, a):
    return _INV_SQRT_2PI * bk.xp.exp(-0.5 * a * a)


# gelu (exact, PyTorch's approximate="none"): φ = aΦ(a) with Φ the standard normal CDF (ndtr,
# i.e. ½(1 + erf(a/√2))); φ' = Φ(a) + aϕ(a), φ'' = ϕ(a)(2 − a²) with ϕ = Φ'.
GELU = Activation(
    "gelu",
    value=lambda bk, a: a * bk.special.ndtr(a),
    d1=lambda bk, a, h: bk.special.ndtr(a) + a * _std_normal_pdf(bk, a),
    d2=lambda bk, a, h: _std_normal_pdf(bk, a) * (2.0 - a * a),
)

# Activations offered to layer lists (refvae.math.sequential.build_layers) on top of ACTIVATIONS;
# they are not yet choices of the MLP's config. Parameterised ones are factories.
LAYER_ACTIVATIONS = {**{name: (lambda act=act: act) for name, act in ACTIVATIONS.items()},
                     "leaky_relu": leaky_relu, "elu": elu, "gelu": lambda: GELU}


def make_activation(name: str, **params) -> Activation:
    """The layer activation ``name`` with its parameters (``negative_slope`` for leaky_relu,
    ``alpha`` for elu); an unknown name or parameter is a :class:`ConfigError`."""
    if name not in LAYER_ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; "
                          f"choose one of {', '.join(LAYER_ACTIVATIONS)}")
    try:
        return LAYER_ACTIVATIONS[name](**params)
    except TypeError:
        raise ConfigError(f"activation {name!r} takes no parameter "
                          f"{', '.join(map(repr, params))}") from None


def get_activation(name: str) -> Activation:
    """The activation called ``name``; an unknown name is a :class:`ConfigError` listing the
    choices."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown activation {name!r}; choose one "
                          f"of {', '.join(ACTIVATIONS)}") from None
