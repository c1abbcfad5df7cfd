"""The full-covariance Gaussian recognition model (latent "gaussian_full").

Evidence: the head layout against numpy.tril_indices; KL, log-density and score against
torch.distributions / autograd; the pathwise loss and every gradient against the PyTorch float64
twin on the same parameters and noise; finite differences of the KL gradient.
"""
import numpy as np
import pytest

from refvae.backend import NoiseSource
from strict_cupy import DEVICE_ULPS
from refvae.errors import ShapeError
from refvae.gradcheck import assert_gradients
from refvae.math.latent import FullCovarianceGaussian
from refvae.math.vae import VAE
from refvae.witness import functional as twin


def _heads(rng, n, k, scale=0.5):
    return {"mean": rng.normal(size=(n, k)),
            "scale_tril": scale * rng.normal(size=(n, k * (k + 1) // 2))}


def test_scale_tril_layout_is_numpy_tril_indices_with_exp_diagonal(bk):
    rng = np.random.default_rng(0)
    k = 4
    raw = rng.normal(size=(3, k * (k + 1) // 2))
    latent = FullCovarianceGaussian(k)
    r = bk.to_numpy(latent.scale_tril(bk, bk.asarray(raw)))
    expected = np.zeros((3, k, k))
    rows, cols = np.tril_indices(k)
    expected[:, rows, cols] = raw
    expected[:, range(k), range(k)] = np.exp(expected[:, range(k), range(k)])
    if bk.name == "numpy":
        np.testing.assert_array_equal(r, expected)
    else:  # a GPU's exp rounds differently from NumPy's
        np.testing.assert_array_max_ulp(r, expected, maxulp=DEVICE_ULPS)
    assert latent.heads() == [("mean", k), ("scale_tril", 10)]


def test_sample_is_mean_plus_r_times_noise(bk):
    rng = np.random.default_rng(1)
    latent = FullCovarianceGaussian(3)
    heads = _heads(rng, 2, 3)
    eps = rng.normal(size=(2, 5, 3))
    st = latent.sample(bk, {h: bk.asarray(v) for h, v in heads.items()}, bk.asarray(eps))
    r = bk.to_numpy(st.R)
    expected = heads["mean"][:, None, :] + np.einsum("nij,nlj->nli", r, eps)
    np.testing.assert_allclose(bk.to_numpy(st.x), expected, rtol=1e-14, atol=1e-14)


def test_kl_log_q_and_log_q_cross_match_torch_distributions(np_bk):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    k, n = 3, 4
    latent = FullCovarianceGaussian(k)
    heads = _heads(rng, n, k, scale=0.7)
    eps = rng.normal(size=(n, 6, k))
    st = latent.sample(np_bk, heads, eps)
    r_t = twin.scale_tril(torch.tensor(heads["scale_tril"]), k)
    q = torch.distributions.MultivariateNormal(torch.tensor(heads["mean"]), scale_tril=r_t)
    prior = torch.distributions.MultivariateNormal(torch.zeros(k, dtype=torch.float64),
                                                   scale_tril=torch.eye(k, dtype=torch.float64))
    kl_t = torch.distributions.kl_divergence(q, prior).numpy()
    np.testing.assert_allclose(latent.kl(np_bk, st), kl_t, rtol=1e-12)
    x_t = torch.tensor(st.x).transpose(0, 1)                    # (L, N, K): batch over data
    np.testing.assert_allclose(latent.log_q(np_bk, st), q.log_prob(x_t).T.numpy(), rtol=1e-12)
    np.testing.assert_allclose(latent.log_prior(np_bk, st), prior.log_prob(x_t).T.numpy(),
                               rtol=1e-12)
    pts = st.x.reshape(-1, k)
    cross = latent.log_q_cross(np_bk, heads, pts)                # (M, N)
    expected = q.log_prob(torch.tensor(pts)[:, None, :]).numpy()
    np.testing.assert_allclose(cross, expected, rtol=1e-12)


def test_kl_grads_match_finite_differences(np_bk):
    rng = np.random.default_rng(3)
    latent = FullCovarianceGaussian(3)
    heads = _heads(rng, 2, 3)
    eps = rng.normal(size=(2, 1, 3))

    def kl(h):
        return float(latent.kl(np_bk, latent.sample(np_bk, h, eps)).sum())

    assert_gradients(kl, heads, latent.kl_grads(np_bk, latent.sample(np_bk, heads, eps)))


def test_score_matches_torch_autograd_of_log_q_at_fixed_x(np_bk):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    k, n, samples = 3, 2, 4
    latent = FullCovarianceGaussian(k)
    heads = _heads(rng, n, k)
    eps = rng.normal(size=(n, samples, k))
    st = latent.sample(np_bk, heads, eps)
    s = latent.score(np_bk, st)
    x = torch.tensor(st.x)
    for nn in range(n):
        for ll in range(samples):
            mean = torch.tensor(heads["mean"][nn:nn + 1], requires_grad=True)
            raw = torch.tensor(heads["scale_tril"][nn:nn + 1], requires_grad=True)
            q = torch.distributions.MultivariateNormal(mean, scale_tril=twin.scale_tril(raw, k))
            q.log_prob(x[nn, ll][None]).sum().backward()
            np.testing.assert_allclose(s["mean"][nn, ll], mean.grad.numpy()[0], rtol=1e-11,
                                       atol=1e-13)
            np.testing.assert_allclose(s["scale_tril"][nn, ll], raw.grad.numpy()[0], rtol=1e-11,
                                       atol=1e-13)


CONFIGS = [
    dict(emission="gaussian", activation="tanh", alpha=0.7),
    dict(emission="bernoulli", activation="softplus"),
    dict(emission="gaussian_diag", activation="sigmoid"),
    dict(emission="gaussian", activation="silu", learn_alpha=True, alpha=1.3),
]


def _model(bk, extra, k=3, seed=0):
    cfg = dict(data_dim=5, latent_dim=k, encoder_hidden=[6], decoder_hidden=[7],
               latent="gaussian_full",
               **extra)
    vae = VAE(cfg, backend=bk)
    src = NoiseSource(seed)
    params = vae.init_params(src)
    y = src.uniform((4, 5)) if cfg["emission"] == "bernoulli" else src.normal((4, 5))
    return cfg, vae, params, y, vae.draw_noise(src, 4, 3)


@pytest.mark.parametrize("extra", CONFIGS, ids=lambda c: f"{c['emission']}-{c['activation']}")
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pathwise_matches_torch_twin(bk, extra, reduction):
    pytest.importorskip("torch")
    cfg, vae, params, y, eps = _model(bk, extra)
    res = vae.loss_and_grads(params, y, eps, estimator="pathwise", reduction=reduction)
    host = {k: bk.to_numpy(v) for k, v in params.items()}
    twin.assert_matches(bk, res,
                        twin.latent_grads(cfg, host, bk.to_numpy(y), bk.to_numpy(eps), reduction))


def test_noise_of_the_wrong_shape_is_a_shape_error(np_bk):
    _, vae, params, y, _ = _model(np_bk, CONFIGS[0])
    with pytest.raises(ShapeError, match=r"expected \(N, L, 3\)"):
        vae.loss_and_grads(params, y, np.zeros((4, 2, 2)))
