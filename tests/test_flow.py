"""Planar flows on the diagonal Gaussian (config ``flow_length`` ≥ 1; Eq. 8.25).

Evidence: the log-determinant against the Jacobian determinant of the whole flow map taken by
torch.autograd.functional.jacobian (Eq. 8.25, independent of the ψ formula); finite differences of
the hand-derived gradients of the log-determinant, of the pathwise term and of the Monte Carlo
KL; the whole loss and every parameter gradient against the PyTorch float64 twin; the
invertibility constraint of Rezende & Mohamed (Appendix A.1) as a property.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refvae.backend import NoiseSource, get_backend
from refvae.errors import ConfigError
from refvae.gradcheck import assert_gradients
from refvae.math.latent import PlanarFlowGaussian
from refvae.math.vae import VAE
from refvae.witness import functional as twin

K, T = 3, 3


def _heads(seed, n=2):
    rng = np.random.default_rng(seed)
    return {"mean": rng.normal(size=(n, K)), "logvar": 0.4 * rng.normal(size=(n, K)),
            "flow_u": rng.normal(size=(n, T * K)), "flow_w": rng.normal(size=(n, T * K)),
            "flow_b": rng.normal(size=(n, T))}


def test_heads_and_parameter_names_from_the_config(np_bk):
    vae = VAE(dict(data_dim=5, latent_dim=K, encoder_hidden=[4], decoder_hidden=[4], flow_length=T))
    assert vae.latent.name == "planar_flow"
    shapes = vae.param_shapes()
    assert shapes["encoder.flow_u.weight"] == (T * K,
                                               4) and shapes["encoder.flow_w.bias"] == (T * K,)
    assert shapes["encoder.flow_b.weight"] == (T, 4)
    with pytest.raises(ConfigError, match="flow_length"):
        VAE(dict(data_dim=5, latent_dim=K, latent="gaussian_full", flow_length=2))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (2, 2 * K), elements=st.floats(-10, 10)),
       arrays(np.float64, (2, 2 * K), elements=st.floats(-10, 10).filter(lambda v: abs(v) > 1e-2)),
       arrays(np.float64, (2, 2), elements=st.floats(-30, 30)))
def test_constraint_gives_w_dot_uhat_m_and_a_finite_log_det(u, w, b):
    """Appendix A.1 of Rezende & Mohamed: ``wᵀû = softplus(wᵀu) − 1 > −1``, so every
    log-determinant is finite, including where ``1 + tanh'(a) m`` would cancel to 0 in floating
    point (α ≪ 0). The range keeps |α| ≤ 300: below α ≈ −745 softplus(α) itself
    underflows (a volume contraction by more than e^−745, outside what float64 represents)."""
    bk = get_backend("numpy")
    alpha, uhat, sp = PlanarFlowGaussian.constrain(bk, u.reshape(2, 2, K), w.reshape(2, 2, K))
    np.testing.assert_allclose((w.reshape(2, 2, K) * uhat).sum(-1), sp - 1.0, rtol=1e-9,
                               atol=1e-12 * (1 + np.abs(alpha).max()))
    latent = PlanarFlowGaussian(K, 2)
    heads = {"mean": np.zeros((2, K)), "logvar": np.zeros((2, K)), "flow_u": u, "flow_w": w,
             "flow_b": b}
    state = latent.sample(bk, heads, np.zeros((2, 1, K)))
    assert np.isfinite(state.log_det).all() and np.isfinite(state.x).all()


def test_log_det_stays_finite_where_the_naive_formula_cancels(np_bk):
    """α = wᵀu = −40 and a = 0: the naive ``log(1 + tanh'(a) m)`` is log(0); the stable form
    gives ``log softplus(−40) ≈ −40``."""
    latent = PlanarFlowGaussian(1, 1)
    heads = {"mean": np.zeros((1, 1)), "logvar": np.zeros((1, 1)), "flow_u": np.array([[-40.0]]),
             "flow_w": np.array([[1.0]]), "flow_b": np.zeros((1, 1))}
    state = latent.sample(np_bk, heads, np.zeros((1, 1, 1)))
    assert state.log_det[0, 0] == pytest.approx(-40.0, abs=1e-12)


def test_log_det_is_the_log_jacobian_determinant_of_the_flow_map(np_bk):
    torch = pytest.importorskip("torch")
    latent = PlanarFlowGaussian(K, T)
    heads = _heads(0)
    eps = np.random.default_rng(1).normal(size=(2, 3, K))
    state = latent.sample(np_bk, heads, eps)
    u, w, b = (torch.tensor(heads[h]) for h in ("flow_u", "flow_w", "flow_b"))
    for n in range(2):
        def flow_map(z0, n=n):
            x, _ = twin.planar_flows(z0[None, None], u[n:n + 1].reshape(1, T, K),
                                     w[n:n + 1].reshape(1, T, K),
                                     b[n:n + 1])
            return x[0, 0]

        for m in range(3):
            jac = torch.autograd.functional.jacobian(flow_map, torch.tensor(state.zs[0][n, m]))
            _, logabsdet = torch.linalg.slogdet(jac)
            assert state.log_det[n, m] == pytest.approx(float(logabsdet), rel=1e-12, abs=1e-13)
    np.testing.assert_allclose(state.x,
                               twin.planar_flows(torch.tensor(state.zs[0]), u.reshape(2, T, K),
                                                 w.reshape(2, T, K), b)[0].numpy(), rtol=1e-13)


@pytest.mark.parametrize("gamma,with_upstream", [(1.0, False), (0.0, True), (-0.3, True)])
def test_flow_reverse_pass_matches_finite_differences(np_bk, gamma, with_upstream):
    """``J = Σ g_x·x + γ Σ log-det`` at fixed ε, differentiated with respect to every head."""
    latent = PlanarFlowGaussian(K, T)
    heads = _heads(2)
    eps = np.random.default_rng(3).normal(size=(2, 4, K))
    g_x = np.random.default_rng(4).normal(size=(2, 4, K)) if with_upstream else np.zeros((2, 4, K))

    def objective(h):
        s = latent.sample(np_bk, h, eps)
        return float((g_x * s.x).sum() + gamma * s.log_det.sum())

    assert_gradients(objective, heads,
                     latent.backward(np_bk, latent.sample(np_bk, heads, eps), g_x, gamma))


def test_monte_carlo_kl_gradient_matches_finite_differences(np_bk):
    latent = PlanarFlowGaussian(K, T)
    heads = _heads(5)
    eps = np.random.default_rng(6).normal(size=(2, 3, K))

    def kl(h):
        return float(latent.kl(np_bk, latent.sample(np_bk, h, eps)).sum())

    assert_gradients(kl, heads, latent.kl_grads(np_bk, latent.sample(np_bk, heads, eps)))


def test_log_q_is_base_density_minus_log_det(np_bk):
    latent = PlanarFlowGaussian(K, T)
    heads = _heads(7)
    eps = np.random.default_rng(8).normal(size=(2, 3, K))
    state = latent.sample(np_bk, heads, eps)
    std = np.exp(0.5 * heads["logvar"])[:, None, :]
    z0 = state.zs[0]
    log_q0 = (-0.5 * ((z0 - heads["mean"][:, None, :]) / std) ** 2 - np.log(std) - 0.5
              * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(latent.log_q(np_bk, state), log_q0 - state.log_det, rtol=1e-13)
    kl = (latent.log_q(np_bk, state) - latent.log_prior(np_bk, state)).mean(1)
    np.testing.assert_allclose(latent.kl(np_bk, state), kl, rtol=1e-13)
    with pytest.raises(ConfigError, match="no closed form"):
        latent.log_q_cross(np_bk, heads, state.x[0])


@pytest.mark.parametrize("extra", [dict(emission="gaussian", activation="tanh", alpha=0.5),
                                   dict(emission="bernoulli", activation="softplus"),
                                   dict(emission="gaussian_diag", activation="silu")],
                         ids=lambda c: c["emission"])
def test_loss_and_grads_match_torch_twin(bk, extra):
    pytest.importorskip("torch")
    cfg = dict(data_dim=5, latent_dim=K, encoder_hidden=[6], decoder_hidden=[7], flow_length=T,
               **extra)
    vae = VAE(cfg, backend=bk)
    src = NoiseSource(11)
    params = vae.init_params(src)
    y = src.uniform((4, 5), bk) if cfg["emission"] == "bernoulli" else src.normal((4, 5), bk)
    eps = vae.draw_noise(src, 4, 3)
    res = vae.loss_and_grads(params, y, eps)
    host = {k: bk.to_numpy(v) for k, v in params.items()}
    twin.assert_matches(bk, res, twin.latent_grads(cfg, host, bk.to_numpy(y), bk.to_numpy(eps)),
                        kl_rtol=1e-11)


def test_mean_is_the_flow_image_of_the_base_mean_and_ignores_the_noise(np_bk):
    torch = pytest.importorskip("torch")
    latent = PlanarFlowGaussian(K, T)
    heads = _heads(9)
    rng = np.random.default_rng(10)
    first = latent.mean(np_bk, latent.sample(np_bk, heads, rng.normal(size=(2, 3, K))))
    second = latent.mean(np_bk, latent.sample(np_bk, heads, rng.normal(size=(2, 1, K))))
    np.testing.assert_array_equal(first, second)
    u, w, b = (torch.tensor(heads[h]) for h in ("flow_u", "flow_w", "flow_b"))
    expected, _ = twin.planar_flows(torch.tensor(heads["mean"])[:, None, :], u.reshape(2, T, K),
                                    w.reshape(2, T, K), b)
    np.testing.assert_allclose(first, expected[:, 0].numpy(), rtol=1e-13)
