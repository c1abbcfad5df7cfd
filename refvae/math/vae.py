"""The VAE: encoder MLP -> recognition model -> decoder MLP -> emission, with every gradient by
hand.

Per datum the loss is the negative ELBO ``F(y) = KL(q(x|y) || p(x)) + E_q[f(x, y)]`` (Eq. 8.20 and
the boxed results of §8.2.2; docs/DERIVATIONS.md#the-objective), the expectation estimated by the
mean over ``L`` samples drawn from the caller's base noise. The batch loss is the mean of F over the
batch (``reduction="mean"``) or its sum (``"sum"``, as PyTorch's examples report it). Parameters are
a flat dict in PyTorch ``state_dict`` names and layout (ORACLE.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..backend import Backend, NoiseSource, get_backend
from ..errors import ConfigError
from ..util import anomaly, gates
from ..util.checked import checked
from ..util.results import LossResult, pack
from .activations import get_activation
from .config import VAEConfig
from .emission import make_emission
from .estimators import CONTROL_VARIATES, PATHWISE, DecoderSignals, get_estimator
from .latent import make_latent
from .networks import decoder_network, encoder_network

REDUCTIONS = ("mean", "sum")
LOG_ALPHA = "decoder.log_alpha"


@dataclass
class ForwardPass:
    """Everything one forward pass computed (kept for the reverse pass)."""

    enc_cache: dict
    heads: dict
    state: object
    dec_out: object
    dec_cache: dict
    kl: object   # (N,)
    f: object    # (N, L) reconstruction surprisal per sample
    terms: object


@dataclass
class ReversePass:
    """The forward pass, the decoder's reverse pass, the recognition and KL gradients of the heads,
    and the parameter gradients of the decoder (with ``log α``) and of the encoder."""

    fp: ForwardPass
    dec_back: object
    estimator_grads: dict
    kl_grads: dict
    dec_grads: dict
    enc_grads: dict


class VAE:
    """A VAE built from a :class:`VAEConfig` on a backend (NumPy float64 by default)."""

    def __init__(self, config: VAEConfig | dict, backend: str | Backend = "numpy",
                 dtype: str = "float64"):
        self.config = config if isinstance(config, VAEConfig) else VAEConfig.from_dict(config)
        self.bk = get_backend(backend, dtype)
        c = self.config
        self.latent = make_latent(c)
        self.emission = make_emission(c.emission, c.alpha)
        self.encoder = encoder_network(c, self.latent.heads())
        self.decoder = decoder_network(c, self.latent.decoder_in + c.condition_dim,
                                       self.emission.heads(c.data_dim))
        self.head_activations = {h: get_activation(a) for h, a in c.head_activations}

    @property
    def default_estimator(self) -> str:
        """The latent's own estimator: ``pathwise`` (Gaussian latents) or ``gumbel-softmax``
        (categorical)."""
        return self.latent.default_estimator

    def check_estimator(self, estimator: str) -> None:
        """Refuse (:class:`ConfigError`) an estimator this model does not have, and Price's
        estimator on a decoder that is not twice differentiable: with relu, φ'' is a Dirac delta
        at 0 that the pointwise Hessian omits, so Eq. 8.17 would be biased
        (docs/DERIVATIONS.md#bonnet-and-price)."""
        get_estimator(self.latent.name, estimator)
        if estimator == "price" and not self.decoder.twice_differentiable:
            what = (f"activation {self.config.activation!r} is"
                    if self.config.decoder_layers is None
                    else "decoder_layers' " + ", ".join(_rough_layers(self.decoder)) + " are")
            raise ConfigError(f"estimator 'price' needs a twice-differentiable decoder (Price's "
                              f"theorem, Eq. 8.17), and {what} not: use estimator 'pathwise', or "
                              f"a smooth activation (tanh, softplus, silu, sigmoid)")

    # ----- parameters ------------------------------------------------------------------------
    def param_shapes(self) -> dict:
        shapes = {**self.encoder.param_shapes(), **self.decoder.param_shapes()}
        if self.config.learn_alpha:
            shapes[LOG_ALPHA] = ()
        return shapes

    def init_params(self, noise: NoiseSource | int = 0) -> dict:
        """PyTorch's default initialisation for every linear layer; ``log α`` starts at
        log(alpha)."""
        noise = NoiseSource(noise) if isinstance(noise, int) else noise
        params = {**self.encoder.init_params(noise, self.bk),
                  **self.decoder.init_params(noise, self.bk)}
        if self.config.learn_alpha:
            params[LOG_ALPHA] = self.bk.asarray(math.log(self.config.alpha))
        return params

    def draw_noise(self, source: NoiseSource, n: int, samples: int = 1):
        """Base noise for ``n`` data and ``samples`` samples each, from the caller's generator
        (its arguments checked by :func:`refvae.util.gates.check_draw`)."""
        n, samples = gates.check_draw(self, source, n, samples)
        return self.latent.draw_noise(source, n, samples, self.bk)

    # ----- forward ---------------------------------------------------------------------------
    def _conditioned(self, v, condition, where: str):
        """``[v, c]`` along the last axis, ``c`` ``(N, C)`` broadcast over ``v``'s middle axes
        (the samples); ``v`` itself when the model is not conditional."""
        c = self.config.condition_dim
        if (condition is None) != (c == 0):
            raise ConfigError(f"the {where} of this VAE " + (
                f"is conditional (condition_dim {c}): pass condition, an (N, {c}) array"
                if c else "takes no condition (condition_dim 0)"))
        if condition is None:
            return v
        lead = (condition.shape[0], *([1] * (v.ndim - 2)), c)
        c_b = self.bk.xp.broadcast_to(condition.reshape(lead), (*v.shape[:-1], c))
        return self.bk.xp.concatenate([v, c_b], axis=-1)

    def encode(self, params: dict, y, condition=None):
        """Encoder heads (``{"mean": ν, "logvar": ℓ}`` for the diagonal Gaussian) and the cache:
        the encoder reads ``[y, c]``; a head named in ``head_activations`` is passed through its
        activation, its pre-activation kept in ``cache["head_pre"]``."""
        inp = self._conditioned(y, condition, "encoder")
        out, cache = self.encoder.forward(self.bk, params, inp)
        heads = self.encoder.split_heads(out)
        cache["head_pre"] = {h: heads[h] for h in self.head_activations}
        for h, act in self.head_activations.items():
            heads[h] = act.value(self.bk, heads[h])
        return heads, cache

    def head_activations_backward(self, d_heads: dict, heads: dict, enc_cache: dict) -> dict:
        """Chain rule through the head activations: ``∂/∂a = ∂/∂head ⊙ φ'(a)`` for each
        head ``head = φ(a)`` named in ``head_activations``
        (docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning)."""
        out = dict(d_heads)
        for h, act in self.head_activations.items():
            out[h] = d_heads[h] * act.d1(self.bk, enc_cache["head_pre"][h], heads[h])
        return out

    def decode(self, params: dict, x, condition=None):
        """Decoder output ``o`` for latent input ``x`` ``(..., K_in)`` (read as ``[x, c]``) and its
        cache."""
        return self.decoder.forward(self.bk, params, self._conditioned(x, condition, "decoder"))

    def forward(self, params: dict, y, noise, estimator: str | None = None,
                temperature: float | None = None, condition=None) -> ForwardPass:
        """One forward pass: heads, sample, decoder output, KL per datum, surprisal per sample.

        ``estimator`` and ``temperature`` reach the latent's sampling transform (a categorical
        latent feeds the decoder relaxed or hard samples depending on them); ``condition`` ``c``
        ``(N, C)`` is read by both networks."""
        heads, enc_cache = self.encode(params, y, condition)
        state = self.latent.sample(self.bk, heads, noise, estimator=estimator,
                                   temperature=temperature)
        dec_out, dec_cache = self.decode(params, state.x, condition)
        terms = self.emission.terms(self.bk, dec_out, y[:, None, :], params.get(LOG_ALPHA))
        return ForwardPass(enc_cache, heads, state, dec_out, dec_cache,
                           self.latent.kl(self.bk, state), terms.f, terms)

    # ----- loss and gradients ----------------------------------------------------------------
    def reverse_pass(self, params: dict, y, noise, scale: float, estimator: str,
                     temperature: float | None = None, estimator_state: dict | None = None,
                     condition=None) -> ReversePass:
        """The reverse pass of the batch loss ``scale · Σ_n F(y_n)``
        (docs/DERIVATIONS.md#the-objective): emission ``∂f/∂o`` -> decoder reverse pass
        (generative gradients, Eq. 8.19, and ``g = ∂f/∂x``;
        docs/DERIVATIONS.md#mlp-reverse-pass) -> the estimator's recognition gradients plus the KL
        gradient -> head activations -> encoder reverse pass. With ``kl: "monte_carlo"`` and a
        score-function estimator, the per-sample KL ``log q − log p`` joins ``f`` in the score
        estimate and the KL gets no separate gradient
        (docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning). Inputs
        are trusted."""
        bk, w, k = self.bk, scale / noise.shape[1], self.latent.decoder_in
        fp = self.forward(params, y, noise, estimator, temperature, condition)
        dec_back = self.decoder.backward(bk, params, fp.dec_cache, fp.terms.df_do * w)
        grads = dict(dec_back.grads)
        if self.config.learn_alpha:
            grads[LOG_ALPHA] = (fp.terms.df_dlog_alpha.sum() * w).reshape(())

        def hessian(full: bool = False):
            """``w · ∂²f/∂x∂xᵀ`` at the samples
            (docs/DERIVATIONS.md#mlp-input-hessians)."""
            curvature = self.emission.curvature(bk, fp.dec_out, y[:, None, :],
                                                params.get(LOG_ALPHA))
            hess = self.decoder.input_hessian(bk, params, fp.dec_cache, dec_back, curvature * w,
                                              form=self.emission.curvature_form, full=full)
            return hess[..., :k, :k] if full else hess[..., :k]   # x's block, not c's

        kl_in_score = self.config.kl == "monte_carlo" and estimator in CONTROL_VARIATES
        f = fp.f + self.latent.log_q(bk, fp.state) - self.latent.log_prior(bk, fp.state) \
            if kl_in_score else fp.f
        g = dec_back.d_input[..., :k]
        if estimator == "price":                       # Bonnet and Price, Eqs. 8.16–8.17
            estimator_grads = self.latent.price(bk, fp.state, g, hessian)
        elif estimator in PATHWISE:                    # Eq. 8.24 (relaxed: Eq. 8.29)
            estimator_grads = self.latent.pathwise(bk, fp.state, g)
        else:                                          # score function, §8.2.1
            signals = DecoderSignals(g, f, w, hessian,
                                     {} if estimator_state is None else estimator_state)
            estimate = get_estimator(self.latent.name, estimator)
            estimator_grads = estimate(bk, self.latent, fp.state, signals)
        kl_g = self.latent.kl_grads(bk, fp.state)
        if kl_in_score:
            kl_g = {h: bk.xp.zeros_like(v) for h, v in kl_g.items()}
        d_heads = self.head_activations_backward(
            {h: estimator_grads[h] + scale * kl_g[h] for h, _ in self.latent.heads()}, fp.heads,
            fp.enc_cache)
        d_heads = bk.xp.concatenate([d_heads[h] for h, _ in self.latent.heads()], axis=-1)
        enc_grads = self.encoder.backward(bk, params, fp.enc_cache, d_heads, input_grad=False).grads
        return ReversePass(fp, dec_back, estimator_grads, kl_g, grads, enc_grads)

    def loss_and_grads(self, params: dict, y, noise, estimator: str | None = None,
                       reduction: str = "mean", check: bool = True,
                       temperature: float | None = None,
                       estimator_state: dict | None = None, detect_anomaly: bool = False,
                       batch_size: int | None = None, condition=None,
                       scale: float = 1.0) -> LossResult:
        """Batch negative ELBO and the gradient of every parameter, derived by hand
        (:meth:`reverse_pass`), with its inputs checked first and its result checked after.

        ``noise`` is the base noise (``eps`` ``(N, L, K)`` for Gaussian latents). ``temperature``
        is the relaxation temperature of a categorical latent; ``estimator_state`` is a
        caller-owned dict in which an estimator may keep state across steps (the running-mean
        control variate of the score-function estimator). ``estimator=None`` means the latent's
        default (``pathwise`` for Gaussian latents, ``gumbel-softmax`` for categorical ones).

        ``detect_anomaly=True`` checks every intermediate, in the order computed, and raises
        :class:`NonFiniteError` naming the first one that holds a NaN or inf (for debugging).

        ``batch_size`` is the N of the ``mean`` reduction when ``y`` is one shard of a larger batch
        (:mod:`refvae.fast.parallel`): the result is then that shard's share of the batch loss and
        gradients. Default: ``len(y)``.

        ``condition`` ``c`` ``(N, condition_dim)`` is the conditional VAE's condition (required
        exactly when ``condition_dim`` > 0); ``scale`` > 0 multiplies the loss and every gradient
        (HIPS autograd's example divides its objective by D)
        (docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning).
        """
        estimator = self.default_estimator if estimator is None else estimator
        if reduction not in REDUCTIONS:
            raise ConfigError(f"unknown reduction {reduction!r}; choose one "
                              f"of {', '.join(REDUCTIONS)}")
        self.check_estimator(estimator)
        checked(scale, "scale", minimum=0, open_min=True)
        if check:
            params = gates.check_params(self, params)
            y, noise = gates.check_batch(self, y, noise)
            condition = gates.check_condition(self, condition, y.shape[0])
        n = noise.shape[0]
        checked(batch_size, f"batch_size (at least the {n} rows of y)", integer=True, minimum=n,
                none=True)
        scale = scale / (batch_size or n) if reduction == "mean" else float(scale)
        rp = self.reverse_pass(params, y, noise, scale, estimator, temperature, estimator_state,
                               condition)
        if detect_anomaly:
            anomaly.first_anomaly(self.bk, anomaly.intermediates(rp, estimator))
        return pack(self.bk, rp, scale, self.param_shapes())

    def loss(self, params: dict, y, noise, reduction: str = "mean", estimator: str | None = None,
             temperature: float | None = None, condition=None, scale: float = 1.0) -> float:
        """The batch loss alone (no reverse pass): what finite differences differentiate."""
        cond = None if condition is None else self.bk.asarray(condition)
        fp = self.forward(params, self.bk.asarray(y), self.bk.asarray(noise), estimator,
                          temperature, cond)
        total = (fp.kl + fp.f.mean(axis=1)).sum() * scale
        return self.bk.to_float(total / y.shape[0] if reduction == "mean" else total)


def _rough_layers(net) -> list[str]:
    """The layers of a Sequential that are not twice differentiable (``layer 3 (relu)``)."""
    from .layers import ActivationLayer, MaxPool2d
    def name(layer):
        return layer.activation.name if isinstance(layer, ActivationLayer) else layer.kind
    return [f"layer {i} ({name(layer)})" for i, layer in enumerate(net.layers)
            if isinstance(layer, MaxPool2d) or (isinstance(layer, ActivationLayer)
                                                and not layer.activation.twice_differentiable)]
