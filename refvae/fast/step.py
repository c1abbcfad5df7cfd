"""A training step's loss and gradients with the gradients written straight into the flat buffer.

:func:`loss_and_grads_into` returns what :meth:`VAE.loss_and_grads
<refvae.math.vae.VAE.loss_and_grads>` returns, with three differences that matter on a GPU, where
every array operation is a kernel launch and the step is otherwise launch-bound:

* each gradient is written by the operation that computes it into its view of
  :attr:`FlatParams.grad <refvae.optim.rules.FlatParams.grad>` (``matmul(..., out=)``,
  ``sum(..., out=)``): no per-tensor copies;
* finiteness is checked once, on the whole flat buffer, and read with the loss in one copy;
* for MLPs with a diagonal Gaussian latent and the pathwise estimator (the common case) the
  elementwise work between the matrix products runs as few fused kernels: bias and activation
  (:func:`~refvae.fast.kernels.bias_activation`), the sample and the KL terms, the emission
  (:data:`~refvae.fast.kernels.BERNOULLI`), the heads' gradients (:mod:`refvae.fast.fused_pass`,
  which also splits the pass across threads) and the packed loss (:data:`LOSS_PACK`). Other
  models run the plain reverse pass and copy.

Every kernel makes the plain operations in the plain order; the one reassociation is the KL's
``½ Σ_k t_k`` summed as ``Σ_k ½ t_k`` (equal, since halving is exact, unless a term is
subnormal). On NumPy the numbers are the plain model's (tests/test_fast_step.py).
"""
from __future__ import annotations

from ..math.mlp import MLP
from ..util import anomaly
from ..util.results import LossResult, finish
from .elementwise import Elementwise, scalar
from .fused_pass import fused_pass


def _pack_numpy(xp, kl, rec, finite, scale, loss, kl_out, rec_out, ok):
    xp.add(kl, rec, out=loss)
    loss *= scale
    xp.multiply(kl, scale, out=kl_out)
    xp.multiply(rec, scale, out=rec_out)
    ok[...] = finite


LOSS_PACK = Elementwise(
    "refvae_loss_pack", "T kl, T rec, bool finite, T scale", "T loss, T kl_out, T rec_out, T ok",
    "loss = (kl + rec) * scale; kl_out = kl * scale; rec_out = rec * scale; "
    "ok = finite ? (T)1 : (T)0;", _pack_numpy)


def fused(model, estimator: str, detect_anomaly: bool = False) -> bool:
    """Whether :func:`loss_and_grads_into` runs the fused pass for this model and estimator."""
    c = model.config
    plain_forms = (c.scale_head == "logvar" and not c.head_activations and c.kl == "analytic"
                   and not c.condition_dim)
    return (type(model.encoder) is MLP and type(model.decoder) is MLP and not detect_anomaly
            and model.latent.name == "gaussian" and estimator == "pathwise" and plain_forms)


def loss_and_grads_into(model, params: dict, y, noise, grads: dict, grad_buffer,
                        estimator: str | None = None, reduction: str = "mean",
                        temperature: float | None = None, estimator_state: dict | None = None,
                        detect_anomaly: bool = False, workers=None, condition=None) -> LossResult:
    """:meth:`VAE.loss_and_grads <refvae.math.vae.VAE.loss_and_grads>` of a trusted batch with
    the gradients written into ``grads`` (views of ``grad_buffer``, every parameter's, e.g.
    :attr:`FlatParams.grads <refvae.optim.rules.FlatParams.grads>`); the result's ``grads`` are
    those views. With ``workers`` (:class:`refvae.fast.parallel.Workers`) the fused pass splits
    across its threads (:func:`~refvae.fast.fused_pass.fused_pass`); ``condition``: a conditional
    VAE's condition per row (such models take the plain reverse pass)."""
    estimator = model.default_estimator if estimator is None else estimator
    model.check_estimator(estimator)
    scale = 1.0 / noise.shape[0] if reduction == "mean" else 1.0
    if fused(model, estimator, detect_anomaly):
        kl, f = fused_pass(model, params, y, noise, scale, grads, workers)
    else:
        rp = model.reverse_pass(params, y, noise, scale, estimator, temperature, estimator_state,
                                condition)
        if detect_anomaly:
            anomaly.first_anomaly(model.bk, anomaly.intermediates(rp, estimator))
        for name, g in {**rp.dec_grads, **rp.enc_grads}.items():
            grads[name][...] = g
        kl, f = rp.fp.kl, rp.fp.f
    return pack_flat(model.bk, kl, f, scale, grad_buffer, grads)


def pack_flat(bk, kl, f, scale: float, grad_buffer, grads: dict) -> LossResult:
    """:func:`refvae.util.results.pack` with finiteness read from the flat buffer: the loss, its
    parts and the flag in one kernel and one device→host copy. (One pass on one thread: split
    over a pool's threads, the hand-offs cost more than the pass, validation/BENCH.md.)"""
    xp = bk.xp
    rec_per = f[:, 0] if f.shape[1] == 1 else f.mean(axis=1)   # a mean over one value is that value
    out = xp.empty(4, dtype=kl.dtype)
    finite = xp.isfinite(grad_buffer).all()
    LOSS_PACK(bk, kl.sum(), rec_per.sum(), finite, scalar(bk, scale),
              out[0:1], out[1:2], out[2:3], out[3:4])
    return finish(bk.to_numpy(out), kl, rec_per, grads)
