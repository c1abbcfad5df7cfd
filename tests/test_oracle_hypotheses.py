"""The diagnosis by named hypotheses (refvae/oracle/hypotheses.py), as a matrix: a user model
written in the style of pytorch/examples' VAE (fc1, fc21, fc22, fc3, fc4; a sigmoid and
binary_cross_entropy) with one bug injected at a time, exported at six levels (loss only; + the
gradients; + heads; + logits without x, as a Flax model returns; + x; everything). Whenever the
exported numbers can tell the bug from a correct model the report names it, and it never names a
hypothesis that is not equivalent to it on what was exported. The bugs, levels and properties are
tests/hypothesis_matrix.py's (shared with the Flax matrix); the table (bug × level → the keys
named) is docs/ORACLE.md's; ``python tests/test_oracle_hypotheses.py`` prints it. Small models,
float64.
"""
import math

import numpy as np
import pytest

from refvae import oracle
from refvae.oracle.hypotheses import Context, catalogue

torch = pytest.importorskip("torch")
F = torch.nn.functional
from refvae.oracle.torch_adapter import noise_from_draws, record_draws  # noqa: E402
from refvae.math.vae import VAE as RefVAE  # noqa: E402
from hypothesis_matrix import (BERNOULLI, BUGS, C, CAT_BUGS, CAT_NAMES,  # noqa: E402
                               CATEGORICAL, D, H, K, KC, LEVELS, N, TAU, assert_named, documented,
                               named, table)

NAMES = {"fc1": "encoder.0", "fc21": "encoder.mean", "fc22": "encoder.logvar", "fc3": "decoder.0",
         "fc4": "decoder.out"}


class UserVAE(torch.nn.Module):
    """pytorch/examples' VAE, small; it keeps the sample and the logits it used for export."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = (torch.nn.Linear(D, H), torch.nn.Linear(H, K),
                                          torch.nn.Linear(H, K))
        self.fc3, self.fc4 = torch.nn.Linear(K, H), torch.nn.Linear(H, D)
        self.seen = {"x": [], "decoder_out": []}

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def out(self, z):
        return self.fc4(F.relu(self.fc3(z)))

    def decode(self, z):
        self.seen["x"].append(z)
        logits = self.out(z)
        self.seen["decoder_out"].append(logits)
        return torch.sigmoid(logits)

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, D))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


class GaussianUserVAE(UserVAE):
    def decode(self, z):   # the mean of a Gaussian emission: no sigmoid
        self.seen["x"].append(z)
        self.seen["decoder_out"].append(self.out(z))
        return self.seen["decoder_out"][-1]


def bce(recon, y):
    return F.binary_cross_entropy(recon, y, reduction="sum")


def kld(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def sampler(fn):
    return type("Bug", (UserVAE,), {"reparameterize": lambda self, mu, logvar: fn(mu, logvar)})


def loss(rec=bce, kl=kld, cls=UserVAE, samples=1):
    def loss_fn(model, y):
        mu, logvar = model.encode(y)
        recs = [rec(model.decode(model.reparameterize(mu, logvar)), y) for _ in range(samples)]
        return sum(recs) + kl(mu, logvar)
    return cls, loss_fn


class Swapped(UserVAE):
    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc22(h1), self.fc21(h1)


# bug (hypothesis_matrix.BUGS): (model class, loss_fn) as pytorch/examples would write it
INJECTED = {
    "sampler:exp": loss(cls=sampler(lambda m, lv: m + torch.randn_like(lv) * lv.exp())),
    "sampler:logvar": loss(cls=sampler(lambda m, lv: m + torch.randn_like(lv) * lv)),
    "sampler:unscaled": loss(cls=sampler(lambda m, lv: m + torch.randn_like(lv))),
    "sampler:no-noise": loss(cls=sampler(lambda m, lv: m + 0 * torch.randn_like(lv))),
    "sampler:detached": loss(cls=sampler(
        lambda m, lv: m + torch.randn_like(lv) * torch.exp(0.5 * lv).detach())),
    "heads:swapped": loss(cls=Swapped),
    "kl:2": loss(kl=lambda m, lv: 2 * kld(m, lv)),
    "kl:-1": loss(kl=lambda m, lv: -kld(m, lv)),
    "kl:0": loss(kl=lambda m, lv: 0 * m.sum()),
    "kl:+K/2": loss(kl=lambda m, lv: -0.5 * torch.sum(lv - m.pow(2) - lv.exp())),
    "kl:1/(N·K)": loss(kl=lambda m, lv: -0.5 * torch.mean(1 + lv - m.pow(2) - lv.exp())),
    "kl:detached": loss(kl=lambda m, lv: kld(m, lv).detach() + 0 * m.sum()),
    "reconstruction:1/(N·D)": loss(rec=lambda r, y: F.binary_cross_entropy(r, y)),
    "reconstruction:L": loss(samples=2),
    "reduction:N": loss(),   # refvae is told reduction="mean"
    "emission:-normaliser": loss(rec=lambda r, y: 0.5 * ((r - y) ** 2).sum(),
                                 cls=GaussianUserVAE),
    "emission:mse": loss(rec=lambda r, y: F.mse_loss(r, y, reduction="sum"), cls=GaussianUserVAE),
}


def export(cfg, cls, loss_fn, level, seed=0):
    torch.manual_seed(seed)
    model = cls().double()
    y = ((torch.rand(N, D) < 0.4).double() if cfg["emission"] == "bernoulli"
         else torch.rand(N, D).double())
    with record_draws(torch) as draws:
        value = loss_fn(model, y)
    value.backward()
    wanted = LEVELS[level]
    theirs = {"loss": value.detach()}
    if "grad" in wanted:
        theirs.update({f"grad/{k}": p.grad for k, p in model.named_parameters()})
    if "heads" in wanted:
        mu, logvar = UserVAE.encode(model, y)  # what fc21, fc22 emit (a hook records the same)
        theirs.update({"heads/mean": mu.detach(), "heads/logvar": logvar.detach()})
    for key in ("x", "decoder_out"):
        if key in wanted:
            theirs[key] = torch.stack(model.seen[key], dim=1).detach()
    noise = noise_from_draws(draws, RefVAE(cfg), N)
    return model, y, noise, theirs


def diagnosed(bug, level):
    cls, loss_fn = INJECTED[bug]
    model, y, noise, theirs = export(BUGS[bug][0], cls, loss_fn, level)
    reduction = "mean" if bug == "reduction:N" else "sum"
    return oracle.check(BUGS[bug][0], model.state_dict(), {"y": y, "eps": noise}, theirs,
                        reduction=reduction, name_map=NAMES)


def test_every_bug_of_the_matrix_is_injected():
    assert list(INJECTED) == list(BUGS)


@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("bug", list(BUGS))
def test_the_injected_bug_is_named_and_no_other(bug, level):
    assert_named(bug, level, diagnosed(bug, level))


def test_the_flax_export_never_says_x_agreed():
    """Issue 25's wrong diagnosis: logits exported, x not; the sampler is wrong."""
    report = diagnosed("sampler:exp", "logits")
    assert named(report) == ["sampler:exp"], str(report)
    assert not any("while its input x agrees" in h for h in report.hints), str(report)


def test_no_hypothesis_names_the_first_differing_quantity():
    """Two bugs at once (a tanh decoder where the config says relu, and the KL sign): no
    hypothesis explains them; the report says so and names the first exported quantity that
    differs, without claiming that the unexported x agreed."""
    cls = type("Tanh", (UserVAE,), {"out": lambda self, z: self.fc4(torch.tanh(self.fc3(z)))})
    model, y, noise, theirs = export(BERNOULLI, cls, loss(kl=lambda m, lv: -kld(m, lv))[1],
                                     "logits")
    report = oracle.check(BERNOULLI, model.state_dict(), {"y": y, "eps": noise},
                          theirs,
                          reduction="sum", name_map=NAMES)
    text = "\n".join(report.hints)
    assert "none of the" in text and ("the first exported quantity that differs is "
                                      "decoder_out") in text, text
    assert "x agrees" not in text and "[hypothesis" not in text, text


def test_the_catalogue_is_hand_derived_and_covers_every_named_bug():
    """Every key the matrix injects is a hypothesis of the catalogue, and each rerun hypothesis
    goes through refvae's own passes (its predictions are finite arrays of refvae's shapes)."""
    cfg = BERNOULLI
    model, y, noise, theirs = export(cfg, UserVAE, loss()[1], "all")
    ours = oracle.compute(cfg, model.state_dict(), {"y": y, "eps": noise}, reduction="sum",
                          name_map=NAMES)
    ctx = Context(ours)
    keys = {h.key for h in catalogue(ctx)}
    assert {b for b, spec in BUGS.items() if spec == (cfg, 1)} <= keys
    for h in catalogue(ctx):
        pred = h.predict(ctx)
        for k, v in pred.items():
            if v is not None:
                assert np.shape(v) == np.shape(ctx.base[k]) and np.isfinite(v).all(), (h.key, k)


def test_the_table_in_oracle_md_is_this_matrix():
    assert documented("test_oracle_hypotheses.py") == table(diagnosed)


if __name__ == "__main__":   # docs/ORACLE.md's table
    print(table(diagnosed))


# ----- categorical latents ------------------------------------------------------------------------


class CatVAE(torch.nn.Module):
    """A Gumbel-softmax VAE as tutorials write it; ``mode`` injects a bug in the sample."""

    def __init__(self, mode="relaxed", tau=TAU):
        super().__init__()
        self.enc, self.logits = torch.nn.Linear(D, H), torch.nn.Linear(H, KC * C)
        self.dec, self.out = torch.nn.Linear(KC * C, H), torch.nn.Linear(H, D)
        self.mode, self.tau = mode, tau

    def forward(self, y):
        eta = self.logits(torch.tanh(self.enc(y))).view(-1, KC, C)
        g = -torch.log(-torch.log(torch.rand_like(eta)))
        tau = 1.0 if self.mode == "no-temperature" else self.tau
        soft = torch.softmax((eta + g) / tau, dim=-1)
        if self.mode == "straight-through":
            hard = torch.nn.functional.one_hot(soft.argmax(-1), C).to(soft.dtype)
            soft = hard - soft.detach() + soft
        return self.out(torch.tanh(self.dec(soft.reshape(-1, KC * C)))), eta


def cat_loss(log_c=True):
    def loss_fn(model, y):
        logits, eta = model(y)
        rec = F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        log_pi = torch.log_softmax(eta, dim=-1)
        return rec + (log_pi.exp() * (log_pi + (math.log(C) if log_c else 0.0))).sum()
    return loss_fn


@pytest.mark.parametrize("bug", list(CAT_BUGS))
def test_categorical_bugs_are_named_through_check_torch(bug):
    mode, log_c, estimator = CAT_BUGS[bug]
    torch.manual_seed(1)
    model = CatVAE(mode).double()
    y = (torch.rand(N, D) < 0.5).double()
    report = oracle.check_torch(model, cat_loss(log_c), y, CATEGORICAL, name_map=CAT_NAMES,
                                reduction="sum", temperature=TAU, estimator=estimator)
    assert named(report) == [bug], str(report)
    assert not any("exp(ℓ/2)" in h or "ν +" in h for h in report.hints), str(report)


# ----- the noise as users draw it (check_torch) ---------------------------------------------------
GEN = torch.Generator().manual_seed(5)
DRAWS = {
    "Normal.rsample": lambda mu, std: torch.distributions.Normal(mu, std).rsample(),
    "MultivariateNormal.rsample": lambda mu, std: torch.distributions.MultivariateNormal(
        mu, scale_tril=torch.diag_embed(std)).rsample(),
    "Tensor.normal_": lambda mu, std: mu + torch.empty_like(mu).normal_() * std,
    "torch.normal": lambda mu, std: mu + torch.normal(0.0, 1.0, mu.shape, dtype=mu.dtype) * std,
    "generator": lambda mu, std: mu + torch.randn(mu.shape, generator=GEN, dtype=mu.dtype) * std,
}


@pytest.mark.parametrize("how", list(DRAWS))
def test_noise_drawn_through_distributions_and_generators_is_recorded(how):
    cls = type("Drawn", (UserVAE,),
               {"reparameterize": lambda self, mu, lv: DRAWS[how](mu, torch.exp(0.5 * lv))})
    torch.manual_seed(0)
    model, y = cls().double(), (torch.rand(N, D) < 0.4).double()
    state = GEN.get_state()
    report = oracle.check_torch(model, loss()[1], y, BERNOULLI, name_map=NAMES, reduction="sum")
    assert report.passed, str(report)
    assert torch.equal(GEN.get_state(), state)   # the user's generator is left as found


@pytest.mark.parametrize("how", ["RelaxedOneHotCategorical", "Gumbel"])
def test_categorical_noise_from_torch_distributions(how):
    class Dist(CatVAE):
        def forward(self, y):
            eta = self.logits(torch.tanh(self.enc(y))).view(-1, KC, C)
            if how == "Gumbel":
                g = torch.distributions.Gumbel(torch.zeros_like(eta),
                                               torch.ones_like(eta)).rsample()
                soft = torch.softmax((eta + g) / TAU, dim=-1)
            else:
                soft = torch.distributions.RelaxedOneHotCategorical(
                    torch.tensor(TAU, dtype=eta.dtype),
                    logits=eta).rsample()
            return self.out(torch.tanh(self.dec(soft.reshape(-1, KC * C)))), eta
    torch.manual_seed(2)
    model, y = Dist().double(), (torch.rand(N, D) < 0.5).double()
    report = oracle.check_torch(model, cat_loss(), y, CATEGORICAL, name_map=CAT_NAMES,
                                reduction="sum",
                                temperature=TAU)
    assert report.passed, str(report)


def test_float32_noise_in_a_float64_model_is_named():
    class Single(UserVAE):
        def reparameterize(self, mu, logvar):   # torch.randn's default dtype, float32
            return mu + torch.randn(mu.shape) * torch.exp(0.5 * logvar).float()
    torch.manual_seed(0)
    model, y = Single().double(), (torch.rand(N, D) < 0.4).double()
    report = oracle.check_torch(model, loss()[1], y, BERNOULLI, name_map=NAMES, reduction="sum")
    assert not report.passed
    assert report.hints[0].startswith("your noise was drawn in float32 inside a float64 model (the "
                                      "likely "
                                      "cause"), str(report)


# ----- parameters as users hold them --------------------------------------------------------------
def _stax(model, bias_row=False):
    """The model's parameters as stax holds them: a list of (W, b) with W (in, out); () for the
    activation layers; a (1, n) bias where ``bias_row``."""
    def pair(lin):
        b = lin.bias.detach().numpy()
        return lin.weight.detach().numpy().T, (b[None] if bias_row else b)
    return [pair(model.fc1), (), pair(model.fc21), pair(model.fc22), pair(model.fc3), (),
            pair(model.fc4)]


STAX = {"0": "encoder.0", "2": "encoder.mean", "3": "encoder.logvar", "4": "decoder.0",
        "6": "decoder.out"}


@pytest.mark.parametrize("form",
                         ["stax", "stax (1, n) biases", "HIPS dicts W/b", "equinox objects"])
def test_parameters_in_every_container(form):
    torch.manual_seed(0)
    model, y = UserVAE().double(), (torch.rand(N, D) < 0.4).double()
    _, _, noise, theirs = export(BERNOULLI, UserVAE, loss()[1], "grads")
    ref = oracle.compute(BERNOULLI, model.state_dict(), {"y": y, "eps": noise}, name_map=NAMES,
                         reduction="sum")
    if form.startswith("stax"):
        params, names = _stax(model, "(1, n)" in form), STAX
    elif form.startswith("HIPS"):
        params = {m: {"W": w, "b": b} for m, (w, b) in zip(NAMES, [p for p in _stax(model) if p])}
        names = NAMES
    else:
        class Linear:   # an Equinox-style module: arrays as attributes, other attributes ignored
            def __init__(self, w, b):
                self.weight, self.bias, self.in_features, self.activation = w.T, b, w.shape[
                    0], np.tanh
        params = type("Model", (), {})()
        for m, (w, b) in zip(NAMES, [p for p in _stax(model) if p]):
            setattr(params, m, Linear(w, b))
        names = NAMES
    ours = oracle.compute(BERNOULLI, params, {"y": y, "eps": noise}, name_map=names,
                          reduction="sum",
                          layout=None if form.startswith("equinox") else "in_out")
    assert ours.loss == pytest.approx(ref.loss, rel=1e-12)


@pytest.mark.parametrize("bad, words", [([1, 2], "unexpected 0, 1"), (3, "got int"),
                                        ([("a",)], "leaf '0.0'"), ({"fc1": {"W": np.zeros((2, 2))}},
                                                                    "named 'kernel' or 'W' "
                                                                    "(fc1.W)")])
def test_every_container_error_is_one_line_naming_the_leaf(bad, words):
    with pytest.raises(oracle.RefvaeError if hasattr(oracle, "RefvaeError") else Exception) as err:
        oracle.compute(BERNOULLI, bad, {"y": np.zeros((N, D)), "eps": np.zeros((N, K))})
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not isinstance(err.value, TypeError)


def test_check_torch_errors_speak_python():
    model = UserVAE().double()
    with pytest.raises(Exception, match=r"name_map=\{'theirs': 'ours'") as err:
        oracle.check_torch(model, loss()[1], (torch.rand(N, D) < 0.4).double(), BERNOULLI,
                           reduction="sum")
    assert "--map" not in str(err.value)


def test_check_torch_takes_extra_exports_from_loss_fn():
    """The documented hook: loss_fn returns a dict with the loss and per-datum terms; a KL
    without its ½ is then seen in kl_per_datum as well."""
    def loss_fn(model, y):
        mu, logvar = model.encode(y)
        rec = F.binary_cross_entropy(model.decode(model.reparameterize(mu, logvar)), y,
                                     reduction="none")
        kl = -torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)   # the ½ is missing
        return {"loss": rec.sum() + kl.sum(), "kl_per_datum": kl, "reconstruction_per_datu"
                                                                  "m": rec.sum(1)}
    torch.manual_seed(0)
    model, y = UserVAE().double(), (torch.rand(N, D) < 0.4).double()
    report = oracle.check_torch(model, loss_fn, y, BERNOULLI, name_map=NAMES, reduction="sum")
    names = [c.name for c in report.checks]
    assert "kl_per_datum" in names and "kl_per_datum" in [c.name for c in report.failures()]
    assert any("[hypothesis kl:2 " in h for h in report.hints), str(report)
    with pytest.raises(Exception, match="unknown: kll"):
        oracle.check_torch(model, lambda m, x: {"loss": loss_fn(m, x)["loss"], "kll": 1}, y,
                           BERNOULLI,
                           name_map=NAMES, reduction="sum")
