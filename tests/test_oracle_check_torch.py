"""``check_torch`` on a live model written in the style of pytorch/examples' VAE
(tests/examples_vae.py), unchanged: float32 and float64, before and after Adam steps; every injected
bug is named by the diagnosis; the model, its gradients, the RNG state and the autograd mode are
left as found."""
import numpy as np
import pytest

from refvae import oracle

torch = pytest.importorskip("torch")
import examples_vae as ex  # noqa: E402  (tests/ is on sys.path; needs torch)


def model_and_batch(dtype=torch.float32, seed=0, n=16, cls=ex.VAE):
    torch.manual_seed(seed)
    model = cls().to(dtype)
    y = (torch.rand(n, 1, 28, 28) < 0.3).to(dtype)   # binary images, as a data loader gives them
    return model, y


def adam_steps(model, y, steps):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        ex.loss_fn(model, y).backward()
        opt.step()


@pytest.mark.parametrize("steps", [0, 30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_examples_vae_passes_unchanged(dtype, steps):
    model, y = model_and_batch(dtype)
    adam_steps(model, y, steps)
    report = oracle.check_torch(model, ex.loss_fn, y, ex.CONFIG, name_map=ex.NAMES, reduction="sum")
    assert report.passed, str(report)
    names = [c.name for c in report.checks]
    assert names[:4] == ["heads/mean", "heads/logvar", "x", "decoder_out"]   # recorded by hooks
    assert "loss" in names and len([n for n in names if n.startswith("grad/")]) == 10
    assert "grad/encoder.logvar.weight (fc22.weight)" in str(report)
    if dtype == torch.float64:
        assert report.tolerances["grad/decoder.out.weight"] == (1e-7, 1e-9)
        # the margin: both tolerances 100 times tighter still pass
        tight = oracle.check_torch(model, ex.loss_fn, y, ex.CONFIG, name_map=ex.NAMES,
                                   reduction="sum",
                                   rtol=1e-9, atol=1e-11)
        assert tight.passed, str(tight)


def test_examples_vae_one_wrong_gradient_fails_and_names_their_tensor():
    model, y = model_and_batch(torch.float64)

    # an extra term in fc22's bias only: its gradient is off by 1e-3 in one entry
    def loss_fn(m, x):
        return ex.loss_fn(m, x) + 1e-3 * m.fc22.bias[3]
    report = oracle.check_torch(model, loss_fn, y, ex.CONFIG, name_map=ex.NAMES, reduction="sum")
    # the loss moves by 1e-7 relative
    assert [c.name for c in report.failures()] == ["grad/encoder.logvar.bias"]
    assert ("worst entries of grad/encoder.logvar.bias (fc22.bias) (index: theirs vs ours):\n  "
            "(3,): ") in str(report)


def test_state_is_left_as_found():
    model, y = model_and_batch(torch.float64)
    ex.loss_fn(model, y).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    originals = [torch.randn, torch.randn_like, torch.rand, torch.rand_like]
    with torch.no_grad():
        oracle.check_torch(model, ex.loss_fn, y, ex.CONFIG, name_map=ex.NAMES, reduction="sum")
        assert not torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p.grad, grads[k]) for k, p in model.named_parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [torch.randn, torch.randn_like, torch.rand, torch.rand_like] == originals


@pytest.mark.parametrize("bug", ex.BROKEN)
def test_injected_bug_is_named(bug):
    cls, loss_fn, words = ex.BROKEN[bug]
    model, y = model_and_batch(torch.float64, cls=cls)
    report = oracle.check_torch(model, loss_fn, y, ex.CONFIG, name_map=ex.NAMES, reduction="sum")
    assert not report.passed
    text = "\n".join(report.hints)
    for w in words:
        assert w in text, str(report)
    with pytest.raises(oracle.OracleMismatch, match="diagnosis: "):
        oracle.assert_torch_matches(model, loss_fn, y, ex.CONFIG, name_map=ex.NAMES,
                                    reduction="sum")


def test_a_head_without_gradient_is_an_error_naming_it():
    model, y = model_and_batch(torch.float64, cls=ex.UnusedHead)
    with pytest.raises(oracle.ConfigError if hasattr(oracle, "ConfigError") else Exception,
                       match=r"fc22.weight, fc22.bias got no gradient"):
        oracle.check_torch(model, ex.loss_fn, y, ex.CONFIG, name_map=ex.NAMES, reduction="sum")


def test_noise_not_drawn_by_torch_is_a_clear_error():
    model, y = model_and_batch(torch.float64)
    fixed = torch.randn(16, 20, dtype=torch.float64)

    class Fixed(ex.VAE):
        def reparameterize(self, mu, logvar):
            return mu + fixed * torch.exp(0.5 * logvar)
    model2 = Fixed().to(torch.float64)
    model2.load_state_dict(model.state_dict())
    with pytest.raises(Exception, match=r"drew nothing; expected standard normal noise of shape "
                                        r"\(N, 20\)"):
        oracle.check_torch(model2, ex.loss_fn, y, ex.CONFIG, name_map=ex.NAMES, reduction="sum")


def test_samples_drawn_in_a_loop_are_stacked():
    """L = 3 samples, one randn_like per sample, the decoder called per sample: the noise and the
    recorded sample are stacked along the samples axis, and the loss averages over them."""
    model, y = model_and_batch(torch.float64)

    def loss_fn(m, x):
        mu, logvar = m.encode(x.view(-1, 784))
        total = 0
        for _ in range(3):
            recon = m.decode(m.reparameterize(mu, logvar))
            total = total + F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum") / 3
        return total - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    import torch.nn.functional as F
    report = oracle.check_torch(model, loss_fn, y, ex.CONFIG, name_map=ex.NAMES, reduction="sum")
    assert report.passed, str(report)
    assert dict((c.name, c.shape) for c in report.checks)["x"] == (16, 3, 20)


def test_a_saturated_sigmoid_is_named():
    """float32, one output logit pushed to 20 where the targets are 0: PyTorch's loss counts 100
    nats there (its log clamp) and a zero gradient; the report fails and says why."""
    model, y = model_and_batch(torch.float32)
    with torch.no_grad():
        model.fc4.bias[0] = 20.0
        y[:, 0, 0, 0] = 0.0
    report = oracle.check_torch(model, ex.loss_fn, y, ex.CONFIG, name_map=ex.NAMES, reduction="sum")
    assert not report.passed
    assert any("16 decoder logits are above 16.6" in h and "binary_cross_entropy_with_logits" in h
               for h in report.hints), str(report)


@pytest.mark.parametrize("bug", ["KL sign", "KL constant", "reduction factor", "detached std"])
def test_injected_bug_is_named_from_loss_and_gradients_alone(bug):
    """The same bugs through files without intermediates (the loss and the gradients only, as
    pytorch/examples' loss_function returns): the pattern of the failures names the cause."""
    cls, loss_fn, words = ex.BROKEN[bug]
    model, y = model_and_batch(torch.float64, cls=cls)
    torch.manual_seed(7)
    loss = loss_fn(model, y)
    loss.backward()
    torch.manual_seed(7)
    eps = torch.randn(16, 20, dtype=torch.float64)   # reseeding: the draw of randn_like again
    theirs = {"loss": loss, **{f"grad/{k}": p.grad for k, p in model.named_parameters()}}
    report = oracle.check(ex.CONFIG, model.state_dict(),
                          {"y": y.reshape(16, -1), "eps": eps[:, None]},
                          theirs, reduction="sum", name_map=ex.NAMES)
    assert not report.passed
    text = "\n".join(report.hints)
    for w in words:
        assert w in text, str(report)


def test_categorical_gumbel_noise_is_captured_from_rand_like():
    """A categorical VAE with a Gumbel-softmax sample drawn through torch.rand_like: the uniforms
    become refvae's Gumbel noise and the gradients match refvae's gumbel-softmax estimator."""
    k, c, d = 3, 4, 12
    config = {"format": 1, "data_dim": d, "latent_dim": k, "categories": c, "encoder_hidden": [8],
              "decoder_hidden": [8], "activation": "tanh", "latent": "categorical",
              "emission": "bernoulli"}

    class CatVAE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.logits = torch.nn.Linear(d, 8), torch.nn.Linear(8, k * c)
            self.dec, self.out = torch.nn.Linear(k * c, 8), torch.nn.Linear(8, d)

        def forward(self, y, tau=0.7):
            eta = self.logits(torch.tanh(self.enc(y))).view(-1, k, c)
            g = -torch.log(-torch.log(torch.rand_like(eta)))
            sample = torch.softmax((eta + g) / tau, dim=-1).view(-1, k * c)
            return self.out(torch.tanh(self.dec(sample))), eta

    def loss_fn(model, y):
        logits, eta = model(y)
        rec = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
        log_pi = torch.log_softmax(eta, dim=-1)
        kl = (log_pi.exp() * (log_pi + np.log(c))).sum()
        return rec + kl

    torch.manual_seed(0)
    model = CatVAE().double()
    y = (torch.rand(5, d) < 0.5).double()
    names = {"enc": "encoder.0", "logits": "encoder.logits", "dec": "decoder.0",
             "out": "decoder.out"}
    report = oracle.check_torch(model, loss_fn, y, config, name_map=names, reduction="sum",
                                temperature=0.7)
    assert report.passed, str(report)
    assert [c.name for c in report.checks][:3] == ["heads/logits", "x", "decoder_out"]
    wrong = oracle.check_torch(model, loss_fn, y, config, name_map=names, reduction="sum",
                               temperature=0.5)
    assert not wrong.passed and "x" in [c.name for c in wrong.failures()]


class TanhDecoder(ex.VAE):
    def decode(self, z):
        return torch.sigmoid(self.fc4(torch.tanh(self.fc3(z))))


def test_a_different_decoder_is_the_first_quantity_that_differs():
    model, y = model_and_batch(torch.float64, cls=TanhDecoder)
    report = oracle.check_torch(model, ex.loss_fn, y, ex.CONFIG, name_map=ex.NAMES, reduction="sum")
    assert report.hints[0].startswith("the decoder output is the first quantity that differs while "
                                      "its "
                                      "input x agrees"), str(report)


def test_kl_right_and_reconstruction_wrong_is_named():
    """A squared error where the config says bernoulli, exported with its KL and reconstruction."""
    model, y = model_and_batch(torch.float64)
    torch.manual_seed(7)
    recon, mu, logvar = model(y)
    rec = ((recon - y.view(-1, 784)) ** 2).sum()
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    (rec + kl).backward()
    torch.manual_seed(7)
    eps = torch.randn(16, 20, dtype=torch.float64)
    theirs = {"loss": rec + kl, "kl": kl, "reconstruction": rec,
              **{f"grad/{k}": p.grad for k, p in model.named_parameters()}}
    report = oracle.check(ex.CONFIG, model.state_dict(),
                          {"y": y.reshape(16, -1), "eps": eps[:, None]},
                          theirs, reduction="sum", name_map=ex.NAMES)
    assert "kl" not in [c.name for c in report.failures()]
    assert ("the KL agrees and the reconstruction differs: look at the emission and the "
            "decoder") in report.hints
