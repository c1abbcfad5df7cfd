"""The categorical VAE (latent "categorical"): protocol, errors, and the whole model's loss and
gradients against an independent PyTorch float64 twin (refvae.witness.categorical) and central
finite differences.

Evidence: for random architectures (depth, widths, activation, emission, K, C, N, L, temperature)
refvae's loss, per-datum KL and reconstruction and every parameter gradient agree with torch's
autograd to ≤ 1e-10 relative (max abs error / max abs value of each tensor) for the estimators
``gumbel-softmax``, ``straight-through`` and ``score``, and for the relaxed-KL variant.
"""
import numpy as np
import pytest

from refvae.backend import NoiseSource
from refvae.math.config import VAEConfig
from refvae.errors import ConfigError, ShapeError
from refvae.math.estimators import estimators_for
from refvae.gradcheck import assert_gradients
from refvae.math.latent.categorical import Categorical
from refvae.math.vae import VAE

ESTIMATORS = ["gumbel-softmax", "straight-through", "score"]
EMISSIONS = ["bernoulli", "gaussian", "gaussian_diag"]
ACTIVATIONS = ["tanh", "sigmoid", "softplus", "relu", "identity", "silu"]
RTOL_TWIN = 1e-10


def random_case(seed, estimator):
    """A random architecture, parameters, data and Gumbel noise (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    emission = EMISSIONS[seed % 3]
    cfg = dict(data_dim=int(rng.integers(1, 6)), latent_dim=int(rng.integers(1, 4)),
               categories=int(rng.integers(2, 5)),
               encoder_hidden=[int(w) for w in rng.integers(1, 6, size=rng.integers(0, 3))],
               decoder_hidden=[int(w) for w in rng.integers(1, 6, size=rng.integers(0, 3))],
               activation=ACTIVATIONS[seed % len(ACTIVATIONS)], latent="categorical",
               emission=emission,
               alpha=float(rng.uniform(0.3, 2.0)) if emission == "gaussian" else 1.0,
               learn_alpha=bool(emission == "gaussian" and seed % 2))
    n, samples = int(rng.integers(1, 5)), int(rng.integers(2 if estimator == "score" else 1, 4))
    vae = VAE(cfg)
    params = {k: v * 2.0 for k, v in vae.init_params(seed).items()}  # larger logits: sharper π
    if emission == "bernoulli":
        y = (rng.random((n, cfg["data_dim"])) < 0.5).astype(float)
    else:
        y = rng.standard_normal((n, cfg["data_dim"]))
    g0 = vae.draw_noise(NoiseSource(seed + 1000), n, samples)
    temperature = float(rng.choice([0.3, 0.7, 1.0, 2.5]))
    return cfg, vae, params, y, g0, temperature


def max_rel(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def compare_with_twin(vae, cfg, params, y, g0, estimator, temperature, reduction="mean",
                      kl="analytic", prior_temperature=None):
    twin = pytest.importorskip("refvae.witness.categorical")
    pytest.importorskip("torch")
    res = vae.loss_and_grads(params, y, g0, estimator=estimator, temperature=temperature,
                             reduction=reduction)
    t_loss, t_kl, t_rec, t_grads = twin.grads(cfg, params, y, g0, estimator, temperature, reduction,
                                              kl, prior_temperature)
    assert abs(res.loss - t_loss) <= RTOL_TWIN * abs(t_loss)
    assert max_rel(vae.bk.to_numpy(res.kl_per_datum), t_kl) <= RTOL_TWIN
    assert max_rel(vae.bk.to_numpy(res.reconstruction_per_datum), t_rec) <= RTOL_TWIN
    assert list(res.grads) == list(t_grads)
    worst = {k: max_rel(vae.bk.to_numpy(res.grads[k]), t_grads[k]) for k in t_grads}
    assert max(worst.values()) <= RTOL_TWIN, worst
    return worst


# ----- protocol --------------------------------------------------------------------------------
def test_registered_estimators_and_default():
    assert set(estimators_for("categorical")) == set(ESTIMATORS)
    vae = VAE(dict(data_dim=3, latent_dim=2, categories=4, latent="categorical", encoder_hidden=[],
                   decoder_hidden=[]))
    assert isinstance(vae.latent, Categorical)
    assert vae.latent.heads() == [("logits", 8)] and vae.latent.decoder_in == 8
    assert vae.param_shapes()["encoder.logits.weight"] == (8, 3)
    assert vae.param_shapes()["decoder.out.weight"] == (3, 8)
    params, y = vae.init_params(0), np.ones((2, 3))
    g0 = vae.draw_noise(NoiseSource(0), 2, 3)
    assert g0.shape == (2, 3, 2, 4)
    default = vae.loss_and_grads(params, y, g0, temperature=0.5)
    explicit = vae.loss_and_grads(params, y, g0, estimator="gumbel-softmax", temperature=0.5)
    assert default.loss == explicit.loss
    assert vae.loss(params, y, g0, temperature=0.5) == pytest.approx(default.loss, rel=1e-14)


def test_sample_shapes_and_modes(np_bk):
    lat = Categorical(3, 4)
    rng = np.random.default_rng(0)
    heads = {"logits": rng.standard_normal((5, 12))}
    g0 = NoiseSource(1).gumbel((5, 2, 3, 4))
    relaxed = lat.sample(np_bk, heads, g0, "gumbel-softmax", 0.5)
    hard = lat.sample(np_bk, heads, g0, "straight-through", 0.5)
    score = lat.sample(np_bk, heads, g0, "score")
    for st in (relaxed, hard, score):
        assert st.x.shape == (5, 2, 12)
    np.testing.assert_allclose(relaxed.x.reshape(5, 2, 3, 4).sum(-1), 1.0, rtol=1e-14)
    assert set(np.unique(hard.x)) == {0.0, 1.0} and np.array_equal(hard.x, score.x)
    # straight-through's one-hot is the argmax of its own relaxed sample (same noise)
    assert np.array_equal(hard.hard.argmax(-1), hard.y.argmax(-1))
    np.testing.assert_allclose(lat.mean(np_bk, relaxed).reshape(5, 3, 4).sum(-1), 1.0, rtol=1e-14)
    assert score.y is None and score.temperature is None


def test_hard_log_q_and_log_prior(np_bk):
    lat = Categorical(2, 3)
    logits = np.array([[0.3, -1.0, 2.0, 0.0, 0.5, -0.5]])
    g0 = NoiseSource(2).gumbel((1, 4, 2, 3))
    st = lat.sample(np_bk, {"logits": logits}, g0, "hard")
    c = (logits.reshape(1, 1, 2, 3) + g0).argmax(-1)                        # (1, 4, 2)
    log_pi = logits.reshape(2, 3) - np.log(np.exp(logits.reshape(2, 3)).sum(-1, keepdims=True))
    expected = log_pi[0, c[0, :, 0]] + log_pi[1, c[0, :, 1]]
    np.testing.assert_allclose(lat.log_q(np_bk, st)[0], expected, rtol=1e-14)
    np.testing.assert_allclose(lat.log_prior(np_bk, st), np.full((1, 4), -2 * np.log(3.0)),
                               rtol=1e-15)


@pytest.mark.parametrize("bad", [None, 0.0, -1.0, float("nan"), float("inf"), True, "1"])
@pytest.mark.parametrize("estimator", ["gumbel-softmax", "straight-through"])
def test_temperature_errors(bad, estimator):
    vae = VAE(dict(data_dim=2, latent_dim=1, categories=2, latent="categorical", encoder_hidden=[],
                   decoder_hidden=[]))
    g0 = vae.draw_noise(NoiseSource(0), 1, 2)
    with pytest.raises(ConfigError, match="temperature"):
        vae.loss_and_grads(vae.init_params(0), np.ones((1, 2)), g0, estimator=estimator,
                           temperature=bad)


def test_other_errors():
    vae = VAE(dict(data_dim=2, latent_dim=1, categories=3, latent="categorical", encoder_hidden=[],
                   decoder_hidden=[]))
    params, y = vae.init_params(0), np.ones((1, 2))
    with pytest.raises(ConfigError, match="L ≥ 2"):
        vae.loss_and_grads(params, y, vae.draw_noise(NoiseSource(0), 1, 1), estimator="score")
    with pytest.raises(ConfigError, match="pathwise"):
        vae.loss_and_grads(params, y, vae.draw_noise(NoiseSource(0), 1, 2), estimator="pathwise")
    with pytest.raises(ShapeError, match="gumbel"):   # noise of the Gaussian layout
        vae.loss_and_grads(params, y, np.zeros((1, 2, 1)), temperature=1.0)
    with pytest.raises(ConfigError, match="kl"):
        Categorical(2, 3, kl="exact")
    vae.latent = Categorical(1, 3, kl="relaxed")
    with pytest.raises(ConfigError, match="relaxed samples"):
        vae.loss_and_grads(params, y, vae.draw_noise(NoiseSource(0), 1, 2),
                           estimator="straight-through",
                           temperature=1.0)


def test_score_temperature_is_ignored():
    cfg, vae, params, y, g0, _ = random_case(3, "score")
    a = vae.loss_and_grads(params, y, g0, estimator="score")
    b = vae.loss_and_grads(params, y, g0, estimator="score", temperature=0.1)
    assert a.loss == b.loss
    assert all(np.array_equal(a.grads[k], b.grads[k]) for k in a.grads)


# ----- whole model against the PyTorch twin -----------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_whole_model_matches_torch(seed, estimator):
    cfg, vae, params, y, g0, s = random_case(seed, estimator)
    compare_with_twin(vae, cfg, params, y, g0, estimator, s, reduction=["mean", "sum"][seed % 2])


@pytest.mark.parametrize("seed", range(4))
def test_relaxed_kl_model_matches_torch(seed):
    cfg, vae, params, y, g0, s = random_case(seed, "gumbel-softmax")
    prior_s = [None, 0.5, 1.0, 2.0][seed]
    relaxed = {"categorical_kl": "relaxed",
               **({} if prior_s is None else {"prior_temperature": prior_s})}
    vae = VAE({**cfg, **relaxed})   # the config fields reach the latent
    assert (vae.latent.kl_kind, vae.latent.prior_temperature) == ("relaxed", prior_s)
    assert VAEConfig.from_dict(vae.config.to_dict()) == vae.config
    compare_with_twin(vae, cfg, params, y, g0, "gumbel-softmax", s, kl="relaxed",
                      prior_temperature=prior_s)


@pytest.mark.parametrize("fields,words", [
    ({"categorical_kl": "exact"}, "choose one of analytic, relaxed"),
    ({"categorical_kl": "relaxed", "prior_temperature": 0.0}, "positive finite"),
    ({"categorical_kl": "relaxed", "prior_temperature": True}, "positive finite"),
    ({"prior_temperature": 0.5}, "applies only to categorical_kl 'relaxed'"),
    ({"latent": "gaussian", "categories": None, "categorical_kl": "relaxed"},
     "applies only to latent 'categorical'"),
])
def test_categorical_kl_config_fields_are_checked(fields, words):
    base = {"data_dim": 4, "latent_dim": 2, "latent": "categorical", "categories": 3}
    with pytest.raises(ConfigError, match=words):
        VAEConfig.from_dict({k: v for k, v in {**base, **fields}.items() if v is not None})


def test_default_categorical_kl_is_not_written():
    d = VAEConfig.from_dict({"data_dim": 4, "latent_dim": 2, "latent": "categorical",
                             "categories": 3}).to_dict()
    assert "categorical_kl" not in d and "prior_temperature" not in d


def test_straight_through_uses_hard_forward_and_relaxed_backward():
    """The straight-through loss equals the score loss (both see the one-hot sample) and its
    encoder gradient is the relaxed VJP of the hard sample's decoder gradient, not zero."""
    cfg, vae, params, y, g0, s = random_case(4, "score")
    st = vae.loss_and_grads(params, y, g0, estimator="straight-through", temperature=s)
    sc = vae.loss_and_grads(params, y, g0, estimator="score")
    gs = vae.loss_and_grads(params, y, g0, estimator="gumbel-softmax", temperature=s)
    assert st.loss == sc.loss and st.loss != gs.loss
    for k in st.grads:
        if k.startswith("decoder"):
            assert np.array_equal(st.grads[k], sc.grads[k])


# ----- finite differences of the whole relaxed loss --------------------------------------------
@pytest.mark.parametrize("kl", ["analytic", "relaxed"])
def test_gumbel_softmax_gradients_finite_differences(kl):
    """The gumbel-softmax estimate is the exact gradient of the relaxed loss at fixed noise."""
    cfg, vae, params, y, g0, s = random_case(7, "gumbel-softmax")
    vae.latent = Categorical(cfg["latent_dim"], cfg["categories"], kl=kl, prior_temperature=0.8)
    res = vae.loss_and_grads(params, y, g0, estimator="gumbel-softmax", temperature=s)
    assert_gradients(lambda p: vae.loss(p, y, g0, estimator="gumbel-softmax", temperature=s),
                     params, res.grads)


def test_relaxed_state_densities_are_concrete_and_tie_to_the_relaxed_kl(np_bk):
    """On a relaxed state log_q/log_prior are the concrete densities of the sample the decoder saw,
    and the relaxed KL is their mean difference; the analytic KL ignores them."""
    from refvae.math.latent.categorical import concrete_log_density
    rng = np.random.default_rng(9)
    heads = {"logits": rng.standard_normal((3, 8))}
    g0 = NoiseSource(9).gumbel((3, 4, 2, 4))
    relaxed = Categorical(2, 4, kl="relaxed", prior_temperature=0.9)
    st = relaxed.sample(np_bk, heads, g0, "gumbel-softmax", 0.6)
    expected_q = concrete_log_density(np_bk, st.log_y, heads["logits"].reshape(3, 1, 2, 4),
                                      0.6).sum(-1)
    expected_p = concrete_log_density(np_bk, st.log_y, np.zeros(4), 0.9).sum(-1)
    np.testing.assert_allclose(relaxed.log_q(np_bk, st), expected_q, rtol=1e-14)
    np.testing.assert_allclose(relaxed.log_prior(np_bk, st), expected_p, rtol=1e-14)
    np.testing.assert_allclose(relaxed.kl(np_bk, st), (expected_q - expected_p).mean(1), rtol=1e-12)
    analytic = Categorical(2, 4)
    st_a = analytic.sample(np_bk, heads, g0, "gumbel-softmax", 0.6)
    pi = np.exp(st_a.log_pi)
    np.testing.assert_allclose(analytic.kl(np_bk, st_a), (pi * np.log(4 * pi)).sum((-1, -2)),
                               rtol=1e-13)
