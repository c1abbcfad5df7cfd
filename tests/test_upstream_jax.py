"""jax's stax VAE (upstream: jax's ``examples/mnist_vae.py``) through the oracle, float64 (issue
25), in the style of tests/test_upstream_vaes.py: the model written again here as upstream writes
it (``stax.serial`` networks, ``FanOut(2)`` into ``stax.parallel`` heads, the variance through
``Softplus``, ``random.normal`` noise, the loss ``-elbo / N``; not copied), smaller (D = 12,
hidden 16, K = 3), checked with at most 30 lines of glue (config, name map, the loss call, the
check) and PASSes; each injected bug FAILs, so the check can fail.

The parameters go to the oracle as stax holds them, ``(encoder params, decoder params)``: nested
lists with ``()`` for ``Relu``, ``FanOut`` and ``Softplus`` and ``(W, b)`` pairs with ``W`` of
shape ``(in, out)`` (``layout="in_out"``); the noise is drawn again by the key that drew it inside
``elbo`` (``(N, K)``, read as L = 1). float64 is switched on by ``jax.enable_x64(True)``, a context
manager, for these tests only: other tests in the same process (the README's Flax example) keep
JAX's float32 default.
"""
import numpy as np
import pytest

from refvae import oracle

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
random = jax.random
stax = pytest.importorskip("jax.example_libraries.stax")
Dense, FanOut, Relu, Softplus = stax.Dense, stax.FanOut, stax.Relu, stax.Softplus

N, D, H, K = 6, 12, 16, 3


# ----- the model, in stax's style ----------------------------------------------------------------
def gaussian_kl(mu, sigmasq, half=0.5):
    """KL(N(mu, sigmasq) || N(0, I)) summed over the batch."""
    return half * jnp.sum(-jnp.log(sigmasq) - 1.0 + sigmasq + mu ** 2)


def gaussian_sample(rng, mu, sigmasq):
    return mu + jnp.sqrt(sigmasq) * random.normal(rng, mu.shape)


def gaussian_sample_without_sqrt(rng, mu, sigmasq):     # the bug: the variance used as the scale
    return mu + sigmasq * random.normal(rng, mu.shape)


def bernoulli_logpdf(logits, x):
    return -jnp.sum(jnp.logaddexp(0.0, jnp.where(x, -1.0, 1.0) * logits))


def elbo(rng, params, images, sample=gaussian_sample, half=0.5):
    enc_params, dec_params = params
    mu_z, sigmasq_z = encode(enc_params, images)
    logits_x = decode(dec_params, sample(rng, mu_z, sigmasq_z))
    return bernoulli_logpdf(logits_x, images) - gaussian_kl(mu_z, sigmasq_z, half)


encoder_init, encode = stax.serial(
    Dense(H), Relu,
    Dense(H), Relu,
    FanOut(2),
    stax.parallel(Dense(K), stax.serial(Dense(K), Softplus)),
)

decoder_init, decode = stax.serial(
    Dense(H), Relu,
    Dense(H), Relu,
    Dense(D),
)


def check_stax(sample=gaussian_sample, half=0.5):
    with jax.enable_x64(True):
        enc_rng, dec_rng, data_rng, elbo_rng = random.split(random.PRNGKey(0), 4)
        _, init_encoder_params = encoder_init(enc_rng, (N, D))
        _, init_decoder_params = decoder_init(dec_rng, (N, K))
        params = init_encoder_params, init_decoder_params
        images = random.bernoulli(data_rng, 0.5, (N, D))          # binarized, as upstream's batch
        # the glue: config, names, the loss as their training loop computes it, the check
        config = {"data_dim": D, "latent_dim": K, "encoder_hidden": [H, H],
                  "decoder_hidden": [H, H], "activation": "relu", "emission": "bernoulli",
                  "scale_head": "softplus_var"}
        names = {"0.0": "encoder.0", "0.2": "encoder.1", "0.5.0": "encoder.mean",
                 "0.5.1.0": "encoder.logvar", "1.0": "decoder.0", "1.2": "decoder.1",
                 "1.4": "decoder.out"}
        loss = lambda params: -elbo(elbo_rng, params, images, sample, half) / N  # noqa: E731
        value, g = jax.value_and_grad(loss)(params)
        eps = random.normal(elbo_rng, (N, K))          # the key that drew the noise inside elbo
        report = oracle.check(config, params, {"y": images, "eps": eps},
                              {"loss": value, "grad": g}, name_map=names, layout="in_out")
        assert all(np.asarray(leaf).dtype == np.float64 for leaf in jax.tree.leaves(g))
    return report


def test_jax_stax_vae_passes():
    report = check_stax()
    assert report.passed, str(report)
    assert "grad/encoder.logvar.weight (0.5.1.0.weight)" in str(report)


@pytest.mark.parametrize("bug", ["sample without the sqrt", "KL without its 1/2"])
def test_jax_stax_vae_with_a_bug_fails(bug):
    report = check_stax(**({"sample": gaussian_sample_without_sqrt} if "sqrt" in bug
                           else {"half": 1.0}))
    assert not report.passed, str(report)


def test_x64_is_scoped_to_the_check():
    check_stax()
    assert jnp.zeros(1).dtype == jnp.float32
