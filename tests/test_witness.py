"""The PyTorch witness (refvae.witness): importable without torch, and its nn.Module form (used by
the validation claims and ``refvae bench``) computes what refvae computes, on the same parameters
and noise."""
import ast
from pathlib import Path

import numpy as np
import pytest

from refvae import NoiseSource
from refvae.math.vae import VAE

PACKAGE = Path(__file__).resolve().parents[1] / "refvae"
AUTOGRAD = ("torch", "jax", "autograd")


def test_no_module_of_refvae_imports_an_autograd_framework_at_module_level():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in AUTOGRAD for n in names):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders


@pytest.mark.parametrize("emission,activation", [("bernoulli", "relu"), ("gaussian_diag", "tanh")])
def test_module_form_matches_refvae(emission, activation):
    pytest.importorskip("torch")
    from refvae.witness.modules import grads_at, make_vae, mean_neg_elbo

    cfg = dict(data_dim=7, latent_dim=3, encoder_hidden=[5, 4], decoder_hidden=[6],
               activation=activation,
               emission=emission)
    model, noise = VAE(cfg), NoiseSource(4)
    params = {k: model.bk.to_numpy(v) for k, v in model.init_params(noise).items()}
    y = noise.uniform((6, 7))
    eps = noise.normal((6, 1, 3))
    res = model.loss_and_grads(params, y, eps)
    witness = make_vae(cfg)
    loss, grads = grads_at(witness, params, y, eps)
    assert loss == pytest.approx(res.loss, rel=1e-12)
    assert mean_neg_elbo(witness, y, eps) == pytest.approx(res.loss, rel=1e-12)
    assert sorted(grads) == sorted(res.grads)
    for name, g in grads.items():
        np.testing.assert_allclose(g, res.grads[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_bench_peer_is_the_witness_step():
    pytest.importorskip("torch")
    from refvae.cli import bench
    from refvae.witness import modules

    assert bench.load_peer() is modules
    step, sync = modules.make_step(bench.ARCHITECTURES["examples"], 4, "float64", threads=1)
    step()
    sync()


def test_witness_neg_elbo_averages_over_its_draws():
    """``neg_elbo`` with ``(N, L, K)`` noise is the mean of the one-draw reconstructions (the bench
    peer draws ``samples`` per datum, as refvae's step does)."""
    torch = pytest.importorskip("torch")
    from refvae.witness import modules

    model = modules.make_vae(dict(data_dim=6, latent_dim=2, encoder_hidden=[4], decoder_hidden=[4]),
                             seed=0)
    y = torch.rand(3, 6, dtype=torch.float64)
    eps = torch.randn(3, 4, 2, dtype=torch.float64)
    kl, rec = model.neg_elbo(y, eps)
    singles = [model.neg_elbo(y, eps[:, l]) for l in range(4)]
    torch.testing.assert_close(rec, sum(r for _, r in singles) / 4, rtol=1e-12, atol=0)
    torch.testing.assert_close(kl, singles[0][0], rtol=0, atol=0)
    step, sync = modules.make_step(dict(data_dim=6, latent_dim=2, encoder_hidden=[4],
                                        decoder_hidden=[4]), 3, "float64", samples=4, threads=1)
    step()
