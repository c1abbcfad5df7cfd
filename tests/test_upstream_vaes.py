"""Upstream VAEs through the oracle, float64 (issue 25): each model is written again here in its
upstream's style, layout, parameter names and loss (not copied), checked with at most 30 lines of
glue (config, name map, the loss call, the check) and PASSes; each is paired with one injected bug
that FAILs, so the checks can fail.

- timbmg's CVAE (PyTorch): the condition (one-hot labels) enters the encoder and the decoder.
- YongfeiYan's Gumbel-softmax VAE (PyTorch): ReLU on the logits head, ``-log(-log(U + eps) +
  eps)`` noise.
- HIPS autograd's VAE (``autograd.numpy``): ``(W, b)`` lists, log-std head, Monte Carlo KL,
  objective divided by D; its batch normalisation is replaced by fixed statistics.
- jax's stax VAE: in tests/test_upstream_jax.py (it needs JAX, and skips without it): stax's
  nested ``(W, b)`` lists, its ``softplus(Dense)`` variance head as ``scale_head: "softplus_var"``.
"""

import json

import numpy as np
import pytest

from refvae import ConfigError, NoiseSource, ShapeError, oracle
from refvae.math.vae import VAE
from refvae.oracle.layouts import flatten
from refvae.cli import main as cli

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


# ----- timbmg's CVAE (PyTorch) -------------------------------------------------------------------
def idx2onehot(idx, n):
    onehot = torch.zeros(idx.size(0), n, dtype=torch.float64)
    return onehot.scatter_(1, idx.view(-1, 1), 1)


class Encoder(nn.Module):
    def __init__(self, layer_sizes, latent_size, num_labels):
        super().__init__()
        layer_sizes = [layer_sizes[0] + num_labels] + layer_sizes[1:]
        self.MLP = nn.Sequential()
        for i, (in_size, out_size) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:])):
            self.MLP.add_module(name="L{:d}".format(i), module=nn.Linear(in_size, out_size))
            self.MLP.add_module(name="A{:d}".format(i), module=nn.ReLU())
        self.linear_means = nn.Linear(layer_sizes[-1], latent_size)
        self.linear_log_var = nn.Linear(layer_sizes[-1], latent_size)
        self.num_labels = num_labels

    def forward(self, x, c):
        x = self.MLP(torch.cat((x, idx2onehot(c, n=self.num_labels)), dim=-1))
        return self.linear_means(x), self.linear_log_var(x)


class Decoder(nn.Module):
    def __init__(self, layer_sizes, latent_size, num_labels, feed_condition=True):
        super().__init__()
        self.MLP = nn.Sequential()
        input_size = latent_size + num_labels
        for i, (in_size, out_size) in enumerate(zip([input_size] + layer_sizes[:-1], layer_sizes)):
            self.MLP.add_module(name="L{:d}".format(i), module=nn.Linear(in_size, out_size))
            if i + 1 < len(layer_sizes):
                self.MLP.add_module(name="A{:d}".format(i), module=nn.ReLU())
            else:
                self.MLP.add_module(name="sigmoid", module=nn.Sigmoid())
        self.num_labels, self.feed_condition = num_labels, feed_condition

    def forward(self, z, c):
        c = idx2onehot(c if self.feed_condition else torch.zeros_like(c), n=self.num_labels)
        return self.MLP(torch.cat((z, c), dim=-1))


class CVAE(nn.Module):
    def __init__(self, encoder_layer_sizes, latent_size, decoder_layer_sizes, num_labels,
                 feed_condition=True):
        super().__init__()
        self.encoder = Encoder(encoder_layer_sizes, latent_size, num_labels)
        self.decoder = Decoder(decoder_layer_sizes, latent_size, num_labels, feed_condition)

    def forward(self, x, c):
        means, log_var = self.encoder(x, c)
        z = self.reparameterize(means, log_var)
        return self.decoder(z, c), means, log_var, z

    def reparameterize(self, mu, log_var):
        std = torch.exp(0.5 * log_var)
        eps = torch.randn_like(std)
        return mu + eps * std


def cvae_loss_fn(recon_x, x, mean, log_var, half=0.5):
    BCE = F.binary_cross_entropy(recon_x.view(-1, 12), x.view(-1, 12), reduction="sum")
    KLD = -half * torch.sum(1 + log_var - mean.pow(2) - log_var.exp())
    return (BCE + KLD) / x.size(0)


def check_cvae(feed_condition=True, half=0.5):
    torch.manual_seed(0)
    model = CVAE([12, 10], 3, [9, 12], 4, feed_condition).double()
    x, labels = (torch.rand(6, 12) < 0.5).double(), torch.tensor([0, 1, 2, 3, 1, 0])
    # the glue: config, names, the loss as their training loop computes it, the check
    config = {"data_dim": 12, "latent_dim": 3, "encoder_hidden": [10], "decoder_hidden": [9],
              "activation": "relu", "emission": "bernoulli", "condition_dim": 4}
    names = {"encoder.MLP.L0": "encoder.0", "encoder.linear_means": "encoder.mean",
             "encoder.linear_log_var": "encoder.logvar", "decoder.MLP.L0": "decoder.0",
             "decoder.MLP.L1": "decoder.out"}

    def loss_fn(m, y):
        recon_x, mean, log_var, z = m(y, labels)
        return cvae_loss_fn(recon_x, y, mean, log_var, half)
    return oracle.check_torch(model, loss_fn, x, config, name_map=names,
                              condition=idx2onehot(labels, 4))


def test_timbmg_cvae_passes():
    report = check_cvae()
    assert report.passed, str(report)


@pytest.mark.parametrize("bug", ["decoder without the condition", "KL without its 1/2"])
def test_timbmg_cvae_with_a_bug_fails(bug):
    report = check_cvae(**({"feed_condition": False} if "decoder" in bug else {"half": 1.0}))
    assert not report.passed, str(report)


def _cvae_files(tmp_path):
    """A conditional model's files for the CLI: the batch file carries ``condition``."""
    cfg = {"format": 1, "data_dim": 5, "latent_dim": 2, "encoder_hidden": [4],
           "decoder_hidden": [4], "activation": "tanh", "emission": "bernoulli",
           "condition_dim": 3}
    vae, src = VAE(cfg), NoiseSource(1)
    params = vae.init_params(src)
    batch = {"y": (src.uniform((4, 5)) < 0.5).astype(float), "eps": src.normal((4, 2)),
             "condition": np.eye(3)[[0, 1, 2, 0]]}
    ours = vae.loss_and_grads(params, batch["y"], batch["eps"][:, None, :],
                              condition=batch["condition"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    np.savez(tmp_path / "params.npz", **params)
    np.savez(tmp_path / "batch.npz", **batch)
    return ours


@pytest.mark.parametrize("wrong", [False, True])
def test_cli_compare_reads_the_condition_from_the_batch(tmp_path, wrong):
    ours = _cvae_files(tmp_path)
    grads = {f"grad/{k}": v * (1.001 if wrong and k == "decoder.0.weight" else 1.0)
             for k, v in ours.grads.items()}
    np.savez(tmp_path / "theirs.npz", loss=ours.loss, **grads)
    rc = cli.main(["oracle", "compare", "--config", str(tmp_path / "config.json"),
                   "--params", str(tmp_path / "params.npz"), "--batch",
                   str(tmp_path / "batch.npz"), "--grads", str(tmp_path / "theirs.npz")])
    assert rc == (1 if wrong else 0)


def test_a_conditional_model_without_its_condition_is_one_line(tmp_path):
    _cvae_files(tmp_path)
    data = dict(np.load(tmp_path / "batch.npz"))
    c = data.pop("condition")
    with pytest.raises(ShapeError) as exc:
        oracle.compute(tmp_path / "config.json", tmp_path / "params.npz", data)
    assert "condition" in str(exc.value) and "\n" not in str(exc.value)
    res = oracle.compute(tmp_path / "config.json", tmp_path / "params.npz", data, condition=c)
    with pytest.raises(ConfigError, match="holds one too"):
        oracle.compute(tmp_path / "config.json", tmp_path / "params.npz", {**data, "condition": c},
                       condition=c)
    assert np.isfinite(res.loss)


# ----- YongfeiYan's Gumbel-softmax VAE (PyTorch) -------------------------------------------------
latent_dim, categorical_dim = 3, 4


def sample_gumbel(shape, eps=1e-20):
    U = torch.rand(shape, dtype=torch.float64)
    return -torch.log(-torch.log(U + eps) + eps)


def gumbel_softmax_sample(logits, temperature, divide=True):
    y = logits + sample_gumbel(logits.size())
    return F.softmax(y / temperature if divide else y, dim=-1)


class VAE_gumbel(nn.Module):
    def __init__(self, temp, divide=True):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 10), nn.Linear(10, 8)
        self.fc3 = nn.Linear(8, latent_dim * categorical_dim)
        self.fc4 = nn.Linear(latent_dim * categorical_dim, 8)
        self.fc5, self.fc6 = nn.Linear(8, 10), nn.Linear(10, 12)
        self.relu, self.sigmoid = nn.ReLU(), nn.Sigmoid()
        self.temp, self.divide = temp, divide

    def encode(self, x):
        h1 = self.relu(self.fc1(x))
        h2 = self.relu(self.fc2(h1))
        return self.relu(self.fc3(h2))

    def decode(self, z):
        h4 = self.relu(self.fc4(z))
        h5 = self.relu(self.fc5(h4))
        return self.sigmoid(self.fc6(h5))

    def forward(self, x):
        q = self.encode(x.view(-1, 12))
        q_y = q.view(q.size(0), latent_dim, categorical_dim)
        z = gumbel_softmax_sample(q_y, self.temp, self.divide)
        z = z.view(-1, latent_dim * categorical_dim)
        return self.decode(z), F.softmax(q_y, dim=-1).reshape(*q.size())


def gumbel_loss_function(recon_x, x, qy):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 12), reduction="sum") / x.shape[0]
    log_ratio = torch.log(qy * categorical_dim + 1e-20)
    KLD = torch.sum(qy * log_ratio, dim=-1).mean()
    return BCE + KLD


def check_gumbel(divide=True, seed=3):
    """The noise: check_torch records the torch.rand uniforms U and takes -log(-log U) as refvae's
    Gumbel noise. Upstream's form -log(-log(U + 1e-20) + 1e-20) is bitwise the same in float64
    when every U lies in [1e-3, 1 - 1e-3] (1e-20 is below half an ulp of U and of -log U there):
    the seed is chosen so, and the test asserts it, so the comparison is exact."""
    torch.manual_seed(seed)
    model = VAE_gumbel(0.7, divide).double()
    x = (torch.rand(5, 12) < 0.5).double()
    state = torch.get_rng_state()
    U = torch.rand(5, latent_dim, categorical_dim, dtype=torch.float64)
    assert 1e-3 <= float(U.min()) and float(U.max()) <= 1 - 1e-3
    torch.set_rng_state(state)
    # the glue: config, names, the loss as their training loop computes it, the check
    config = {"data_dim": 12, "latent_dim": latent_dim, "categories": categorical_dim,
              "latent": "categorical", "encoder_hidden": [10, 8], "decoder_hidden": [8, 10],
              "activation": "relu", "emission": "bernoulli", "head_activations": {"logits": "relu"}}
    names = {"fc1": "encoder.0", "fc2": "encoder.1", "fc3": "encoder.logits", "fc4": "decoder.0",
             "fc5": "decoder.1", "fc6": "decoder.out"}

    def loss_fn(m, y):
        recon_batch, qy = m(y)
        return gumbel_loss_function(recon_batch, y, qy)
    return oracle.check_torch(model, loss_fn, x, config, name_map=names, temperature=0.7)


def test_yongfeiyan_gumbel_softmax_vae_passes():
    report = check_gumbel()
    assert report.passed, str(report)


def test_yongfeiyan_gumbel_softmax_vae_without_the_temperature_fails():
    report = check_gumbel(divide=False)
    assert not report.passed, str(report)


# ----- HIPS autograd's VAE (autograd.numpy) ------------------------------------------------------
def check_hips(kl_sign=1.0):
    """Upstream normalises every layer by its batch's statistics; here by fixed statistics (mean
    0, standard deviation 0: ``(a - 0) / (0 + 1)``, the identity), which refvae's MLP is."""
    ag = pytest.importorskip("autograd")
    anp = pytest.importorskip("autograd.numpy")
    norm = pytest.importorskip("autograd.scipy.stats.norm")
    rs = np.random.RandomState(0)

    def init_net_params(scale, layer_sizes):
        return [(scale * rs.randn(m, n), scale * rs.randn(n))
                for m, n in zip(layer_sizes[:-1], layer_sizes[1:])]

    def batch_normalize(activations, mean=0.0, std=0.0):   # fixed statistics
        return (activations - mean) / (std + 1)

    def neural_net_predict(params, inputs):
        for W, b in params:
            outputs = batch_normalize(anp.dot(inputs, W) + b)
            inputs = anp.maximum(0, outputs)
        return outputs

    def diag_gaussian_log_density(x, mu, log_std):
        return anp.sum(norm.logpdf(x, mu, anp.exp(log_std)), axis=-1)

    def vae_lower_bound(gen_params, rec_params, data, eps):
        out = neural_net_predict(rec_params, data)
        q_means, q_log_stds = out[:, :2], out[:, 2:]
        latents = eps * anp.exp(q_log_stds) + q_means
        q_latents = diag_gaussian_log_density(latents, q_means, q_log_stds)
        p_latents = diag_gaussian_log_density(latents, 0, 0)
        logits = neural_net_predict(gen_params, latents)     # targets in {-1, 1}
        likelihood = anp.sum(-anp.logaddexp(0, -logits * (2 * data - 1)), axis=-1)
        return anp.mean(p_latents + likelihood - kl_sign * q_latents)

    D, data = 6, (rs.rand(5, 6) < 0.5).astype(float)
    combined = (init_net_params(0.5, [2, 4, D]), init_net_params(0.5, [D, 5, 4]))
    eps = rs.randn(5, 2)
    # the glue: config, names, the objective's gradient, the check
    objective = lambda p: -vae_lower_bound(p[0], p[1], data, eps) / D  # noqa: E731
    grads = ag.grad(objective)(combined)
    config = {"data_dim": D, "latent_dim": 2, "encoder_hidden": [5], "decoder_hidden": [4],
              "activation": "relu", "emission": "bernoulli", "scale_head": "log_std",
              "kl": "monte_carlo"}
    names = {"1.0": "encoder.0", "0.0": "decoder.0", "0.1": "decoder.out"}
    split = {"1.1": ["encoder.mean", "encoder.logvar"]}
    return oracle.check(config, combined, {"y": data, "eps": eps},
                        {"loss": objective(combined),
                         **{f"grad/{k}": v for k, v in flatten(grads).items()}}, name_map=names,
                        split=split, layout="in_out", scale=1 / D)


def test_hips_autograd_vae_passes():
    report = check_hips()
    assert report.passed, str(report)


def test_hips_autograd_vae_with_a_bug_fails():
    report = check_hips(kl_sign=-1.0)
    assert not report.passed, str(report)


def test_cli_compare_takes_the_objectives_scale(tmp_path, capsys):
    """``--scale`` on the command line is ``scale=`` of the API: the files of a loss divided by D
    pass with ``--scale 1/D`` and fail without it."""
    paths = oracle.write_example(tmp_path / "ex", seed=3)
    theirs = dict(np.load(paths["theirs"]))
    d = json.loads((tmp_path / "ex" / "config.json").read_text())["data_dim"]
    np.savez(tmp_path / "scaled.npz", **{k: v if k.endswith("per_datum") else v / d
                                          for k, v in theirs.items()})  # the objective's terms
    args = ["oracle", "compare", "--config", paths["config"], "--params", paths["params"],
            "--batch", paths["batch"], "--grads", str(tmp_path / "scaled.npz")]
    assert cli.main(args + ["--scale", repr(1 / d)]) == 0
    assert cli.main(args) == 1
    with pytest.raises(SystemExit) as info:    # argparse's usage error: one line, exit 2
        cli.main(args + ["--scale", "0"])
    assert info.value.code == 2 and "--scale" in capsys.readouterr().err
