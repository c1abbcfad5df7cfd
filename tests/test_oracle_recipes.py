"""docs/ORACLE.md's recipes run as written: under "## Recipes", one ``python`` block under each of
the headings "### PyTorch", "### JAX/Flax" and "### NumPy", each executed in a fresh namespace in
an empty working directory; each ends by asserting that its check passes, and the test asserts it
again on the ``report`` it left. A missing heading or block, or fewer than three blocks, fails;
the PyTorch and JAX/Flax recipes skip cleanly where their framework is not installed. The two
mistakes the section says each recipe catches (the KL's ½ dropped, the variance used as the
standard deviation) are injected into each block, which then must fail."""
import re
from pathlib import Path

import pytest

ORACLE = Path(__file__).resolve().parents[1] / "docs" / "ORACLE.md"
FRAMEWORKS = {"PyTorch": ("torch",), "JAX/Flax": ("jax", "flax"), "NumPy": ()}
GRADIENTS = {"PyTorch": 10, "JAX/Flax": 10, "NumPy": 6}   # weights and biases of each recipe


def recipes() -> dict:
    """``{heading: [python blocks]}`` for the ``###`` headings of the "## Recipes" section."""
    text = ORACLE.read_text(encoding="utf-8")
    assert "\n## Recipes\n" in text, "docs/ORACLE.md has no '## Recipes' section"
    start = text.index("\n## Recipes\n") + 1
    end = text.find("\n## ", start)
    section = text[start:end if end >= 0 else len(text)]
    out = {}
    for part in section.split("\n### ")[1:]:
        heading, _, body = part.partition("\n")
        out[heading.strip()] = re.findall(r"```python\n(.*?)```", body, re.S)
    return out


def test_every_framework_has_one_recipe():
    found = recipes()
    assert sum(len(blocks) for blocks in found.values()) >= 3
    assert {name: len(found.get(name, [])) for name in FRAMEWORKS} == dict.fromkeys(FRAMEWORKS, 1)


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_recipe_runs_as_written(framework, tmp_path, monkeypatch):
    blocks = recipes().get(framework, [])
    assert len(blocks) == 1, f"docs/ORACLE.md: no single python block under '### {framework}'"
    for module in FRAMEWORKS[framework]:
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"oracle_recipe_{framework}"}
    exec(compile(blocks[0], f"{ORACLE}:{framework}", "exec"), namespace)  # noqa: S102 - our docs
    report = namespace["report"]
    assert report.passed, str(report)
    assert sum(c.name.startswith("grad/") for c in report.checks) == GRADIENTS[framework]
    assert not list(tmp_path.iterdir())                                  # nothing written


MISTAKES = {"PyTorch": ["0.5 * torch.sum(1 + logvar", "torch.exp(0.5 * logvar)"],
            "JAX/Flax": ["-0.5 * jnp.sum(1 + logvar", "jnp.exp(0.5 * logvar) * jax"],
            "NumPy": ["kl = 0.5 * np.sum", "std = np.exp(0.5 * logvar)"]}


@pytest.mark.parametrize("framework,mistake", [(f, i) for f in FRAMEWORKS for i in (0, 1)])
def test_a_recipe_with_a_mistake_fails(framework, mistake, tmp_path, monkeypatch):
    blocks = recipes().get(framework, [])
    assert len(blocks) == 1, f"docs/ORACLE.md: no single python block under '### {framework}'"
    for module in FRAMEWORKS[framework]:
        pytest.importorskip(module)
    right = MISTAKES[framework][mistake]
    assert blocks[0].count(right) == 1, f"the {framework} recipe no longer has {right!r}"
    wrong = right.replace("0.5 * ", "")           # the KL's 1/2 dropped; exp(logvar) as the std
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="FAIL"):
        exec(compile(blocks[0].replace(right, wrong), framework, "exec"), {})  # noqa: S102
