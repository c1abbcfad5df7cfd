"""The oracle's diagnosis: from a failing comparison to the first quantity that differs and a
likely cause (ORACLE.md, "Reading a failing report").

With intermediates (``heads/<name>``, ``x``, ``decoder_out``, the per-datum KL and reconstruction)
the forward pass is walked in order and the first quantity that differs is named. Without them the
pattern of the failures is read: a constant offset of the loss, a factor (N, D, N·D, L) on every
failing tensor or on the decoder's gradients alone, decoder gradients right and encoder gradients
wrong. Each hypothesis is tested by recomputing refvae's numbers under it (through the VAE's own
functions) and comparing with the user's tensor at that tensor's tolerance; only hypotheses that
fit are reported.

Host-side by design, hence NumPy: every array here is a host copy from the comparison report (the
user's tensors and refvae's), and the NumPy expressions are the candidate *mistakes* (exp(ℓ) as
the scale, swapped heads, …) checked against the user's values. refvae's own numbers come from
the VAE on its backend and reach this module through ``bk.to_numpy`` (:func:`kl_gradients`).
"""
from __future__ import annotations

import math

import numpy as np

GRAD, HEADS = "grad/", "heads/"
SAMPLER = "Eq. 8.24: x = ν + exp(ℓ/2)·ε"


def diagnose(theirs: dict, mine: dict, report, ours, agrees) -> list:
    """Hints for a failing report: ``theirs``/``mine`` are the compared arrays under refvae's names,
    ``agrees(name, candidate)`` tells whether a hypothetical value of ``name`` would pass."""
    failed = {c.name for c in report.failures()}
    hints = []
    walked = forward_walk(theirs, mine, failed, ours, agrees, report.label)
    if walked:
        hints.append(walked)
    if not walked or walked.startswith("the loss"):
        hints += patterns(theirs, mine, failed, ours, agrees, report.label)
    hints += saturation(theirs, ours, failed)
    return hints or ["no pattern recognised: compare the worst entries below, and export the "
                     "intermediates (heads/<name>, x, decoder_out, kl_per_datum, reconstruction_per_datum) "
                     "to find the first quantity that differs"]


# ----- walking the forward pass -----------------------------------------------------------------
def forward_walk(theirs, mine, failed, ours, agrees, label) -> str | None:
    """The first exported intermediate that differs, with what it points at."""
    heads = [k for k in mine if k.startswith(HEADS)]
    for h in heads:
        if h in failed:
            other = [g for g in heads if g != h and agrees(h, mine[g])]
            if other:
                return (f"the encoder head {label(h)} equals refvae's {other[0]}: your model reads its "
                        "heads the other way round (a wrong head)")
            return (f"the encoder head {label(h)} is the first quantity that differs: with the same "
                    "parameters and input this is the encoder's forward pass (its layers, activation, "
                    "or which of your layers feeds this head: check the name map)")
    if "x" in failed:
        return sampler_hint(theirs, mine, ours, agrees, any(h in theirs for h in heads))
    if "decoder_out" in failed:
        return ("the decoder output is the first quantity that differs while its input x agrees: look at "
                "the decoder's layers and activation (and the name map of its modules)")
    if "kl_per_datum" in failed:
        return kl_hint(theirs, mine, ours, agrees, per_datum=True)
    if "reconstruction_per_datum" in failed:
        return ("the reconstruction per datum differs while the KL (and the decoder output, where "
                "exported) agrees: look at the emission's log-likelihood (its sum over the D dimensions, "
                "the mean over the L samples, a missing constant)")
    return None


def sampler_hint(theirs, mine, ours, agrees, heads_known: bool) -> str:
    """Which sampling transform produced their ``x`` (diagonal Gaussian latents)."""
    base = "the latent sample x differs while the encoder heads agree" if heads_known \
        else "the latent sample x is the first exported quantity that differs"
    nu, lv = mine.get(HEADS + "mean"), mine.get(HEADS + "logvar")
    if nu is None or lv is None:
        return f"{base}: look at your sampling transform"
    eps = ours.inputs.noise
    nu, lv = nu[:, None, :], lv[:, None, :]
    candidates = [
        (nu + np.exp(lv) * eps, "your sampler uses exp(logvar), the variance, as the standard deviation; "
                                 "the scale is exp(logvar/2)"),
        (nu + lv * eps, "your sampler uses logvar itself as the standard deviation; the scale is exp(logvar/2)"),
        (lv + np.exp(nu / 2) * eps, "your sampler takes the mean from the log-variance head and the scale "
                                    "from the mean head: the heads are swapped (a wrong head)"),
        (nu + 0 * eps, "your sample is the mean alone: the noise is not added"),
    ]
    for value, cause in candidates:
        if agrees("x", value):
            return f"{base}: {cause} ({SAMPLER})"
    return f"{base}: look at your sampling transform, {SAMPLER}"


def kl_hint(theirs, mine, ours, agrees, per_datum: bool) -> str:
    """Their KL against refvae's under a flipped sign or a constant."""
    k = ours.inputs.vae.config.latent_dim
    name = "kl_per_datum"
    if agrees(name, -mine[name]):
        return "the KL per datum has the wrong sign (the loss must add KL(q‖p) ≥ 0, §8.2.2)"
    diff = float(np.median(theirs[name] - mine[name]))
    if agrees(name, mine[name] + diff):
        return f"the KL per datum is off by the constant {diff:.6g}{constant_name(diff, ours)}"
    return f"the KL per datum is the first quantity that differs (KL = ½ Σ_k (σ_k² + μ_k² − 1 − log σ_k²), K = {k})"


def constant_name(per_datum: float, ours) -> str:
    """`` (= K/2: ...)`` when a per-datum constant is one we know, else ``""``."""
    c = ours.inputs.vae.config
    known = [(c.latent_dim / 2, "K/2: the 1 in KL = −½ Σ(1 + log σ² − μ² − σ²) is missing"),
             (-c.latent_dim / 2, "−K/2: the KL's 1 is counted twice"),
             (c.data_dim / 2 * math.log(2 * math.pi), "D/2·log 2π: the Gaussian emission's normaliser"),
             (-c.data_dim / 2 * math.log(2 * math.pi), "−D/2·log 2π: the Gaussian emission's normaliser is missing")]
    for value, what in known:
        if math.isclose(per_datum, value, rel_tol=1e-5, abs_tol=1e-9):
            return f" (= {what})"
    return ""


# ----- patterns of loss and gradients -----------------------------------------------------------
def factors(ours) -> list:
    inp = ours.inputs
    n, samples, d = inp.y.shape[0], inp.noise.shape[1], inp.y.shape[1]
    base = [(n, "N"), (d, "D"), (n * d, "(N·D)"), (samples, "L")]
    out = []
    for value, name in base:
        if value > 1:
            out += [(float(value), name), (1.0 / value, f"1/{name}")]
    return out


def patterns(theirs, mine, failed, ours, agrees, label) -> list:
    """Hints read from the loss and the gradients alone."""
    grads = [k for k in mine if k.startswith(GRAD)]
    bad_grads = [k for k in grads if k in failed]
    enc = [k for k in grads if k.startswith(GRAD + "encoder.")]
    dec = [k for k in grads if not k.startswith(GRAD + "encoder.")]
    n = ours.inputs.y.shape[0]
    per = n if ours.reduction == "sum" else 1
    fits = factors(ours)

    def scaled(names):
        return next(((f, w) for f, w in fits if names and all(agrees(k, mine[k] * f) for k in names)), None)

    if not bad_grads and "loss" in failed:
        c = float(theirs["loss"]) - ours.loss
        return [f"the loss differs from refvae's by the constant {c:.6g} ({c / per:.6g} per datum) while every "
                f"gradient agrees: a term that does not depend on the parameters is missing or extra"
                f"{constant_name(c / per, ours)}"]
    hints = []
    both = scaled([k for k in failed if k in mine])
    if both:
        f, what = both
        hints.append(f"every failing tensor is {what} times refvae's{reduction_advice(what, ours)}")
        return hints
    dec_factor = scaled(dec) if any(k in failed for k in dec) else None
    if dec_factor:
        f, what = dec_factor
        hints.append(f"your reconstruction term is {what} times refvae's (every decoder gradient is)"
                     f"{reconstruction_advice(what)}")
        return hints
    if "loss" in theirs and "loss" in failed:
        if agrees("loss", ours.reconstruction - ours.kl):
            hints.append("your loss is reconstruction − KL: the KL term has the wrong sign (§8.2.2)")
        elif agrees("loss", ours.reconstruction):
            hints.append("your loss is the reconstruction alone: the KL term is missing")
        elif agrees("loss", ours.kl):
            hints.append("your loss is the KL alone: the reconstruction term is missing")
    if bad_grads and not any(k in failed for k in dec):
        hints += encoder_hints(theirs, mine, failed, ours, agrees, enc, label)
    if "kl" in theirs and "reconstruction" in failed and "kl" not in failed:
        hints.append("the KL agrees and the reconstruction differs: look at the emission and the decoder")
    return hints


def encoder_hints(theirs, mine, failed, ours, agrees, enc, label) -> list:
    """Decoder gradients right, encoder gradients wrong: the KL, or the way back through x."""
    kl = kl_gradients(ours)
    if all(agrees(k, mine[k] - 2 * kl[k]) for k in enc):
        return ["the encoder's gradients are those of a loss whose KL has the wrong sign (decoder gradients agree)"]
    if all(agrees(k, mine[k] - kl[k]) for k in enc):
        return ["the encoder's gradients lack the KL's: the KL term is missing or detached"]
    logvar = [k for k in enc if k.startswith(GRAD + "encoder.logvar.")]
    if logvar and any(k in failed for k in logvar):
        zero = ours.rerun(noise=np.zeros_like(ours.inputs.noise)).grads
        if all(agrees(k, zero[k[len(GRAD):]]) for k in logvar):
            heads = ", ".join(label(k) for k in logvar)
            return [f"the log-variance head's gradients ({heads}) are the KL's alone: no gradient flows "
                    "through the standard deviation exp(ℓ/2) of your sample (a .detach(), .data or "
                    f"no_grad in the sampler; {SAMPLER})"]
    return ["decoder gradients agree and encoder gradients differ: the mistake is between the encoder "
            f"heads and the sample or in the KL: look at the KL (§8.2.2) and the sampler ({SAMPLER}), "
            "and at whether the sample's gradient reaches the encoder"]


def kl_gradients(ours) -> dict:
    """The KL term's share of every encoder gradient, ``grad/<name>``: the latent's closed-form
    KL gradient taken back through the encoder (refvae's own reverse pass)."""
    inp = ours.inputs
    vae, bk = inp.vae, inp.vae.bk
    params = {k: bk.asarray(v) for k, v in inp.params.items()}
    fp = vae.forward(params, bk.asarray(inp.y), bk.asarray(inp.noise), ours.estimator, inp.temperature)
    scale = 1.0 / inp.y.shape[0] if ours.reduction == "mean" else 1.0
    kl_g = vae.latent.kl_grads(bk, fp.state)
    d_heads = bk.xp.concatenate([scale * kl_g[h] for h, _ in vae.latent.heads()], axis=-1)
    back = vae.encoder.backward(bk, params, fp.enc_cache, d_heads, input_grad=False)
    return {GRAD + k: np.asarray(bk.to_numpy(v)) for k, v in back.grads.items()}


def reduction_advice(what: str, ours) -> str:
    if what == "N":
        return ": your loss sums over the batch; use --reduction sum (reduction='sum')"
    if what == "1/N":
        return ": your loss averages over the batch; use --reduction mean (reduction='mean')"
    if what in ("1/D", "1/(N·D)"):
        return (": your loss averages over the data dimensions too; refvae sums the log-likelihood over "
                "the D dimensions of each datum")
    if what in ("L", "1/L"):
        return ": your loss sums over the L samples where refvae averages them, or the other way round"
    return ""


def reconstruction_advice(what: str) -> str:
    if what in ("1/(N·D)", "1/D"):
        return (": it averages over the data dimensions (binary_cross_entropy or mse_loss with "
                "reduction='mean' averages over all N·D entries); the negative ELBO sums the "
                "log-likelihood over the D dimensions of a datum: use reduction='sum'")
    if what in ("N", "1/N"):
        return ": the reconstruction and the KL are reduced over the batch differently (one summed, one averaged)"
    if what in ("L", "1/L"):
        return ": the reconstruction is summed over the L samples where refvae averages it, or the other way round"
    return ""


def saturation(theirs, ours, failed) -> list:
    """A sigmoid followed by binary cross-entropy saturates where refvae's logits do not."""
    inp = ours.inputs
    if inp is None or inp.vae.config.emission != "bernoulli" or not failed:
        return []
    single = any(v.dtype.kind == "f" and v.dtype.itemsize <= 4 for v in theirs.values())
    # PyTorch's binary_cross_entropy clamps p(1 − p) at 1e-12 in its gradient (|logit| > 27.6) and
    # the log at −100; in float32 p also rounds to 1 above a logit of 16.6 (measured, ORACLE.md).
    high = 16.6 if single else 27.6
    logits = ours.intermediates()["decoder_out"]
    target = inp.y[:, None, :]
    wrong = ((logits > high) & (target < 1)) | ((logits < -27.6) & (target > 0))
    if not wrong.any():
        return []
    return [f"{int(wrong.sum())} decoder logits are above {high} or below −27.6 where the target is on the other side: "
            f"in {'float32' if single else 'float64'} a sigmoid followed by binary_cross_entropy saturates "
            "there (PyTorch clamps the log at −100 and the gradient at 1e-12); binary_cross_entropy_with_logits "
            "does not"]
