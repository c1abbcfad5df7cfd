"""The categorical bugs (hypothesis_matrix.CAT_BUGS) and the score-function baseline that includes
its own sample, with Flax/JAX user code: the twins of the PyTorch tests in
tests/test_oracle_hypotheses.py (``CatVAE``) and tests/test_oracle_unbiased.py
(``torch_score_grads``).

A Gumbel-softmax VAE written in Flax's style (flax.linen Dense layers enc, logits, dec, out; the
noise drawn by a key, ``jax.random.gumbel`` or ``-log(-log(uniform))``; ``jax.nn.softmax((logits
+ g) / tau)``; straight-through with ``jax.lax.stop_gradient``; the KL to the uniform prior; the
loss averaged over the batch as optax users write it), each bug injected, exported at every level
(gradients from jax.value_and_grad as the ``params`` tree, ``layout="in_out"``; the Gumbel noise
redrawn with the same key and passed as the batch's ``gumbel``): the report names the injected bug
and nothing else; the correct model passes. The score-function estimator as a JAX user writes it
(a REINFORCE surrogate with ``jax.lax.stop_gradient``, L = 4 samples): the leave-one-out baseline
passes ``estimator="score-loo"``, the mean over all L samples is named
``score:own-sample-baseline``. float64 inside ``jax.enable_x64(True)`` only.
"""
import functools

import numpy as np
import pytest

from refvae import oracle
from hypothesis_matrix import (C, CAT_BUGS, CAT_NAMES, CATEGORICAL, D, H, KC, LEVELS, LINEAR, N,
                               TAU, documented, leave_one_out, mean_of_all, named, table)

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
jnp, random = jax.numpy, jax.random

NOISE = {   # how the user draws standard Gumbel noise from a key
    "gumbel": lambda key, shape, dtype: random.gumbel(key, shape, dtype),
    "uniform": lambda key, shape, dtype: -jnp.log(-jnp.log(random.uniform(key, shape, dtype))),
}


class CatVAE(nn.Module):
    """``mode``: "relaxed", "no-temperature" (the temperature:missing bug) or "straight-through"
    (hard forward, relaxed backward)."""
    mode: str = "relaxed"
    tau: float = TAU
    noise: str = "gumbel"

    @nn.compact
    def __call__(self, y, key):
        h = jnp.tanh(nn.Dense(H, name="enc")(y))
        logits = nn.Dense(KC * C, name="logits")(h).reshape(-1, KC, C)
        g = NOISE[self.noise](key, logits.shape, logits.dtype)
        tau = 1.0 if self.mode == "no-temperature" else self.tau
        z = jax.nn.softmax((logits + g) / tau, axis=-1)
        if self.mode == "straight-through":
            hard = jax.nn.one_hot(jnp.argmax(z, axis=-1), C, dtype=z.dtype)
            z = z + jax.lax.stop_gradient(hard - z)
        z = z.reshape(-1, KC * C)
        self.sow("intermediates", "z", z)
        return nn.Dense(D, name="out")(jnp.tanh(nn.Dense(H, name="dec")(z))), logits


def kl_categorical(logits, log_c=True):
    """KL(q ‖ uniform) per datum: Σ π (log π + log C) over the K variables and C categories."""
    log_pi = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.exp(log_pi) * (log_pi + (jnp.log(C) if log_c else 0.0)), axis=(-2, -1))


def sigmoid_binary_cross_entropy(logits, labels):   # optax's, elementwise
    return -labels * nn.log_sigmoid(logits) - (1. - labels) * nn.log_sigmoid(-logits)


def cat_loss(model, log_c=True):
    def loss(params, y, key):
        recon, logits = model.apply({"params": params}, y, key)
        rec = sigmoid_binary_cross_entropy(recon, y).sum(-1)
        return jnp.mean(rec + kl_categorical(logits, log_c))
    return loss


@functools.lru_cache(maxsize=None)
def export(mode="relaxed", log_c=True, noise="gumbel"):
    """``(params, y, gumbel, every exportable quantity)`` in float64 (numpy)."""
    with jax.enable_x64(True):
        model = CatVAE(mode=mode, noise=noise)
        y = jnp.asarray((np.random.default_rng(1).random((N, D)) < 0.5) * 1.0)
        params = model.init(random.key(0), y, random.key(1))["params"]
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        key = random.key(2)
        value, grads = jax.value_and_grad(cat_loss(model, log_c))(params, y, key)
        (recon, logits), state = model.apply({"params": params}, y, key,
                                             mutable=["intermediates"])
        gumbel = NOISE[noise](key, (N, KC, C), jnp.float64)   # the same key, shape and dtype
        theirs = {"loss": value, "grad": grads, "heads": {"logits": logits.reshape(N, KC * C)},
                  "x": state["intermediates"]["z"][0], "decoder_out": recon}
        to_host = functools.partial(jax.tree.map, np.asarray)
        return to_host(params), np.asarray(y), np.asarray(gumbel), to_host(theirs)


def diagnosed(bug, level, noise="gumbel"):
    mode, log_c, estimator = CAT_BUGS[bug] if bug else ("relaxed", True, None)
    params, y, gumbel, everything = export(mode, log_c, noise)
    theirs = {k: v for k, v in everything.items() if k in LEVELS[level]}
    return oracle.check(CATEGORICAL, {"params": params}, {"y": y, "gumbel": gumbel}, theirs,
                        reduction="mean", temperature=TAU, estimator=estimator,
                        name_map=CAT_NAMES, layout="in_out")


@pytest.mark.parametrize("noise", list(NOISE))
@pytest.mark.parametrize("level", list(LEVELS))
def test_the_correct_flax_gumbel_softmax_vae_passes(level, noise):
    report = diagnosed("", level, noise)
    compared = {"loss": 1, "grads": 9, "heads": 10, "logits": 11, "x": 11, "all": 12}[level]
    assert report.passed and len(report.checks) == compared, str(report)


def test_gumbel_noise_from_another_key_fails():
    """The noise matters: the correct model's export checked against another key's draw."""
    params, y, _, theirs = export()
    with jax.enable_x64(True):
        other = np.asarray(random.gumbel(random.key(3), (N, KC, C), jnp.float64))
    report = oracle.check(CATEGORICAL, {"params": params}, {"y": y, "gumbel": other}, theirs,
                          temperature=TAU, name_map=CAT_NAMES, layout="in_out")
    assert not report.passed, str(report)


@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("bug", list(CAT_BUGS))
def test_the_injected_categorical_bug_is_named_and_no_other(bug, level):
    report = diagnosed(bug, level)
    assert not report.passed, str(report)
    assert named(report) == [bug], str(report)


def test_the_categorical_table_in_oracle_md_is_this_matrix():
    assert documented("test_oracle_hypotheses_flax_cat.py") == table(diagnosed, CAT_BUGS)


# ----- the score-function estimator's baseline (the JAX twin of test_oracle_unbiased.py's) -------
SCORE_NAMES = {"encoder.fc1": "encoder.0", "encoder.fc2_mean": "encoder.mean",
               "encoder.fc2_logvar": "encoder.logvar", "decoder": "decoder.out"}


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, y):
        h = jnp.tanh(nn.Dense(LINEAR["encoder_hidden"][0], name="fc1")(y))
        return (nn.Dense(LINEAR["latent_dim"], name="fc2_mean")(h),
                nn.Dense(LINEAR["latent_dim"], name="fc2_logvar")(h))


class ScoreVAE(nn.Module):
    def setup(self):
        self.encoder = Encoder()
        self.decoder = nn.Dense(LINEAR["data_dim"])

    def __call__(self, y, eps):
        mean, logvar = self.encoder(y)
        x = jax.lax.stop_gradient(mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps)
        return self.decoder(x), x, mean, logvar


def score_loss(baseline, alpha=LINEAR["alpha"]):
    """The REINFORCE surrogate of the negative ELBO averaged over the batch, with each of the L
    samples' baseline ``baseline(f)``; its auxiliary value is the loss itself."""
    model = ScoreVAE()

    def surrogate(params, y, eps):
        out, x, mean, logvar = model.apply({"params": params}, y, eps)
        f = (0.5 * jnp.sum((y[:, None] - out) ** 2, -1) / alpha
             + 0.5 * y.shape[-1] * jnp.log(2 * jnp.pi * alpha))
        log_q = jnp.sum(-0.5 * ((x - mean[:, None]) ** 2 / jnp.exp(logvar)[:, None]
                                + logvar[:, None]), -1)
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean ** 2 - 1 - logvar, -1)
        advantage = jax.lax.stop_gradient(f - baseline(f))
        loss = jnp.mean(f.mean(1) + kl)
        return jnp.mean(f.mean(1) + (advantage * log_q).mean(1) + kl), loss
    return model, surrogate


@pytest.mark.parametrize("baseline", [leave_one_out, mean_of_all])
def test_a_jax_score_baseline_that_includes_its_sample_is_named(baseline):
    model, surrogate = score_loss(baseline)
    with jax.enable_x64(True):
        y = random.normal(random.key(0), (N, LINEAR["data_dim"]), jnp.float64)
        eps = random.normal(random.key(1), (N, 4, LINEAR["latent_dim"]), jnp.float64)
        params = model.init(random.key(2), y, eps)["params"]
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        (_, loss), grads = jax.value_and_grad(surrogate, has_aux=True)(params, y, eps)
        to_host = functools.partial(jax.tree.map, np.asarray)
        report = oracle.check(LINEAR, {"params": to_host(params)},
                              {"y": np.asarray(y), "eps": np.asarray(eps)},
                              {"loss": np.asarray(loss), "grad": to_host(grads)},
                              estimator="score-loo", name_map=SCORE_NAMES, layout="in_out")
    if baseline is leave_one_out:
        assert report.passed and len(report.checks) == 9, str(report)
    else:
        assert not report.passed, str(report)
        assert named(report) == ["score:own-sample-baseline"], str(report)
        # the decoder's gradients are right
        assert all(r.name.startswith("grad/encoder.") for r in report.failures()), str(report)


if __name__ == "__main__":   # docs/ORACLE.md's categorical table
    print(table(diagnosed, CAT_BUGS))
