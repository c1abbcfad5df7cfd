"""The VAE: encoder MLP -> recognition model -> decoder MLP -> emission, with every gradient by hand.

Per datum the loss is the negative ELBO ``F(y) = KL(q(x|y) || p(x)) + E_q[f(x, y)]`` (Eq. 8.20 and
the boxed results of §8.2.2; docs/DERIVATIONS.md#the-objective), the expectation estimated by the mean over ``L`` samples drawn from
the caller's base noise. The batch loss is the mean of F over the batch (``reduction="mean"``) or
its sum (``"sum"``, as PyTorch's examples report it). Parameters are a flat dict in PyTorch
``state_dict`` names and layout (ORACLE.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .estimators import DecoderSignals, get_estimator
from ..backend import Backend, NoiseSource, get_backend
from ..config import VAEConfig
from .emission import check_support, make_emission
from ..errors import ConfigError, DataError, NonFiniteError, ShapeError, name_mismatch, shape_mismatch
from ..numbers import checked
from .latent import make_latent
from .mlp import MLP

REDUCTIONS = ("mean", "sum")
LOG_ALPHA = "decoder.log_alpha"


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
    rec: dict
    kl_grads: dict
    dec_grads: dict
    enc_grads: dict


def intermediates(rp: ReversePass, estimator: str):
    """``(name, value)`` of every intermediate of :meth:`VAE.reverse_pass`, in the order computed."""
    fp = rp.fp
    yield from ((f"encoder head {h!r}", v) for h, v in fp.heads.items())
    yield from [("latent sample x", fp.state.x), ("decoder output", fp.dec_out), ("KL per datum", fp.kl),
                ("reconstruction surprisal f", fp.f), ("∂f/∂(decoder output)", fp.terms.df_do)]
    yield from ((f"gradient of {name}", value) for name, value in rp.dec_grads.items())
    yield "∂f/∂x (decoder input gradient)", rp.dec_back.d_input
    for h in fp.heads:
        yield f"{estimator} gradient of encoder head {h!r}", rp.rec[h]
        yield f"KL gradient of encoder head {h!r}", rp.kl_grads[h]
    yield from ((f"gradient of {name}", value) for name, value in rp.enc_grads.items())


def first_anomaly(bk, named_values) -> None:
    """Raise :class:`NonFiniteError` naming the first ``(name, value)`` with a NaN or inf."""
    for name, value in named_values:
        if value is not None and not bool(bk.xp.isfinite(value).all()):
            bad = int((~bk.xp.isfinite(value)).sum())
            raise NonFiniteError(f"anomaly: {name} is the first intermediate with non-finite values "
                                 f"({bad} of {value.size} entries are NaN or inf)")


class VAE:
    """A VAE built from a :class:`VAEConfig` on a backend (NumPy float64 by default)."""

    def __init__(self, config: VAEConfig | dict, backend: str | Backend = "numpy",
                 dtype: str = "float64"):
        self.config = config if isinstance(config, VAEConfig) else VAEConfig.from_dict(config)
        self.bk = get_backend(backend, dtype)
        c = self.config
        self.latent = make_latent(c)
        self.emission = make_emission(c.emission, c.alpha)
        self.encoder = MLP.build("encoder", c.data_dim, c.encoder_hidden, self.latent.heads(), c.activation)
        self.decoder = MLP.build("decoder", self.latent.decoder_in, c.decoder_hidden,
                                 self.emission.heads(c.data_dim), c.activation)

    @property
    def default_estimator(self) -> str:
        """The latent's own estimator: ``pathwise`` (Gaussian latents) or ``gumbel-softmax`` (categorical)."""
        return self.latent.default_estimator

    def check_estimator(self, estimator: str) -> None:
        """Refuse (:class:`ConfigError`) an estimator this model does not have, and Price's
        estimator on a decoder that is not twice differentiable: with relu, φ'' is a Dirac delta
        at 0 that the pointwise Hessian omits, so Eq. 8.17 would be biased
        (docs/DERIVATIONS.md#bonnet-and-price)."""
        get_estimator(self.latent.name, estimator)
        if estimator == "price" and not self.decoder.twice_differentiable:
            raise ConfigError(f"estimator 'price' needs a twice-differentiable decoder (Price's "
                              f"theorem, Eq. 8.17), and activation "
                              f"{self.config.activation!r} is not: use estimator 'pathwise', or "
                              f"a smooth activation (tanh, softplus, silu, sigmoid)")

    # ----- parameters ------------------------------------------------------------------------
    def param_shapes(self) -> dict:
        shapes = {**self.encoder.param_shapes(), **self.decoder.param_shapes()}
        if self.config.learn_alpha:
            shapes[LOG_ALPHA] = ()
        return shapes

    def init_params(self, noise: NoiseSource | int = 0) -> dict:
        """PyTorch's default initialisation for every linear layer; ``log α`` starts at log(alpha)."""
        noise = NoiseSource(noise) if isinstance(noise, int) else noise
        params = {**self.encoder.init_params(noise, self.bk), **self.decoder.init_params(noise, self.bk)}
        if self.config.learn_alpha:
            params[LOG_ALPHA] = self.bk.asarray(math.log(self.config.alpha))
        return params

    def check_params(self, params: dict) -> dict:
        """Names, shapes and finiteness of ``params``; returns them as arrays of the working dtype."""
        shapes = self.param_shapes()
        missing = [k for k in shapes if k not in params]
        extra = [k for k in params if k not in shapes]
        if missing or extra:
            raise ShapeError(f"parameters do not match the config: {name_mismatch(missing, extra)}")
        out = {}
        xp = self.bk.xp
        for name, shape in shapes.items():
            arr = self._numeric(params[name], f"parameter {name}")
            if tuple(arr.shape) != tuple(shape):
                raise ShapeError("parameter " + shape_mismatch(name, arr.shape, shape))
            if not bool(xp.isfinite(arr).all()):
                raise NonFiniteError(f"parameter {name} contains NaN or inf")
            out[name] = arr
        return out

    def check_batch(self, y, noise, samples_axis: bool = True):
        """``y`` ``(N, D)`` finite and in the emission's support; noise shaped for the latent kind."""
        bk, xp, c = self.bk, self.bk.xp, self.config
        y = self._numeric(y, "y")
        if y.ndim != 2 or y.shape[1] != c.data_dim:
            raise ShapeError(f"y has shape {tuple(y.shape)}, expected (N, {c.data_dim})")
        check_support(y, c.emission, "y")
        noise = self._numeric(noise, f"noise {self.latent.noise_name!r}")
        expected = self.latent.noise_shape(y.shape[0], noise.shape[1] if noise.ndim > 1 else 0)
        if noise.ndim != len(expected) or tuple(noise.shape) != tuple(expected) or noise.shape[1] < 1:
            raise ShapeError(f"noise {self.latent.noise_name!r} has shape {tuple(noise.shape)}, expected "
                             f"{self._noise_pattern()} for latent {c.latent!r} and N = {y.shape[0]}")
        if not bool(xp.isfinite(noise).all()):
            raise DataError(f"noise {self.latent.noise_name!r} contains NaN or inf")
        return y, noise

    def _numeric(self, a, what: str):
        """``a`` as an array of the working dtype, or a DataError naming ``what`` (strings, objects)."""
        try:
            return self.bk.asarray(a)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{what} is not numeric ({exc}); pass an array of numbers") from None

    def _noise_pattern(self) -> str:
        dims = self.latent.noise_shape(0, 0)[2:]
        return "(N, L, " + ", ".join(map(str, dims)) + ")"

    def draw_noise(self, source: NoiseSource, n: int, samples: int = 1):
        """Base noise for ``n`` data and ``samples`` samples each, from the caller's generator."""
        return self.latent.draw_noise(source, n, samples, self.bk)

    # ----- forward ---------------------------------------------------------------------------
    def encode(self, params: dict, y):
        """Encoder heads (``{"mean": ν, "logvar": ℓ}`` for the diagonal Gaussian) and the cache."""
        out, cache = self.encoder.forward(self.bk, params, y)
        return self.encoder.split_heads(out), cache

    def decode(self, params: dict, x):
        """Decoder output ``o`` for latent input ``x`` ``(..., K_in)`` and its cache."""
        return self.decoder.forward(self.bk, params, x)

    def forward(self, params: dict, y, noise, estimator: str | None = None,
                temperature: float | None = None) -> ForwardPass:
        """One forward pass: heads, sample, decoder output, KL per datum, surprisal per sample.

        ``estimator`` and ``temperature`` reach the latent's sampling transform (a categorical
        latent feeds the decoder relaxed or hard samples depending on them)."""
        heads, enc_cache = self.encode(params, y)
        state = self.latent.sample(self.bk, heads, noise, estimator=estimator, temperature=temperature)
        dec_out, dec_cache = self.decode(params, state.x)
        terms = self.emission.terms(self.bk, dec_out, y[:, None, :], params.get(LOG_ALPHA))
        return ForwardPass(enc_cache, heads, state, dec_out, dec_cache,
                           self.latent.kl(self.bk, state), terms.f, terms)

    # ----- loss and gradients ----------------------------------------------------------------
    def reverse_pass(self, params: dict, y, noise, scale: float, estimator: str,
                     temperature: float | None = None, estimator_state: dict | None = None) -> ReversePass:
        """The reverse pass of the batch loss ``scale · Σ_n F(y_n)`` (docs/DERIVATIONS.md#the-objective):
        emission ``∂f/∂o`` -> decoder reverse pass (generative gradients, Eq. 8.19, and
        ``g = ∂f/∂x``; docs/DERIVATIONS.md#mlp-reverse-pass) -> the estimator's recognition
        gradients plus the closed-form KL gradient -> encoder reverse pass. Inputs are trusted."""
        bk, w = self.bk, scale / noise.shape[1]
        fp = self.forward(params, y, noise, estimator, temperature)
        dec_back = self.decoder.backward(bk, params, fp.dec_cache, fp.terms.df_do * w)
        grads = dict(dec_back.grads)
        if self.config.learn_alpha:
            grads[LOG_ALPHA] = (fp.terms.df_dlog_alpha.sum() * w).reshape(())

        def hessian(full: bool = False):
            """``w · ∂²f/∂x∂xᵀ`` at the samples (docs/DERIVATIONS.md#mlp-input-hessians)."""
            curvature = self.emission.curvature(bk, fp.dec_out, y[:, None, :], params.get(LOG_ALPHA))
            return self.decoder.input_hessian(bk, params, fp.dec_cache, dec_back, curvature * w,
                                              form=self.emission.curvature_form, full=full)

        signals = DecoderSignals(dec_back.d_input, fp.f, w, hessian,
                                 {} if estimator_state is None else estimator_state)
        rec = get_estimator(self.latent.name, estimator)(bk, self.latent, fp.state, signals)
        kl_g = self.latent.kl_grads(bk, fp.state)
        d_heads = bk.xp.concatenate([rec[h] + scale * kl_g[h] for h, _ in self.latent.heads()], axis=-1)
        enc_grads = self.encoder.backward(bk, params, fp.enc_cache, d_heads, input_grad=False).grads
        return ReversePass(fp, dec_back, rec, kl_g, grads, enc_grads)

    def loss_and_grads(self, params: dict, y, noise, estimator: str | None = None,
                       reduction: str = "mean", check: bool = True, temperature: float | None = None,
                       estimator_state: dict | None = None, detect_anomaly: bool = False,
                       batch_size: int | None = None) -> LossResult:
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
        (:mod:`refvae.parallel`): the result is then that shard's share of the batch loss and
        gradients. Default: ``len(y)``.
        """
        estimator = self.default_estimator if estimator is None else estimator
        if reduction not in REDUCTIONS:
            raise ConfigError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        self.check_estimator(estimator)
        if check:
            params = self.check_params(params)
            y, noise = self.check_batch(y, noise)
        n = noise.shape[0]
        checked(batch_size, f"batch_size (at least the {n} rows of y)", integer=True, minimum=n, none=True)
        scale = 1.0 / (batch_size or n) if reduction == "mean" else 1.0
        rp = self.reverse_pass(params, y, noise, scale, estimator, temperature, estimator_state)
        if detect_anomaly:
            first_anomaly(self.bk, intermediates(rp, estimator))
        return self._result(rp, scale)

    def _result(self, rp: ReversePass, scale: float) -> LossResult:
        """Loss, its parts and the gradients in ``state_dict`` order; a non-finite loss is an error."""
        bk, fp = self.bk, rp.fp
        rec_per = fp.f.mean(axis=1)
        kl_sum, rec_sum = fp.kl.sum(), rec_per.sum()
        grads = {**rp.dec_grads, **rp.enc_grads}
        # One device→host copy per call (a GPU waits for each): the loss, its parts and whether
        # every gradient is finite.
        finite = bk.xp.stack([bk.xp.isfinite(g).all() for g in grads.values()]).all()
        host = bk.to_numpy(bk.xp.stack([(kl_sum + rec_sum) * scale, kl_sum * scale, rec_sum * scale,
                                        finite.astype(kl_sum.dtype)]))
        loss, kl, rec = (float(v) for v in host[:3])
        if not math.isfinite(loss):
            raise NonFiniteError(f"the loss is {loss} (KL {kl}, reconstruction {rec})")
        ordered = {k: grads[k] for k in self.param_shapes()}
        return LossResult(loss, kl, rec, fp.kl, rec_per, ordered, bool(host[3]))

    def loss(self, params: dict, y, noise, reduction: str = "mean", estimator: str | None = None,
             temperature: float | None = None) -> float:
        """The batch loss alone (no reverse pass): what finite differences differentiate."""
        fp = self.forward(params, self.bk.asarray(y), self.bk.asarray(noise), estimator, temperature)
        total = (fp.kl + fp.f.mean(axis=1)).sum()
        return self.bk.to_float(total / y.shape[0] if reduction == "mean" else total)
