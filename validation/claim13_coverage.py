"""Claim 13: refvae's pieces that no other claim reaches, each measured against an independent
reference with a rule that a bug in it would break.

A. Exact derivatives at fixed noise. With the noise held fixed, the pathwise gradient (Eq. 8.24),
   the gradient through the planar flows (Eq. 8.25) and the Gumbel-softmax gradient (Eq. 8.29,
   with the analytic or the relaxed KL) are the exact derivatives of the sampled loss, so
   ``loss_and_grads`` must equal central differences of ``VAE.loss`` — for every activation
   (tanh, sigmoid, softplus, relu, silu, identity), every emission and a learned α.
B. Estimators as defined (§8.2.1). At fixed noise and a given surprisal ``f``, each score-function
   control variate, Price's covariance term and the categorical score estimator are recomputed
   here in NumPy from their definitions (the module docstring of ``refvae.math.estimators``): a
   baseline that sees its own sample, or a running mean updated before use, changes the numbers.
   Straight-through's forward pass must see the hard sample (its loss equals the ``hard`` loss).
C. The exponential latent's pathwise and score estimators are unbiased for
   ``∂/∂λ E[x²] = −4/λ³`` (x ~ Exp(λ)), within 4 standard errors.
D. IWAE on a linear-Gaussian model whose encoder is the exact posterior: every importance weight
   equals p(y), so ``L_k = log p(y)`` (closed form, ``N(b, WWᵀ + αI)``) to rounding for every k.
E. Optimizers: three Adam and three SGD (momentum) steps equal ``torch.optim``'s on the same
   gradients; sharded batches (two threads, ``refvae.fast.parallel``) equal one thread to rounding.
F. Minibatch order: ``refvae.train.loop`` visits every datum once per epoch, in an order that
   differs between epochs and is fixed by the seed.
"""
from __future__ import annotations

import math
import tempfile

import numpy as np

from refvae import NoiseSource
from refvae.fast import parallel
from refvae.math.config import VAEConfig
from refvae.data.load import Dataset
from refvae.math.estimators import DecoderSignals, get_estimator
from refvae.gradcheck import numerical_gradient
from refvae.math.latent import exponential
from refvae.math.objectives import iwae_bound
from refvae.fast.optim import make_optimizer
from refvae.optim.rules import FlatParams
from refvae.train import loop as train_module
from refvae.train.loop import TrainOptions, train
from refvae.math.vae import VAE
from refvae.witness import torch_or_none

try:
    from validation.closed_forms import exact_posterior_case
    from validation.common import Claim, Context, main, rel
except ImportError:  # pragma: no cover
    from closed_forms import exact_posterior_case
    from common import Claim, Context, main, rel

TITLE = ("Fixed-noise gradients are exact derivatives, estimators are what they are defined to be; "
         "flows, "
         "relaxed KL, exponential latent, activations, optimizers, shards, minibatch order, IWAE "
         "normalizer")
SOURCE = (
    "chapter Eqs. 8.16–8.17, 8.24–8.29, §8.2.1; Burda et al. 2016 (IWAE); Kingma & Ba 2015 "
    "(Adam)")
FULL_MODE = "the same run as quick (deterministic checks; under 30 s); measured"
# Central differences in float64 with step 1e-6 are good to ~1e-8 relative; definitions recomputed
# in NumPy agree to rounding (1e-10); a Monte Carlo mean within 4 standard errors.
TOL_FD, TOL_EXACT, TOL_Z = 1e-6, 1e-10, 4.0
N, D, K, L = 3, 4, 2, 4


def _data(emission: str, rng) -> np.ndarray:
    return (rng.random((N, D))
            < 0.5).astype(float) if emission == "bernoulli" else rng.normal(size=(N, D))


def fd_case(label: str, config: dict, estimator=None, temperature=None, seed: int = 0) -> list:
    """``loss_and_grads`` against central differences of ``loss`` at fixed noise."""
    cfg = dict(data_dim=D, latent_dim=K, encoder_hidden=[3], decoder_hidden=[3]) | config
    vae = VAE(cfg)
    noise = NoiseSource(seed)
    params = vae.init_params(noise)
    rng = np.random.default_rng(seed)
    y = _data(cfg.get("emission", "bernoulli"), rng)
    eps = vae.draw_noise(noise, N, L)
    res = vae.loss_and_grads(params, y, eps, estimator, temperature=temperature)
    num = numerical_gradient(lambda p: vae.loss(p, y, eps, estimator=estimator,
                                                temperature=temperature), params)
    err = max(rel(res.grads[k], num[k]) for k in num)
    return [f"A: {label}", "finite differences of VAE.loss", err, TOL_FD, err < TOL_FD]


def part_a() -> list:
    rows = []
    for act in ("tanh", "sigmoid", "softplus", "relu", "silu", "identity"):
        rows.append(fd_case(f"pathwise, {act}, gaussian emission, learned α",
                            dict(activation=act, emission="gaussian", learn_alpha=True)))
    rows.append(fd_case("pathwise, bernoulli emission",
                        dict(activation="tanh", emission="bernoulli")))
    rows.append(fd_case("pathwise, gaussian_diag emission",
                        dict(activation="softplus", emission="gaussian_diag")))
    rows.append(fd_case("planar flows (T = 2)",
                        dict(activation="tanh", emission="gaussian", flow_length=2)))
    for kl in ("analytic", "relaxed"):
        rows.append(fd_case(f"Gumbel-softmax, {kl} KL, s = 0.7",
                            dict(latent="categorical", categories=3, categorical_kl=kl,
                                 emission="bernoulli"),
                            "gumbel-softmax", 0.7))
    return rows


def _gaussian_state(seed: int):
    vae = VAE(dict(data_dim=D, latent_dim=K, encoder_hidden=[], decoder_hidden=[],
                   emission="gaussian"))
    rng = np.random.default_rng(seed)
    heads = {"mean": rng.normal(size=(N, K)), "logvar": 0.5 * rng.normal(size=(N, K))}
    eps = rng.normal(size=(N, L, K))
    return vae, heads, vae.latent.sample(vae.bk, heads, eps), eps, rng


def _score_reference(name: str, f, s, running_mean: float):
    """``w Σ_l (f_l − β_l) s_l`` with β from the definitions; ``s`` ``(N, L, P)``."""
    if name == "score":
        beta = np.zeros_like(s)
    elif name == "score-loo":
        beta = np.broadcast_to(((f.sum(1, keepdims=True) - f) / (L - 1))[..., None], s.shape)
    elif name == "score-running":
        beta = np.full_like(s, running_mean)
    else:  # score-optimal: coefficient from the other half
        h = L // 2
        beta = np.empty_like(s)
        for mine, other in ((slice(0, h), slice(h, L)), (slice(h, L), slice(0, h))):
            c = (s[:, other] ** 2 * f[:, other, None]).sum(1) / (s[:, other] ** 2).sum(1)
            beta[:, mine] = c[:, None, :]
    return ((f[..., None] - beta) * s).sum(1)


def part_b(seed: int) -> list:
    rows = []
    vae, heads, state, eps, rng = _gaussian_state(seed)
    f = rng.normal(size=(N, L)) + 3.0
    std = np.exp(0.5 * heads["logvar"])
    scores = {"mean": eps / std[:, None, :], "logvar": 0.5 * (eps ** 2 - 1.0)}
    for name in ("score", "score-loo", "score-running", "score-optimal"):
        store = {"score_running_mean": 2.5, "score_running_steps": 3}
        got = get_estimator("gaussian", name)(vae.bk, vae.latent, state,
                                              DecoderSignals(None, f, 1.0, None, store))
        err = max(rel(got[h], _score_reference(name, f, scores[h], 2.5)) for h in scores)
        rows.append([f"B: {name} control variate", "its definition, in NumPy", err, TOL_EXACT,
                     err < TOL_EXACT])
    g = rng.normal(size=(N, L, K))
    hdiag = rng.random((N, L, K))
    got = get_estimator("gaussian", "price")(vae.bk, vae.latent, state,
                                             DecoderSignals(g, f, 1.0, lambda full=False: hdiag))
    want = {"mean": g.sum(1), "logvar": 0.5 * np.exp(heads["logvar"]) * hdiag.sum(1)}
    err = max(rel(got[h], want[h]) for h in want)
    rows.append(["B: price (Eqs. 8.16–8.17)", "⟨g⟩, ½ υ² ⟨H_kk⟩", err, TOL_EXACT,
                 err < TOL_EXACT])
    got = get_estimator("gaussian", "pathwise")(vae.bk, vae.latent, state,
                                                DecoderSignals(g, f, 1.0))
    want = {"mean": g.sum(1), "logvar": 0.5 * std * (g * eps).sum(1)}
    err = max(rel(got[h], want[h]) for h in want) + rel(state.x,
                                                        heads["mean"][:, None] + std[:, None] * eps)
    rows.append(["B: pathwise sample and gradient (Eq. 8.24)",
                 "x = ν + e^{ℓ/2} z; ⟨g⟩, ½ υ ⟨g z⟩",
                 err,
                 TOL_EXACT, err < TOL_EXACT])
    rows += _categorical_rows(seed)
    return rows


def _categorical_rows(seed: int) -> list:
    c = 3
    vae = VAE(dict(data_dim=D, latent_dim=K, latent="categorical", categories=c, encoder_hidden=[3],
                   decoder_hidden=[3], emission="bernoulli"))
    noise = NoiseSource(seed)
    params = vae.init_params(noise)
    y = _data("bernoulli", np.random.default_rng(seed))
    g0 = vae.draw_noise(noise, N, L)
    heads, _ = vae.encode(params, y)
    state = vae.latent.sample(vae.bk, heads, g0, estimator="score")
    f = np.random.default_rng(seed + 1).normal(size=(N, L)) + 3.0
    got = get_estimator("categorical", "score")(vae.bk, vae.latent, state,
                                                DecoderSignals(None, f, 1.0))["logits"]
    pi = np.exp(heads["logits"].reshape(N, K, c))
    pi /= pi.sum(-1, keepdims=True)
    onehot = np.asarray(state.hard).reshape(N, L, K, c)
    loo = (f.sum(1, keepdims=True) - f) / (L - 1)
    want = ((f - loo)[..., None, None] * (onehot - pi[:, None])).sum(1).reshape(N, -1)
    err = rel(got, want)
    rows = [["B: categorical score, leave-one-out baseline", "its definition, in NumPy", err,
             TOL_EXACT,
             err < TOL_EXACT]]
    hard = vae.loss(params, y, g0, estimator="hard")
    st = vae.loss(params, y, g0, estimator="straight-through", temperature=0.7)
    rows.append(["B: straight-through forward = hard sample", "VAE.loss with estimator 'hard'",
                 abs(st - hard) / abs(hard), TOL_EXACT, abs(st - hard) / abs(hard) < TOL_EXACT])
    return rows


def part_c(seed: int, draws: int) -> list:
    rng = np.random.default_rng(seed)
    rate = 1.7
    u = rng.random(draws)
    x = np.asarray(exponential.sample(VAE(dict(data_dim=1, latent_dim=1)).bk, rate, u))
    exact = -4.0 / rate ** 3
    rows = []
    for name, per_draw in (("pathwise",
                            exponential.pathwise_gradient(x[:, None], rate, 2 * x[:, None],
                                                          axis=1)),
                           ("score",
                            exponential.score_gradient(x[:, None], rate, x[:, None] ** 2, axis=1))):
        per_draw = np.asarray(per_draw).ravel()
        z = (per_draw.mean() - exact) / (per_draw.std(ddof=1) / math.sqrt(draws))
        rows.append([f"C: exponential latent, {name}", f"−4/λ³ = {exact:.4f}", abs(z), TOL_Z,
                     abs(z) < TOL_Z])
    return rows


def part_d(seed: int) -> list:
    config, params, y, exact = exact_posterior_case(seed)
    vae = VAE(config)
    rows = []
    for kk in (1, 50):
        got = iwae_bound(vae, params, y, NoiseSource(seed), k=kk)
        err = float(np.abs(got - exact).max())
        rows.append([f"D: IWAE L_{kk}, exact posterior", "log p(y) = log N(b, WWᵀ + αI)", err,
                     1e-9,
                     err < 1e-9])
    return rows


def part_e(seed: int) -> list:
    torch = torch_or_none()
    rows = []
    rng = np.random.default_rng(seed)
    p0, grads = rng.normal(size=7), [rng.normal(size=7) for _ in range(3)]
    for name, kw, make in (("adam", dict(lr=0.1), lambda ps: torch.optim.Adam(ps, lr=0.1)),
                           ("sgd", dict(lr=0.1, momentum=0.9),
                            lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))):
        if torch is None:
            continue
        flat = FlatParams.from_dict(VAE(dict(data_dim=1, latent_dim=1)).bk, {"p": p0.copy()})
        opt = make_optimizer(name, flat.bk, flat.size, **kw)
        tp = torch.tensor(p0.copy(), requires_grad=True)
        topt = make([tp])
        for g in grads:
            flat.set_grads({"p": g})
            opt.step(flat, lr=kw["lr"])
            tp.grad = torch.tensor(g)
            topt.step()
        err = rel(flat.params["p"], tp.detach().numpy())
        rows.append([f"E: {name}, three steps", f"torch.optim.{type(topt).__name__}", err,
                     TOL_EXACT, err < TOL_EXACT])
    vae = VAE(dict(data_dim=D, latent_dim=K, encoder_hidden=[5], decoder_hidden=[5],
                   emission="bernoulli"))
    noise = NoiseSource(seed)
    params = vae.init_params(noise)
    y = (rng.random((64, D)) < 0.5).astype(float)
    eps = vae.draw_noise(noise, 64, 2)
    one = vae.loss_and_grads(params, y, eps)
    with parallel.Workers(2) as workers:
        two = parallel.loss_and_grads(vae, workers, params, y, eps)
    err = (max(rel(two.grads[k], one.grads[k]) for k in one.grads) + abs(two.loss - one.loss)
           / abs(one.loss))
    rows.append(["E: two row shards (--threads 2)", "one thread", err, TOL_EXACT, err < TOL_EXACT])
    return rows


def visit_orders(seed: int, epochs: int = 3, n: int = 12) -> list:
    """The order in which ``refvae.train.loop`` sees the training rows, one list per epoch."""
    y = np.random.default_rng(123).random((n, 3))
    index = {row.tobytes(): i for i, row in enumerate(y)}
    seen = []
    loop = train_module.parallel      # the module whose loss_and_grads the training loop calls
    inner = loop.loss_and_grads

    def spy(model, workers, params, yb, *args, **kw):
        seen.extend(index[np.asarray(row).tobytes()] for row in yb)
        return inner(model, workers, params, yb, *args, **kw)

    loop.loss_and_grads = spy
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train(VAEConfig(data_dim=3, latent_dim=1, encoder_hidden=[2], decoder_hidden=[2],
                            emission="gaussian"),
                  TrainOptions(epochs=epochs, batch_size=4, seed=seed, progress=False),
                  Dataset("rows", y, y[:2]), tmp)
    finally:
        loop.loss_and_grads = inner
    return [seen[e * n:(e + 1) * n] for e in range(epochs)]


def part_f(seed: int) -> list:
    first, again = visit_orders(seed), visit_orders(seed)
    each_once = all(sorted(o) == list(range(len(o))) for o in first)
    differ = len({tuple(o) for o in first}) == len(first)
    ok = each_once and differ and first == again
    return [["F: minibatch order", "a permutation per epoch, new each epoch, fixed by the seed",
             f"each once: {each_once}, epochs differ: {differ}, seed repeats: {first == again}",
             "all true", ok]]


def run(ctx: Context) -> Claim:
    rows = part_a() + part_b(ctx.seed) + part_c(ctx.seed,
                                                20000 if ctx.quick else 200000) + part_d(ctx.seed) \
        + part_e(ctx.seed) + part_f(ctx.seed)
    ok = all(r[-1] for r in rows)
    bad = [r[0] for r in rows if not r[-1]]
    return Claim(TITLE, SOURCE, ok,
                 f"{len(rows) - len(bad)} of {len(rows)} checks pass"
                 + (f"; failing: {'; '.join(bad)}" if bad else ""),
                 threshold=f"relative error < {TOL_FD} against central differences, < {TOL_EXACT} "
                           "against a "
                           f"definition or engine recomputed independently; |z| < {TOL_Z} for "
                           "Monte Carlo means",
                 tables=[("Each check", ["check", "reference", "error or |z|", "threshold", "pass"],
                          [r[:4] + ["yes" if r[4] else "NO"] for r in rows])])


if __name__ == "__main__":
    raise SystemExit(main(run))
