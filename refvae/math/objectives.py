"""Evaluation objectives over a data set: the negative ELBO (Eq. 8.20;
docs/DERIVATIONS.md#the-objective), the importance-weighted bound and active units (Burda et al.
2016, §5.2; docs/DERIVATIONS.md#importance-weighted-bound) and the ELBO surgery of Eq. 8.21
(Hoffman & Johnson 2016; docs/DERIVATIONS.md#elbo-surgery).

All of them run forward passes only, in minibatches, drawing base noise from the caller's
:class:`~refvae.backend.NoiseSource`; each batch's results are kept on the device and joined
there. Results are host floats / NumPy arrays.
"""
from __future__ import annotations

import math

from ..backend import NoiseSource

# Elements per forward chunk (data × samples × widest layer): about 160 MB of float64.
_ELEMENTS_PER_CHUNK = 20_000_000


def _budget_chunk(vae, n: int) -> int:
    """The most samples per datum of ``n`` data that one chunk may hold within the memory budget."""
    from ..util import budget  # noqa: PLC0415

    fixed = vae.config.batch_bytes(n, 0)
    each = max(1, vae.config.batch_bytes(n, 1) - fixed)
    return (budget.limit() - fixed) // each


def _budget_rows(vae, rows: int) -> int:
    """At most ``rows``, and no more data than fit the memory budget with one sample each."""
    from ..util import budget  # noqa: PLC0415

    return max(1, min(int(rows), budget.limit() // max(1, vae.config.batch_bytes(1, 1))))


def _widest(vae) -> int:
    c = vae.config
    enc, dec = c.activation_sizes()
    return max([c.data_dim * 2, vae.latent.decoder_in, *dec, *enc])


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _rows(vae, condition, sl):
    """The condition of the rows ``sl`` on the device (None for an unconditional VAE)."""
    return None if condition is None else vae.bk.asarray(condition[sl])


def neg_elbo_terms(vae, params, y, noise: NoiseSource, samples: int = 1, batch_size: int = 500,
                   condition=None):
    """Per-datum KL and reconstruction ``(1/L) Σ_l f(x_l, y)`` with ``L = samples`` (Eq. 8.20;
    docs/DERIVATIONS.md#the-objective); host arrays. ``condition``: a conditional VAE's, one row
    per row of ``y`` (as in every function here)."""
    bk = vae.bk
    kls, recs = [], []
    for sl in _batches(y.shape[0], batch_size):
        yb = bk.asarray(y[sl])
        eps = vae.draw_noise(noise, yb.shape[0], samples)
        fp = vae.forward(params, yb, eps, vae.latent.evaluation_estimator,
                         condition=_rows(vae, condition, sl))
        kls.append(fp.kl)
        recs.append(fp.f.mean(axis=1))
    return bk.to_numpy(bk.xp.concatenate(kls)), bk.to_numpy(bk.xp.concatenate(recs))


def log_weights(vae, params, y, eps, condition=None):
    """``log p(y, x_i) − log q(x_i|y) = −f(x_i, y) + log p(x_i) − log q(x_i|y)``, shape
    ``(N, k)`` (docs/DERIVATIONS.md#importance-weighted-bound)."""
    fp = vae.forward(params, y, eps, vae.latent.evaluation_estimator, condition=condition)
    return -fp.f + vae.latent.log_prior(vae.bk, fp.state) - vae.latent.log_q(vae.bk, fp.state)


def iwae_bound(vae, params, y, noise: NoiseSource, k: int = 5000, batch_size: int = 100,
               progress=None, condition=None):
    """Per-datum ``log (1/k) Σ_i p(y, x_i)/q(x_i|y)`` (Burda et al. 2016, Eq. 8), a lower bound on
    ``log p(y)`` that increases with ``k`` (their Theorem 1). Samples are processed in chunks with a
    running log-sum-exp, so k = 5000 fits in memory. Returns host array of the bound per datum.
    ``progress(rows)``, when given, is called after each batch of rows."""
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    bk, xp = vae.bk, vae.bk.xp
    out = []
    batch_size = _budget_rows(vae, batch_size)
    for sl in _batches(y.shape[0], batch_size):
        yb = bk.asarray(y[sl])
        n = yb.shape[0]
        chunk = max(1, min(k, _ELEMENTS_PER_CHUNK // (n * _widest(vae)), _budget_chunk(vae, n)))
        acc = None
        for start in range(0, k, chunk):
            m = min(chunk, k - start)
            lw = log_weights(vae, params, yb, vae.draw_noise(noise, n, m),
                             _rows(vae, condition, sl))
            part = bk.special.logsumexp(lw, axis=1)
            acc = part if acc is None else xp.logaddexp(acc, part)
        out.append(acc - math.log(k))
        if progress is not None:
            progress(n)
    return bk.to_numpy(xp.concatenate(out))


def active_units(vae, params, y, threshold: float = 0.01, batch_size: int = 500,
                 condition=None):
    """Burda et al. (2016; docs/DERIVATIONS.md#importance-weighted-bound): unit k is active when
    ``Cov_y(E_q[x_k|y]) > threshold``.
    Returns ``(count, variances)`` with the per-unit variance across the data (host)."""
    bk = vae.bk
    means = []
    for sl in _batches(y.shape[0], batch_size):
        yb = bk.asarray(y[sl])
        heads, _ = vae.encode(params, yb, _rows(vae, condition, sl))
        state = vae.latent.sample(bk, heads, vae.draw_noise(NoiseSource(0), yb.shape[0], 1),
                                  estimator=vae.latent.evaluation_estimator)
        means.append(vae.latent.mean(bk, state))
    var = bk.to_numpy(bk.xp.concatenate(means).var(axis=0))
    return int((var > threshold).sum()), var


def elbo_surgery(vae, params, y, noise: NoiseSource, samples: int = 1, batch_size: int = 200,
                 condition=None):
    """Eq. 8.21: ``E_y KL(q(x|y) || p(x)) = KL(q(x) || p(x)) + I_q(X; Y)`` with the aggregated
    posterior ``q(x) = (1/N) Σ_n q(x|y_n)`` over the ``N`` rows of ``y``. For a conditional VAE
    (``condition``, one row per datum; its prior ``p(x)`` does not depend on it) the rows are the
    pairs ``(y_n, c_n)``: ``q(x) = (1/N) Σ_n q(x|y_n, c_n)``, the information ``I_q(X; Y, C)``.

    For each datum, ``samples`` draws ``x ~ q(x|y_n)``;
    ``log q(x) = logsumexp_m log q(x|y_m) − log N`` is exact for the finite mixture. Returns a
    dict with the closed-form average KL, its Monte Carlo twin ``E[log q(x|y) − log p(x)]``, the
    aggregate KL, the mutual information, its bound ``log N`` and standard errors of the two Monte
    Carlo terms. Needs ``latent.log_q_cross``.
    """
    bk, xp = vae.bk, vae.bk.xp
    y_dev = bk.asarray(y)
    n = y.shape[0]
    heads_all, _ = vae.encode(params, y_dev, None if condition is None else bk.asarray(condition))
    kl_closed, log_qc, log_qagg, log_p = [], [], [], []
    for sl in _batches(n, batch_size):
        heads = {h: v[sl] for h, v in heads_all.items()}
        state = vae.latent.sample(bk, heads, vae.draw_noise(noise, sl.stop - sl.start, samples),
                                  estimator=vae.latent.evaluation_estimator)
        kl_closed.append(vae.latent.kl(bk, state))
        x = state.x.reshape(-1, state.x.shape[-1])
        cross = vae.latent.log_q_cross(bk, heads_all, x)               # (B·S, N)
        log_qagg.append(bk.special.logsumexp(cross, axis=1) - math.log(n))
        log_qc.append(vae.latent.log_q(bk, state).reshape(-1))
        log_p.append(vae.latent.log_prior(bk, state).reshape(-1))
    log_qc, log_qagg, log_p = (xp.concatenate(a) for a in (log_qc, log_qagg, log_p))
    agg_terms, mi_terms = log_qagg - log_p, log_qc - log_qagg
    m = agg_terms.size

    def standard_error(a):
        return bk.to_float(a.std(ddof=1)) / math.sqrt(m) if m > 1 else float("nan")

    return {
        "n": n,
        "avg_kl": bk.to_float(xp.concatenate(kl_closed).mean()),
        "avg_kl_mc": bk.to_float((log_qc - log_p).mean()),
        "aggregate_kl": bk.to_float(agg_terms.mean()),
        "aggregate_kl_se": standard_error(agg_terms),
        "mutual_information": bk.to_float(mi_terms.mean()),
        "mutual_information_se": standard_error(mi_terms),
        "log_n": math.log(n),
    }


def evaluate(vae, params, y, seed: int = 0, samples: int = 1, iwae_k: int = 0,
             batch_size: int = 500, threshold: float = 0.01, progress=None,
             condition=None) -> dict:
    """What ``refvae evaluate`` prints: ``neg_elbo``, ``kl``, ``reconstruction`` (nats per datum),
    ``nll_iwae`` (when ``iwae_k`` > 0: minus the importance-weighted bound), ``active_units``,
    ``n``."""
    noise = NoiseSource(seed)
    kl, rec = neg_elbo_terms(vae, params, y, noise, samples, batch_size, condition)
    out = {"neg_elbo": float((kl + rec).mean()), "kl": float(kl.mean()),
           "reconstruction": float(rec.mean())}
    if iwae_k:
        out["nll_iwae"] = float(-iwae_bound(vae, params, y, noise, iwae_k,
                                            max(1, batch_size // 5), progress,
                                            condition).mean())
    out["active_units"] = active_units(vae, params, y, threshold, batch_size, condition)[0]
    out["n"] = int(y.shape[0])
    return out
