"""Config format 2 (refvae.math.networks): convolutional encoders and decoders in the VAE, its
loss and every gradient against a PyTorch twin in float64, Price's refusal, the training path
(fast model, thread shards, ``refvae train`` on 8×8 images) and the config's errors."""
import json

import numpy as np
import pytest

from refvae import ConfigError
from refvae.cli.main import main
from refvae.fast.model import fast_vae
from refvae.fast.parallel import Workers, loss_and_grads
from refvae.math.config import VAEConfig
from refvae.math.mlp import MLP
from refvae.math.sequential import Sequential
from refvae.math.vae import VAE

ENC = [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1},
       {"type": "relu"}, {"type": "max_pool2d", "kernel_size": 2},
       {"type": "conv2d", "out_channels": 4, "kernel_size": 2}, {"type": "elu"},
       {"type": "flatten"}]
DEC_BODY = [{"type": "linear", "out_features": 8}, {"type": "leaky_relu", "negative_slope": 0.1},
            {"type": "unflatten", "shape": [2, 2, 2]},
            {"type": "conv_transpose2d", "out_channels": 3, "kernel_size": 4, "stride": 2,
             "padding": 1}, {"type": "relu"},
            {"type": "conv_transpose2d", "out_channels": 1, "kernel_size": 4, "stride": 2,
             "padding": 1}, {"type": "flatten"}]
DEC_LINEAR = [{"type": "linear", "out_features": 6}, {"type": "tanh"}]
SMOOTH_DEC = [{"type": "linear", "out_features": 8}, {"type": "softplus"},
              {"type": "unflatten", "shape": [2, 2, 2]},
              {"type": "conv_transpose2d", "out_channels": 1, "kernel_size": 4, "stride": 4},
              {"type": "flatten"}]
BASE = {"data_dim": 64, "latent_dim": 3, "data_shape": [1, 8, 8], "encoder_layers": ENC}
CASES = {
    "body_bernoulli": {**BASE, "decoder_layers": DEC_BODY, "decoder_heads": "body"},
    "linear_gaussian_diag": {**BASE, "decoder_layers": DEC_LINEAR, "emission": "gaussian_diag"},
    "mlp_decoder_gaussian": {**BASE, "decoder_hidden": [5], "activation": "tanh",
                             "emission": "gaussian", "learn_alpha": True, "alpha": 0.5},
}


def batch(config, n=5, samples=2, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random((n, config.data_dim))
    if config.emission == "bernoulli":
        y = (y < 0.4) * 1.0
    return y, rng.standard_normal((n, samples, config.latent_dim))


def twin_loss(torch, config, params, y, eps):
    """The batch-mean negative ELBO of the witness module, with autograd gradients."""
    from refvae.witness.conv import make_conv_vae
    twin = make_conv_vae(config.to_dict())
    twin.load_state_dict({k: torch.tensor(params[k]) for k in twin.state_dict()})
    yt = torch.tensor(y)
    total = 0
    for s in range(eps.shape[1]):
        kl, rec = twin.neg_elbo(yt, torch.tensor(eps[:, s]))
        total = total + (kl / eps.shape[1] + rec / eps.shape[1]).sum()
    (total / len(y)).backward()
    return float(total.detach() / len(y)), {k: p.grad.numpy() for k, p in twin.named_parameters()}


@pytest.mark.parametrize("case", ["body_bernoulli"])
def test_loss_and_every_gradient_match_a_pytorch_twin(case):
    torch = pytest.importorskip("torch")
    config = VAEConfig.from_dict(CASES[case])
    model = VAE(config)
    params = model.init_params(3)
    y, eps = batch(config)
    res = model.loss_and_grads(params, y, eps)
    loss, grads = twin_loss(torch, config, params, y, eps)
    assert abs(res.loss - loss) <= 1e-10 * abs(loss)
    assert set(grads) == set(res.grads)
    for k, g in grads.items():
        assert np.max(np.abs(res.grads[k] - g)) <= 1e-10 * np.max(np.abs(g)), k


def test_linear_heads_on_a_sequential_decoder_match_the_twin_with_gaussian_diag():
    torch = pytest.importorskip("torch")
    from refvae.witness.functional import surprisal
    config = VAEConfig.from_dict(CASES["linear_gaussian_diag"])
    model = VAE(config)
    params = model.init_params(4)
    y, eps = batch(config, samples=1)
    res = model.loss_and_grads(params, y, eps)
    from refvae.witness.conv import torch_layers
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    enc = torch.nn.Sequential(*torch_layers(ENC, (1, 8, 8))).double()
    dec = torch.nn.Sequential(*torch_layers(DEC_LINEAR, (3,))).double()
    enc.load_state_dict({k[8:]: p[k] for k in params if k[8].isdigit() and k.startswith("encoder")})
    dec.load_state_dict({k[8:]: p[k] for k in params if k[8].isdigit() and k.startswith("decoder")})
    lin = torch.nn.functional.linear
    h = torch.func.functional_call(enc, {k[8:]: p[k] for k in p if k.startswith("encoder.")
                                         and k[8].isdigit()}, torch.tensor(y).reshape(5, 1, 8, 8))
    mu, lv = (lin(h, p[f"encoder.{n}.weight"], p[f"encoder.{n}.bias"]) for n in ("mean", "logvar"))
    x = mu + (0.5 * lv).exp() * torch.tensor(eps[:, 0])
    z = torch.func.functional_call(dec, {k[8:]: p[k] for k in p if k.startswith("decoder.")
                                         and k[8].isdigit()}, x)
    out = {n: lin(z, p[f"decoder.{n}.weight"], p[f"decoder.{n}.bias"]) for n in ("out", "logvar")}
    rec = surprisal({"emission": "gaussian_diag"}, out, torch.tensor(y), p)
    kl = 0.5 * (lv.exp() + mu ** 2 - 1 - lv).sum(-1)
    loss = (kl + rec).mean()
    loss.backward()
    assert abs(res.loss - float(loss.detach())) <= 1e-10 * abs(float(loss.detach()))
    for k, v in p.items():
        g = v.grad.numpy()
        assert np.max(np.abs(res.grads[k] - g)) <= 1e-10 * np.max(np.abs(g)), k


def test_format_1_is_the_mlp_and_round_trips():
    d = {"data_dim": 6, "latent_dim": 2, "encoder_hidden": [5], "decoder_hidden": [4]}
    config = VAEConfig.from_dict(d)
    assert config.format == 1 and isinstance(VAE(config).encoder, MLP)
    assert set(config.to_dict()) == {"data_dim", "latent_dim", "encoder_hidden", "decoder_hidden",
                                     "activation", "latent", "emission", "alpha", "learn_alpha",
                                     "flow_length", "format"}
    for case in CASES.values():
        config = VAEConfig.from_dict(case)
        assert config.format == 2 and isinstance(VAE(config).encoder, Sequential)
        back = json.loads(json.dumps(config.to_dict()))
        assert VAEConfig.from_dict(back) == config and back["format"] == 2


@pytest.mark.parametrize("change,words", [
    ({"encoder_hidden": [4]}, "both encoder_layers and encoder_hidden"),
    ({"format": 1}, "need \"format\": 2"),
    ({"data_shape": [1, 8, 9]}, "has 72 entries but data_dim is 64"),
    ({"data_shape": "1x8x8"}, "data_shape' must be a list"),
    ({"decoder_heads": "body"}, "decoder_heads' applies only with decoder_layers"),
    ({"encoder_layers": ENC[:-1]}, "encoder_layers: encoder: output heads need a vector"),
    ({"encoder_layers": [{"type": "conv2d", "kernel_size": 3}]},
     "encoder_layers: layer 0 (conv2d): out_channels: missing"),
    ({"encoder_layers": [{"type": "batch_norm2d"}, {"type": "flatten"}]},
     "batch norm is not supported inside a VAE"),
    ({"encoder_layers": []}, "non-empty list"),
    ({"decoder_layers": DEC_BODY, "decoder_heads": "body", "emission": "gaussian_diag"},
     "needs an emission with one output head"),
    ({"decoder_layers": DEC_BODY[:-2] + [DEC_BODY[-1]], "decoder_heads": "body"},
     "has 48 entries, the emission needs 64"),
    ({"decoder_layers": DEC_BODY, "activation": "tanh"}, "drop 'activation'"),
])
def test_config_errors_are_one_line(change, words):
    with pytest.raises(ConfigError) as info:
        VAEConfig.from_dict({**BASE, **change})
    assert words in str(info.value) and "\n" not in str(info.value)


def test_format_2_needs_a_layer_list():
    with pytest.raises(ConfigError, match="format' is 2 but gives no encoder_layers"):
        VAEConfig.from_dict({"data_dim": 4, "latent_dim": 2, "format": 2})


def test_price_is_refused_on_a_rough_decoder_and_runs_on_a_smooth_one():
    rough = VAE({**BASE, "decoder_layers": DEC_BODY, "decoder_heads": "body"})
    with pytest.raises(ConfigError, match=r"layer 1 \(leaky_relu\), layer 4 \(relu\) are not"):
        rough.check_estimator("price")
    smooth_cfg = {**BASE, "encoder_layers": [{"type": "flatten"}], "data_shape": [64],
                  "decoder_layers": SMOOTH_DEC, "decoder_heads": "body", "emission": "gaussian"}
    smooth = VAE(smooth_cfg)
    smooth.check_estimator("price")
    params = smooth.init_params(0)
    y, eps = batch(smooth.config, samples=400)
    price = smooth.loss_and_grads(params, y, eps, estimator="price")
    path = smooth.loss_and_grads(params, y, eps, estimator="pathwise")
    assert np.isfinite(price.loss) and price.loss == pytest.approx(path.loss)
    g1, g2 = price.grads["encoder.mean.weight"], path.grads["encoder.mean.weight"]
    assert np.max(np.abs(g1 - g2)) < 0.2 * np.max(np.abs(g2))   # two estimates of one gradient
    pooled = dict(smooth_cfg, decoder_layers=SMOOTH_DEC[:3] + [
        {"type": "max_pool2d", "kernel_size": 1}] + SMOOTH_DEC[3:])
    with pytest.raises(ConfigError, match=r"layer 3 \(max_pool2d\) are not"):
        VAE(pooled).check_estimator("price")


def test_fast_model_and_thread_shards_run_the_sequential_networks():
    config = VAEConfig.from_dict(CASES["body_bernoulli"])
    plain, fast = VAE(config), fast_vae(config)
    assert isinstance(fast.decoder, Sequential)
    params = plain.init_params(1)
    y, eps = batch(config, n=9, samples=1)
    ref = plain.loss_and_grads(params, y, eps)
    with Workers(2) as workers:
        sharded = loss_and_grads(fast, workers, params, y, eps)
    assert sharded.loss == pytest.approx(ref.loss, rel=1e-12)
    for k in ref.grads:
        np.testing.assert_allclose(sharded.grads[k], ref.grads[k], rtol=1e-10, atol=1e-12)


def test_refvae_train_runs_a_conv_config_on_8x8_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "images.npz"
    np.savez(data, train=(rng.random((40, 64)) < 0.3) * 1.0, test=(rng.random((8, 64)) < 0.3) * 1.0,
             image_shape=np.array([8, 8]))
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({k: v for k, v in CASES["body_bernoulli"].items()
                                if k != "data_dim"}))
    out = tmp_path / "run"
    code = main(["train", "--config", str(conv), "--data", str(data), "--epochs", "2", "--out",
                 str(out), "--quiet", "--no-figures", "--batch-size", "8"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())
    assert saved["format"] == 2 and saved["encoder_layers"] == ENC
    assert "encoder_hidden" not in saved and "activation" not in saved
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 2
    assert main(["evaluate", str(out), "--json"]) == 0


@pytest.mark.parametrize("first,given,want", [
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1}, None, [1, 8, 8]),
    ({"type": "max_pool2d", "kernel_size": 2}, None, [1, 8, 8]),
    ({"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1}, [1, 4, 16], [1, 4, 16]),
    ({"type": "linear", "out_features": 5}, None, [64]),
])
def test_an_image_encoder_reads_the_data_as_one_channel_of_their_image_shape(tmp_path, capsys,
                                                                              first, given, want):
    """A conv config written for MNIST needs no data_shape: the data set knows its image shape
    (digits: 8×8). A data_shape given is kept; an encoder that starts on vectors reads vectors."""
    conv = tmp_path / "conv.json"
    config = {"latent_dim": 2, "encoder_layers": [first, {"type": "flatten"}],
              "decoder_layers": [{"type": "linear", "out_features": 64}]}
    if given is not None:
        config["data_shape"] = given
    conv.write_text(json.dumps(config))
    out = tmp_path / "run"
    code = main(["train", "--config", str(conv), "--data", "digits", "--epochs", "1", "--out",
                 str(out), "--quiet", "--no-figures"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text()).get("data_shape") == want
