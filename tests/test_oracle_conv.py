"""``check_torch`` without a config on a convolutional PyTorch VAE written the way popular
repositories write one (an ``nn.Sequential`` encoder ending in ``Flatten``, heads ``fc_mu`` and
``fc_logvar``, a decoder ``Linear → Unflatten → ConvTranspose2d … → Sigmoid``, BCE summed): it
passes in float64, three injected bugs fail, other head names are recognised or mapped, and every
module that cannot be read is named in one line."""
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
    (lambda m: m.encoder.insert(2, nn.BatchNorm2d(4)), r"model.encoder\[2\] \(BatchNorm2d\) has no refvae layer"),
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
        return 0.5 * ((out - x) ** 2).sum() + 0.5 * x.numel() * torch.log(torch.tensor(2 * torch.pi)) + kl
    report = oracle.check_torch(model, mse, y, reduction="sum",
                                modules={"emission": "gaussian", "alpha": 1.0})
    assert report.passed, str(report)
