"""``check_torch`` without a config on a convolutional PyTorch VAE written the way popular
repositories write one (an ``nn.Sequential`` encoder ending in ``Flatten``, heads ``fc_mu`` and
``fc_logvar``, a decoder ``Linear → Unflatten → ConvTranspose2d … → Sigmoid``, BCE summed):
it passes in float64, three injected bugs fail, other head names are recognised or mapped, and every
module that cannot be read is named in one line."""
import numpy as np
import pytest

from refvae import oracle
from refvae.errors import ConfigError

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


class ConvVAE(nn.Module):
    """A small MNIST convolutional VAE in the popular style; ``bug`` injects one mistake."""

    def __init__(self, latent=4, bug=None, heads=("fc_mu", "fc_logvar")):
        super().__init__()
        self.bug, self.heads = bug, heads
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 4, kernel_size=4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(4, 8, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten())
        setattr(self, heads[0], nn.Linear(8 * 7 * 7, latent))
        setattr(self, heads[1], nn.Linear(8 * 7 * 7, latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, 8 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (8, 7, 7)),
            nn.ConvTranspose2d(8, 4, kernel_size=4, stride=2, padding=1), nn.ELU(),
            nn.ConvTranspose2d(4, 1, kernel_size=4, stride=2, padding=1), nn.Sigmoid())

    def reparameterize(self, mu, logvar):
        std = torch.exp(logvar) if self.bug == "std" else torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def forward(self, x):
        h = self.encoder(x)
        mu, logvar = getattr(self, self.heads[0])(h), getattr(self, self.heads[1])(h)
        recon = self.decoder(self.reparameterize(mu, logvar))
        if self.bug == "sigmoid_twice":
            recon = torch.sigmoid(recon)
        return recon, mu, logvar


def loss_function(recon, x, mu, logvar, bug=None):
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    kld = torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + (-kld if bug == "kl_half" else -0.5 * kld)


def loss_fn(model, x):
    recon, mu, logvar = model(x)
    return loss_function(recon, x, mu, logvar, model.bug)


def model_and_batch(bug=None, n=6, **kwargs):
    torch.manual_seed(0)
    model = ConvVAE(bug=bug, **kwargs).double()
    y = (torch.rand(n, 1, 28, 28) < 0.3).double()
    return model, y


def test_conv_vae_passes_in_one_call_without_a_config():
    model, y = model_and_batch()
    report = oracle.check_torch(model, loss_fn, y, reduction="sum")
    assert report.passed, str(report)
    names = [c.name for c in report.checks]
    assert names[:4] == ["heads/mean", "heads/logvar", "x", "decoder_out"]
    assert len([n for n in names if n.startswith("grad/")]) == 14
    assert "grad/encoder.mean.weight (fc_mu.weight)" in str(report)
    tight = oracle.check_torch(model, loss_fn, y, reduction="sum", rtol=1e-10, atol=1e-12)
    assert tight.passed, str(tight)


@pytest.mark.parametrize("bug", ["std", "kl_half", "sigmoid_twice"])
def test_injected_bugs_fail(bug):
    model, y = model_and_batch(bug)
    report = oracle.check_torch(model, loss_fn, y, reduction="sum")
    assert not report.passed
    assert "loss" in [c.name for c in report.failures()]


@pytest.mark.parametrize("heads", [("fc21", "fc22"), ("fc_mu", "fc_var"), ("mu", "log_var")])
def test_other_head_names_are_recognised(heads):
    model, y = model_and_batch(heads=heads)
    assert oracle.check_torch(model, loss_fn, y, reduction="sum").passed


def test_unrecognised_heads_are_mapped_and_modules_renamed():
    model, y = model_and_batch(heads=("fc_a", "fc_b"))
    model.enc = model.encoder
    del model.encoder
    with pytest.raises(ConfigError, match=r"cannot tell the Gaussian heads among .*'fc_a', 'fc_b'"):
        oracle.check_torch(model, loss_fn_renamed, y, reduction="sum", modules={"encoder": "enc"})
    report = oracle.check_torch(model, loss_fn_renamed, y, reduction="sum",
                                name_map={"fc_a": "encoder.mean", "fc_b": "encoder.logvar"},
                                modules={"encoder": "enc"})
    assert report.passed, str(report)


def loss_fn_renamed(model, x):
    h = model.enc(x)
    mu, logvar = model.fc_a(h), model.fc_b(h)
    recon = model.decoder(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
    return loss_function(recon, x, mu, logvar)


@pytest.mark.parametrize("change,words", [
    (lambda m: m.encoder.insert(2, nn.BatchNorm2d(4)),
     r"model.encoder\[2\] \(BatchNorm2d\) has no refvae layer"),
    (lambda m: m.encoder.insert(2, nn.Dropout(0.5)), r"model.encoder\[2\] \(Dropout, in training"),
    (lambda m: m.decoder.insert(1, nn.Softplus(beta=2)), r"model.decoder\[1\] \(Softplus, beta=2"),
    (lambda m: m.decoder.append(nn.Tanh()), "does not end with nn.Sigmoid"),
    (lambda m: setattr(m, "extra", nn.Linear(2, 2)), r"model.extra \(Linear\) holds parameters"),
    (lambda m: setattr(m, "encoder", nn.Identity()), "reads model.encoder as an nn.Sequential"),
])
def test_what_cannot_be_read_is_named_in_one_line(change, words):
    model, y = model_and_batch()
    change(model)
    with pytest.raises(ConfigError, match=words) as info:
        oracle.check_torch(model, loss_fn, y, reduction="sum")
    assert "\n" not in str(info.value)


def test_gaussian_emission_is_given():
    model, y = model_and_batch()
    model.decoder = model.decoder[:-1]

    def mse(m, x):
        h = m.encoder(x)
        mu, logvar = m.fc_mu(h), m.fc_logvar(h)
        out = m.decoder(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        log_2pi = torch.log(torch.tensor(2 * torch.pi))
        return 0.5 * ((out - x) ** 2).sum() + 0.5 * x.numel() * log_2pi + kl
    report = oracle.check_torch(model, mse, y, reduction="sum",
                                modules={"emission": "gaussian", "alpha": 1.0})
    assert report.passed, str(report)


# ----- a numpy-ml-style convolutional BernoulliVAE, plain NumPy, checked from files -------------
class NumpyConvBernoulliVAE:
    """Written in the style of numpy-ml's ``BernoulliVAE`` (NHWC images, ``(in, out)`` dense
    weights, ``(kh, kw, in, out)`` kernels, one fused dense layer emitting ``[mean | log_var]``,
    a sigmoid output with binary cross-entropy, forward caches and hand-written backward):
    Conv2D 3×3 same → ReLU → Pool2D max 2×2 → Flatten (channels first, as PyTorch) → FC
    ReLU → FC (2K); decoder FC ReLU → FC sigmoid. The loss is the batch mean of BCE + KL."""

    def __init__(self, rng, hw=6, channels=2, hidden=6, latent=2, ties="first"):
        self.hw, self.k, self.ties = hw, latent, ties
        flat = channels * (hw // 2) ** 2
        shapes = {"conv": ((3, 3, 1, channels), 0.5), "fc3": ((flat, hidden), 0.3),
                  "fc4": ((hidden, 2 * latent), 0.3), "dec1": ((latent, hidden), 0.5),
                  "dec2": ((hidden, hw * hw), 0.5)}
        self.p = {}
        for name, (shape, scale) in shapes.items():
            self.p[f"{name}_W"] = rng.normal(0, scale, shape)
            self.p[f"{name}_b"] = rng.normal(0, 0.1, shape[-1])

    def loss_and_grads(self, X, eps):
        p, n, hw, k = self.p, X.shape[0], self.hw, self.k
        Xp = np.pad(X.reshape(n, hw, hw, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
        taps = [(i, j) for i in range(3) for j in range(3)]
        conv = sum(Xp[:, i:i + hw, j:j + hw, :] @ p["conv_W"][i, j] for i, j in taps) + p["conv_b"]
        act = np.maximum(conv, 0)
        win = act.reshape(n, hw // 2, 2, hw // 2, 2, -1)
        pooled = win.max(axis=(2, 4))
        flat = pooled.transpose(0, 3, 1, 2).reshape(n, -1)
        a3 = flat @ p["fc3_W"] + p["fc3_b"]
        h3 = np.maximum(a3, 0)
        out4 = h3 @ p["fc4_W"] + p["fc4_b"]
        mu, lv = out4[:, :k], out4[:, k:]
        sd = np.exp(0.5 * lv)
        z = mu + sd * eps
        a1 = z @ p["dec1_W"] + p["dec1_b"]
        h1 = np.maximum(a1, 0)
        logits = h1 @ p["dec2_W"] + p["dec2_b"]
        prob = 1 / (1 + np.exp(-logits))
        bce = -(X * np.log(prob) + (1 - X) * np.log(1 - prob)).sum(1)
        kl = 0.5 * (np.exp(lv) + mu ** 2 - 1 - lv).sum(1)
        loss = (bce + kl).mean()
        g = {}
        d_logits = (prob - X) / n
        g["dec2_W"], g["dec2_b"] = h1.T @ d_logits, d_logits.sum(0)
        d_a1 = (d_logits @ p["dec2_W"].T) * (a1 > 0)
        g["dec1_W"], g["dec1_b"] = z.T @ d_a1, d_a1.sum(0)
        dz = d_a1 @ p["dec1_W"].T
        d_mu = dz + mu / n
        d_lv = dz * eps * 0.5 * sd + 0.5 * (np.exp(lv) - 1) / n
        d_out4 = np.concatenate([d_mu, d_lv], axis=1)
        g["fc4_W"], g["fc4_b"] = h3.T @ d_out4, d_out4.sum(0)
        d_a3 = (d_out4 @ p["fc4_W"].T) * (a3 > 0)
        g["fc3_W"], g["fc3_b"] = flat.T @ d_a3, d_a3.sum(0)
        d_pooled = (d_a3 @ p["fc3_W"].T).reshape(n, -1, hw // 2, hw // 2).transpose(0, 2, 3, 1)
        mask = win == pooled[:, :, None, :, None, :]
        if self.ties == "first":   # the window's first maximum takes the gradient, as PyTorch's
            w = win.transpose(0, 1, 3, 5, 2, 4).reshape(*pooled.shape, 4)
            first = np.eye(4, dtype=bool)[w.argmax(-1)].reshape(*pooled.shape, 2, 2)
            mask = first.transpose(0, 1, 4, 2, 5, 3)
        d_act = (mask * d_pooled[:, :, None, :, None, :]).reshape(act.shape)
        d_conv = d_act * (conv > 0)
        g["conv_b"] = d_conv.sum((0, 1, 2))
        g["conv_W"] = np.stack([np.stack([
            Xp[:, i:i + hw, j:j + hw, :].reshape(-1, 1).T @ d_conv.reshape(-1, d_conv.shape[-1])
            for j in range(3)]) for i in range(3)])
        return loss, g

    def export(self, arrays):
        """numpy-ml's names and layouts → refvae's (the user's export step)."""
        names = {"conv": "encoder.0", "fc3": "encoder.4", "fc4": "encoder.fused",
                 "dec1": "decoder.0", "dec2": "decoder.out"}
        out = {}
        for key, v in arrays.items():
            layer, leaf = key.split("_")
            if leaf == "W":
                v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
            out[f"{names[layer]}.{'weight' if leaf == 'W' else 'bias'}"] = v
        return out


NUMPY_ML_CONFIG = {
    "format": 2, "data_dim": 36, "latent_dim": 2, "data_shape": [1, 6, 6],
    "encoder_layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
                       {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2},
                       {"type": "flatten"}, {"type": "linear", "out_features": 6},
                       {"type": "relu"}],
    "decoder_layers": [{"type": "linear", "out_features": 6}, {"type": "relu"}],
    "emission": "bernoulli"}


def test_numpy_ml_style_conv_bernoulli_vae_passes_through_the_oracle():
    rng = np.random.default_rng(0)
    model = NumpyConvBernoulliVAE(rng)
    y = (rng.random((5, 36)) < 0.4) * 1.0
    eps = rng.standard_normal((5, 2))
    loss, grads = model.loss_and_grads(y, eps)
    theirs = {"loss": loss, **{f"grad/{k}": v for k, v in model.export(grads).items()}}
    split = {"encoder.fused": ["encoder.mean", "encoder.logvar"]}
    report = oracle.check(NUMPY_ML_CONFIG, model.export(model.p), {"y": y, "eps": eps[:, None]},
                          theirs, split=split)
    assert report.passed, str(report)
    assert all(c.max_rel <= 1e-10 for c in report.checks)
    tied = NumpyConvBernoulliVAE(np.random.default_rng(0), ties="all")   # numpy-ml's mask X == max
    _, g_all = tied.loss_and_grads(y, eps)           # sends the gradient to every tied maximum
    wrong = {"loss": loss, **{f"grad/{k}": v for k, v in model.export(g_all).items()}}
    failed = oracle.check(NUMPY_ML_CONFIG, model.export(model.p), {"y": y, "eps": eps[:, None]},
                          wrong, split=split)
    assert [c.name for c in failed.failures()] == ["grad/encoder.0.bias"]   # ties: all-zero patches
    grads["fc4_b"][0] *= 2        # a wrong mean-head bias gradient is caught and named
    bad = {"loss": loss, **{f"grad/{k}": v for k, v in model.export(grads).items()}}
    failed = oracle.check(NUMPY_ML_CONFIG, model.export(model.p), {"y": y, "eps": eps[:, None]},
                          bad, split=split)
    assert [c.name for c in failed.failures()] == ["grad/encoder.mean.bias"]
