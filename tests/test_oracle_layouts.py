"""Nested parameter trees (JAX/Flax style), ``(in, out)`` kernels and a fused head, in NumPy: they
pass through ``layout``/``split`` for parameters and gradients alike, the report shows the user's
names, and a tree with kernels but no layout gets the hint that names the layout."""
import numpy as np
import pytest

from refvae.cli import main as cli
from refvae import oracle
from refvae.errors import ConfigError, ShapeError

NAMES = {"encoder.Dense_0": "encoder.0", "decoder.Dense_0": "decoder.0",
         "decoder.Dense_1": "decoder.out"}
SPLIT = {"encoder.head": ["encoder.mean", "encoder.logvar"]}


def flax_tree(flat: dict) -> dict:
    """refvae's flat (out, in) arrays as a Flax-style tree: (in, out) kernels, one fused head."""
    def dense(name):
        return {"kernel": flat[f"{name}.weight"].T, "bias": flat[f"{name}.bias"]}
    head = {"kernel": np.concatenate([flat["encoder.mean.weight"],
                                      flat["encoder.logvar.weight"]]).T,
            "bias": np.concatenate([flat["encoder.mean.bias"], flat["encoder.logvar.bias"]])}
    return {"params": {"encoder": {"Dense_0": dense("encoder.0"), "head": head},
                       "decoder": {"Dense_0": dense("decoder.0"), "Dense_1": dense("decoder.out")}}}


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    paths = oracle.write_example(tmp_path_factory.mktemp("ex"))
    params, theirs = oracle.load_npz(paths["params"]), oracle.load_npz(paths["theirs"])
    grads = flax_tree({k[len("grad/"):]: v for k,
                       v in theirs.items() if k.startswith("grad/")})["params"]
    return paths, flax_tree(params), {"loss": theirs["loss"], "grad": grads}


def test_flax_tree_with_kernels_and_a_fused_head_passes(ex):
    paths, params, theirs = ex
    report = oracle.assert_matches(paths["config"], params, paths["batch"], theirs,
                                   name_map=NAMES, layout="in_out", split=SPLIT)
    assert len(report.checks) == 11
    text = str(report)
    assert "grad/encoder.logvar.weight (encoder.head.kernel outputs 2:4)" in text
    assert "grad/encoder.0.weight (encoder.Dense_0.kernel)" in text


def test_a_wrong_entry_of_the_fused_kernel_is_named_in_both_names(ex):
    paths, params, theirs = ex
    kernel = theirs["grad"]["encoder"]["head"]["kernel"].copy()
    kernel[1, 3] += 0.1     # (in, out): output 3 is logvar's second output
    bad = {**theirs, "grad": {**theirs["grad"], "encoder": {**theirs["grad"]["encoder"],
                                                            "head": {"kernel": kernel,
                                                                     "bias": theirs["grad"][
                                                                "encoder"]["head"]["bias"]}}}}
    report = oracle.check(paths["config"], params, paths["batch"], bad, name_map=NAMES,
                          layout="in_out", split=SPLIT)
    assert [c.name for c in report.failures()] == ["grad/encoder.logvar.weight"]
    assert report.failures()[0].worst[0][0] == (1, 1)   # (out, in) under refvae's layout


def stax_tree(flat: dict) -> tuple:
    """refvae's flat arrays as stax holds them: ``(encoder, decoder)`` lists of ``(W, b)`` pairs
    with ``W`` ``(in, out)``, ``()`` for the parameterless layers (Relu, FanOut, Softplus)."""
    def dense(name):
        return flat[f"{name}.weight"].T, flat[f"{name}.bias"]
    return ([dense("encoder.0"), (), (), (dense("encoder.mean"), [dense("encoder.logvar"), ()])],
            [dense("decoder.0"), (), dense("decoder.out")])


STAX_NAMES = {"0.0": "encoder.0", "0.3.0": "encoder.mean", "0.3.1.0": "encoder.logvar",
              "1.0": "decoder.0", "1.2": "decoder.out"}


@pytest.mark.parametrize("wrong", [False, True])
def test_stax_lists_as_params_and_as_the_gradient_tree(ex, wrong):
    """``{"grad": tree}`` takes a stax tree (lists and tuples), not only a dict: the gradients a
    JAX user gets from ``jax.grad`` on stax's parameters go in as they are."""
    paths, _, _ = ex
    params, theirs = oracle.load_npz(paths["params"]), oracle.load_npz(paths["theirs"])
    grads = {k[len("grad/"):]: v for k, v in theirs.items() if k.startswith("grad/")}
    if wrong:
        grads["decoder.out.bias"] = grads["decoder.out.bias"] + 0.1
    report = oracle.check(paths["config"], stax_tree(params), paths["batch"],
                          {"loss": theirs["loss"], "grad": stax_tree(grads)},
                          name_map=STAX_NAMES, layout="in_out")
    assert report.passed is not wrong and len(report.checks) == 11
    assert "grad/encoder.logvar.weight (0.3.1.0.weight)" in str(report)
    if wrong:
        assert [c.name for c in report.failures()] == ["grad/decoder.out.bias"]


def test_kernels_without_the_layout_get_the_layout_hint(ex):
    paths, params, theirs = ex
    with pytest.raises(ShapeError, match=r"pass layout='in_out' \(--layout in-out\)"):
        oracle.check(paths["config"], params, paths["batch"], theirs, name_map=NAMES, split=SPLIT)


def test_split_errors_are_one_line(ex):
    paths, params, theirs = ex
    with pytest.raises(ConfigError, match="'encoder.scale.weight' is not a weight or bias"):
        oracle.check(paths["config"], params, paths["batch"], theirs, name_map=NAMES,
                     layout="in_out",
                     split={"encoder.head": ["encoder.mean", "encoder.scale"]})
    with pytest.raises(ConfigError, match="split entr"):
        oracle.check(paths["config"], params, paths["batch"], theirs, name_map=NAMES,
                     layout="in_out",
                     split={**SPLIT, "encoder.nothing": ["encoder.mean", "encoder.logvar"]})
    with pytest.raises(ConfigError, match="unknown layout"):
        oracle.check(paths["config"], params, paths["batch"], theirs, layout="io")


def test_cli_layout_and_split(ex, tmp_path, capsys):
    paths, params, theirs = ex
    flat_params = oracle.flatten(params)
    flat_theirs = {"loss": theirs["loss"],
                   **{f"grad/{k}": v for k, v in oracle.flatten(theirs["grad"]).items()}}
    np.savez(tmp_path / "params.npz", **flat_params)
    np.savez(tmp_path / "theirs.npz", **flat_theirs)
    argv = ["oracle", "compare", "--config", paths["config"], "--params",
            str(tmp_path / "params.npz"),
            "--batch", paths["batch"], "--grads", str(tmp_path / "theirs.npz"), "--layout",
            "in-out",
            "--split", "encoder.head=encoder.mean,encoder.logvar"] + [a for k, v in NAMES.items()
                                                                     for a in ("--map", f"{k}={v}")]
    assert cli.main(argv) == 0, capsys.readouterr()
    assert "(encoder.head.kernel outputs 0:2)" in capsys.readouterr().out
    assert cli.main(argv[:-8]) == 2   # without the map: refvae's names are missing, one line
    assert "map them with --map" in capsys.readouterr().err


def test_readme_flax_exporter_runs_where_jax_installs():
    """The README's JAX/Flax example as written: a Flax params tree with (in, out) kernels and a
    fused head, float32, checked in one call (skipped cleanly where jax or flax is not
    installed)."""
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    import re
    from pathlib import Path
    readme = Path(__file__).resolve().parents[1] / "README.md"
    block = next(b for b
                 in re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
                 if "import jax" in b)
    namespace = {"config": {"format": 1, "data_dim": 784, "latent_dim": 20, "encoder_hidden": [400],
                            "decoder_hidden": [400], "activation": "relu", "latent": "gaussian",
                            "emission": "bernoulli"}}
    exec(compile(block, str(readme), "exec"), namespace)  # noqa: S102 - our own README
    report = namespace["report"]
    assert report.passed and len(report.checks) == 11
    assert "grad/encoder.logvar.weight (encoder.head.kernel outputs 20:40)" in str(report)
