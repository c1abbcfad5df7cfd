"""The oracle's file contract, diagnoses, exit codes and Python API (no PyTorch needed).

The PyTorch twins that play "another implementation" are in test_oracle_torch.py; here the other
implementation is refvae's own result file, edited to make it wrong in one known way at a time.
"""
import json

import numpy as np
import pytest

from refvae.cli import main as cli
from refvae import oracle
from refvae.math.config import LATENTS
from refvae.math.emission import EMISSIONS
from refvae.errors import ConfigError, GradcheckError, ShapeError
from refvae.math.estimators import estimators_for
from refvae.math.latent import make_latent
from refvae.math.vae import VAE


def run(capsys, *argv):
    """``refvae oracle ...`` through the real entry point: (exit code, stdout, stderr)."""
    rc = cli.main(["oracle", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def implemented_latents():
    """Latent kinds that VAE supports in this tree (the oracle must cover each of them)."""
    names = []
    for latent in LATENTS:
        spec = {"data_dim": 2, "latent_dim": 1, "latent": latent}
        if latent == "categorical":
            spec["categories"] = 2
        try:
            make_latent(oracle.load_config(spec))
        except ConfigError:
            continue
        names.append(latent)
    return names


@pytest.fixture
def ex(tmp_path):
    """A valid example set: config.json, params.npz, batch.npz, theirs.npz (refvae's own result)."""
    return oracle.write_example(tmp_path / "ex", emission="gaussian", learn_alpha=True)


def files(ex, theirs=None, params=None, batch=None):
    """``compare`` with the example's files, some replaced."""
    return ["compare", "--config", ex["config"], "--params", params or ex["params"],
            "--batch", batch or ex["batch"], "--grads", theirs or ex["theirs"]]


def edited(ex, role, tmp_path, change):
    """A copy of one .npz of the example set with ``change(dict)`` applied; returns its path."""
    arrays = oracle.load_npz(ex[role])
    change(arrays)
    path = tmp_path / f"edited_{role}.npz"
    np.savez(path, **arrays)
    return str(path)


# ----- compute is the library ------------------------------------------------------------------
def test_compute_is_vae_loss_and_grads_bit_for_bit(ex):
    """The oracle adds no arithmetic of its own: its numbers are VAE.loss_and_grads'."""
    cfg = oracle.load_config(ex["config"])
    params, batch = oracle.load_npz(ex["params"]), oracle.load_npz(ex["batch"])
    for reduction in ("mean", "sum"):
        res = oracle.compute(ex["config"], ex["params"], ex["batch"], reduction=reduction)
        ref = VAE(cfg).loss_and_grads(params, batch["y"], batch["eps"], reduction=reduction)
        assert (res.loss, res.kl, res.reconstruction) == (ref.loss, ref.kl, ref.reconstruction)
        np.testing.assert_array_equal(res.kl_per_datum, ref.kl_per_datum)
        np.testing.assert_array_equal(res.reconstruction_per_datum, ref.reconstruction_per_datum)
        assert list(res.grads) == list(ref.grads)
        for k in ref.grads:
            np.testing.assert_array_equal(res.grads[k], ref.grads[k])


def test_compute_cli_writes_the_result_file(ex, tmp_path, capsys):
    out = tmp_path / "result.npz"
    rc, text, _ = run(capsys, "compute", "--config", ex["config"], "--params", ex["params"],
                      "--batch", ex["batch"], "--out", out, "--reduction", "sum", "--json")
    assert rc == 0
    summary = json.loads(text)
    res = oracle.load_npz(out)
    params = oracle.load_npz(ex["params"])
    assert set(res) == {"loss", "kl", "reconstruction", "kl_per_datum", "reconstruction_per_datum",
                        *(f"grad/{k}" for k in params)}
    assert summary["loss"] == float(res["loss"]) and summary["reduction"] == "sum"
    n = len(res["kl_per_datum"])
    assert float(res["loss"]) == pytest.approx(float(res["kl_per_datum"].sum()
                                                     + res["reconstruction_per_datum"].sum()),
                                               rel=1e-14)
    mean = oracle.compute(ex["config"], ex["params"], ex["batch"])
    assert float(res["loss"]) == pytest.approx(n * mean.loss, rel=1e-14)
    for k in params:  # sum reduction = N × mean reduction, tensor by tensor
        np.testing.assert_allclose(res[f"grad/{k}"], n * mean.grads[k], rtol=1e-13, atol=1e-15)
    rc, text, _ = run(capsys, "compute", "--config", ex["config"], "--params", ex["params"],
                      "--batch", ex["batch"], "--out", out)
    assert rc == 0 and "nats per datum" in text


def test_compute_on_every_backend_matches_numpy(ex, bk):
    ref = oracle.compute(ex["config"], ex["params"], ex["batch"])
    res = oracle.compute(ex["config"], ex["params"], ex["batch"], backend=bk.name)
    assert isinstance(res.grads["encoder.0.weight"], np.ndarray)
    assert oracle.compare(ref.arrays(), res).passed


@pytest.mark.parametrize("latent", implemented_latents())
def test_every_estimator_is_the_librarys(latent, tmp_path):
    """Each registered estimator reaches VAE.loss_and_grads unchanged (fresh estimator state)."""
    ex = oracle.write_example(tmp_path, latent=latent)
    vae = VAE(oracle.load_config(ex["config"]))
    params, batch = oracle.load_npz(ex["params"]), oracle.load_npz(ex["batch"])
    temperature = float(batch["temperature"]) if "temperature" in batch else None
    names = estimators_for(vae.latent.name)
    assert oracle.default_estimator(vae) in names
    for est in names:
        res = oracle.compute(ex["config"], ex["params"], ex["batch"], estimator=est)
        ref = vae.loss_and_grads(params, batch["y"], batch[vae.latent.noise_name], estimator=est,
                                 temperature=temperature)
        assert res.estimator == est and res.loss == ref.loss
        for k in ref.grads:
            np.testing.assert_array_equal(res.grads[k], ref.grads[k], err_msg=f"{est} {k}")


# ----- the example files, for every latent kind and emission ----------------------------------
@pytest.mark.parametrize("latent", implemented_latents())
@pytest.mark.parametrize("emission", EMISSIONS)
def test_example_files_are_valid_and_pass_compare(latent, emission, tmp_path, capsys):
    rc, text, _ = run(capsys, "example", "--out", tmp_path / "ex", "--latent", latent,
                      "--emission", emission, "--json")
    assert rc == 0
    written = json.loads(text)
    cfg = json.loads(open(written["files"]["config"]).read())
    assert cfg["format"] == 1 and cfg["latent"] == latent and cfg["emission"] == emission
    batch = oracle.load_npz(written["files"]["batch"])
    vae = VAE(cfg)
    assert set(batch) <= {"y", vae.latent.noise_name, "temperature"}
    rc, text, _ = run(capsys, *written["compare"].split()[2:])
    assert rc == 0, text
    assert text.startswith("oracle comparison: PASS")


def test_example_with_planar_flows_passes_compare(tmp_path, capsys):
    rc, text, _ = run(capsys, "example", "--out", tmp_path / "ex", "--flow-length", "2", "--json")
    assert rc == 0
    written = json.loads(text)
    assert json.loads(open(written["files"]["config"]).read())["flow_length"] == 2
    params = oracle.load_npz(written["files"]["params"])
    assert {"encoder.flow_u.weight", "encoder.flow_w.bias", "encoder.flow_b.weight"} <= set(params)
    rc, text, _ = run(capsys, *written["compare"].split()[2:])
    assert rc == 0 and text.startswith("oracle comparison: PASS"), text


def test_example_with_a_non_default_estimator_needs_that_estimator(tmp_path, capsys):
    names = [e for e in estimators_for("gaussian") if e != "pathwise"]
    if not names:
        pytest.skip("only the pathwise estimator exists")
    rc, text, _ = run(capsys, "example", "--out", tmp_path, "--estimator", names[0], "--json")
    command = json.loads(text)["compare"]
    assert f"--estimator {names[0]}" in command
    assert run(capsys, *command.split()[2:])[0] == 0


# ----- mismatches: exit 1, the table names tensor and index ------------------------------------
def test_one_wrong_entry_fails_and_is_named(ex, tmp_path, capsys):
    ours = oracle.compute(ex["config"], ex["params"], ex["batch"]).grads["decoder.out.weight"]
    idx = np.unravel_index(np.argmax(np.abs(ours)), ours.shape)
    assert abs(ours[idx]) > 1e-2  # large enough that 1e-6 relative exceeds atol·s + rtol·|ours|

    def bump(a):
        a["grad/decoder.out.weight"][idx] *= 1 + 1e-6

    rc, text, err = run(capsys, *files(ex, theirs=edited(ex, "theirs", tmp_path, bump)))
    assert rc == 1 and err == ""
    assert text.startswith("oracle comparison: FAIL")
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines()[2:]
            if line.startswith(("grad/", "loss"))}
    assert rows["grad/decoder.out.weight"] == "FAIL"
    assert [k for k, v in rows.items() if v == "FAIL"] == ["grad/decoder.out.weight"]
    assert "worst entries of grad/decoder.out.weight (index: theirs vs ours):" in text
    assert f"  {tuple(int(i) for i in idx)}: " in text


def test_compare_json_reports_the_failure(ex, tmp_path, capsys):
    def spoil(a):
        a["grad/encoder.0.bias"][1] = np.nan
        a["loss"] = a["loss"] + 1.0

    rc, text, _ = run(capsys, *files(ex, theirs=edited(ex, "theirs", tmp_path, spoil)), "--json")
    assert rc == 1
    report = json.loads(text)
    failed = {t["name"]: t for t in report["tensors"] if not t["passed"]}
    assert set(failed) == {"loss", "grad/encoder.0.bias"}
    assert failed["grad/encoder.0.bias"]["worst"][0]["index"] == [1]
    assert failed["grad/encoder.0.bias"]["worst"][0]["theirs"] is None  # NaN is reported, as null
    assert failed["grad/encoder.0.bias"]["max_abs_err"] is None


def test_summed_gradients_get_a_reduction_hint(ex, tmp_path, capsys):
    n = len(oracle.load_npz(ex["batch"])["y"])
    summed = edited(ex, "theirs", tmp_path, lambda a: a.update({k: v * n for k, v in a.items()
                                                                if not k.endswith("per_datum")}))
    rc, text, _ = run(capsys, *files(ex, theirs=summed))
    assert rc == 1 and "use --reduction sum" in text
    assert run(capsys, *files(ex, theirs=summed), "--reduction", "sum")[0] == 0


def test_only_gradients_are_required(ex, tmp_path, capsys):
    grads_only = edited(ex, "theirs", tmp_path,
                        lambda a: [a.pop(k) for k in list(a) if not k.startswith("grad/")])
    rc, text, _ = run(capsys, *files(ex, theirs=grads_only))
    assert rc == 0 and "\nloss " not in text


# ----- float32 gradients: dtype-aware tolerances and a note --------------------------------------
def test_float32_gradients_get_float32_tolerances_and_a_note(ex, tmp_path, capsys):
    f32 = edited(ex, "theirs", tmp_path,
                 lambda a: a.update({k: v.astype(np.float32) for k, v in a.items()}))
    rc, text, _ = run(capsys, *files(ex, theirs=f32))
    assert rc == 0
    assert ("note: your gradients are float32: using the float32 defaults rtol=0.0001, "
            "atol=1e-05") in text
    # explicit tolerances replace the defaults (and the note); float32 rounding (up to 6e-8
    # relative) cannot pass 1e-9
    rc, text, _ = run(capsys, *files(ex, theirs=f32), "--rtol", "1e-9", "--atol", "1e-12")
    assert rc == 1 and "note:" not in text
    rc, text, _ = run(capsys, *files(ex, theirs=f32), "--rtol", "1e-3")
    assert rc == 0 and "using the float32 default atol=1e-05 (" in text


def test_explicit_tolerances_are_used(ex, tmp_path, capsys):
    def bump(a):
        a["grad/decoder.log_alpha"] = a["grad/decoder.log_alpha"] * (1 + 1e-3)

    wrong = edited(ex, "theirs", tmp_path, bump)
    assert run(capsys, *files(ex, theirs=wrong))[0] == 1
    rc, text, _ = run(capsys, *files(ex, theirs=wrong), "--rtol", "1e-2")
    assert rc == 0 and "1e-09·s + 0.01·|ours|" in text


# ----- unusable input: exit 2, one line on stderr -----------------------------------------------
def _transpose(a, key):
    a[key] = a[key].T.copy()


def _pop(a, key):
    a.pop(key)


DIAGNOSES = {
    "transposed weight": ("params", lambda a: _transpose(a, "encoder.0.weight"),
                          ["encoder.0.weight", "transposed"]),
    "transposed gradient": ("theirs", lambda a: _transpose(a, "grad/decoder.0.weight"),
                            ["grad/decoder.0.weight", "transposed"]),
    "missing gradient": ("theirs", lambda a: _pop(a, "grad/decoder.out.bias"),
                         ["missing grad/decoder.out.bias"]),
    "missing parameter": ("params", lambda a: _pop(a, "decoder.log_alpha"),
                          ["missing decoder.log_alpha"]),
    "extra tensor": ("theirs", lambda a: a.update({"grad/decoder.scale": np.ones(2)}),
                     ["unexpected grad/decoder.scale"]),
    "unprefixed gradient": ("theirs",
                            lambda a: a.update({"encoder.0.bias": a.pop("grad/encoder.0.bias")}),
                            ["missing grad/encoder.0.bias", "gradients are named "
                                                            "grad/encoder.0.bias"]),
    "wrong-shaped loss": ("theirs", lambda a: a.update({"loss": a["loss"].reshape(1)}),
                          ["loss has shape (1,), expected ()"]),
    "wrong-shaped per-datum": ("theirs",
                               lambda a: a.update({"kl_per_datum": a["kl_per_datum"][:2]}),
                               ["kl_per_datum has shape (2,)"]),
    "noise with a short latent axis": ("batch", lambda a: a.update({"eps": a["eps"][:, :, :1]}),
                                       ["noise 'eps' has shape (4, 2, 1), expected (N, L, 2)"]),
    "noise for another N": ("batch", lambda a: a.update({"eps": a["eps"][:3]}),
                            ["noise 'eps' has shape (3,"]),
    "missing noise": ("batch", lambda a: _pop(a, "eps"), ["no array 'eps'"]),
    "noise of another latent": ("batch", lambda a: a.update({"gumbel": np.zeros((4, 1, 2, 3))}),
                                ["unexpected array(s) 'gumbel'"]),
    "wrong data width": ("batch", lambda a: a.update({"y": a["y"][:, :5]}), ["y has shape (4, 5)"]),
    "NaN parameter": ("params", lambda a: a["decoder.0.bias"].__setitem__(0, np.nan),
                      ["decoder.0.bias contains NaN"]),
    "NaN noise": ("batch", lambda a: a["eps"].__setitem__((0, 0, 0), np.inf),
                  ["eps", "NaN or inf"]),
    "string array": ("params", lambda a: a.update({"decoder.0.bias": np.array(["a", "b"])}),
                     ["dtype <U1; expected real numbers"]),
    "bad temperature": ("batch", lambda a: a.update({"temperature": np.array(-1.0)}),
                        ["temperature"]),
}


@pytest.mark.parametrize("case", DIAGNOSES)
def test_unusable_input_is_one_line_and_exit_2(case, ex, tmp_path, capsys):
    role, change, words = DIAGNOSES[case]
    path = edited(ex, role, tmp_path, change)
    rc, out, err = run(capsys, *files(ex, **{role: path}))
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("refvae: error: ")
    for word in words:
        assert word in err


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return str(path)


def test_unreadable_files_are_one_line_and_exit_2(ex, tmp_path, capsys):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled,
             **{**oracle.load_npz(ex["params"]), "obj": np.array([{"a": 1}], dtype=object)})
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    cases = [
        (files(ex, params=str(tmp_path / "nope.npz")), "does not exist"),
        (files(ex, params=str(pickled)), "pickled object array 'obj'"),
        (files(ex, params=str(single)), "single .npy array"),
        (files(ex, batch=_write(tmp_path, "junk.npz", b"PK\x03\x04 not really a zip")),
         "not an .npz (zip) archive"),
        (files(ex, theirs=str(tmp_path)), "is a directory"),
        (["compare", "--config", _write(tmp_path, "c.json", "{"), *files(ex)[3:]],
         "malformed at line 1"),
        (["compare", "--config", _write(tmp_path, "c2.json", '{"data_dim": 6, "latent_dim": 2, '
                                                             '"widht": 3}'),
          *files(ex)[3:]], "unknown config field(s) 'widht'"),
        (["compare", "--config", _write(tmp_path, "c3.json", '{"data_dim": 6, "latent_dim": 2, '
                                                             '"format": 2}'),
          *files(ex)[3:]], "format"),
        ([*files(ex), "--estimator", "magic"], "unknown estimator 'magic'"),
        ([*files(ex), "--map", "fc1"], "not of the form theirs=ours"),
        ([*files(ex), "--map", "fc1=encoder.0"], "fc1 matches no parameter"),
        ([*files(ex), "--map-file", str(tmp_path / "none.json")], "name map: JSON file"),
        ([*files(ex), "--map-file", _write(tmp_path, "m.json", '["fc1"]')], "JSON object of names"),
    ]
    for argv, words in cases:
        rc, out, err = run(capsys, *argv)
        assert (rc, out) == (2, ""), argv
        assert len(err.strip().splitlines()) == 1 and words in err, (argv, err)


def test_cannot_write_result_is_one_line(ex, tmp_path, capsys):
    rc, _, err = run(capsys, "compute", *files(ex)[1:7], "--out", tmp_path / "no" / "dir" / "r.npz")
    assert rc == 2 and "cannot write" in err and len(err.strip().splitlines()) == 1


def test_temperature_in_the_batch_and_the_option_must_agree(tmp_path, capsys):
    cat = oracle.write_example(tmp_path / "cat", latent="categorical", categories=3,
                               temperature=0.5)
    assert run(capsys, *files(cat), "--temperature", "0.5")[0] == 0
    rc, _, err = run(capsys, *files(cat), "--temperature", "0.7")
    assert rc == 2 and "give one of them" in err


def test_a_temperature_for_a_gaussian_latent_is_refused_not_ignored(ex, tmp_path, capsys):
    with_t = edited(ex, "batch", tmp_path, lambda a: a.update({"temperature": np.array(0.5)}))
    for argv in ([*files(ex), "--temperature", "0.5"], files(ex, batch=with_t)):
        rc, out, err = run(capsys, *argv)
        assert (rc, out) == (2, "") and len(err.strip().splitlines()) == 1
        assert "applies only to categorical latents, not to 'gaussian'" in err


def test_oracle_without_subcommand_prints_help(capsys):
    assert cli.main(["oracle"]) == 2
    assert "compare" in capsys.readouterr().out


# ----- name maps --------------------------------------------------------------------------------
def test_rename_is_by_whole_dotted_prefix_longest_first():
    m = {"fc1": "encoder.0", "fc1.sub": "x.y", "log_alpha": "decoder.log_alpha"}
    assert oracle.rename("fc1.weight", m) == "encoder.0.weight"
    assert oracle.rename("fc1.sub.bias", m) == "x.y.bias"
    assert oracle.rename("fc12.weight", m) == "fc12.weight"
    assert oracle.rename("log_alpha", m) == "decoder.log_alpha"


def _theirs_names(a, renames, prefix=""):
    for ours, theirs in renames.items():
        for key in list(a):
            if key.startswith(prefix + ours + "."):
                a[prefix + theirs + key[len(prefix + ours):]] = a.pop(key)
            elif key == prefix + ours:
                a[prefix + theirs] = a.pop(key)


RENAMES = {"encoder.0": "fc1", "encoder.mean": "fc21", "encoder.logvar": "fc22", "decoder.0": "fc3",
           "decoder.out": "fc4", "decoder.log_alpha": "log_alpha"}


@pytest.mark.parametrize("how", ["flags", "file"])
def test_name_map_renames_params_and_gradients(how, ex, tmp_path, capsys):
    params = edited(ex, "params", tmp_path, lambda a: _theirs_names(a, RENAMES))
    theirs = edited(ex, "theirs", tmp_path, lambda a: _theirs_names(a, RENAMES, "grad/"))
    rc, _, err = run(capsys, *files(ex, params=params, theirs=theirs))
    assert rc == 2 and "--map theirs=ours" in err and "unexpected fc1.weight" in err
    if how == "flags":
        extra = [x for ours, theirs_ in RENAMES.items() for x in ("--map", f"{theirs_}={ours}")]
    else:
        extra = ["--map-file",
                 _write(tmp_path, "map.json", json.dumps({v: k for k, v in RENAMES.items()}))]
    rc, text, err = run(capsys, *files(ex, params=params, theirs=theirs), *extra)
    assert rc == 0, err
    assert "grad/encoder.0.weight" in text  # the table speaks refvae's names


def test_name_map_collision_is_an_error(ex, tmp_path, capsys):
    params = edited(ex, "params", tmp_path, lambda a: _theirs_names(a, {"encoder.0": "fc1"}))
    rc, _, err = run(capsys, *files(ex, params=params), "--map", "fc1=encoder.0", "--map",
                     "decoder.0=encoder.0")
    assert rc == 2 and "sends both" in err


# ----- Python API -------------------------------------------------------------------------------
def test_assert_matches_passes_with_objects_and_paths(ex):
    cfg = json.loads(open(ex["config"]).read())
    params, batch, theirs = (oracle.load_npz(ex[k]) for k in ("params", "batch", "theirs"))
    report = oracle.assert_matches(cfg, params, batch, theirs)
    assert report.passed and len(report.checks) == len(theirs)
    assert oracle.assert_matches(ex["config"], ex["params"], ex["batch"], ex["theirs"]).passed
    assert oracle.assert_matches(oracle.load_config(cfg), params, ex["batch"], theirs).passed


def test_assert_matches_raises_an_assertion_error_with_the_cli_table(ex, tmp_path, capsys):
    wrong = edited(ex, "theirs", tmp_path,
                   lambda a: a["grad/encoder.logvar.weight"].__setitem__((1, 2), 7.0))
    with pytest.raises(AssertionError) as info:
        oracle.assert_matches(ex["config"], ex["params"], ex["batch"], wrong)
    assert isinstance(info.value, oracle.OracleMismatch) and isinstance(info.value, GradcheckError)
    rc, text, _ = run(capsys, *files(ex, theirs=wrong))
    assert rc == 1 and str(info.value) == text.rstrip("\n")
    assert "  (1, 2): 7 vs " in text


def test_python_api_raises_the_same_diagnoses(ex):
    params = oracle.load_npz(ex["params"])
    params["encoder.0.weight"] = params["encoder.0.weight"].T
    with pytest.raises(ShapeError, match="transposed"):
        oracle.check(ex["config"], params, ex["batch"], ex["theirs"])
