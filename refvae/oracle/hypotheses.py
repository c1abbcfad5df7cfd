"""Named hypotheses about a user's mistake, each tested by recomputing refvae's numbers under it
(ORACLE.md, "Reading a failing report").

A hypothesis predicts every quantity the user may export (``loss``, ``kl``, ``reconstruction``, the
per-datum arrays, ``grad/<name>``, ``heads/<name>``, ``x``, ``decoder_out``) and explains their
numbers when every quantity they exported agrees with its prediction at that tensor's tolerance
(float32 or float64, by their dtype). Two kinds:

* **reruns**: refvae's hand-derived passes on a modified model: a Gaussian latent whose sampler
  is the mistaken one, with its own hand-derived pathwise derivative (:mod:`.samplers`, every
  scale head of the diagonal Gaussian and the full-covariance one),
  the heads' parameters swapped, another temperature or estimator of a categorical latent;
* **affine**: mistakes that scale or shift the reconstruction and the KL terms (a missing ½, a
  reduction over N, D or L, a missing constant, a KL without gradient). Their effect on the loss
  and on every gradient is linear in refvae's own terms:
  ``loss' = a_r b_r REC + a_k b_k KL + consts`` and ``grad' = a_r b_r (g − g_KL) + a_k b_k g_KL``,
  with ``g_KL`` the KL's share of the encoder gradients from refvae's reverse pass
  (:func:`kl_gradients`). No autograd anywhere.

``KEYS`` lists every hypothesis' stable key (tests and ORACLE.md's table use them).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import samplers

GRAD, HEADS = "grad/", "heads/"


@dataclass(frozen=True)
class Hypothesis:
    """``key`` (stable), ``text`` (the hint), ``predict(ctx)`` -> predicted arrays under refvae's
    names (a missing name: refvae's own value; ``None``: not judged)."""

    key: str
    text: str
    predict: Callable


class Context:
    """refvae's numbers for one comparison, computed once: the arrays (forward pass included) and
    the KL's share of every gradient."""

    def __init__(self, ours):
        self.ours = ours
        self.inputs = ours.inputs
        self.config = ours.inputs.vae.config
        self.base = {**ours.intermediates(), **ours.arrays()}
        self._kl = None

    @property
    def n(self) -> int:
        return self.inputs.y.shape[0]

    @property
    def samples(self) -> int:
        return self.inputs.noise.shape[1]

    @property
    def kl_share(self) -> dict:
        if self._kl is None:
            self._kl = kl_gradients(self.ours)
        return self._kl

    def rerun(self, **changes) -> dict:
        res = self.ours.rerun(**changes)
        return {**res.intermediates(), **res.arrays()}


def kl_gradients(ours) -> dict:
    """The KL term's share of every encoder gradient, ``grad/<name>``: the latent's closed-form
    KL gradient taken back through the encoder (refvae's own reverse pass)."""
    inp = ours.inputs
    vae, bk = inp.vae, inp.vae.bk
    params = {k: bk.asarray(v) for k, v in inp.params.items()}
    fp = vae.forward(params, bk.asarray(inp.y), bk.asarray(inp.noise), ours.estimator,
                     inp.temperature, None if inp.condition is None else bk.asarray(inp.condition))
    scale = ours.scale / (inp.y.shape[0] if ours.reduction == "mean" else 1.0)
    kl_g = vae.latent.kl_grads(bk, fp.state)
    d_heads = bk.xp.concatenate([scale * kl_g[h] for h, _ in vae.latent.heads()], axis=-1)
    back = vae.encoder.backward(bk, params, fp.enc_cache, d_heads, input_grad=False)
    return {GRAD + k: np.asarray(bk.to_numpy(v)) for k, v in back.grads.items()}


# ----- affine mistakes ---------------------------------------------------------------------------
def affine(a_r=1.0, b_r=1.0, c_r=0.0, a_k=1.0, b_k=1.0, c_k=0.0, grad_r=None, grad_k=None):
    """Reconstruction and KL per datum scaled by ``a`` and shifted by ``c``, their batch totals
    scaled by ``b``; the gradients by ``a·b`` unless ``grad_r``/``grad_k`` say otherwise."""
    g_r = a_r * b_r if grad_r is None else grad_r
    g_k = a_k * b_k if grad_k is None else grad_k

    def predict(ctx: Context) -> dict:
        base, per = ctx.base, (ctx.n if ctx.ours.reduction == "sum" else 1)
        rec = b_r * (a_r * base["reconstruction"] + c_r * per)
        kl = b_k * (a_k * base["kl"] + c_k * per)
        out = {"loss": rec + kl, "reconstruction": rec, "kl": kl,
               "reconstruction_per_datum": a_r * base["reconstruction_per_datum"] + c_r,
               "kl_per_datum": a_k * base["kl_per_datum"] + c_k}
        for k, v in base.items():
            if k.startswith(GRAD):
                share = ctx.kl_share.get(k, 0.0)
                out[k] = g_r * (v - share) + g_k * share
        return out
    return predict


def factor_names(ctx: Context) -> list:
    """``(value, name, batch)``: N, D, N·D, L and their inverses (``batch``: a factor of the batch
    totals only, not of the per-datum terms)."""
    n, d, s = ctx.n, ctx.config.data_dim, ctx.samples
    out = []
    for value, name, batch in ((n, "N", True), (d, "D", False), (n * d, "N·D", True),
                               (s, "L", False)):
        if value > 1:
            out += [(float(value), name, batch), (1.0 / value, f"1/{name}" if "·" not in name
                                                  else f"1/({name})", batch)]
    return out


REDUCTION_WORDS = {
    "N": "your loss sums over the batch where refvae averages: tell the oracle with "
         "reduction='sum' "
         "(check, check_torch, compute; use --reduction sum on the command line)",
    "1/N": "your loss averages over the batch where refvae sums: tell the oracle with "
           "reduction='mean' (use --reduction mean on the command line)",
    "D": "your loss sums what refvae averages over the D data dimensions",
    "1/D": "your loss averages over the D data dimensions; the negative ELBO sums the "
           "log-likelihood "
           "over them (PyTorch: reduction='sum' in binary_cross_entropy/mse_loss, then divide by N "
           "yourself for a mean over the batch)",
    "N·D": "your loss sums over the N·D entries where refvae averages over the batch",
    "1/(N·D)": "your loss averages over all N·D entries (PyTorch's reduction='mean' in "
               "binary_cross_entropy/mse_loss); the negative ELBO sums the log-likelihood over the "
               "D "
               "dimensions of a datum: use reduction='sum' there",
    "L": "your loss sums over the L samples where refvae averages them",
    "1/L": "your loss divides by L once too often (refvae averages the reconstruction over the L "
           "samples)",
}


def _affine_hypotheses(ctx: Context) -> list:
    c, hyps = ctx.config, []
    k, d = c.latent_dim, c.data_dim
    for value, name, batch in factor_names(ctx):
        b, a = (value, 1.0) if batch else (1.0, value)
        hyps.append(Hypothesis(f"reduction:{name}", f"every term is {name} times refvae's: "
                               f"{REDUCTION_WORDS[name]}", affine(a, b, 0.0, a, b)))
        words = REDUCTION_WORDS[name].replace("your loss", "it")
        hyps.append(Hypothesis(f"reconstruction:{name}", f"your reconstruction term is {name} "
                                                         "times "
                               f"refvae's (the KL is not): {words}", affine(a, b)))
    hyps.append(Hypothesis("reconstruction:0", "your loss is the KL alone: the reconstruction term "
                                               "is "
                           "missing", affine(a_r=0.0)))
    kl_factors = [(2.0, 1.0, "2",
                   "the ½ of the KL is missing (KL = ½ Σ_k (σ² + μ² − 1 − log σ²))"),
                  (0.5, 1.0, "1/2", "the KL carries ½ twice"),
                  (-1.0, 1.0, "-1", "your loss is reconstruction − KL: the KL term has the wrong "
                                    "sign "
                                    "(the loss adds KL(q‖p) ≥ 0, §8.2.2)"),
                  (0.0, 1.0, "0", "your loss is the reconstruction alone: the KL term is missing"),
                  (1.0 / d, 1.0, "1/D", "your KL is divided by D (the loss was averaged over the "
                                        "data "
                                        "dimensions after the KL was added?)")]
    if k > 1:
        kl_factors.append((1.0 / k, 1.0, "1/K", "your KL averages over the K latent dimensions "
                                                "(torch.mean where the KL sums over them)"))
    if ctx.n > 1:
        kl_factors += [(1.0, float(ctx.n), "N", "your KL is summed over the batch inside a loss "
                                               "averaged over it (a KL of N times refvae's)"),
                       (1.0, 1.0 / ctx.n, "1/N", "your KL is averaged over the batch while the "
                                                "reconstruction is summed (or the other way "
                                                "round)")]
        if k > 1:
            kl_factors.append((1.0 / k, 1.0 / ctx.n, "1/(N·K)", "your KL is torch.mean over all "
                                                                "N·K "
                                                               "entries where it sums over K"))
    for a, b, name, text in kl_factors:
        hyps.append(Hypothesis(f"kl:{name}", text, affine(a_k=a, b_k=b)))
    hyps.append(Hypothesis("kl:detached", "the encoder's gradients lack the KL's while your loss "
                                          "counts "
                           "it: the KL is detached (.detach(), .item(), no_grad) or computed from "
                           "detached heads", affine(grad_k=0.0)))
    if c.latent in ("gaussian", "gaussian_full"):
        hyps.append(Hypothesis("kl:+K/2", f"the KL is off by {k / 2:g} per datum = K/2: the 1 in "
                               "KL = −½ Σ(1 + log σ² − μ² − σ²) is missing",
                               affine(c_k=k / 2)))
        hyps.append(Hypothesis("kl:-K/2",
                               f"the KL is off by {-k / 2:g} per datum = −K/2: the KL's "
                                          "1 "
                               "is counted twice", affine(c_k=-k / 2)))
    if c.latent == "categorical":
        const = k * math.log(c.categories)
        hyps.append(Hypothesis("kl:-KlogC", f"the KL lacks K·log C = {const:.6g} per datum: Σ π "
                                            "log π "
                               "(the negative entropy) in place of the KL to the uniform prior, "
                               "Σ π log(C π)", affine(c_k=-const)))
    if c.emission in ("gaussian", "gaussian_diag"):
        norm = d / 2 * math.log(2 * math.pi)
        hyps.append(Hypothesis("emission:-normaliser", f"the reconstruction lacks the Gaussian "
                               f"emission's normaliser D/2·log 2π = {norm:.6g} per datum",
                               affine(c_r=-norm)))
        alpha = c.alpha
        if c.emission == "gaussian" and not c.learn_alpha:
            if alpha != 1.0:
                full = d / 2 * math.log(2 * math.pi * alpha)
                hyps.append(Hypothesis("emission:-normaliser-alpha", "the reconstruction lacks the "
                                       f"normaliser D/2·log(2πα) = {full:.6g} per datum",
                                       affine(c_r=-full)))
            hyps.append(Hypothesis("emission:mse", "your reconstruction is the summed squared "
                                                   "error "
                                   "(mse_loss(..., reduction='sum')), not the Gaussian surprisal "
                                   "Σ (y − μ)²/(2α) + D/2·log(2πα): the ½/α and the "
                                   "normaliser "
                                   "differ",
                                   affine(a_r=2 * alpha,
                                          c_r=-alpha * d * math.log(2 * math.pi * alpha))))
    return hyps


# ----- mistaken samplers of Gaussian latents (:mod:`.samplers`) -----------------------------------
def _rerun_with(latent):
    def predict(ctx: Context) -> dict:
        vae = copy.copy(ctx.inputs.vae)
        vae.latent = latent
        return ctx.rerun(vae=vae)
    return predict


def _swapped_heads(ctx: Context) -> dict:
    """The user's model reads the mean from the parameters refvae calls logvar, and vice versa."""
    params = dict(ctx.inputs.params)
    for leaf in ("weight", "bias"):
        params[f"encoder.mean.{leaf}"], params[f"encoder.logvar.{leaf}"] = \
            params[f"encoder.logvar.{leaf}"], params[f"encoder.mean.{leaf}"]
    out = ctx.rerun(params=params)
    for leaf in ("weight", "bias"):
        m, v = f"{GRAD}encoder.mean.{leaf}", f"{GRAD}encoder.logvar.{leaf}"
        out[m], out[v] = out[v], out[m]
    out[HEADS + "mean"] = out[HEADS + "logvar"] = None   # either order: recorded or as used
    return out


def _sampler_hypotheses(ctx: Context, label) -> list:
    """The sampler's mistakes (:mod:`.samplers`) for a Gaussian latent with the pathwise
    estimator: every scale head of the diagonal one, and the full-covariance one; not offered
    with a flow, head activations or a condition."""
    c, latent = ctx.config, ctx.inputs.vae.latent
    if c.latent not in ("gaussian", "gaussian_full") or c.flow_length \
            or ctx.ours.estimator != "pathwise" or c.head_activations or c.condition_dim:
        return []
    if c.latent == "gaussian_full":
        return [Hypothesis(f"sampler:{m}", f"{text}: {samplers.correct(c)}",
                           _rerun_with(samplers.MistakenFullSampler(latent, m)))
                for m, text in samplers.FULL_MISTAKES.items()]
    logvar = ", ".join(label(GRAD + f"encoder.logvar.{leaf}") for leaf in ("weight", "bias"))
    hyps = [Hypothesis(key, text, _rerun_with(samplers.MistakenSampler(latent, loc, scale)))
            for key, text, loc, scale in samplers.diagonal_mistakes(latent, logvar)]
    hyps.append(Hypothesis("heads:swapped", "your model uses the mean head as the scale head and "
                           "the scale head as the mean: the heads are swapped (a wrong head); "
                           "swap them in the model or in name_map (--map)", _swapped_heads))
    return hyps


# ----- categorical latents, score baselines
# --------------------------------------------------------
def _score_own_sample(ctx: Context) -> dict:
    """A baseline that includes the sample's own f (the mean over all L samples): every sample's
    ``f_l − β`` is ``(L − 1)/L`` of the leave-one-out one, so the estimator's share of the
    encoder gradients shrinks by that factor (the KL's share does not)."""
    shrink = (ctx.samples - 1) / ctx.samples
    return affine(grad_r=1.0)(ctx) | {
        k: shrink * (v - ctx.kl_share[k]) + ctx.kl_share[k]
        for k, v in ctx.base.items() if k in ctx.kl_share}


def _other_hypotheses(ctx: Context) -> list:
    hyps, est, s = [], ctx.ours.estimator, ctx.inputs.temperature
    if ctx.config.latent == "categorical":
        if s is not None and s != 1.0:
            hyps.append(Hypothesis("temperature:missing", "your relaxed sample ignores the "
                                                          "temperature "
                                   f"(softmax(η + G) where refvae uses softmax((η + G)/{s:g}))",
                                   lambda c: c.rerun(temperature=1.0)))
            hyps.append(Hypothesis("temperature:multiplied", "your relaxed sample multiplies by "
                                                             "the "
                                   f"temperature {s:g} where it divides: softmax((η + G)·s)",
                                   lambda c: c.rerun(temperature=1.0 / s)))
        if est == "straight-through":
            hyps.append(Hypothesis("straight-through:relaxed-forward",
                                   "your straight-through forward "
                                   "pass feeds the relaxed sample, not the one-hot argmax (that is "
                                   "gumbel-softmax: y_hard − y_soft.detach() + y_soft is "
                                   "missing)",
                                   lambda c: c.rerun(estimator="gumbel-softmax")))
        if est == "gumbel-softmax" and s is not None:
            hyps.append(Hypothesis("gumbel-softmax:hard-forward", "your forward pass feeds the "
                                                                  "one-hot "
                                   "argmax with the relaxed sample's gradient: that is "
                                   "straight-through; "
                                   "pass estimator='straight-through' (--estimator "
                                   "straight-through)",
                                   lambda c: c.rerun(estimator="straight-through")))
    loo = est == "score-loo" or (ctx.config.latent == "categorical" and est == "score")
    if loo and ctx.samples >= 2:
        hyps.append(Hypothesis("score:own-sample-baseline", "your score-function baseline includes "
                                                            "the "
                               "sample's own f (the mean over all L samples): biased; leave sample "
                               "l "
                               "out of its baseline", _score_own_sample))
    return hyps


def catalogue(ctx: Context, label=str) -> list:
    """Every hypothesis that applies to this model, estimator and batch."""
    return _sampler_hypotheses(ctx, label) + _other_hypotheses(ctx) + _affine_hypotheses(ctx)


def explaining(theirs: dict, ours, agrees, label=str) -> tuple:
    """``(hypotheses that explain every exported quantity, how many were tested)``."""
    ctx = Context(ours)
    hyps = catalogue(ctx, label)
    found = []
    for h in hyps:
        predicted = h.predict(ctx)
        judged = [k for k in theirs if predicted.get(k, ctx.base.get(k)) is not None]
        if judged and all(agrees(k, predicted.get(k, ctx.base.get(k))) for k in judged):
            found.append(h)
    return found, len(hyps)
