"""Hidden-layer activations φ with their first and second derivatives, side by side.

EQUATIONS.md (MLP section) lists ``φ, φ', φ''``; the MLP's reverse pass needs ``φ'`` and the input
Hessian (Eq. 8.17) needs ``φ''``. Every derivative is written in a form that keeps full relative
precision at large |a| (e.g. ``sech² a`` rather than ``1 − tanh² a``, which is exactly 0 in floating
point once ``tanh a`` rounds to ±1), so the derivatives stay correct at ±50 and beyond.

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
    """

    name: str
    value: Callable
    d1: Callable
    d2: Callable
    piecewise_linear: bool = False


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


def log1p_exp_neg_abs(bk, a):
    """``(log1p(e), e/(1 + e))`` for ``e = e^{−|a|}``: the pieces of ``softplus(a) = max(a, 0) +
    log1p(e)`` and of ``σ(−|a|) = e/(1 + e)``, sharing one exponential and one logarithm.

    ``log1p(e)`` comes from the vectorized ``log`` (NumPy's ``log1p`` runs element by element,
    2–6× slower): with ``u = fl(1 + e)``, the rounding error ``r = (u − 1) − e`` is exact
    (Fast2Sum, ``e ≤ 1``), and ``log1p(e) = log u − log(1 + r/(1 + e)) = log u − r/u`` up to a term
    of order ``(r/u)² ≤ ulp²``; where ``u`` rounds to 1 this gives exactly ``e``.
    """
    xp = bk.xp
    e = xp.copysign(a, -1.0)                 # −|a| in one pass
    xp.exp(e, out=e)
    u = e + 1.0
    r = u - 1.0
    r -= e
    r /= u
    log1p_e = xp.log(u)
    log1p_e -= r
    e /= u
    return log1p_e, e


def softplus(bk, a):
    """``softplus(a) = max(a, 0) + log1p(e^{−|a|})``, accurate and finite for every finite ``a``."""
    out, _ = log1p_exp_neg_abs(bk, a)
    out += bk.xp.maximum(a, 0.0)
    return out


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


def get_activation(name: str) -> Activation:
    """The activation called ``name``; an unknown name is a :class:`ConfigError` listing the choices."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None
