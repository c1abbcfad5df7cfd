"""The model forms of issue 25: Gaussian scale heads, head activations, the Monte Carlo KL,
conditional VAEs and the objective's free scale
(docs/DERIVATIONS.md#scale-heads-head-activations-monte-carlo-kl-and-conditioning).

Evidence: the PyTorch witness (:func:`refvae.witness.functional.forms_grads`, written with torch
operations and autograd of surrogate losses) in float64 for every form × estimator × latent that
applies, ≤ 1e-10 relative on every gradient; central finite differences of the loss; hypothesis
properties (equal models written in two scale forms give one loss; the Monte Carlo KL averages to
the closed form); and one-line refusals of the combinations that do not apply.
"""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refvae import ConfigError, DataError, NoiseSource, ShapeError
from refvae.backend import get_backend
from refvae.gradcheck import assert_gradients
from refvae.math.config import VAEConfig
from refvae.math.latent.gaussian import DiagonalGaussian, scale_from_head
from refvae.math.latent.gaussian_full import FullCovarianceGaussian
from refvae.math.vae import VAE
from refvae.witness import functional as twin

FORMS = {
    "logvar": {},
    "log_std": dict(scale_head="log_std"),
    "softplus_std": dict(scale_head="softplus_std", scale_floor=0.05),
    "softplus_var": dict(scale_head="softplus_var"),
    "softplus_var-floor": dict(scale_head="softplus_var", scale_floor=0.3),
    "monte_carlo": dict(kl="monte_carlo"),
    "log_std-monte_carlo": dict(scale_head="log_std", kl="monte_carlo"),
    "head_activations": dict(head_activations={"mean": "tanh", "logvar": "softplus"}),
    "full": dict(latent="gaussian_full"),
    "full-monte_carlo": dict(latent="gaussian_full", kl="monte_carlo"),
    "full-head_activations": dict(
        latent="gaussian_full", head_activations={"scale_tril": "sigmoid"}
    ),
    "flow-softplus_std": dict(flow_length=2, scale_head="softplus_std", scale_floor=0.1),
    "flow-head_activations": dict(
        flow_length=1, head_activations={"flow_b": "relu", "logvar": "silu"}
    ),
}
EMISSIONS = [
    dict(emission="gaussian", activation="tanh", alpha=0.7),
    dict(emission="bernoulli", activation="softplus"),
    dict(emission="gaussian_diag", activation="silu"),
]


def _case(form, emission=0, condition=False, n=3, samples=4, k=3, seed=0, bk="numpy"):
    cfg = dict(
        data_dim=4,
        latent_dim=k,
        encoder_hidden=[5],
        decoder_hidden=[6],
        **EMISSIONS[emission],
        **FORMS[form],
    )
    if condition:
        cfg["condition_dim"] = 2
    vae = VAE(cfg, backend=bk)
    src = NoiseSource(seed)
    params = vae.init_params(src)
    y = src.uniform((n, 4)) if cfg["emission"] == "bernoulli" else src.normal((n, 4))
    eps = vae.draw_noise(src, n, samples)
    c = src.normal((n, 2)) if condition else None
    return cfg, vae, params, y, eps, c


def _applies(form, estimator):
    return estimator == "pathwise" or not form.startswith("flow")


# ----- the witness -----------------------------------------------------------------------------
@pytest.mark.parametrize("condition", [False, True], ids=["plain", "conditional"])
@pytest.mark.parametrize("estimator", ["pathwise", "price", "score"])
@pytest.mark.parametrize("form", FORMS)
def test_forms_match_the_pytorch_witness(form, estimator, condition):
    """Loss, KL and reconstruction per datum to 1e-12 (KL 1e-11), every gradient to 1e-10, for each
    form × estimator (price on smooth decoders) × latent, with and without a condition."""
    pytest.importorskip("torch")
    if not _applies(form, estimator):
        pytest.skip("a planar flow has the pathwise estimator only")
    emission = sorted(FORMS).index(form) % len(EMISSIONS)
    cfg, vae, params, y, eps, c = _case(form, emission, condition)
    res = vae.loss_and_grads(params, y, eps, estimator=estimator, condition=c)
    twin.assert_matches(
        vae.bk, res, twin.forms_grads(cfg, params, y, eps, c, estimator), kl_rtol=1e-11
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("estimator", ["pathwise", "price", "score"])
def test_objective_scale_multiplies_loss_and_every_gradient(np_bk, estimator, reduction):
    pytest.importorskip("torch")
    cfg, vae, params, y, eps, c = _case("softplus_var-floor", condition=True)
    res = vae.loss_and_grads(
        params, y, eps, estimator=estimator, condition=c, reduction=reduction, scale=0.25
    )
    twin.assert_matches(
        np_bk, res, twin.forms_grads(cfg, params, y, eps, c, estimator, reduction, 0.25)
    )
    one = vae.loss_and_grads(params, y, eps, estimator=estimator, condition=c, reduction=reduction)
    assert res.loss == pytest.approx(0.25 * one.loss, rel=1e-14)
    for name, g in one.grads.items():
        np.testing.assert_allclose(res.grads[name], 0.25 * g, rtol=1e-13, atol=1e-16)
    assert vae.loss(params, y, eps, reduction=reduction, condition=c, scale=0.25) == pytest.approx(
        res.loss, rel=1e-13
    )


def test_forms_run_on_every_backend(bk):
    """The strict CuPy stand-in (and CuPy, where present) agree with NumPy on the forms."""
    _, ref, params, y, eps, c = _case("softplus_var-floor", condition=True)
    _, vae, _, _, _, _ = _case("softplus_var-floor", condition=True, bk=bk)
    expected = ref.loss_and_grads(params, y, eps, condition=c, estimator="price")
    got = vae.loss_and_grads(
        {k: bk.asarray(v) for k, v in params.items()}, y, eps, condition=c, estimator="price"
    )
    assert got.loss == pytest.approx(expected.loss, rel=1e-13)
    for name, g in expected.grads.items():
        np.testing.assert_allclose(bk.to_numpy(got.grads[name]), g, rtol=1e-11, atol=1e-14)


def test_the_witness_can_fail(np_bk):
    """A witness told a different scale form disagrees: the comparison is not vacuous."""
    pytest.importorskip("torch")
    cfg, vae, params, y, eps, c = _case("softplus_var")
    res = vae.loss_and_grads(params, y, eps)
    with pytest.raises(AssertionError):
        twin.assert_matches(
            np_bk, res, twin.forms_grads({**cfg, "scale_head": "softplus_std"}, params, y, eps)
        )


# ----- finite differences ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "form",
    [
        "log_std",
        "softplus_std",
        "softplus_var-floor",
        "log_std-monte_carlo",
        "full-monte_carlo",
        "flow-softplus_std",
        "head_activations",
    ],
)
def test_pathwise_gradients_match_finite_differences(form):
    """The pathwise estimate is the exact gradient of the loss at fixed noise, for every form."""
    _, vae, params, y, eps, c = _case(form, condition=True, seed=3)
    res = vae.loss_and_grads(params, y, eps, condition=c, scale=1.7)
    assert_gradients(lambda p: vae.loss(p, y, eps, condition=c, scale=1.7), params, res.grads)


def test_categorical_logits_through_relu_and_a_condition_match_finite_differences():
    """YongfeiYan's Gumbel-softmax VAE applies ReLU to its logits: the chain rule through it."""
    cfg = dict(
        data_dim=5,
        latent_dim=2,
        categories=3,
        latent="categorical",
        encoder_hidden=[6],
        decoder_hidden=[4],
        activation="tanh",
        condition_dim=2,
        head_activations={"logits": "relu"},
    )
    vae = VAE(cfg)
    src = NoiseSource(4)
    params = vae.init_params(src)
    y, c, g0 = src.uniform((3, 5)), src.normal((3, 2)), vae.draw_noise(src, 3, 2)
    res = vae.loss_and_grads(
        params, y, g0, estimator="gumbel-softmax", temperature=0.7, condition=c
    )
    heads, _ = vae.encode(params, y, c)
    assert (heads["logits"] >= 0).all() and (heads["logits"] == 0).any()
    assert_gradients(
        lambda p: vae.loss(p, y, g0, estimator="gumbel-softmax", temperature=0.7, condition=c),
        params,
        res.grads,
    )


# ----- properties ---------------------------------------------------------------------------------
def _constant_head_params(vae, params, logvar_head):
    """``params`` with the encoder's logvar head constant: weight 0, bias ``logvar_head``."""
    out = dict(params)
    out["encoder.logvar.weight"] = np.zeros_like(params["encoder.logvar.weight"])
    out["encoder.logvar.bias"] = np.asarray(logvar_head, dtype=np.float64)
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-3.0, 3.0), min_size=3, max_size=3), st.floats(0.0, 0.04))
def test_every_scale_form_at_matching_heads_gives_the_logvar_loss(ell, floor):
    """The same υ written as ℓ, as log υ, through softplus_std and softplus_var (with a floor
    below υ): one loss, and each head's gradient is the ℓ gradient times dℓ/dh."""
    ell = np.asarray(ell)
    var = np.exp(ell)
    inv_softplus = lambda v: v + np.log(-np.expm1(-v))  # noqa: E731 - softplus(h) = v
    heads = {
        "logvar": (ell, np.ones(3)),
        "log_std": (ell / 2, 2 * np.ones(3)),
        "softplus_var": (
            inv_softplus(var - floor),
            (1 / var) / (1 + np.exp(-inv_softplus(var - floor))),
        ),
        "softplus_std": (
            inv_softplus(np.sqrt(var) - floor),
            (2 / np.sqrt(var)) / (1 + np.exp(-inv_softplus(np.sqrt(var) - floor))),
        ),
    }
    results = {}
    for form, (h, dl_dh) in heads.items():
        extra = (
            {}
            if form == "logvar"
            else dict(scale_head=form, scale_floor=0.0 if form == "log_std" else floor)
        )
        cfg = dict(
            data_dim=4,
            latent_dim=3,
            encoder_hidden=[5],
            decoder_hidden=[6],
            activation="tanh",
            emission="gaussian",
            **extra,
        )
        vae = VAE(cfg)
        src = NoiseSource(1)
        params = _constant_head_params(vae, vae.init_params(src), h)
        y, eps = src.normal((2, 4)), vae.draw_noise(src, 2, 3)
        res = vae.loss_and_grads(params, y, eps)
        results[form] = (res.loss, res.grads["encoder.logvar.bias"] / dl_dh)
    for form, (loss, grad) in results.items():
        assert loss == pytest.approx(results["logvar"][0], rel=1e-9, abs=1e-12), form
        np.testing.assert_allclose(grad, results["logvar"][1], rtol=1e-7, atol=1e-10, err_msg=form)


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from(["logvar", "log_std", "softplus_std", "softplus_var"]), st.integers(0, 10_000)
)
def test_monte_carlo_kl_and_its_gradient_average_to_the_closed_form(form, seed):
    """Over many samples the mean of the Monte Carlo KL and of its pathwise gradient approach the
    closed form's (within 5 standard errors of the per-sample terms)."""
    np_bk = get_backend("numpy", "float64")
    rng = np.random.default_rng(seed)
    heads = {"mean": rng.normal(size=(2, 3)), "logvar": rng.normal(scale=0.7, size=(2, 3))}
    eps = rng.standard_normal((2, 20_000, 3))
    mc, exact = (
        DiagonalGaussian(3, form, 0.1 if form.startswith("softplus") else 0.0, kl)
        for kl in ("monte_carlo", "analytic")
    )
    state = mc.sample(np_bk, heads, eps)
    per_sample = mc.log_q(np_bk, state) - mc.log_prior(np_bk, state)
    se = per_sample.std(axis=1, ddof=1) / math.sqrt(eps.shape[1])
    assert np.all(np.abs(mc.kl(np_bk, state) - exact.kl(np_bk, state)) <= 5 * se + 1e-12)
    g_mc, g_exact = mc.kl_grads(np_bk, state), exact.kl_grads(np_bk, state)
    sc = state.scale
    terms = {
        "mean": state.x,
        "logvar": sc.dlog[:, None] * (sc.std[:, None] * state.x * state.eps - 1),
    }
    for h, t in terms.items():  # the per-sample gradients, for the standard error
        np.testing.assert_allclose(t.mean(axis=1), g_mc[h], rtol=1e-10, atol=1e-12)
        se = t.std(axis=1, ddof=1) / math.sqrt(eps.shape[1])
        assert np.all(np.abs(g_mc[h] - g_exact[h]) <= 5 * se + 1e-12), h


def test_full_covariance_monte_carlo_kl_averages_to_the_closed_form(np_bk):
    rng = np.random.default_rng(5)
    heads = {"mean": rng.normal(size=(2, 3)), "scale_tril": rng.normal(scale=0.4, size=(2, 6))}
    eps = rng.standard_normal((2, 40_000, 3))
    mc, exact = FullCovarianceGaussian(3, "monte_carlo"), FullCovarianceGaussian(3)
    state = mc.sample(np_bk, heads, eps)
    per_sample = mc.log_q(np_bk, state) - mc.log_prior(np_bk, state)
    se = per_sample.std(axis=1, ddof=1) / math.sqrt(eps.shape[1])
    assert np.all(np.abs(mc.kl(np_bk, state) - exact.kl(np_bk, state)) <= 5 * se)
    for h, g in exact.kl_grads(np_bk, state).items():
        np.testing.assert_allclose(mc.kl_grads(np_bk, state)[h], g, atol=0.05, err_msg=h)


def test_scale_from_head_derivative_matches_finite_differences(np_bk):
    h = np.linspace(-4, 4, 9)
    for form in ("logvar", "log_std", "softplus_std", "softplus_var"):
        sc = scale_from_head(np_bk, form, h, 0.2 if form.startswith("softplus") else 0.0)
        up, down = (
            scale_from_head(np_bk, form, h + d, 0.2 if form.startswith("softplus") else 0.0)
            for d in (1e-6, -1e-6)
        )
        np.testing.assert_allclose(
            (up.log_std - down.log_std) / 2e-6, sc.dlog, rtol=1e-7, err_msg=form
        )
        np.testing.assert_allclose(sc.std**2, sc.var, rtol=1e-14, err_msg=form)
        np.testing.assert_allclose(np.log(sc.std), sc.log_std, rtol=1e-14, atol=1e-15, err_msg=form)


# ----- the config and the gates ------------------------------------------------------------------
def test_to_dict_omits_the_new_fields_at_their_defaults_and_round_trips():
    plain = VAEConfig(data_dim=4, latent_dim=2)
    assert not {"scale_head", "scale_floor", "head_activations", "kl", "condition_dim"} & set(
        plain.to_dict()
    )
    cfg = VAEConfig(
        data_dim=4,
        latent_dim=2,
        scale_head="softplus_var",
        scale_floor=1e-3,
        kl="monte_carlo",
        head_activations={"mean": "tanh"},
        condition_dim=3,
    )
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["head_activations"] == {"mean": "tanh"} and d["condition_dim"] == 3
    assert VAEConfig.from_dict(d) == cfg


def test_n_params_counts_the_conditional_layers():
    for extra in (
        dict(condition_dim=3),
        dict(condition_dim=2, latent="gaussian_full"),
        dict(condition_dim=1, flow_length=2),
        dict(condition_dim=2, latent="categorical", categories=4),
    ):
        cfg = VAEConfig(data_dim=5, latent_dim=2, encoder_hidden=(4,), decoder_hidden=(3,), **extra)
        base = VAEConfig(**{**cfg.to_dict(), "condition_dim": 0})
        vae = VAE(cfg)
        count = sum(math.prod(s) for s in vae.param_shapes().values())
        assert count <= cfg.n_params(), extra  # an upper estimate
        assert (
            count - sum(math.prod(s) for s in VAE(base).param_shapes().values())
            == cfg.n_params() - base.n_params()
            == cfg.condition_dim * (4 + 3)
        ), extra
        assert vae.param_shapes()["encoder.0.weight"] == (4, 5 + cfg.condition_dim)
        assert vae.param_shapes()["decoder.0.weight"] == (3, cfg.decoder_in + cfg.condition_dim)


@pytest.mark.parametrize(
    "extra,message",
    [
        (dict(scale_head="std"), "config field 'scale_head' is 'std'; choose one of logvar"),
        (
            dict(scale_head="log_std", latent="gaussian_full"),
            "'scale_head' applies only to latent 'gaussian'",
        ),
        (dict(scale_floor=0.1), "'scale_floor' applies only to scale_head 'softplus_std'"),
        (dict(scale_head="softplus_std", scale_floor=-1.0), "config field 'scale_floor'"),
        (dict(kl="sampled"), "config field 'kl' is 'sampled'; choose one of analytic, monte_carlo"),
        (
            dict(kl="monte_carlo", latent="categorical", categories=3),
            "'kl' applies only to the Gaussian",
        ),
        (dict(head_activations={"logits": "relu"}), "names 'logits', not an encoder head"),
        (dict(head_activations={"mean": "gelu"}), "gives head 'mean' the activation 'gelu'"),
        (dict(head_activations="relu"), "must map encoder heads to activations"),
        (dict(condition_dim=-1), "config field 'condition_dim'"),
    ],
)
def test_invalid_forms_are_refused_in_one_line(extra, message):
    with pytest.raises(ConfigError, match=message) as info:
        VAEConfig(data_dim=4, latent_dim=2, **extra)
    assert "\n" not in str(info.value)


def test_condition_gate_and_scale_are_checked(np_bk):
    _, vae, params, y, eps, c = _case("logvar", condition=True)
    with pytest.raises(ShapeError, match=r"conditional \(condition_dim 2\): pass condition"):
        vae.loss_and_grads(params, y, eps)
    with pytest.raises(ShapeError, match=r"condition has shape \(3, 3\), expected \(3, 2\)"):
        vae.loss_and_grads(params, y, eps, condition=np.zeros((3, 3)))
    with pytest.raises(DataError, match="condition contains NaN"):
        vae.loss_and_grads(params, y, eps, condition=np.full((3, 2), np.nan))
    with pytest.raises(ConfigError, match="scale"):
        vae.loss_and_grads(params, y, eps, condition=c, scale=0.0)
    _, plain, params, y, eps, _ = _case("logvar")
    with pytest.raises(ShapeError, match="takes none"):
        plain.loss_and_grads(params, y, eps, condition=np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="is conditional"):
        vae.encode(params, y)


def test_refvae_train_refuses_a_conditional_vae_on_data_without_a_condition(tmp_path):
    """Training a conditional VAE is tests/test_conditional_train.py's; data that carry no
    condition are refused in one line naming the fix."""
    from refvae.data.dataset import Dataset
    from refvae.train.loop import TrainOptions, train

    cfg = VAEConfig(data_dim=4, latent_dim=2, condition_dim=2)
    data = Dataset("plain", np.full((6, 4), 0.5), np.full((2, 4), 0.5))
    with pytest.raises(ConfigError, match="carries no condition.*--condition labels") as info:
        train(cfg, TrainOptions(epochs=1, batch_size=3, progress=False), data, tmp_path / "run")
    assert "\n" not in str(info.value) and not (tmp_path / "run" / "checkpoint.npz").exists()
