"""The oracle's diagnosis: from a failing comparison to the named hypotheses that explain the
user's numbers (:mod:`refvae.oracle.hypotheses`) or, when none does, to the first exported quantity
that differs and what the forward pass and the pattern of the failures say about it (ORACLE.md,
"Reading a failing report"). A quantity the user did not export is never said to agree.

Host-side by design, hence NumPy: every array here is a host copy from the comparison report (the
user's tensors and refvae's), and the NumPy expressions are the candidate *mistakes* checked
against the user's values. refvae's own numbers come from the VAE on its backend.
"""
from __future__ import annotations

import math

import numpy as np

from . import hypotheses, samplers
from .hypotheses import GRAD, HEADS, kl_gradients  # noqa: F401  (kl_gradients: API)

RELAXED = "Y = softmax((η + G)/s) (Eq. 8.29)"
ORDER = ("x", "decoder_out", "kl_per_datum", "reconstruction_per_datum", "kl", "reconstruction",
         "loss")


def diagnose(theirs: dict, mine: dict, report, ours, agrees) -> list:
    """Hints for a failing report: ``theirs``/``mine`` are the compared arrays under refvae's names,
    ``agrees(name, candidate)`` tells whether a hypothetical value of ``name`` would pass.

    First the named hypotheses (:mod:`refvae.oracle.hypotheses`): those that explain every quantity
    the user exported are reported; when none does, the first exported quantity that differs is
    named, with what the forward pass and the pattern of the failures say about it."""
    failed = {c.name for c in report.failures()}
    hints = []
    if ours.inputs is not None:
        found, tested = hypotheses.explaining(theirs, ours, agrees, report.label)
        if found:
            hints += [f"{h.text} [hypothesis {h.key} explains every quantity you "
                      "exported]" for h in found]
            if len(found) > 1:
                hints.append(f"these {len(found)} hypotheses fit what you exported equally well: "
                             "export "
                             "more (the loss, the gradients, heads, x, decoder_out, kl_per_datum) "
                             "to "
                             "tell them apart")
            return hints + saturation(theirs, ours, failed)
    walked = forward_walk(theirs, mine, failed, ours, agrees, report.label)
    if walked:
        hints.append(walked)
    if ours.inputs is not None:
        first = first_difference(mine, failed)
        hints.append(f"none of the {tested} tested hypotheses explains your numbers; the first "
                     "exported "
                     f"quantity that differs is {report.label(first)}")
    if not walked or walked.startswith("the loss"):
        hints += patterns(theirs, mine, failed, ours, agrees, report.label)
    hints += saturation(theirs, ours, failed)
    if len(hints) <= 1:
        hints.append("export the intermediates (heads/<name>, x, decoder_out, kl_per_datum, "
                     "reconstruction_per_datum) to find the first quantity that differs")
    return hints


def first_difference(mine: dict, failed: set) -> str:
    """The first failing quantity in the order of the forward pass (heads, x, decoder output, KL
    and reconstruction per datum, their totals, the loss, the gradients)."""
    order = [k for k in mine if k.startswith(HEADS)] + list(ORDER) + [k for k in mine
                                                                      if k.startswith(GRAD)]
    return next((k for k in order if k in failed), sorted(failed)[0])


# ----- walking the forward pass -----------------------------------------------------------------
def forward_walk(theirs, mine, failed, ours, agrees, label) -> str | None:
    """The first exported intermediate that differs, with what it points at; a quantity that was
    not exported is never said to agree."""
    heads = [k for k in mine if k.startswith(HEADS)]
    for h in heads:
        if h in failed:
            other = [g for g in heads if g != h and agrees(h, mine[g])]
            if other:
                return (f"the encoder head {label(h)} equals refvae's {other[0]}: your model reads "
                        "its "
                        "heads the other way round (a wrong head)")
            return (f"the encoder head {label(h)} is the first quantity that differs: with the "
                    "same "
                    "parameters and input this is the encoder's forward pass (its layers, "
                    "activation, "
                    "or which of your layers feeds this head: check name_map)")
    if "x" in failed:
        return sampler_hint(theirs, mine, ours, agrees, any(h in theirs for h in heads))
    if "decoder_out" in failed:
        if "x" in theirs:
            return ("the decoder output is the first quantity that differs while its input x "
                    "agrees: look "
                    "at the decoder's layers and activation (and the name map of its modules)")
        upstream = "the encoder heads agree but " if any(h in theirs for h in heads) else ""
        return (f"the decoder output is the first exported quantity that differs; {upstream}x, the "
                "decoder's input, was not exported, so the mistake is in the sampler or in the "
                "decoder: "
                "export x to tell them apart (JAX/Flax: call your model's sampler again with the "
                "same "
                "key; PyTorch: check_torch records it)")
    if "kl_per_datum" in failed:
        return kl_hint(theirs, mine, ours, agrees, per_datum=True)
    if "reconstruction_per_datum" in failed:
        known = "decoder output" if "decoder_out" in theirs else ""
        return ("the reconstruction per datum differs while the KL"
                + (f" and the {known} agree" if known else " agrees")
                + ": look at the emission's log-likelihood (its sum over the D dimensions, "
                "the mean over the L samples, a missing constant)")
    return None


def sampler_hint(theirs, mine, ours, agrees, heads_known: bool) -> str:
    """Which sampling transform produced their ``x`` (diagonal Gaussian latents)."""
    base = "the latent sample x differs while the encoder heads agree" if heads_known \
        else "the latent sample x is the first exported quantity that differs"
    nu, lv = mine.get(HEADS + "mean"), mine.get(HEADS + "logvar")
    config = ours.inputs.vae.config
    if config.latent == "categorical":
        return f"{base}: look at your relaxed sample, {RELAXED}, or the one-hot argmax (Eq. 8.28)"
    right = samplers.correct(config)
    if nu is None or lv is None or config.scale_head != "logvar":   # the candidates read ℓ
        return f"{base}: look at your sampling transform, {right}"
    eps = ours.inputs.noise
    nu, lv = nu[:, None, :], lv[:, None, :]
    candidates = [
        (nu + np.exp(lv) * eps, "your sampler uses exp(logvar), the variance, as the "
                                "standard deviation; the scale is exp(logvar/2)"),
        (nu + lv * eps, "your sampler uses logvar itself as the standard deviation; the scale is "
                        "exp(logvar/2)"),
        (lv + np.exp(nu / 2) * eps, "your sampler takes the mean from the log-variance head and "
                                    "the scale "
                                    "from the mean head: the heads are swapped (a wrong head)"),
        (nu + 0 * eps, "your sample is the mean alone: the noise is not added"),
    ]
    for value, cause in candidates:
        if agrees("x", value):
            return f"{base}: {cause} ({right})"
    return f"{base}: look at your sampling transform, {right}"


def kl_hint(theirs, mine, ours, agrees, per_datum: bool) -> str:
    """Their KL against refvae's under a flipped sign or a constant."""
    k = ours.inputs.vae.config.latent_dim
    name = "kl_per_datum"
    if agrees(name, -mine[name]):
        return "the KL per datum has the wrong sign (the loss must add KL(q‖p) ≥ 0, §8.2.2)"
    diff = float(np.median(theirs[name] - mine[name]))
    if agrees(name, mine[name] + diff):
        return f"the KL per datum is off by the constant {diff:.6g}{constant_name(diff, ours)}"
    formula = ("Σ_k Σ_c π log(C π) to the uniform prior" if ours.inputs.vae.config.latent
               == "categorical"
               else "½ Σ_k (σ_k² + μ_k² − 1 − log σ_k²)")
    return f"the KL per datum is the first quantity that differs (KL = {formula}, K = {k})"


def constant_name(per_datum: float, ours) -> str:
    """`` (= K/2: ...)`` when a per-datum constant is one we know, else ``""``."""
    c = ours.inputs.vae.config
    known = [(c.latent_dim / 2,
              "K/2: the 1 in KL = −½ Σ(1 + log σ² − μ² − σ²) is missing"),
             (-c.latent_dim / 2, "−K/2: the KL's 1 is counted twice"),
             (c.data_dim / 2 * math.log(2 * math.pi), "D/2·log 2π: the Gaussian emission's "
                                                      "normaliser"),
             (-c.data_dim / 2 * math.log(2 * math.pi), "−D/2·log 2π: the Gaussian emission's "
                                                       "normaliser is missing")]
    for value, what in known:
        if math.isclose(per_datum, value, rel_tol=1e-5, abs_tol=1e-9):
            return f" (= {what})"
    return ""


# ----- patterns of loss and gradients -----------------------------------------------------------
def patterns(theirs, mine, failed, ours, agrees, label) -> list:
    """Hints read from the loss and the gradients when no hypothesis explains everything (two
    mistakes at once, or one the catalogue does not know)."""
    grads = [k for k in mine if k.startswith(GRAD)]
    bad_grads = [k for k in grads if k in failed]
    dec = [k for k in grads if not k.startswith(GRAD + "encoder.")]
    per = ours.inputs.y.shape[0] if ours.reduction == "sum" else 1
    if not bad_grads and "loss" in failed:
        c = float(theirs["loss"]) - ours.loss
        return [f"the loss differs from refvae's by the constant {c:.6g} ({c / per:.6g} per datum) "
                "while every "
                "gradient agrees: a term that does not depend on the parameters is missing or "
                "extra"
                f"{constant_name(c / per, ours)}"]
    hints = []
    if "loss" in theirs and "loss" in failed:
        if agrees("loss", ours.reconstruction - ours.kl):
            hints.append("your loss is reconstruction − KL: the KL term has the wrong sign "
                         "(§8.2.2)")
        elif agrees("loss", ours.reconstruction):
            hints.append("your loss is the reconstruction alone: the KL term is missing")
        elif agrees("loss", ours.kl):
            hints.append("your loss is the KL alone: the reconstruction term is missing")
    if bad_grads and not any(k in failed for k in dec):
        hints.append(encoder_hint(ours))
    if "kl" in theirs and "reconstruction" in failed and "kl" not in failed:
        hints.append("the KL agrees and the reconstruction differs: look at the emission and the "
                     "decoder")
    return hints


def encoder_hint(ours) -> str:
    """Decoder gradients right, encoder gradients wrong, no hypothesis fits: where to look."""
    categorical = ours.inputs.vae.config.latent == "categorical"
    sample = RELAXED if categorical else samplers.correct(ours.inputs.vae.config)
    return ("decoder gradients agree and encoder gradients differ: the mistake is between the "
            "encoder "
            "heads and the sample or in the KL: look at the KL (§8.2.2) and the sample "
            f"({sample}), "
            "and at whether the sample's gradient reaches the encoder")


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
    return [f"{int(wrong.sum())} decoder logits are above {high} or below −27.6 where the target "
            "is on the other side: "
            f"in {'float32' if single else 'float64'} a sigmoid followed by binary_cross_entropy "
            "saturates "
            "there (PyTorch clamps the log at −100 and the gradient at 1e-12); "
            "binary_cross_entropy_with_logits "
            "does not"]
