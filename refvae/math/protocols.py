"""The three interfaces between the parts of the model, stated once (docs/DERIVATIONS.md#notation).

A VAE (:class:`refvae.math.vae.VAE`) is an encoder MLP whose heads parameterize a
:class:`RecognitionModel` q(x|y), a decoder MLP whose output parameterizes an :class:`Emission`
p(y|x), and an :class:`Estimator` that turns the decoder's signals into gradients for the encoder
heads. Every implementation provides every member; a capability a model lacks (Price's theorem for
a non-Gaussian q, say) is a method that raises :class:`~refvae.errors.ConfigError` saying so.
``bk`` is always the first argument of a computation.
"""
from __future__ import annotations

from typing import Protocol


class RecognitionModel(Protocol):
    """q(x|y): the sampling transform from the caller's base noise, the KL to the prior, densities,
    and the recognition gradients of the reconstruction term by each route."""

    name: str
    noise_name: str
    default_estimator: str       # what ``estimator=None`` means in training
    evaluation_estimator: str    # the sampling mode of the true ELBO (hard samples for discrete q)
    decoder_in: int

    @property
    def estimators(self) -> list[str]: ...

    def heads(self) -> list[tuple[str, int]]: ...

    def noise_shape(self, n: int, samples: int) -> tuple: ...

    def draw_noise(self, source, n: int, samples: int, bk): ...

    def prior_sample(self, source, n: int, bk): ...

    def sample(self, bk, heads: dict, noise, estimator=None, temperature=None): ...

    def kl(self, bk, state): ...

    def kl_grads(self, bk, state) -> dict: ...

    def mean(self, bk, state): ...

    def log_q(self, bk, state): ...

    def log_prior(self, bk, state): ...

    def log_q_cross(self, bk, heads: dict, x): ...

    def pathwise(self, bk, state, g) -> dict: ...

    def price(self, bk, state, g, hessian) -> dict: ...

    def score(self, bk, state) -> dict: ...


class Emission(Protocol):
    """p(y|x): the surprisal ``f = −log p(y|x)`` with its gradient and curvature in the decoder
    output ``o``, and the mean ``E[y|x]``."""

    name: str
    curvature_form: str          # one of refvae.math.mlp.CURVATURE_FORMS

    def heads(self, data_dim: int) -> list[tuple[str, int]]: ...

    def terms(self, bk, o, y, log_alpha=None): ...

    def curvature(self, bk, o, y, log_alpha=None): ...

    def mean(self, bk, o): ...


class Estimator(Protocol):
    """Recognition gradients of the reconstruction term, ``{head: (N, P)}``, from the latent's state
    and the decoder's :class:`~refvae.math.estimators.DecoderSignals`."""

    def __call__(self, bk, latent: RecognitionModel, state, signals) -> dict: ...
