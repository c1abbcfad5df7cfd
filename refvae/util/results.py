"""A reverse pass packed for the caller: the loss and its parts as host floats, read in one
device→host copy (a GPU waits for each copy), and the gradients in ``state_dict`` order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import NonFiniteError


@dataclass
class LossResult:
    """Batch loss and its parts (floats, nats per datum for ``mean``), per-datum arrays (device),
    the gradient of the batch loss for every parameter (``state_dict`` order), and whether every
    gradient entry is finite (read with the loss in one device→host copy)."""

    loss: float
    kl: float
    reconstruction: float
    kl_per_datum: object
    reconstruction_per_datum: object
    grads: dict
    grads_finite: bool = True


def pack(bk, rp, scale: float, order) -> LossResult:
    """The :class:`LossResult` of a reverse pass ``rp`` (:class:`refvae.math.vae.ReversePass`):
    loss, its parts and the gradients in the order of the names ``order``; a non-finite loss is an
    error."""
    fp = rp.fp
    rec_per = fp.f.mean(axis=1)
    kl_sum, rec_sum = fp.kl.sum(), rec_per.sum()
    grads = {**rp.dec_grads, **rp.enc_grads}
    # One device→host copy per call (a GPU waits for each): the loss, its parts and whether
    # every gradient is finite.
    finite = bk.xp.stack([bk.xp.isfinite(g).all() for g in grads.values()]).all()
    host = bk.to_numpy(bk.xp.stack([(kl_sum + rec_sum) * scale, kl_sum * scale, rec_sum * scale,
                                    finite.astype(kl_sum.dtype)]))
    return finish(host, fp.kl, rec_per, {k: grads[k] for k in order})


def finish(host, kl_per_datum, rec_per_datum, grads: dict) -> LossResult:
    """The :class:`LossResult` of the host copy ``[loss, kl, reconstruction, finite]``; a
    non-finite loss is an error."""
    loss, kl, rec = (float(v) for v in host[:3])
    if not math.isfinite(loss):
        raise NonFiniteError(f"the loss is {loss} (KL {kl}, reconstruction {rec})")
    return LossResult(loss, kl, rec, kl_per_datum, rec_per_datum, grads, bool(host[3]))
