"""``refvae train`` with a categorical config and the Gumbel-softmax temperature flags (issue 5):
the built-in 8×8 digits, one epoch, through the command line as a user would call it.

Evidence: the annealed temperature recorded after the epoch equals the closed form
``max(s_min, s0 exp(−r t))`` at the step count ``t``; the temperature reaches the loss (two runs
that differ only in ``--temperature`` train differently, while the same run repeated is bit for
bit the same); the true ELBO reported by ``refvae evaluate`` has a KL inside its exact range
``[0, K log C]``; each categorical estimator trains; the figures are PNG files; bad temperatures
and an unusable estimator setting are one-line errors.
"""
import json
import math

import pytest

from refvae.cli.main import main

pytest.importorskip("sklearn")  # the built-in digits

K, C = 4, 5
CONFIG = {"format": 1, "latent_dim": K, "categories": C, "latent": "categorical",
          "encoder_hidden": [32], "decoder_hidden": [32], "activation": "tanh",
          "emission": "bernoulli"}
N_TRAIN, BATCH = 1500, 100        # the digits' training split; 15 steps in the epoch
S0, RATE, S_MIN = 2.0, 0.01, 0.5


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "categorical.json"
    path.write_text(json.dumps(CONFIG))
    return path


def _train(config_path, out, *extra):
    return main(["train", "--config", str(config_path), "--epochs", "1", "--batch-size", str(BATCH),
                 "--out", str(out), "--quiet", *extra])


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_anneals_the_temperature_and_draws_figures(tmp_path, config_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    assert _train(config_path, out, "--temperature", str(S0), "--temperature-rate", str(RATE),
                  "--temperature-min", str(S_MIN), "--samples", "2") == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    steps = math.ceil(N_TRAIN / BATCH)
    assert last["epoch"] == 1 and last["step"] == steps
    assert last["temperature"] == pytest.approx(max(S_MIN, S0 * math.exp(-RATE * steps)), rel=1e-12)
    assert math.isfinite(last["test_neg_elbo"]) and math.isfinite(last["train_loss"])

    saved = json.loads((out / "config.json").read_text())
    assert (saved["latent"], saved["categories"], saved["latent_dim"],
            saved["data_dim"]) == ("categorical", C, K, 64)
    options = json.loads((out / "train.json").read_text())["options"]
    assert ((options["temperature"], options["temperature_rate"], options["temperature_min"])
            == (S0, RATE, S_MIN))
    for name in ("samples.png", "reconstructions.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    assert main(["evaluate", str(out), "--json", "--samples", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    # The hard-sample KL against the uniform prior lies in [0, K log C] (log C per variable at
    # most).
    assert 0.0 <= result["kl"] <= K * math.log(C) + 1e-12
    assert result["neg_elbo"] == pytest.approx(result["kl"] + result["reconstruction"], rel=1e-12)


def test_the_temperature_reaches_the_loss(tmp_path, config_path, capsys):
    """Same seed: the same temperature gives identical numbers, another temperature different
    ones."""
    runs = {}
    for name, s0 in (("a", "1.0"), ("b", "1.0"), ("c", "0.3")):
        assert _train(config_path, tmp_path / name, "--temperature", s0, "--no-figures") == 0
        runs[name] = _metrics(tmp_path / name)[-1]
    capsys.readouterr()
    assert runs["a"]["train_loss"] == runs["b"]["train_loss"]
    assert runs["c"]["temperature"] == 0.3 and runs["a"]["temperature"] == 1.0
    assert abs(runs["c"]["train_loss"] - runs["a"]["train_loss"]) > 1e-6


@pytest.mark.parametrize("estimator", ["straight-through", "score"])
def test_other_estimators_train_from_the_command_line(tmp_path, config_path, capsys, estimator):
    out = tmp_path / estimator
    assert _train(config_path, out, "--estimator", estimator, "--samples", "2", "--temperature",
                  "0.7",
                  "--no-figures") == 0
    record = _metrics(out)[-1]
    capsys.readouterr()
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["test_neg_elbo"])
    assert json.loads((out / "train.json").read_text())["options"]["estimator"] == estimator


@pytest.mark.parametrize("args, words", [
    (["--temperature", "0"], "temperature must be a positive finite number"),
    (["--temperature", "nan"], "temperature must be a positive finite number"),
    (["--estimator", "score", "--samples", "1"], "L ≥ 2"),
    (["--estimator", "pathwise"], "pathwise"),
])
def test_bad_settings_are_one_line_errors(tmp_path, config_path, capsys, args, words):
    assert _train(config_path, tmp_path / "bad", "--no-figures", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()      # a banner line may precede the error
    assert err[-1].startswith("refvae: error:") and words in err[-1]
    assert not any(line.startswith("Traceback") for line in err)
