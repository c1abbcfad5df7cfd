"""The package's layout: subpackages stacked in floors, each importing only from its own floor
and those below it (so there is no cycle), one import path per module (no shims that swap
``sys.modules``), no module named after a standard-library module, and lines ≤ 100 characters.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import refvae

PACKAGE = Path(refvae.__file__).parent
ROOT = PACKAGE.parent
# Bottom to top: a module may import from its own floor and the floors below it. The checked
# numbers and the memory budget sit with the errors, below the backend (which checks its seeds
# and sizes with them); the rest of util/ sits above the backend.
FLOORS = ("errors", "backend", "gradcheck", "util", "math", "optim", "fast", "data", "witness",
          "oracle", "train", "cli")
FOUNDATION = ("refvae.util.checked", "refvae.util.budget")
FILES = sorted(PACKAGE.rglob("*.py"))


def _module(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports(path: Path):
    """``(line, absolute module name)`` of every import in ``path``, lazy ones included."""
    me = _module(path)
    package = me if path.name == "__init__.py" else me[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            yield node.lineno, module
            yield from ((node.lineno, f"{module}.{alias.name}") for alias in node.names)


def floor(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "refvae" or len(parts) < 2:
        return None
    if any(module == f or module.startswith(f + ".") for f in FOUNDATION):
        return 0
    return FLOORS.index(parts[1]) if parts[1] in FLOORS else None


def upward(path: Path) -> list[str]:
    mine = floor(".".join(_module(path)))
    if mine is None:
        return []
    return [f"line {line}: {name}" for line, name in imports(path)
            if floor(name) is not None and floor(name) > mine]


def test_every_module_sits_on_a_floor():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in FILES}
    assert tops - {"__init__"} == set(FLOORS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_import_points_up_a_floor(path):
    bad = upward(path)
    assert not bad, f"{path.relative_to(ROOT)} imports from a higher floor: {bad}"


def test_the_floor_check_can_fail(tmp_path):
    pkg = tmp_path / "refvae" / "math"
    pkg.mkdir(parents=True)
    (pkg / "vae.py").write_text("from ..train import loop\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert upward(pkg / "vae.py") == ["line 1: refvae.train", "line 1: refvae.train.loop"]
    finally:
        ROOT = saved


def test_no_shims_and_no_standard_library_names():
    swaps = [p for p in FILES if "sys.modules[" in p.read_text(encoding="utf-8")]
    assert not swaps
    shadow = [p for p in FILES if p.stem in sys.stdlib_module_names]
    assert not shadow, f"modules named after standard-library modules: {shadow}"


def test_every_module_imports_by_one_path():
    """Each module file is importable under exactly the name its path gives, and no two files
    re-export each other's modules (one import path per module)."""
    names = {".".join(_module(p)) for p in FILES if p.stem != "__main__"}
    for name in sorted(names):
        __import__(name)
        assert sys.modules[name].__file__ is not None
    assert len(names) == len([p for p in FILES if p.stem != "__main__"])



def test_lines_are_at_most_100_characters():
    tracked = subprocess.run(["git", "ls-files", "refvae", "tests", "validation"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    long = [f"{name}:{i}" for name in tracked if name.endswith(".py")
            for i, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), 1)
            if len(line.encode("utf-8")) > 100]
    assert not long, f"{len(long)} lines over 100 characters (UTF-8 bytes, as byte-counting " \
                     f"tools measure them), first: {long[:5]}"


def test_the_readme_code_map_lists_every_module():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("### Code map")
    code_map = text[start:text.index("\n## ", start)]
    missing = [p.relative_to(ROOT).as_posix() for p in FILES if p.name != "__init__.py"
               and p.relative_to(ROOT).as_posix() not in code_map
               and f"`{p.name}`" not in code_map]
    assert not missing, f"README.md's code map does not list {missing}"
