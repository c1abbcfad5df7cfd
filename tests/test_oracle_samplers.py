"""The sampler hypotheses beyond the logvar head (refvae/oracle/samplers.py): a PyTorch user model
per scale head (``log_std``, ``softplus_std`` with a floor, ``softplus_var``) and one with a
full-covariance latent, each with every sampler mistake injected and checked through check_torch
(loss, gradients, heads, x, decoder output): the report names the injected mistake and nothing
else, and the correct sampler passes. Small models, float64.
"""
import pytest

from refvae import oracle
from hypothesis_matrix import BERNOULLI, D, H, K, N, named

torch = pytest.importorskip("torch")
F = torch.nn.functional
NAMES = {"fc1": "encoder.0", "fc21": "encoder.mean", "fc22": "encoder.logvar", "fc3": "decoder.0",
         "fc4": "decoder.out"}
FLOOR = 1e-3


def softplus_std(h):
    return F.softplus(h) + FLOOR


def softplus_var(h):
    return F.softplus(h) + FLOOR


# scale head: (υ from h, υ² from h)
HEADS = {"log_std": (torch.exp, lambda h: torch.exp(2 * h)),
         "softplus_std": (softplus_std, lambda h: softplus_std(h) ** 2),
         "softplus_var": (lambda h: softplus_var(h).sqrt(), softplus_var)}
# mistake: the sample from (ν, h, υ(·)), as a user would write it
MISTAKES = {
    "": lambda m, h, std, var: m + torch.randn_like(m) * std(h),
    "sampler:var-as-std": lambda m, h, std, var: m + torch.randn_like(m) * var(h),
    "sampler:raw-head": lambda m, h, std, var: m + torch.randn_like(m) * h,
    "sampler:unscaled": lambda m, h, std, var: m + torch.randn_like(m),
    "sampler:no-noise": lambda m, h, std, var: m + 0 * torch.randn_like(m),
    "sampler:detached": lambda m, h, std, var: m + torch.randn_like(m) * std(h).detach(),
    "sampler:swapped": lambda m, h, std, var: h + torch.randn_like(m) * std(m),
    "heads:swapped": lambda m, h, std, var: h + torch.randn_like(m) * std(m),
}


class UserVAE(torch.nn.Module):
    """pytorch/examples' VAE with a scale head of another form (or a full-covariance one)."""

    def __init__(self, scale_size=K):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = (torch.nn.Linear(D, H), torch.nn.Linear(H, K),
                                          torch.nn.Linear(H, scale_size))
        self.fc3, self.fc4 = torch.nn.Linear(K, H), torch.nn.Linear(H, D)

    def forward(self, y, sample):
        h1 = F.relu(self.fc1(y))
        mu, h = self.fc21(h1), self.fc22(h1)
        x = sample(mu, h)
        return self.fc4(F.relu(self.fc3(x))), mu, h


def diagonal_loss(form, mistake):
    std, var = HEADS[form]

    def loss_fn(model, y):
        sample = MISTAKES[mistake]
        logits, mu, h = model(y, lambda m, s: sample(m, s, std, var))
        if mistake == "heads:swapped":   # the whole model reads them the other way round
            mu, h = h, mu
        kl = 0.5 * torch.sum(var(h) + mu ** 2 - 1 - torch.log(var(h)))
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") + kl
    return loss_fn


def report_for(cfg, loss_fn, scale_size=K, names=NAMES):
    torch.manual_seed(0)
    model, y = UserVAE(scale_size).double(), (torch.rand(N, D) < 0.4).double()
    return oracle.check_torch(model, loss_fn, y, cfg, name_map=names, reduction="sum")


@pytest.mark.parametrize("mistake", list(MISTAKES))
@pytest.mark.parametrize("form", list(HEADS))
def test_every_scale_head_names_its_sampler_mistake(form, mistake):
    cfg = {**BERNOULLI, "scale_head": form,
           "scale_floor": FLOOR if form.startswith("softplus") else 0.0}
    report = report_for(cfg, diagonal_loss(form, mistake))
    if not mistake:
        assert report.passed, str(report)
        return
    assert not report.passed, str(report)
    assert named(report) == [mistake], str(report)
    assert "exp(ℓ/2)" not in str(report.hints) and "logvar itself" not in str(report.hints)


# ----- full covariance ------------------------------------------------------------------------
KT = K * (K + 1) // 2
ROWS, COLS = torch.tril_indices(K, K)
FULL = {**BERNOULLI, "latent": "gaussian_full"}
FULL_NAMES = {**NAMES, "fc22": "encoder.scale_tril"}


def tril(raw, exp_diagonal=True):
    r = torch.zeros(raw.shape[0], K, K, dtype=raw.dtype)
    r[:, ROWS, COLS] = raw
    if exp_diagonal:
        r = torch.tril(r, -1) + torch.diag_embed(torch.exp(torch.diagonal(r, dim1=1, dim2=2)))
    return r


FULL_MISTAKES = {   # mistake: x from (ν, raw head), as a user would write it
    "": lambda m, raw: m + (tril(raw) @ torch.randn_like(m)[..., None])[..., 0],
    "sampler:transposed": lambda m, raw: m + (tril(raw).transpose(1, 2)
                                              @ torch.randn_like(m)[..., None])[..., 0],
    "sampler:raw-diagonal": lambda m, raw: m + (tril(raw, False)
                                                @ torch.randn_like(m)[..., None])[..., 0],
    "sampler:unscaled": lambda m, raw: m + torch.randn_like(m),
    "sampler:no-noise": lambda m, raw: m + 0 * torch.randn_like(m),
    "sampler:detached": lambda m, raw: m + (tril(raw).detach()
                                            @ torch.randn_like(m)[..., None])[..., 0],
}


def full_loss(mistake):
    def loss_fn(model, y):
        logits, mu, raw = model(y, FULL_MISTAKES[mistake])
        r = tril(raw)
        log_det = 2 * torch.diagonal(r, dim1=1, dim2=2).log().sum()
        kl = 0.5 * ((r ** 2).sum() + (mu ** 2).sum() - N * K - log_det)
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") + kl
    return loss_fn


@pytest.mark.parametrize("mistake", list(FULL_MISTAKES))
def test_the_full_covariance_latent_names_its_sampler_mistake(mistake):
    report = report_for(FULL, full_loss(mistake), KT, FULL_NAMES)
    if not mistake:
        assert report.passed, str(report)
        return
    assert not report.passed, str(report)
    assert named(report) == [mistake], str(report)

