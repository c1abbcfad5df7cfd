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
  (:func:`~refvae.fast.kernels.bias_activation`), the sample and the KL terms
  (:data:`GAUSSIAN_HEADS`, :data:`GAUSSIAN_SAMPLE`), the emission (:data:`~refvae.fast.kernels.
  BERNOULLI`), the heads' gradients (:data:`PATHWISE_SPLIT`, :data:`GAUSSIAN_HEAD_GRADS`) and the
  packed loss (:data:`LOSS_PACK`). Other models run the plain reverse pass and copy.

Every kernel makes the plain operations in the plain order; the one reassociation is the KL's
``½ Σ_k t_k`` summed as ``Σ_k ½ t_k`` (equal, since halving is exact, unless a term is
subnormal). On NumPy the numbers are the plain model's (tests/test_fast_step.py).
"""
from __future__ import annotations

from ..math.mlp import MLP
from ..math.vae import LOG_ALPHA
from ..util import anomaly
from ..util.results import LossResult, finish
from .elementwise import Elementwise, scalar
from .kernels import FastBernoulli, activation_grad, bias_activation


def _gaussian_heads_numpy(xp, bm, bl, nu, lv, std, klh):
    nu += bm
    lv += bl
    xp.exp(0.5 * lv, out=std)
    q = xp.exp(lv)
    q += nu * nu
    q -= 1.0
    q -= lv
    xp.multiply(0.5, q, out=klh)


GAUSSIAN_HEADS = Elementwise(
    "refvae_gaussian_heads", "T bm, T bl", "T nu, T lv, T std, T klh",
    """
    nu = nu + bm;
    lv = lv + bl;
    std = exp((T)0.5 * lv);
    klh = (T)0.5 * (((exp(lv) + nu * nu) - (T)1) - lv);
    """, _gaussian_heads_numpy)
GAUSSIAN_SAMPLE = Elementwise(
    "refvae_gaussian_sample", "T nu, T std, T eps", "T x", "x = nu + std * eps;",
    lambda xp, nu, std, eps, x: xp.add(nu, std * eps, out=x))


def _split_numpy(xp, g, eps, a, b):
    a[...] = g
    xp.multiply(g, eps, out=b)


PATHWISE_SPLIT = Elementwise("refvae_pathwise_split", "T g, T eps", "T a, T b",
                             "a = g; b = g * eps;", _split_numpy)


def _head_grads_numpy(xp, sg, sge, nu, lv, std, scale, dm, dl):
    xp.add(sg, scale * nu, out=dm)
    xp.multiply(0.5 * std, sge, out=dl)
    dl += scale * (0.5 * xp.expm1(lv))


GAUSSIAN_HEAD_GRADS = Elementwise(
    "refvae_gaussian_head_grads", "T sg, T sge, T nu, T lv, T std, T scale", "T dm, T dl",
    """
    dm = sg + scale * nu;
    dl = ((T)0.5 * std) * sge + scale * ((T)0.5 * expm1(lv));
    """, _head_grads_numpy)


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
                        detect_anomaly: bool = False) -> LossResult:
    """:meth:`VAE.loss_and_grads <refvae.math.vae.VAE.loss_and_grads>` of a trusted batch with
    the gradients written into ``grads`` (views of ``grad_buffer``, every parameter's, e.g.
    :attr:`FlatParams.grads <refvae.optim.rules.FlatParams.grads>`); the result's ``grads`` are
    those views."""
    estimator = model.default_estimator if estimator is None else estimator
    model.check_estimator(estimator)
    scale = 1.0 / noise.shape[0] if reduction == "mean" else 1.0
    if fused(model, estimator, detect_anomaly):
        kl, f = _fused_pass(model, params, y, noise, scale, grads)
    else:
        rp = model.reverse_pass(params, y, noise, scale, estimator, temperature, estimator_state)
        if detect_anomaly:
            anomaly.first_anomaly(model.bk, anomaly.intermediates(rp, estimator))
        for name, g in {**rp.dec_grads, **rp.enc_grads}.items():
            grads[name][...] = g
        kl, f = rp.fp.kl, rp.fp.f
    return pack_flat(model.bk, kl, f, scale, grad_buffer, grads)


def pack_flat(bk, kl, f, scale: float, grad_buffer, grads: dict) -> LossResult:
    """:func:`refvae.util.results.pack` with finiteness read from the flat buffer: the loss, its
    parts and the flag in one kernel and one device→host copy."""
    xp = bk.xp
    rec_per = f[:, 0] if f.shape[1] == 1 else f.mean(axis=1)   # a mean over one value is that value
    out = xp.empty(4, dtype=kl.dtype)
    LOSS_PACK(bk, kl.sum(), rec_per.sum(), xp.isfinite(grad_buffer).all(), scalar(bk, scale),
              out[0:1], out[1:2], out[2:3], out[3:4])
    return finish(bk.to_numpy(out), kl, rec_per, grads)


def _out_weight(bk, net, params):
    ws = [params[f"{n}.weight"] for n in net.head_names]
    return ws[0] if len(ws) == 1 else bk.xp.concatenate(ws, axis=0)


def _forward(bk, net, params, x):
    """The hidden layers and the output product (the output bias not yet added)."""
    hs, pre = [x], []
    for name in net.hidden_names:
        a = hs[-1] @ params[f"{name}.weight"].T
        hs.append(bias_activation(bk, net.activation, a, params[f"{name}.bias"]))
        pre.append(a)
    w_out = _out_weight(bk, net, params)
    return hs[-1] @ w_out.T, (hs, pre, w_out)


def _backward(bk, net, params, cache, delta, grads, input_grad: bool):
    """:meth:`MLP.backward <refvae.math.mlp.MLP.backward>` writing into ``grads``."""
    xp = bk.xp
    hs, pre, w_above = cache
    start = 0
    for name, (_, width) in zip(net.head_names, net.heads):
        d = delta if width == delta.shape[1] else delta[:, start:start + width]
        xp.matmul(d.T, hs[-1], out=grads[f"{name}.weight"])
        d.sum(axis=0, out=grads[f"{name}.bias"])
        start += width
    for l in range(len(net.hidden) - 1, -1, -1):
        delta = activation_grad(bk, net.activation, delta @ w_above, pre[l], hs[l + 1])
        name = net.hidden_names[l]
        xp.matmul(delta.T, hs[l], out=grads[f"{name}.weight"])
        delta.sum(axis=0, out=grads[f"{name}.bias"])
        w_above = params[f"{name}.weight"]
    return delta @ w_above if input_grad else None


def _fused_pass(model, params, y, eps, scale: float, grads: dict):
    """The reverse pass of :meth:`VAE.reverse_pass <refvae.math.vae.VAE.reverse_pass>` for MLPs, a
    diagonal Gaussian latent and the pathwise estimator; returns the KL per datum and ``f``."""
    bk, xp = model.bk, model.bk.xp
    enc, dec, k = model.encoder, model.decoder, model.latent.k
    n, samples = eps.shape[0], eps.shape[1]
    w = scale / samples
    o, enc_cache = _forward(bk, enc, params, y)
    nu, lv = o[:, :k], o[:, k:]
    std, klh = xp.empty_like(nu), xp.empty_like(nu)
    GAUSSIAN_HEADS(bk, params["encoder.mean.bias"], params["encoder.logvar.bias"], nu, lv, std, klh)
    kl = klh.sum(axis=-1)
    x = xp.empty_like(eps)
    GAUSSIAN_SAMPLE(bk, nu[:, None, :], std[:, None, :], eps, x)
    out, dec_cache = _forward(bk, dec, params, x.reshape(-1, k))
    out += xp.concatenate([params[f"{h}.bias"] for h in dec.head_names]) \
        if len(dec.heads) > 1 else params[f"{dec.head_names[0]}.bias"]
    out = out.reshape(n, samples, dec.out_dim)
    log_alpha = params.get(LOG_ALPHA)
    if isinstance(model.emission, FastBernoulli):
        terms = model.emission.terms(bk, out, y[:, None, :], log_alpha, weight=w)
        d_out = terms.df_do
    else:
        terms = model.emission.terms(bk, out, y[:, None, :], log_alpha)
        d_out = terms.df_do * w
    if model.config.learn_alpha:
        grads[LOG_ALPHA][...] = (terms.df_dlog_alpha.sum() * w).reshape(())
    g = _backward(bk, dec, params, dec_cache, d_out.reshape(-1, dec.out_dim), grads, True)
    both = xp.empty((n, samples, 2 * k), dtype=eps.dtype)
    PATHWISE_SPLIT(bk, g.reshape(n, samples, k), eps, both[..., :k], both[..., k:])
    sums = both.sum(axis=1)
    d_heads = xp.empty((n, 2 * k), dtype=eps.dtype)
    GAUSSIAN_HEAD_GRADS(bk, sums[:, :k], sums[:, k:], nu, lv, std, scalar(bk, scale),
                        d_heads[:, :k], d_heads[:, k:])
    _backward(bk, enc, params, enc_cache, d_heads, grads, False)
    return kl, terms.f
