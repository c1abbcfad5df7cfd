"""The witness of format-2 (convolutional) VAEs: ``nn.Module`` layers built from the config's JSON
layer lists with torch's own modules (never from refvae's parser), autograd for the gradients.

:func:`make_conv_vae` returns a module with refvae's parameter names (``encoder.{i}``,
``encoder.mean``, ``encoder.logvar``, ``decoder.{i}``, ``decoder.out``), so
:func:`refvae.witness.modules.load_refvae_params`, :func:`~refvae.witness.modules.grads_at`,
:func:`~refvae.witness.modules.mean_neg_elbo` and :class:`~refvae.witness.modules.PlanTrainer`
work on it as on the MLP witness. Emissions: ``bernoulli`` (logits) and ``gaussian``.
"""
from __future__ import annotations

import math

from . import require_torch as _torch

ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "softplus": "Softplus",
               "silu": "SiLU", "gelu": "GELU", "identity": "Identity", "elu": "ELU",
               "leaky_relu": "LeakyReLU"}


def torch_layers(spec: list, in_shape) -> list:
    """``nn`` modules for a JSON layer list; each input size found by running zeros through."""
    torch = _torch()
    nn = torch.nn
    x = torch.zeros(1, *in_shape)
    out = []
    for entry in spec:
        e = {k.lower(): v for k, v in entry.items()}
        kind = e.pop("type").lower().replace("_", "")
        if kind == "linear":
            m = nn.Linear(x.shape[1], **e)
        elif kind == "conv2d":
            m = nn.Conv2d(x.shape[1], **e)
        elif kind == "convtranspose2d":
            m = nn.ConvTranspose2d(x.shape[1], **e)
        elif kind in ("maxpool2d", "avgpool2d"):
            m = (nn.MaxPool2d if kind == "maxpool2d" else nn.AvgPool2d)(**e)
        elif kind == "flatten":
            m = nn.Flatten()
        elif kind == "unflatten":
            m = nn.Unflatten(1, tuple(e["shape"]))
        else:
            name = next(v for k, v in ACTIVATIONS.items() if k.replace("_", "") == kind)
            m = getattr(nn, name)(**e)
        x = m(x)
        out.append(m)
    return out


def make_conv_vae(config: dict, dtype=None, seed: int | None = None):
    """A diagonal-Gaussian VAE of a format-2 ``config`` as an ``nn.Module`` (torch's default
    initialisation, seeded by ``seed``); ``neg_elbo(y, eps)`` gives the KL and the surprisal per
    datum for one draw ``eps`` ``(N, K)`` per datum."""
    torch = _torch()
    nn = torch.nn
    cfg = {"emission": "bernoulli", "alpha": 1.0, **config}
    d, k = cfg["data_dim"], cfg["latent_dim"]
    shape = tuple(cfg.get("data_shape") or (d,))
    if seed is not None:
        torch.manual_seed(seed)
    enc = torch_layers(cfg["encoder_layers"], shape)
    dec = torch_layers(cfg["decoder_layers"], (k,))
    width = nn.Sequential(*enc)(torch.zeros(1, *shape)).shape[1]
    enc_heads = {"mean": nn.Linear(width, k), "logvar": nn.Linear(width, k)}
    dec_heads = {}
    if cfg.get("decoder_heads", "linear") != "body":
        dec_heads["out"] = nn.Linear(nn.Sequential(*dec)(torch.zeros(1, k)).shape[1], d)
    log_alpha = math.log(cfg["alpha"])

    class WitnessConvVAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = cfg
            self.encoder = nn.ModuleDict({**{str(i): m for i, m in enumerate(enc)}, **enc_heads})
            self.decoder = nn.ModuleDict({**{str(i): m for i, m in enumerate(dec)}, **dec_heads})

        @staticmethod
        def _body(net, z, n):
            for i in range(n):
                z = net[str(i)](z)
            return z

        def neg_elbo(self, y, eps):
            h = self._body(self.encoder, y.reshape(len(y), *shape), len(enc))
            mu, lv = self.encoder["mean"](h), self.encoder["logvar"](h)
            x = mu + (0.5 * lv).exp() * eps
            o = self._body(self.decoder, x, len(dec))
            o = self.decoder["out"](o) if dec_heads else o.reshape(len(y), -1)
            if cfg["emission"] == "bernoulli":
                rec = (nn.functional.softplus(o) - y * o).sum(-1)
            else:
                rec = (((y - o) ** 2).sum(-1) / (2 * math.exp(log_alpha))
                       + 0.5 * d * (math.log(2 * math.pi) + log_alpha))
            kl = 0.5 * (lv.exp() + mu ** 2 - 1 - lv).sum(-1)
            return kl, rec

    return WitnessConvVAE().to(dtype or torch.float64)
