"""The hypothesis matrix (tests/hypothesis_matrix.py) with a Flax user model written like Flax's
examples/vae (an Encoder of Dense → relu → Dense mean / Dense logvar, ``reparameterize`` with
jax.random, a Decoder returning logits; the loss averages the summed binary cross-entropy and the
KL over the batch): every bug of the matrix injected in Flax's style, exported at every level
(gradients from jax.value_and_grad as the nested ``params`` tree, ``layout="in_out"``; heads and
logits as the model returns them; x sown by the model), with the PyTorch matrix's properties.
float64 inside ``jax.enable_x64(True)`` only (it does not leak into other tests), and again in
JAX's default float32, judged at float32's tolerances: the same hypotheses are named.
``python tests/test_oracle_hypotheses_flax.py`` prints docs/ORACLE.md's Flax table.
"""
import contextlib
import functools

import numpy as np
import pytest

from refvae import oracle
from hypothesis_matrix import (BERNOULLI, BUGS, D, H, K, LEVELS, MEAN_KEYS, N, assert_named,
                               documented, named, table)

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
jnp, random = jax.numpy, jax.random

NAMES = {"encoder.fc1": "encoder.0", "encoder.fc2_mean": "encoder.mean",
         "encoder.fc2_logvar": "encoder.logvar", "decoder.fc1": "decoder.0",
         "decoder.fc2": "decoder.out"}


class Encoder(nn.Module):
    latents: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(H, name="fc1")(x))
        mean_x = nn.Dense(self.latents, name="fc2_mean")(x)
        logvar_x = nn.Dense(self.latents, name="fc2_logvar")(x)
        return mean_x, logvar_x


class Decoder(nn.Module):
    @nn.compact
    def __call__(self, z):
        z = nn.relu(nn.Dense(H, name="fc1")(z))
        return nn.Dense(D, name="fc2")(z)


def reparameterize(rng, mean, logvar):
    std = jnp.exp(0.5 * logvar)
    eps = random.normal(rng, logvar.shape)
    return mean + eps * std


SAMPLERS = {   # the sampler bugs, as reparameterize would be written with them
    "": reparameterize,
    "sampler:exp": lambda rng, m, lv: m + random.normal(rng, lv.shape) * jnp.exp(lv),
    "sampler:logvar": lambda rng, m, lv: m + random.normal(rng, lv.shape) * lv,
    "sampler:unscaled": lambda rng, m, lv: m + random.normal(rng, lv.shape),
    "sampler:no-noise": lambda rng, m, lv: m + 0 * random.normal(rng, lv.shape),
    "sampler:detached": lambda rng, m, lv: m + random.normal(rng, lv.shape)
    * jax.lax.stop_gradient(jnp.exp(0.5 * lv)),
}


class VAE(nn.Module):
    latents: int = K
    sampler: str = ""        # a key of SAMPLERS
    swapped: bool = False    # the heads:swapped bug

    def setup(self):
        self.encoder = Encoder(self.latents)
        self.decoder = Decoder()

    def __call__(self, x, z_rng):
        mean, logvar = self.encoder(x)
        if self.swapped:
            mean, logvar = logvar, mean
        z = SAMPLERS[self.sampler](z_rng, mean, logvar)
        self.sow("intermediates", "z", z)
        return self.decoder(z), mean, logvar


@jax.vmap
def kl_divergence(mean, logvar):
    return -0.5 * jnp.sum(1 + logvar - jnp.square(mean) - jnp.exp(logvar))


@jax.vmap
def binary_cross_entropy_with_logits(logits, labels):
    logits = nn.log_sigmoid(logits)
    return -jnp.sum(labels * logits + (1. - labels) * jnp.log(-jnp.expm1(logits)))


def sigmoid_binary_cross_entropy(logits, labels):   # optax's, elementwise
    return -labels * nn.log_sigmoid(logits) - (1. - labels) * nn.log_sigmoid(-logits)


def bug(rec=binary_cross_entropy_with_logits, kl=kl_divergence, reduce=jnp.mean, **model):
    """``(model fields, rec, kl, reduce over the batch)``: the Flax example's loss with one part
    replaced."""
    return model, rec, kl, reduce


INJECTED = {   # bug (hypothesis_matrix.BUGS): as a Flax user would write it
    **{key: bug(sampler=key) for key in SAMPLERS if key},
    "heads:swapped": bug(swapped=True),
    "kl:2": bug(kl=lambda m, lv: 2 * kl_divergence(m, lv)),
    "kl:-1": bug(kl=lambda m, lv: -kl_divergence(m, lv)),
    "kl:0": bug(kl=lambda m, lv: 0 * m.sum(-1)),
    "kl:+K/2": bug(kl=lambda m, lv: -0.5 * jnp.sum(lv - m ** 2 - jnp.exp(lv), axis=-1)),
    "kl:1/(N·K)": bug(kl=lambda m, lv: -0.5 * jnp.mean(1 + lv - m ** 2 - jnp.exp(lv))),
    "kl:detached": bug(kl=lambda m, lv: jax.lax.stop_gradient(kl_divergence(m, lv))),
    "reconstruction:1/(N·D)": bug(rec=lambda x, y: sigmoid_binary_cross_entropy(x, y).mean()),
    "reconstruction:L": bug(),   # two samples, their reconstructions summed
    "reduction:N": bug(reduce=jnp.sum),
    "emission:-normaliser": bug(rec=jax.vmap(lambda x, y: 0.5 * jnp.sum((x - y) ** 2))),
    "emission:mse": bug(rec=jax.vmap(lambda x, y: jnp.sum((x - y) ** 2))),
}


def loss_fn(model, rec, kl, reduce, samples):
    def loss(params, batch, rng):
        recs = []
        for key in random.split(rng, samples):
            recon_x, mean, logvar = model.apply({"params": params}, batch, key)
            recs.append(rec(recon_x, batch))
        return reduce(sum(recs)) + reduce(kl(mean, logvar))
    return loss


@functools.lru_cache(maxsize=None)
def export(name, x64=True):
    """``(params, y, noise, every exportable quantity)`` of the model with bug ``name`` (``""``:
    the correct model), in float64 (numpy), or with ``x64=False`` in JAX's default float32."""
    cfg, samples = BUGS[name] if name else (BERNOULLI, 1)
    fields, rec, kl, reduce = INJECTED[name] if name else bug()
    with jax.enable_x64(True) if x64 else contextlib.nullcontext():
        model = VAE(**fields)
        rng = np.random.default_rng(0)
        y = rng.random((N, D))
        y = jnp.asarray((y < 0.4) * 1.0 if cfg["emission"] == "bernoulli" else y)
        params = model.init(random.key(0), y, random.key(1))["params"]
        dtype = jnp.float64 if x64 else jnp.float32
        params = jax.tree.map(lambda p: p.astype(dtype), params)
        z_rng = random.key(2)
        value, grads = jax.value_and_grad(loss_fn(model, rec, kl, reduce, samples))(params, y,
                                                                                     z_rng)
        keys = random.split(z_rng, samples)
        runs = [model.apply({"params": params}, y, key, mutable=["intermediates"])
                for key in keys]
        noise = np.stack([random.normal(key, (N, K)) for key in keys], axis=1)
        (_, mean, logvar), _ = runs[0]
        theirs = {"loss": value, "grad": grads, "heads": {"mean": mean, "logvar": logvar},
                  "x": jnp.stack([s["intermediates"]["z"][0] for _, s in runs], axis=1),
                  "decoder_out": jnp.stack([out[0] for out, _ in runs], axis=1)}
        to_host = functools.partial(jax.tree.map, np.asarray)
        return to_host(params), np.asarray(y), noise, to_host(theirs)


def diagnosed(name, level, x64=True):
    params, y, noise, everything = export(name, x64)
    theirs = {k: v for k, v in everything.items() if k in LEVELS[level]}
    cfg = BUGS[name][0] if name else BERNOULLI
    return oracle.check(cfg, {"params": params}, {"y": y, "eps": noise}, theirs,
                        reduction="mean", name_map=NAMES, layout="in_out")


def test_every_bug_of_the_matrix_is_injected_and_a_correct_model_passes():
    assert list(INJECTED) == list(BUGS)
    report = diagnosed("", "all")
    assert report.passed and len(report.checks) == 15, str(report)


@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("name", list(BUGS))
def test_the_injected_bug_is_named_and_no_other(name, level):
    assert_named(name, level, diagnosed(name, level), MEAN_KEYS.get(name))


@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("name", list(BUGS))
def test_in_jaxs_default_float32_the_injected_bug_is_named_and_no_other(name, level):
    """What most Flax users export: float32 throughout, judged at float32's tolerances."""
    params, _, _, theirs = export(name, False)
    assert {a.dtype for a in jax.tree.leaves((params, theirs))} == {np.dtype("float32")}
    assert_named(name, level, diagnosed(name, level, False), MEAN_KEYS.get(name))


def test_the_correct_model_passes_in_float32():
    assert diagnosed("", "all", False).passed


def test_float64_stays_inside_the_test():
    before = jax.config.jax_enable_x64
    export.cache_clear()
    report = diagnosed("kl:2", "grads")
    assert named(report) == ["kl:2"]
    assert jax.config.jax_enable_x64 == before and jnp.zeros(1).dtype == (
        jnp.float64 if before else jnp.float32)


def test_the_table_in_oracle_md_is_this_matrix():
    assert documented("test_oracle_hypotheses_flax.py") == table(diagnosed)


if __name__ == "__main__":   # docs/ORACLE.md's Flax table
    print(table(diagnosed))
