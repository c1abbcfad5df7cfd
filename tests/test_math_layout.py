"""The layout of refvae/math/: plain mathematics that imports nothing from the speed, thread, I/O or
CLI side and no array library directly, with every implementation following its protocol."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import refvae.math
from refvae.math.config import LATENTS, VAEConfig
from refvae.math.emission import EMISSIONS, make_emission
from refvae.fast.kernels import FastBernoulli
from refvae.math import protocols
from refvae.math.estimators import REGISTRY, estimators_for
from refvae.math.latent import make_latent

MATH = Path(refvae.math.__file__).parent
FILES = sorted(MATH.rglob("*.py"))
# What a math module may import: the standard library's pure helpers, the rest of refvae/math/,
# and from refvae only the backend seam, the errors, the config and the validated-number helper
# (which the config itself uses).
ALLOWED = {"__future__", "math", "dataclasses", "typing", "refvae.backend", "refvae.errors",
           "refvae.util", "refvae.util.budget", "refvae.util.gates", "refvae.util.anomaly",
           "refvae.util.results",
           "refvae.math.config", "refvae.util.checked"}


def _imports(path: Path):
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(MATH.parent.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level
                                      + 1] if node.level else []
            yield ".".join([*base, node.module] if node.module else base)


def test_the_math_folder_has_files():
    names = {p.relative_to(MATH).as_posix() for p in FILES}
    assert {"activations.py", "mlp.py", "emission.py", "latent/gaussian.py", "estimators.py",
            "vae.py",
            "objectives.py", "protocols.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(MATH).as_posix())
def test_math_modules_import_only_the_backend_errors_config_and_each_other(path):
    bad = [name for name in _imports(path)
           if name not in ALLOWED and not name.startswith("refvae.math")]
    assert not bad, f"{path.name} imports {bad}: refvae/math/ computes through bk and imports no " \
                    "array library, thread, file, CLI or refvae.fast module"


# config.py and networks.py (format 2 of the config) read and check a user's fields by name
# (getattr over the dataclass's fields); they describe the architecture, not a computation that
# probes an object's capabilities.
@pytest.mark.parametrize("path", [p for p in FILES if p.name not in ("config.py", "networks.py")],
                         ids=lambda p: p.relative_to(MATH).as_posix())
def test_math_modules_do_not_probe_with_getattr(path):
    calls = [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None)
             in {"getattr", "hasattr"}]
    assert not calls, (f"{path.name} line {calls[0].lineno}: state the capability in "
                       "refvae/math/protocols.py")


def test_the_import_check_can_fail(tmp_path):
    bad = MATH / "latent" / "_probe_for_test.py"
    try:
        bad.write_text("import numpy as np\nfrom ...fast import kernels\nfrom ..mlp import MLP\n")
        assert sorted(_imports(bad)) == ["numpy", "refvae.fast", "refvae.math.mlp"]
    finally:
        bad.unlink()


def _members(protocol) -> set[str]:
    return {name for name in vars(protocol)
            if not name.startswith("_")} | set(protocol.__annotations__)


def _configs():
    for latent in LATENTS:
        extra = {"categories": 3} if latent == "categorical" else {}
        yield VAEConfig.from_dict(dict(data_dim=4, latent_dim=2, latent=latent, **extra))
    yield VAEConfig.from_dict(dict(data_dim=4, latent_dim=2, flow_length=2))


@pytest.mark.parametrize("config", list(_configs()), ids=lambda c: f"{c.latent}-{c.flow_length}")
def test_every_recognition_model_follows_the_protocol(config):
    latent = make_latent(config)
    missing = [m for m in _members(protocols.RecognitionModel) if not hasattr(latent, m)]
    assert not missing
    assert latent.estimators == estimators_for(latent.name) and latent.estimators
    assert latent.default_estimator in latent.estimators
    params = [list(inspect.signature(getattr(latent, m)).parameters)[:2] for m
              in ("mean", "kl", "score")]
    assert params == [["bk", "state"]] * 3


@pytest.mark.parametrize("emission", [*(make_emission(n) for n in EMISSIONS), FastBernoulli()],
                         ids=lambda e: type(e).__name__)
def test_every_emission_follows_the_protocol(emission):
    assert all(hasattr(emission, m) for m in _members(protocols.Emission))
    assert list(inspect.signature(emission.mean).parameters) == ["bk", "o"]


def test_every_estimator_has_the_one_signature():
    for latent, table in REGISTRY.items():
        for name, estimate in table.items():
            assert list(inspect.signature(estimate).parameters) == ["bk", "latent", "state",
                                                                    "signals"], \
                (latent, name)
