"""Gradient estimators: decoder signals + recognition state -> gradients of the reconstruction term
with respect to the recognition outputs (the encoder heads).

The model (:mod:`refvae.vae`) runs the decoder and emission, then hands the estimator a
:class:`DecoderSignals`; the KL gradient is added by the model, not here. Each estimator is one
function registered under ``(latent name, estimator name)``.

Weights: the batch loss is ``scale · Σ_n [KL_n + (1/L) Σ_l f_nl]`` with ``scale`` = 1/N (mean) or 1
(sum), so every per-sample quantity enters with the weight ``w = scale / L``; ``g`` and the Hessian
arrive already multiplied by ``w``, ``f`` does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .errors import ConfigError


@dataclass
class DecoderSignals:
    """What the decoder pass offers an estimator.

    ``g`` — ``w · ∂f/∂x`` at the samples, ``(N, L, K_in)``; ``f`` — the surprisal per sample
    ``(N, L)``, unweighted; ``weight`` — ``w``; ``hessian(full)`` — ``w · ∂²f/∂x∂xᵀ`` (diagonal
    ``(N, L, K)`` or full ``(N, L, K, K)``), computed on demand by forward-mode Jacobians;
    ``state`` — a caller-owned dict kept across steps (running-mean control variates).
    """

    g: object
    f: object
    weight: float
    hessian: Callable | None = None
    state: dict = field(default_factory=dict)


_REGISTRY: dict[tuple[str, str], Callable] = {}


def register(latent: str, name: str):
    """Decorator: register ``fn(bk, latent_model, state, signals) -> dict head -> gradient``."""
    def wrap(fn):
        _REGISTRY[(latent, name)] = fn
        return fn
    return wrap


def estimators_for(latent: str) -> list[str]:
    return [name for (lat, name) in _REGISTRY if lat == latent]


def get_estimator(latent: str, name: str) -> Callable:
    try:
        return _REGISTRY[(latent, name)]
    except KeyError:
        raise ConfigError(f"unknown estimator {name!r} for latent {latent!r}; choose one of "
                          f"{', '.join(estimators_for(latent)) or '(none)'}") from None


@register("gaussian", "pathwise")
def gaussian_pathwise(bk, latent, state, signals: DecoderSignals) -> dict:
    """Reparameterization (Eqs. 8.16 and 8.24): see :meth:`DiagonalGaussian.pathwise`."""
    return latent.pathwise(bk, state, signals.g)
