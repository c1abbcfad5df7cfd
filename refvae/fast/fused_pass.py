"""The fused reverse pass of :func:`refvae.fast.step.loss_and_grads_into` (MLPs, a diagonal
Gaussian latent with the log-variance head, the pathwise estimator), in two phases so that it
splits across threads without any thread computing a whole weight gradient:

1. **rows** (:meth:`FusedPass.rows`): the forward pass, the emission, the sample and every layer's
   ``δ`` — each row of the batch independent of the others, so row shards run on separate threads
   and write their rows of arrays allocated once for the whole batch;
2. **weights** (:meth:`FusedPass.weight_jobs`): each layer's ``∂/∂W = δᵀh`` and
   ``∂/∂b = Σ δ``, products over all rows, split by output units (contiguous rows of the
   gradient, written into the flat gradient buffer): no per-shard gradients and no sum of them.

On one thread the operations are those of the plain reverse pass on the whole batch, in the same
order per value (``tests/test_fast_step.py``: bit-identical); across threads the row shards make
the same operations on the same rows and the split products sum over the same rows, so the result
agrees with one thread to BLAS's rounding (``tests/test_parallel.py``).
"""
from __future__ import annotations

from ..math.vae import LOG_ALPHA
from .elementwise import Elementwise, scalar
from .kernels import FastBernoulli, activation_grad, bias_activation

# Output units of a weight gradient below which it is not split (one product is cheaper).
MIN_SPLIT_UNITS = 32



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



class _Net:
    """An MLP's whole-batch arrays: ``h[l]`` the input of layer ``l`` (``h[0]`` the net's input),
    ``pre[l]`` the pre-activations of hidden layer ``l``, ``delta[l]`` its ``δ``, ``out`` the
    output product and ``d_out`` the output's ``δ``."""

    def __init__(self, bk, net, params, x, d_out):
        xp, rows, dt = bk.xp, x.shape[0], x.dtype
        self.bk, self.net, self.params = bk, net, params
        self.h, self.pre, self.delta = [x], [], []
        for width in net.hidden:
            self.pre.append(xp.empty((rows, width), dtype=dt))
            self.h.append(xp.empty((rows, width), dtype=dt))
            self.delta.append(xp.empty((rows, width), dtype=dt))
        ws = [params[f"{n}.weight"] for n in net.head_names]
        self.w_out = ws[0] if len(ws) == 1 else xp.concatenate(ws, axis=0)
        self.out = xp.empty((rows, self.w_out.shape[0]), dtype=dt)
        self.d_out = d_out

    def forward(self, r: slice) -> None:
        """Rows ``r`` of the hidden layers and of the output product (its bias not yet added)."""
        xp, net = self.bk.xp, self.net
        for l, name in enumerate(net.hidden_names):
            a = self.pre[l][r]
            xp.matmul(self.h[l][r], self.params[f"{name}.weight"].T, out=a)
            bias_activation(self.bk, net.activation, a, self.params[f"{name}.bias"],
                            out=self.h[l + 1][r])
        xp.matmul(self.h[-1][r], self.w_out.T, out=self.out[r])

    def backward(self, r: slice, input_grad: bool):
        """Rows ``r`` of every hidden layer's ``δ`` from ``d_out``; the input's gradient with
        ``input_grad`` (:meth:`MLP.backward <refvae.math.mlp.MLP.backward>` without the weights)."""
        w_above, u = self.w_out, None
        delta = self.d_out[r]
        for l in range(len(self.net.hidden) - 1, -1, -1):
            activation_grad(self.bk, self.net.activation, delta @ w_above, self.pre[l][r],
                            self.h[l + 1][r], out=self.delta[l][r])
            delta, w_above = self.delta[l][r], self.params[f"{self.net.hidden_names[l]}.weight"]
        if input_grad:
            u = delta @ w_above
        return u

    def jobs(self, parts: int) -> list:
        """``(δ columns, h, name, units)`` per weight gradient, the large ones cut into ``parts``
        ranges of output units."""
        out, start = [], 0
        for name, (_, width) in zip(self.net.head_names, self.net.heads):
            out += _cut(self.d_out[:, start:start + width], self.h[-1], name, parts)
            start += width
        for l, name in enumerate(self.net.hidden_names):
            out += _cut(self.delta[l], self.h[l], name, parts)
        return out


def _cut(delta, h, name: str, parts: int) -> list:
    width = delta.shape[1]
    parts = parts if width >= MIN_SPLIT_UNITS * parts else 1
    bounds = [width * i // parts for i in range(parts + 1)]
    return [(delta, h, name, slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]


class FusedPass:
    """One step's reverse pass; call :meth:`rows` on row shards covering the batch, then every
    job of :meth:`weight_jobs` with :meth:`weights`, then :meth:`result`."""

    def __init__(self, model, params: dict, y, eps, scale: float, grads: dict):
        bk, xp = model.bk, model.bk.xp
        self.model, self.bk, self.params, self.grads = model, bk, params, grads
        self.y, self.eps, self.scale = y, eps, scale
        n, samples, k = eps.shape
        dt = eps.dtype
        self.samples, self.k, self.w = samples, k, scale / samples
        self.std, self.klh = xp.empty((n, k), dtype=dt), xp.empty((n, k), dtype=dt)
        self.x = xp.empty_like(eps)
        self.f = xp.empty((n, samples), dtype=dt)
        self.d_alpha = xp.empty((n, samples), dtype=dt) if model.config.learn_alpha else None
        dec = model.decoder
        self.dec = _Net(bk, dec, params, self.x.reshape(-1, k),
                        xp.empty((n * samples, dec.out_dim), dtype=dt))
        self.enc = _Net(bk, model.encoder, params, y, xp.empty((n, 2 * k), dtype=dt))
        heads = [params[f"{h}.bias"] for h in dec.head_names]
        self.dec_bias = heads[0] if len(heads) == 1 else xp.concatenate(heads)

    def rows(self, r: slice) -> None:
        """Phase 1 for the data rows ``r`` (and their samples' rows of the decoder)."""
        bk, xp, k, samples = self.bk, self.bk.xp, self.k, self.samples
        p, enc, dec = self.params, self.enc, self.dec
        enc.forward(r)
        nu, lv, std = enc.out[r, :k], enc.out[r, k:], self.std[r]
        GAUSSIAN_HEADS(bk, p["encoder.mean.bias"], p["encoder.logvar.bias"], nu, lv, std,
                       self.klh[r])
        eps = self.eps[r]
        GAUSSIAN_SAMPLE(bk, nu[:, None, :], std[:, None, :], eps, self.x[r])
        rr = slice(r.start * samples, r.stop * samples)
        dec.forward(rr)
        out = dec.out[rr]
        out += self.dec_bias
        rows = eps.shape[0]
        out = out.reshape(rows, samples, -1)
        d_out = dec.d_out[rr].reshape(out.shape)
        y, log_alpha = self.y[r][:, None, :], p.get(LOG_ALPHA)
        if isinstance(self.model.emission, FastBernoulli):
            terms = self.model.emission.terms(bk, out, y, log_alpha, weight=self.w,
                                              out=(self.f[r], d_out))
        else:
            terms = self.model.emission.terms(bk, out, y, log_alpha)
            xp.multiply(terms.df_do, self.w, out=d_out)
            self.f[r] = terms.f
        if self.d_alpha is not None:
            self.d_alpha[r] = terms.df_dlog_alpha
        g = dec.backward(rr, True)
        both = xp.empty((rows, samples, 2 * k), dtype=eps.dtype)
        PATHWISE_SPLIT(bk, g.reshape(rows, samples, k), eps, both[..., :k], both[..., k:])
        sums = both.sum(axis=1)
        d_heads = enc.d_out[r]
        GAUSSIAN_HEAD_GRADS(bk, sums[:, :k], sums[:, k:], nu, lv, std, scalar(bk, self.scale),
                            d_heads[:, :k], d_heads[:, k:])
        enc.backward(r, False)

    def weight_jobs(self, parts: int = 1) -> list:
        """Phase 2's products: the decoder's gradients, then the encoder's."""
        return self.dec.jobs(parts) + self.enc.jobs(parts)

    def weights(self, job) -> None:
        """Phase 2, one job: units ``o`` of ``∂/∂W = δᵀh`` and ``∂/∂b = Σ δ``."""
        delta, h, name, o = job
        d = delta[:, o]
        self.bk.xp.matmul(d.T, h, out=self.grads[f"{name}.weight"][o])
        d.sum(axis=0, out=self.grads[f"{name}.bias"][o])

    def result(self):
        """The KL per datum and ``f`` (and the learned α's gradient written), after both
        phases."""
        if self.d_alpha is not None:
            self.grads[LOG_ALPHA][...] = (self.d_alpha.sum() * self.w).reshape(())
        return self.klh.sum(axis=-1), self.f


def fused_pass(model, params, y, eps, scale: float, grads: dict, workers=None):
    """:class:`FusedPass` run whole (``workers`` ``None``) or split over ``workers``' threads
    (:class:`refvae.fast.parallel.Workers`); returns the KL per datum and ``f``."""
    fp = FusedPass(model, params, y, eps, scale, grads)
    if workers is None or workers.threads == 1:
        fp.rows(slice(0, eps.shape[0]))
        for job in fp.weight_jobs():
            fp.weights(job)
    else:
        workers.map(fp.rows, workers.split(eps.shape[0]))
        workers.map(fp.weights, fp.weight_jobs(workers.threads))
    return fp.result()
