"""The unbiasedness test shared by claims 3 and 11: many independent draws of an estimator's
gradient at fixed parameters, each entry's mean against an exact target in standard errors.

``z = (mean − target) / SE`` with ``SE = sd/√draws`` per parameter entry; the target is accepted
when every ``|z| ≤ Z_MAX``. Entries an estimator computes without noise (``SE`` at rounding level)
have no ``z`` and must equal the target within an absolute tolerance instead.

The negative control both claims share, :func:`inclusive_baseline_gradients`, is the score-function
estimator with a baseline that includes the sample itself, built from refvae's own pieces outside
the estimator registry.
"""
from __future__ import annotations

import math

import numpy as np

from refvae.math.estimators import score_function

# Under unbiasedness each z is ~N(0, 1): P(|z| > 4) = 6.3e-5 per entry (Student's t at ≥ 1000
# draws:
# 6.8e-5), so a few hundred entries rarely reach it while a bias of 4 SE does half the time. Each
# claim states its number of entries and the resulting false-rejection bound.
Z_MAX = 4.0
# Entries with no noise (SE below SE_ZERO relative to max(1, |target|), i.e. rounding) must match an
# exact target within EXACT_ATOL: it is exact to rounding (~1e-15 on O(1) values), 1e-10 leaves a
# margin.
SE_ZERO, EXACT_ATOL = 1e-13, 1e-10


def flat(grads: dict, names) -> np.ndarray:
    return np.concatenate([np.asarray(grads[n], float).ravel() for n in names])


def entry_names(vae) -> list[str]:
    """``name[index]`` for every scalar entry, in :func:`flat` order."""
    out = []
    for name, shape in vae.param_shapes().items():
        out += [f"{name}{list(i)}" for i in np.ndindex(*shape)] if shape else [name]
    return out


def draw_gradients(vae, params, y, noise, estimator: str):
    """Flattened gradient of every draw ``(draws, P)`` and the loss of every draw, one
    ``loss_and_grads`` call per entry of ``noise``; the estimator state is carried across draws (the
    running-mean control variate learns from earlier draws)."""
    names, state, grads, losses = list(vae.param_shapes()), {}, [], []
    for e in noise:
        res = vae.loss_and_grads(params, y, e, estimator=estimator, estimator_state=state,
                                 check=False)
        grads.append(flat(res.grads, names))
        losses.append(res.loss)
    return np.array(grads), np.array(losses)


def inclusive_baseline_gradients(vae, params, y, noise, estimator: str | None = None):
    """Negative control: the score-function estimator with the *biased* baseline β = mean of f over
    all L samples of the datum (including the sample itself), which shrinks the reconstruction part
    of the recognition gradient by (L − 1)/L; assembled like ``VAE.loss_and_grads`` (mean
    reduction) from refvae's pieces. ``estimator`` is the sampling mode passed to the forward pass
    (``"score"`` for a categorical latent: one-hot samples). Encoder gradients only (the decoder's
    do not depend on the estimator), ``(draws, P_encoder)``."""
    bk, latent = vae.bk, vae.latent
    rows = []
    for e in noise:
        fp = vae.forward(params, y, e, estimator)
        n, samples = e.shape[:2]
        rec = score_function(bk, latent.score(bk, fp.state), fp.f, 1.0 / (n * samples),
                             lambda s, f=fp.f: f.mean(axis=1, keepdims=True)[..., None])
        kl = latent.kl_grads(bk, fp.state)
        d_heads = np.concatenate([rec[h] + kl[h] / n for h, _ in latent.heads()], axis=-1)
        rows.append(flat(vae.encoder.backward(bk, params, fp.enc_cache, d_heads,
                                              input_grad=False).grads,
                         vae.encoder.param_shapes()))
    return np.array(rows)


def max_abs(a) -> float:
    """The largest ``|a|`` ignoring NaN (0 when there is none)."""
    a = np.abs(a[~np.isnan(a)])
    return float(a.max()) if a.size else 0.0


def verdict(draws: np.ndarray, target: np.ndarray) -> dict:
    """The test of one estimator's draws ``(draws, P)`` against a target ``(P,)``: ``z`` per
    stochastic entry (NaN for the noiseless ones), ``se``, the largest ``|z|`` and the largest error
    of a noiseless entry, and whether the target is accepted."""
    mean, se = draws.mean(0), draws.std(0, ddof=1) / math.sqrt(len(draws))
    noiseless = se < SE_ZERO * np.maximum(1.0, np.abs(target))
    err = mean - target
    z = np.where(noiseless, np.nan, err / np.where(noiseless, 1.0, se))
    max_z, max_err = max_abs(z), max_abs(np.where(noiseless, err, np.nan))
    worst = int(np.nanargmax(np.abs(z))) if (~noiseless).any() else None
    return dict(z=z, se=se, max_z=max_z, max_err=max_err, n_noiseless=int(noiseless.sum()),
                worst=worst,
                accepted=max_z <= Z_MAX and max_err <= EXACT_ATOL)
