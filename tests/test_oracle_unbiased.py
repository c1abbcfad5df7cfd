"""``check_unbiased``: unbiased estimators pass, biased ones fail at the stated level, and a bias of
the size the report states as detectable is detected (the power check).

References: the exact expected gradient by cubature (linear decoder, gaussian emission) and by
enumeration (a small categorical latent), checked here against many draws of refvae's own
estimators; refvae's pathwise replicates elsewhere. Estimators under test: refvae's own (fresh
noise per draw) and, as "another implementation", score-function estimators written with
torch.autograd below (a leave-one-out baseline: unbiased; a baseline that depends on its own
sample: biased)."""
import json

import numpy as np
import pytest

from refvae.cli import main as cli
from refvae import oracle
from refvae.backend import NoiseSource
from refvae.errors import ConfigError, ShapeError
from refvae.math.vae import VAE
from hypothesis_matrix import LINEAR, leave_one_out, mean_of_all

CATEGORICAL = dict(format=1, data_dim=5, latent_dim=2, categories=3, encoder_hidden=[6],
                   decoder_hidden=[6],
                   activation="tanh", latent="categorical", emission="bernoulli")


def setup(cfg, scale=1.0, n=3):
    vae = VAE(cfg)
    params = {k: scale * np.asarray(v) for k, v in vae.init_params(1).items()}
    y = NoiseSource(2).normal((n, cfg["data_dim"]))
    if cfg["emission"] == "bernoulli":
        y = (y > 0).astype(float)
    return vae, params, y


def draws(vae, params, y, estimator, m, samples=1, seed=5, temperature=None):
    """``m`` independent draws of refvae's estimator, fresh noise each:
    ``{grad/<name>: (m, ...)}``."""
    src, out = NoiseSource(seed), {}
    for _ in range(m):
        g = vae.loss_and_grads(params, y, vae.draw_noise(src, len(y), samples), estimator=estimator,
                               temperature=temperature).grads
        for k, v in g.items():
            out.setdefault("grad/" + k, []).append(v)
    return {k: np.stack(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def linear():
    return setup(LINEAR)


@pytest.mark.parametrize("estimator,samples",
                         [("pathwise", 1), ("score", 1), ("score-loo", 3), ("price", 1)])
def test_unbiased_gaussian_estimators_pass_against_the_exact_gradient(linear, estimator, samples):
    report = oracle.check_unbiased(LINEAR, linear[1], linear[2],
                                   draws(*linear, estimator, 300, samples))
    assert report.passed, str(report)
    assert report.reference.startswith("the exact expected gradient (cubature over 4 points)")


def test_cubature_is_the_expectation(linear):
    """5000 pathwise draws average to the cubature value: no |z| above 4.5 over 59 entries."""
    report = oracle.check_unbiased(LINEAR, linear[1], linear[2], draws(*linear, "pathwise", 5000))
    assert report.passed and max(float(np.abs(r.z).max()) for r in report.rows) < 4.5


def test_power_a_bias_of_the_stated_size_is_detected(linear):
    """Shift one entry of the draws by the bias the report calls detectable (probability 0.9):
    it is flagged in at least 15 of 20 independent repetitions (expected 18; P(< 15) ≈ 0.01); the
    unshifted draws raise no alarm in those 20 (expected 0.02 false alarms at level 1e-3)."""
    vae, params, y = linear
    name, index = "grad/decoder.out.weight", (1, 0)
    detected = alarms = 0
    for rep in range(20):
        d = draws(vae, params, y, "pathwise", 200, seed=100 + rep)
        clean = oracle.check_unbiased(LINEAR, params, y, d)
        alarms += not clean.passed
        delta = next(r for r in clean.rows if r.name == name).detectable[index]
        d[name][:, index[0], index[1]] += delta
        shifted = oracle.check_unbiased(LINEAR, params, y, d)
        detected += not shifted.passed
    assert alarms == 0 and detected >= 15, (alarms, detected)


@pytest.fixture(scope="module")
def categorical():
    return setup(CATEGORICAL, scale=3.0)


def test_enumeration_is_the_expectation_of_the_score_estimator(categorical):
    vae, params, y = categorical
    report = oracle.check_unbiased(CATEGORICAL, params, y,
                                   draws(vae, params, y, "score", 1500, samples=2))
    assert report.passed, str(report)
    assert "enumeration of 9 configurations" in report.reference


def test_gumbel_softmax_is_biased_for_the_hard_elbo(categorical):
    """The relaxed (temperature 1) gradient used as if it were the hard-sample ELBO's: flagged."""
    vae, params, y = categorical
    d = draws(vae, params, y, "gumbel-softmax", 1500, temperature=1.0)
    report = oracle.check_unbiased(CATEGORICAL, params, y, d)
    assert not report.passed, str(report)
    assert "BIASED" in str(report)


# ----- another implementation's score estimators (torch.autograd) ------------------------------
def torch_score_grads(cfg, p, y, eps, baseline):
    """A user's score-function gradient of the negative ELBO at the noise ``eps`` (N, L, K)
    (diagonal Gaussian latent, linear decoder, gaussian emission; ``p``: tensors with
    ``requires_grad``), ``baseline(f)`` giving each sample's baseline from the (N, L) losses:
    ``(loss, {grad/<name>: array})``, the loss being the Monte Carlo negative ELBO averaged over
    the batch."""
    torch = pytest.importorskip("torch")
    yt, alpha = torch.as_tensor(y), cfg["alpha"]
    h = torch.tanh(yt @ p["encoder.0.weight"].T + p["encoder.0.bias"])
    mu = h @ p["encoder.mean.weight"].T + p["encoder.mean.bias"]
    lv = h @ p["encoder.logvar.weight"].T + p["encoder.logvar.bias"]
    x = (mu[:, None] + torch.exp(0.5 * lv)[:, None] * eps).detach()
    out_mu = x @ p["decoder.out.weight"].T + p["decoder.out.bias"]
    f = (0.5 * ((yt[:, None] - out_mu) ** 2).sum(-1) / alpha
         + 0.5 * cfg["data_dim"] * np.log(2 * np.pi * alpha))
    log_q = (-0.5 * ((x - mu[:, None]) ** 2 / torch.exp(lv)[:, None] + lv[:, None])).sum(-1)
    kl = 0.5 * (torch.exp(lv) + mu ** 2 - 1 - lv).sum(-1)
    adv = (f - baseline(f)).detach()
    surrogate = (f.mean(1) + (adv * log_q).mean(1) + kl).mean()
    grads = torch.autograd.grad(surrogate, list(p.values()))
    return (f.mean(1) + kl).mean().item(), {"grad/" + k: g.numpy() for k, g in zip(p, grads)}


def torch_score_draws(cfg, params, y, m, baseline, samples=4, seed=0):
    """``m`` independent draws of :func:`torch_score_grads`, fresh noise each."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(seed)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    out = {}
    for _ in range(m):
        eps = torch.randn(len(y), samples, cfg["latent_dim"], generator=gen, dtype=torch.float64)
        for k, g in torch_score_grads(cfg, p, y, eps, baseline)[1].items():
            out.setdefault(k, []).append(g)
    return {k: np.stack(v) for k, v in out.items()}


def test_score_with_leave_one_out_baseline_passes(linear):
    d = torch_score_draws(LINEAR, linear[1], linear[2], 400, leave_one_out)
    report = oracle.check_unbiased(LINEAR, linear[1], linear[2], d)
    assert report.passed, str(report)


def test_score_with_a_baseline_that_includes_its_sample_is_flagged_biased(linear):
    """Leave-one-out done wrong (the mean over all L = 4 samples): the score part of the encoder
    gradients is (L − 1)/L of the unbiased one."""
    d = torch_score_draws(LINEAR, linear[1], linear[2], 400, mean_of_all)
    report = oracle.check_unbiased(LINEAR, linear[1], linear[2], d)
    assert not report.passed, str(report)
    assert all(r.name.startswith("grad/encoder.") for r in report.failures())


@pytest.mark.parametrize("baseline", [leave_one_out, mean_of_all])
def test_the_diagnosis_names_a_baseline_that_includes_its_sample(linear, baseline):
    """One draw at recorded noise, compared with refvae's score-loo estimator: the leave-one-out
    user passes; the one whose baseline is the mean over all L samples is named
    score:own-sample-baseline, and nothing else."""
    torch = pytest.importorskip("torch")
    _, params, y = linear
    eps = torch.randn(len(y), 4, LINEAR["latent_dim"], dtype=torch.float64,
                      generator=torch.Generator().manual_seed(3))
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    loss, grads = torch_score_grads(LINEAR, p, y, eps, baseline)
    report = oracle.check(LINEAR, params, {"y": y, "eps": eps.numpy()}, {"loss": loss, **grads},
                          estimator="score-loo")
    if baseline is leave_one_out:
        assert report.passed, str(report)
        return
    keys = [h.split("[hypothesis ")[1].split(" ")[0] for h in report.hints if "[hypothesis " in h]
    assert keys == ["score:own-sample-baseline"], str(report)


def test_score_with_a_baseline_from_its_own_sample_is_flagged(linear):
    d = torch_score_draws(LINEAR, linear[1], linear[2], 400, lambda f: 0.5 * f)
    report = oracle.check_unbiased(LINEAR, linear[1], linear[2], d)
    assert not report.passed, str(report)
    # the decoder's are right
    assert all(r.name.startswith("grad/encoder.") for r in report.failures())


def test_reference_from_replicates_when_no_exact_one_exists():
    cfg = {**LINEAR, "decoder_hidden": [3], "emission": "bernoulli"}
    vae, params, y = setup(cfg)
    report = oracle.check_unbiased(cfg, params, y, draws(vae, params, y, "pathwise", 200))
    assert report.passed, str(report)
    assert "refvae's pathwise estimator (200 replicates of 32 samples)" in report.reference


def test_bad_draws_and_options_are_one_line_errors(linear):
    vae, params, y = linear
    d = draws(vae, params, y, "pathwise", 3)
    with pytest.raises(ShapeError, match="missing grad/decoder.out.bias"):
        oracle.check_unbiased(LINEAR, params, y,
                              {k: v for k, v in d.items() if k != "grad/decoder.out.bias"})
    with pytest.raises(ShapeError, match="same M ≥ 2"):
        oracle.check_unbiased(LINEAR, params, y,
                              {**d, "grad/decoder.out.bias": d["grad/decoder.out.bias"][:2]})
    with pytest.raises(ConfigError, match="level must be a finite number > 0 and ≤ 1"):
        oracle.check_unbiased(LINEAR, params, y, d, level=2)


def test_cli_verb(linear, tmp_path, capsys):
    vae, params, y = linear
    (tmp_path / "config.json").write_text(json.dumps(LINEAR))
    np.savez(tmp_path / "params.npz", **params)
    np.savez(tmp_path / "batch.npz", y=y)
    np.savez(tmp_path / "draws.npz", **draws(vae, params, y, "pathwise", 200))
    argv = ["oracle", "unbiased", "--config", str(tmp_path / "config.json"), "--params",
            str(tmp_path / "params.npz"),
            "--batch", str(tmp_path / "batch.npz"), "--draws", str(tmp_path / "draws.npz")]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith("unbiasedness check: PASS (200 draws")
    biased = draws(vae, params, y, "pathwise", 200)
    biased["grad/decoder.out.bias"] += 0.5
    np.savez(tmp_path / "draws.npz", **biased)
    assert cli.main(argv + ["--json"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False
    with pytest.raises(SystemExit) as info:
        cli.main(argv + ["--level", "nan"])
    assert info.value.code == 2
    assert "level" in capsys.readouterr().err


# ----- a conditional VAE ------------------------------------------------------------------------
CONDITIONAL = {**LINEAR, "condition_dim": 2}


def conditional_draws(vae, params, y, c, m, seed=7):
    src, out = NoiseSource(seed), {}
    for _ in range(m):
        g = vae.loss_and_grads(params, y, vae.draw_noise(src, len(y), 1), condition=c).grads
        for k, v in g.items():
            out.setdefault("grad/" + k, []).append(v)
    return {k: np.stack(v) for k, v in out.items()}


def test_check_unbiased_takes_the_condition_of_a_conditional_vae():
    """refvae's pathwise draws under the condition c pass against the exact (cubature) gradient,
    given as condition= or as the batch's 'condition'; draws made under another condition are
    flagged; without a condition the call is a one-line error."""
    vae, params, y = setup(CONDITIONAL)
    c = NoiseSource(3).normal((len(y), 2))
    d = conditional_draws(vae, params, y, c, 300)
    report = oracle.check_unbiased(CONDITIONAL, params, y, d, condition=c)
    assert report.passed, str(report)
    assert report.reference.startswith("the exact expected gradient (cubature over 4 points)")
    assert oracle.check_unbiased(CONDITIONAL, params, {"y": y, "condition": c}, d).passed
    other = conditional_draws(vae, params, y, -c, 300)
    assert not oracle.check_unbiased(CONDITIONAL, params, y, other, condition=c).passed
    with pytest.raises(ShapeError, match="the VAE is conditional") as err:
        oracle.check_unbiased(CONDITIONAL, params, y, d)
    assert "\n" not in str(err.value)
