"""The oracle against independent PyTorch twins, as a user would run it.

Each twin (the PyTorch witness, refvae.witness: torch.autograd, float64, sharing nothing with
refvae but the parameter names) plays "another implementation": its files pass ``refvae oracle
compare``; the same gradients with one entry perturbed by 1e-6 relative fail, naming tensor and
index; broken files get a one-line diagnosis and exit code 2. Float32 twins check the float32
default tolerances with a margin, and the README's exporter is run as written.
"""
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from refvae.cli import main as cli
from refvae import oracle
from refvae.backend import NoiseSource
from refvae.math.vae import VAE

torch = pytest.importorskip("torch")
from refvae.witness import functional as twin  # noqa: E402  (needs torch when called)
from refvae.witness import categorical as twin_categorical  # noqa: E402

N, L = 5, 3
SMALL = {"data_dim": 6, "latent_dim": 2, "format": 1}


def _cfg(**fields):
    cfg = {**SMALL, "encoder_hidden": [5], "decoder_hidden": [4], "activation": "tanh",
           "latent": "gaussian", "emission": "bernoulli", "alpha": 1.0, "learn_alpha": False,
           **fields}
    return oracle.load_config(cfg).to_dict()


# (config, estimator, temperature): every latent kind with every emission at least once.
CASES = {
    "diag-bernoulli": (_cfg(), None, None),
    "diag-gaussian": (_cfg(emission="gaussian", alpha=0.5, encoder_hidden=[5, 4],
                           decoder_hidden=[3],
                           activation="softplus"), None, None),
    "diag-gaussian-learned": (_cfg(emission="gaussian", alpha=2.0, learn_alpha=True,
                                   activation="relu"),
                              None, None),
    "diag-gaussian_diag-linear": (_cfg(emission="gaussian_diag", encoder_hidden=[],
                                       activation="silu"),
                                  None, None),
    "full-bernoulli": (_cfg(latent="gaussian_full"), None, None),
    "full-gaussian_diag": (_cfg(latent="gaussian_full", emission="gaussian_diag", latent_dim=3),
                           None, None),
    "full-gaussian-learned": (_cfg(latent="gaussian_full", emission="gaussian", learn_alpha=True),
                              None, None),
    "flow-gaussian": (_cfg(flow_length=2, emission="gaussian", activation="softplus"), None, None),
    "cat-bernoulli-gumbel-softmax": (_cfg(latent="categorical", categories=3), None, 0.7),
    "cat-gaussian_diag-straight-through": (_cfg(latent="categorical", categories=3,
                                                emission="gaussian_diag"),
                                           "straight-through", 0.5),
    "cat-gaussian-score": (_cfg(latent="categorical", categories=4, emission="gaussian",
                                learn_alpha=True),
                           "score", None),
}
ONE_PER_LATENT = ["diag-gaussian-learned", "full-gaussian_diag", "flow-gaussian",
                  "cat-gaussian_diag-straight-through"]


def twin_result(cfg, estimator, temperature, params, y, noise, reduction):
    """The twin's (loss, kl per datum, reconstruction per datum, grads), float64."""
    if cfg["latent"] == "categorical":
        return twin_categorical.grads(cfg, params, y, noise, estimator or "gumbel-softmax",
                                      temperature,
                                      reduction)
    return twin.latent_grads(cfg, params, y, noise, reduction)


def inputs(cfg, seed=0):
    vae = VAE(cfg)
    src = NoiseSource(seed)
    params = {k: vae.bk.to_numpy(v) for k, v in vae.init_params(src).items()}
    y = src.uniform((N, cfg["data_dim"]))
    if cfg["emission"] == "bernoulli":
        y = np.round(y)
    return vae, params, y, vae.bk.to_numpy(vae.draw_noise(src, N, L))


def theirs_from(loss, kl, rec, grads, reduction):
    scale = 1.0 / len(kl) if reduction == "mean" else 1.0
    return {"loss": np.asarray(loss), "kl": np.asarray(kl.sum() * scale),
            "reconstruction": np.asarray(rec.sum() * scale), "kl_per_datum": kl,
            "reconstruction_per_datum": rec, **{f"grad/{k}": g for k, g in grads.items()}}


def write_case(tmp_path, case, reduction="mean"):
    """The four oracle files, written from the twin; returns (argv for compare, theirs, ours)."""
    cfg, estimator, temperature = CASES[case]
    vae, params, y, noise = inputs(cfg)
    theirs = theirs_from(*twin_result(cfg, estimator, temperature, params, y, noise, reduction),
                         reduction)
    batch = {"y": y, vae.latent.noise_name: noise}
    if temperature is not None:
        batch["temperature"] = np.asarray(temperature)
    paths = {k: tmp_path / f"{k}.npz" for k in ("params", "batch", "theirs")}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    np.savez(paths["params"], **params)
    np.savez(paths["batch"], **batch)
    np.savez(paths["theirs"], **theirs)
    argv = ["oracle", "compare", "--config", tmp_path / "config.json", "--params", paths["params"],
            "--batch", paths["batch"], "--grads", paths["theirs"], "--reduction", reduction]
    if estimator:
        argv += ["--estimator", estimator]
    ours = oracle.compute(cfg, params, batch, estimator=estimator, reduction=reduction)
    return [str(a) for a in argv], theirs, ours


def run(capsys, argv):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", CASES)
def test_twin_passes_compare(case, reduction, tmp_path, capsys):
    argv, theirs, _ = write_case(tmp_path, case, reduction)
    rc, out, err = run(capsys, argv)
    assert rc == 0, out + err
    assert out.startswith(f"oracle comparison: PASS ({len(theirs)}/{len(theirs)} tensors pass")


@pytest.mark.parametrize("case", CASES)
def test_one_entry_perturbed_by_1e_6_relative_fails_and_is_named(case, tmp_path, capsys):
    """Every tensor in turn: its largest entry times (1 + 1e-6) fails that tensor alone."""
    argv, theirs, ours = write_case(tmp_path, case)
    assert oracle.compare(theirs, ours).passed
    for name, arr in theirs.items():
        idx = np.unravel_index(int(np.argmax(np.abs(arr))), np.shape(arr))
        # with s = max(1, |x|), 1e-6·|x| exceeds 1e-9·s + 1e-7·|x| exactly when |x| > 1.12e-3
        assert abs(arr[idx]) > 2e-3, f"{name}: largest entry {arr[idx]} too small for this test"
        bumped = {**theirs, name: np.array(arr, copy=True)}
        bumped[name][idx] *= 1 + 1e-6
        report = oracle.compare(bumped, ours)
        assert [c.name for c in report.failures()] == [name]
        assert report.failures()[0].worst[0][0] == tuple(int(i) for i in idx)
        assert (f"worst entries of {name} (index: theirs vs "
                f"ours):\n  {tuple(int(i) for i in idx)}: ") \
            in str(report)
    # and through the command line, for the first parameter's gradient: exit 1, tensor and index
    # named
    name = next(k for k in theirs if k.startswith("grad/"))
    idx = tuple(int(i) for i
                in np.unravel_index(int(np.argmax(np.abs(theirs[name]))), theirs[name].shape))
    theirs[name][idx] *= 1 + 1e-6
    np.savez(argv[argv.index("--grads") + 1], **theirs)
    rc, out, _ = run(capsys, argv)
    assert rc == 1
    assert re.search(rf"^{re.escape(name)} .* FAIL$", out, re.M)
    assert f"worst entries of {name} (index: theirs vs ours):\n  {idx}: " in out


@pytest.mark.parametrize("case", ONE_PER_LATENT)
def test_broken_files_give_one_line_and_exit_2(case, tmp_path, capsys):
    argv, theirs, _ = write_case(tmp_path, case)
    paths = {k: argv[argv.index(f"--{k}") + 1] for k in ("params", "batch", "grads")}
    originals = {k: oracle.load_npz(p) for k, p in paths.items()}
    noise_name = next(k for k in originals["batch"] if k not in ("y", "temperature"))

    def transposed(a):
        a["encoder.0.weight"] = a["encoder.0.weight"].T

    def missing(a):
        a.pop(next(k for k in reversed(list(a)) if k.startswith("grad/")))

    def unsampled(a):   # (N, K) is read as L = 1 (issue 25); a latent axis too short is not
        a[noise_name] = a[noise_name][:, :, :-1]

    for role, change, words in [("params", transposed, ["encoder.0.weight", "transposed"]),
                                ("grads", missing, ["missing grad/"]),
                                ("batch", unsampled,
                                 [f"noise {noise_name!r} has shape", "expected (N, L"])]:
        arrays = {k: np.array(v, copy=True) for k, v in originals[role].items()}
        change(arrays)
        np.savez(paths[role], **arrays)
        rc, out, err = run(capsys, argv)
        assert (rc, out) == (2, ""), role
        assert len(err.strip().splitlines()) == 1, err
        for w in words:
            assert w in err, err
        np.savez(paths[role], **originals[role])
    assert run(capsys, argv)[0] == 0


# ----- float32 twins: the float32 defaults, with their margin -----------------------------------
@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("cat")])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_float32_twin_passes_float32_defaults_with_margin(case, reduction):
    """A float32 PyTorch model (parameters, data and noise in float32) against refvae in float64 at
    the same float32 values: passes the float32 defaults, and still passes with both tolerances ten
    times tighter (the margin); a 1e-3 relative error in one entry fails."""
    cfg, estimator, _ = CASES[case]
    _, params, y, eps = inputs(cfg, seed=1)
    p32 = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in params.items()}
    y32, eps32 = (torch.tensor(a, dtype=torch.float32) for a in (y, eps))
    loss, kl, rec = twin.latent_loss_fn(cfg, reduction)(p32, y32, eps32)
    assert loss.dtype == torch.float32
    loss.backward()
    theirs = {"loss": loss, "kl_per_datum": kl, "reconstruction_per_datum": rec,
              **{f"grad/{k}": v.grad for k, v in p32.items()}}  # torch tensors, straight in
    batch = {"y": y32, "eps": eps32}
    report = oracle.check(cfg, p32, batch, theirs, reduction=reduction)
    assert report.passed, str(report)
    assert report.dtype == "float32" and (report.rtol, report.atol) == (1e-4, 1e-5)
    assert any("float32" in n for n in report.notes)
    tight = oracle.check(cfg, p32, batch, theirs, reduction=reduction, rtol=1e-5, atol=1e-6)
    assert tight.passed, str(tight)
    g = theirs["grad/decoder.out.weight"].clone()
    idx = np.unravel_index(int(g.abs().argmax()), tuple(g.shape))
    g[idx] *= 1 + 1e-3
    bad = oracle.check(cfg, p32, batch, {**theirs, "grad/decoder.out.weight": g},
                       reduction=reduction)
    assert [c.name for c in bad.failures()] == ["grad/decoder.out.weight"]


# ----- the README's worked example, as written --------------------------------------------------
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_section():
    text = README.read_text(encoding="utf-8")
    start = text.index("## Checking your VAE with the oracle")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_readme_exporter_and_compare_command_run(tmp_path, monkeypatch, capsys):
    section = readme_section()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "import jax" not in b]
    exporter = next(b for b in blocks if "np.savez" in b)
    assert len([line for line in exporter.splitlines() if line.strip()]) <= 20
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    for name in [k for k in namespace if k.startswith("test_")]:  # the pytest example in the README
        namespace[name]()
    command = next(b for b in re.findall(r"```bash\n(.*?)```", section, re.S) if "oracle compare"
                   in b)
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:3] == ["refvae", "oracle", "compare"]
    rc = cli.main(argv[1:])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    shown = re.search(r"```text\n(.*?)```", section, re.S).group(1).splitlines()
    printed = out.splitlines()
    assert printed[:3] == shown[:3]  # header, float32 note, column titles, as the README shows them
    assert printed[3].split()[:2] == shown[3].split()[:2]


def test_readme_pytest_helper_reports_a_wrong_gradient(tmp_path, monkeypatch):
    """The README's VAE with one wrong gradient entry (fc22.bias[3]) fails assert_matches, which
    names the tensor under refvae's name and the index."""
    section = readme_section()
    model_block = next(b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "class VAE"
                       in b)
    namespace = {}
    exec(compile(model_block, str(README), "exec"), namespace)  # noqa: S102
    torch.manual_seed(1)
    model = namespace["VAE"]()
    y = torch.rand(8, 784)
    torch.manual_seed(2)   # the README's reseeding: the draw of randn_like inside the model, again
    recon, mu, logvar = model(y)
    loss = namespace["loss_function"](recon, y, mu, logvar)
    torch.manual_seed(2)
    eps = torch.randn(8, 20)
    model.zero_grad()
    loss.backward()
    model.fc22.bias.grad[3] += 0.5 * model.fc22.bias.grad[3].abs() + 1e-3
    cfg = {"format": 1, "data_dim": 784, "latent_dim": 20, "encoder_hidden": [400],
           "decoder_hidden": [400], "activation": "relu", "latent": "gaussian",
           "emission": "bernoulli"}
    names = {"fc1": "encoder.0", "fc21": "encoder.mean", "fc22": "encoder.logvar",
             "fc3": "decoder.0",
             "fc4": "decoder.out"}
    with pytest.raises(AssertionError, match=r"worst entries of grad/encoder.logvar.bias .*\n  "
                                             r"\(3,\): "):
        oracle.assert_matches(cfg, model.state_dict(), {"y": y, "eps": eps[:, None, :]},
                              {"loss": loss,
                               **{f"grad/{k}": p.grad for k, p in model.named_parameters()}},
                              reduction="sum", name_map=names)


def test_a_torch_save_file_is_refused_in_one_line(tmp_path, capsys):
    """``torch.save`` writes a zip of pickles: refused without unpickling, with the fix named."""
    argv, _, _ = write_case(tmp_path, "diag-bernoulli")
    params = oracle.load_npz(argv[argv.index("--params") + 1])
    torch.save({k: torch.tensor(v) for k, v in params.items()}, tmp_path / "params.pt")
    argv[argv.index("--params") + 1] = str(tmp_path / "params.pt")
    rc, out, err = run(capsys, argv)
    assert (rc, out) == (2, "") and len(err.strip().splitlines()) == 1
    assert "params" in err and "numpy.savez" in err
