"""A VAE written by us in the style of pytorch/examples' ``vae/main.py`` (not a copy): 784-400-20,
``torch.randn_like`` inside ``reparameterize``, a sigmoid output and
``binary_cross_entropy(..., reduction='sum')`` plus the closed-form KL. The oracle must check it
unchanged. ``BROKEN`` holds deliberately broken variants, one bug each, for the diagnosis tests."""
import torch
import torch.nn.functional as F
from torch import nn

CONFIG = {"format": 1, "data_dim": 784, "latent_dim": 20, "encoder_hidden": [400],
          "decoder_hidden": [400], "activation": "relu", "latent": "gaussian",
          "emission": "bernoulli"}
NAMES = {"fc1": "encoder.0", "fc21": "encoder.mean", "fc22": "encoder.logvar", "fc3": "decoder.0",
         "fc4": "decoder.out"}


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def loss_fn(model, x):
    """What the training loop computes before ``loss.backward()``."""
    recon, mu, logvar = model(x)
    return loss_function(recon, x, mu, logvar)


# ----- one bug each -------------------------------------------------------------------------------
class VarianceAsStd(VAE):
    def reparameterize(self, mu, logvar):
        return mu + torch.randn_like(logvar) * torch.exp(logvar)


class DetachedStd(VAE):
    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar).detach()
        return mu + torch.randn_like(std) * std


class SwappedHeads(VAE):
    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc22(h1), self.fc21(h1)


class UnusedHead(VAE):
    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc21(h1)


def kl_sign(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    return bce + 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def kl_without_one(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(logvar - mu.pow(2) - logvar.exp())


def bce_mean(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784))
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def with_loss(loss):
    def fn(model, x):
        recon, mu, logvar = model(x)
        return loss(recon, x, mu, logvar)
    return fn


# name: (model class, loss_fn, words the diagnosis must contain)
BROKEN = {
    "sampler exp(logvar) as std": (VarianceAsStd, loss_fn, ["exp(logvar), the variance, as the "
                                                            "standard deviation"]),
    "KL sign": (VAE, with_loss(kl_sign), ["KL term has the wrong sign"]),
    "KL constant": (VAE, with_loss(kl_without_one), ["K/2: the 1 in KL"]),
    "reduction factor": (VAE, with_loss(bce_mean),
                         ["reconstruction term is 1/(N·D) times", "reduction='mean'"]),
    "detached std": (DetachedStd, loss_fn, ["no gradient flows through the standard deviation",
                                            "encoder.logvar.weight (fc22.weight)"]),
    "wrong head": (SwappedHeads, loss_fn, ["heads are swapped (a wrong head)"]),
}
