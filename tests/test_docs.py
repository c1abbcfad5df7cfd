"""Documentation references resolve: every ``*.md`` reference (and ``#anchor``) cited from
``refvae/`` and README.md names a file and a heading in the repository, and every function, test and
claim named by ``docs/DERIVATIONS.md`` exists.

Resolution rules (what a reader can follow): a reference is a path relative to the repository root
or to the citing file's directory; a bare file name (no ``/``) also resolves when exactly one file
in the repository has that name. An anchor must equal the GitHub slug of a heading of that file.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DERIVATIONS = ROOT / "docs" / "DERIVATIONS.md"

# A path ending in ".md" (not ".md5"), not inside a URL, with an optional "#anchor".
MD_REF = re.compile(r"(?<![\w/.:-])((?:[\w.-]+/)*[\w-]+(?:\.[\w-]+)*\.md)(?!\w)(#[\w-]+)?")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
BACKTICKED = re.compile(r"`([^`]+)`")

AGREED_SECTIONS = [
    "Reading path for students", "Notation", "The objective", "ELBO surgery",
    "Importance weighted bound", "Activations",
    "MLP reverse pass", "MLP input Jacobians", "MLP input Hessians", "Convolution",
    "Transposed convolution", "Pooling", "Reshaping and batch normalisation",
    "Sequential networks: reverse pass, Jacobians and Hessians", "Emissions",
    "Diagonal Gaussian recognition", "Full covariance Gaussian recognition",
    "Scale heads, head activations, Monte-Carlo KL and conditioning", "Pathwise gradient",
    "Bonnet and Price", "Score function and control variates", "Inverse CDF transforms",
    "Planar flows", "Gumbel max and Gumbel softmax", "Straight through",
    "Concrete density and relaxed KL", "Categorical score estimator", "Optimizers", "Schedules",
    "Fast kernels", "Errata", "Equation index",
]


# ----- the parser and the resolver ----------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than ``-``/``_`` dropped,
    spaces to ``-`` (letters and digits of any script are kept)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's slug, outside code fences; a repeated slug gets ``-1``, ``-2``, … as on
    GitHub."""
    seen: dict[str, int] = {}
    out, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def md_references(text: str) -> list[tuple[str, str | None]]:
    """``(path, anchor or None)`` for every ``*.md`` reference in ``text``."""
    return [(m.group(1), m.group(2)[1:] if m.group(2) else None) for m in MD_REF.finditer(text)]


def repository_files(root: Path) -> list[Path]:
    """Files of the working tree, without hidden folders and caches."""
    skip = {"__pycache__", "node_modules", "build", "dist"}  # build/: a wheel build's copies
    return [p for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") or part in skip
                                       for part in p.relative_to(root).parts[:-1])]


def resolve(ref: str, anchor: str | None, citing: Path, root: Path,
            files: list[Path]) -> str | None:
    """None when ``ref#anchor`` cited from ``citing`` resolves, else what is wrong (one line)."""
    candidates = [c for c in (root / ref, citing.parent / ref) if c.is_file()]
    if not candidates and "/" not in ref:
        named = [p for p in files if p.name == ref]
        if len(named) > 1:
            return f"{ref}: {len(named)} files have that name; cite the path"
        candidates = named
    if not candidates:
        return f"{ref}: no such file"
    if anchor is not None and anchor not in anchors(candidates[0].read_text(encoding="utf-8")):
        return f"{ref}#{anchor}: no heading of {candidates[0].relative_to(root)} has that anchor"
    return None


def broken_references(paths: list[Path], root: Path = ROOT) -> tuple[int, list[str]]:
    """The number of references found in ``paths`` and a line per unresolved one."""
    files = repository_files(root)
    count, broken = 0, []
    for path in paths:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for ref, anchor in md_references(line):
                count += 1
                problem = resolve(ref, anchor, path, root, files)
                if problem:
                    broken.append(f"{path.relative_to(root)}:{lineno}: {problem}")
    return count, broken


def refvae_sources() -> list[Path]:
    return sorted((ROOT / "refvae").rglob("*.py"))


# ----- the checker can fail -------------------------------------------------------------------
def test_slug_follows_github_rules():
    assert slug("The objective") == "the-objective"
    assert slug("Bonnet and Price") == "bonnet-and-price"
    assert slug("MLP input Hessians") == "mlp-input-hessians"
    assert slug("Eq. 8.17: Price's theorem (exact `H`)!") == "eq-817-prices-theorem-exact-h"
    assert slug("snake_case and x-y") == "snake_case-and-x-y"
    assert slug("Gumbel–softmax") == "gumbelsoftmax"            # an en dash is punctuation
    assert slug("Über Υ") == "über-υ"
    text = "# A\n## A\n```\n## Not a heading\n```\n### B c\n"
    assert anchors(text) == {"a", "a-1", "b-c"}


def test_parser_finds_references_and_skips_look_alikes():
    text = ("see docs/DERIVATIONS.md#bonnet-and-price and ORACLE.md, (`validation/REPORT.md`); "
            "hashlib.md5() and https://github.com/x/y/README.md are not references")
    assert md_references(text) == [("docs/DERIVATIONS.md", "bonnet-and-price"), ("ORACLE.md", None),
                                   ("validation/REPORT.md", None)]


def test_resolver_rejects_broken_references(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "GUIDE.md").write_text("# Guide\n## Price's theorem\n", encoding="utf-8")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "TWICE.md").write_text("# t\n", encoding="utf-8")
    citing = tmp_path / "pkg" / "mod.py"
    citing.parent.mkdir()
    citing.write_text('"""docs/GUIDE.md#prices-theorem, GUIDE.md, docs/GUIDE.md#price-theorem, '
                      'MISSING.md, TWICE.md, docs/../docs/GUIDE.md#guide"""\n', encoding="utf-8")
    count, broken = broken_references([citing], tmp_path)
    assert count == 6
    assert [b.split(": ", 1)[1] for b in broken] == [
        "docs/GUIDE.md#price-theorem: no heading of docs/GUIDE.md has that anchor",
        "MISSING.md: no such file",
        "TWICE.md: 2 files have that name; cite the path",
    ]


def test_the_parser_finds_the_citations_of_the_package_and_the_readme():
    """A broken pattern that finds nothing would let every other test here pass vacuously."""
    found = [ref for path in [*refvae_sources(), ROOT / "README.md"]
             for ref in md_references(path.read_text(encoding="utf-8"))]
    assert len(found) >= 40, found
    assert sum(1 for _, anchor in found if anchor) >= 25, "too few #anchor citations found"
    assert any(ref.endswith("DERIVATIONS.md") for ref, _ in found)


# ----- the repository's references -------------------------------------------------------------
def test_every_md_reference_in_the_readme_resolves():
    _, broken = broken_references([ROOT / "README.md"])
    assert not broken, "\n".join(broken)


def test_every_md_reference_from_refvae_resolves():
    _, broken = broken_references(refvae_sources())
    assert not broken, "\n".join(broken)


def test_every_md_reference_and_internal_link_in_the_derivations_resolves():
    _, broken = broken_references([DERIVATIONS])
    text = DERIVATIONS.read_text(encoding="utf-8")
    own = anchors(text)
    links = re.findall(r"\]\(#([\w-]+)\)", text)
    assert len(links) >= 20
    broken += [f"docs/DERIVATIONS.md: link #{a} has no heading" for a in links if a not in own]
    assert not broken, "\n".join(broken)


# ----- the derivations document ------------------------------------------------------------------
def _sections() -> dict[str, str]:
    parts = re.split(r"^## (.+)$", DERIVATIONS.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _field(name: str) -> list[str]:
    """The backticked tokens of every ``name:`` paragraph (up to the next blank line)."""
    paragraphs = re.findall(rf"^{name}:(.*?)(?:\n\n|\Z)", DERIVATIONS.read_text(encoding="utf-8"),
                            flags=re.M | re.S)
    return [tok for p in paragraphs for tok in BACKTICKED.findall(p)]


def _index_rows() -> list[list[str]]:
    rows = [line.strip().strip("|").split(" | ") for line
            in _sections()["Equation index"].splitlines()
            if line.startswith("| ") and not line.startswith("| ---")]
    return rows[1:]


def test_derivations_has_the_agreed_sections_in_order():
    assert list(_sections()) == AGREED_SECTIONS


def test_every_section_names_its_code_and_its_tests():
    for title, body in _sections().items():
        if title in ("Reading path for students", "Notation", "Errata", "Equation index"):
            continue
        assert re.search(r"^Implemented by: `", body, flags=re.M), f"{title}: no 'Implemented by:'"
        assert re.search(r"^Tested by: `", body, flags=re.M), f"{title}: no 'Tested by:'"


def import_name(dotted: str):
    """The object named ``package.module.attr.attr``: the longest importable module prefix, then
    ``getattr``. The module must not be an alias of another and the first attribute must be defined
    in it (not re-exported), so the name is the object's real home. Raises ImportError or
    AttributeError otherwise."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        module = obj.__name__
        if module != ".".join(parts[:cut]):
            raise AttributeError(f"{dotted}: {'.'.join(parts[:cut])} is an alias of {module}")
        for i, attr in enumerate(parts[cut:]):
            obj = getattr(obj, attr)
            home = getattr(obj, "__module__", module) if i == 0 else module
            if home != module:
                raise AttributeError(f"{dotted}: {attr} is defined in {home}, not {module}")
        return obj
    raise ImportError(f"{dotted}: no module of that name")


def _code_names() -> list[str]:
    index_cells = [tok for row in _index_rows() for tok in BACKTICKED.findall(row[3])]
    return [t for t in _field("Implemented by") + index_cells if re.fullmatch(r"refvae(\.\w+)+", t)]


def test_import_name_rejects_wrong_and_re_exported_names():
    import json.decoder

    assert import_name("json.decoder.JSONDecoder.decode") is json.decoder.JSONDecoder.decode
    with pytest.raises(AttributeError):
        import_name("json.decoder.JSONDecoder.no_such_method")
    with pytest.raises(AttributeError):
        import_name("json.no_such_module.f")
    with pytest.raises(ImportError):
        import_name("no_such_package.f")
    with pytest.raises(AttributeError, match="defined in json.decoder, not json"):
        import_name("json.JSONDecodeError")                 # re-exported by json
    with pytest.raises(AttributeError, match="is an alias of"):
        import_name("os.path.join")                         # os.path is posixpath or ntpath


def test_every_implemented_by_name_imports():
    names = _code_names()
    assert len(names) >= 100, names
    problems = []
    for name in dict.fromkeys(names):
        try:
            import_name(name)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{name}: {exc}")
    assert not problems, "\n".join(problems)


def test_every_test_and_claim_named_exists():
    refs = [t for t in _field("Tested by") + BACKTICKED.findall(_sections()["Errata"])
            + [tok for row in _index_rows() for tok in BACKTICKED.findall(row[4])]
            if re.match(r"(tests|validation)/", t)]
    assert len(refs) >= 100, refs
    problems = []
    for ref in dict.fromkeys(refs):
        path, _, func = ref.partition("::")
        file = ROOT / path
        if not file.is_file():
            problems.append(f"{ref}: no such file")
        elif func and not re.search(rf"^\s*def {re.escape(func)}\(",
                                    file.read_text(encoding="utf-8"),
                                    flags=re.M):
            problems.append(f"{ref}: {path} defines no {func}")
    claims = {int(n) for row in _index_rows() for n in re.findall(r"(?<![E\w])(\d+)", row[5])}
    assert claims, "no claim numbers found in the equation index"
    problems += [f"claim {n}: no validation/claim{n:02d}_*.py" for n in sorted(claims)
                 if not list((ROOT / "validation").glob(f"claim{n:02d}_*.py"))]
    assert not problems, "\n".join(problems)


def test_equation_index_lists_every_equation_of_section_8_2():
    listed = " ".join(row[0] for row in _index_rows())
    missing = [f"8.{n}" for n in range(12, 30) if not re.search(rf"\b8\.{n}\b", listed)]
    assert not missing, f"equations missing from the index: {missing}"


def _reading_path_rows() -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split(" | ")]
            for line in _sections()["Reading path for students"].splitlines()
            if line.startswith("| ") and not line.startswith("| ---")]
    return rows[1:]


def test_reading_path_follows_the_chapter_and_its_names_import():
    """The reading path lists Eqs. 8.12–8.29 in the chapter's order (each once, rows such as
    "after 8.14" sit after their equation), links sections that exist, and names importable
    ``refvae.math`` functions."""
    rows = _reading_path_rows()
    numbered = [int(m.group(1)) for row in rows if (m := re.fullmatch(r"8\.(\d+)", row[0]))]
    assert numbered == list(range(12, 30)), numbered
    last = 0
    for row in rows:
        m = re.search(r"8\.(\d+)", row[0])
        if m:
            assert int(m.group(1)) >= last, row[0]
            last = int(m.group(1))
    own = anchors(DERIVATIONS.read_text(encoding="utf-8"))
    links = [a for row in rows for a in re.findall(r"\]\(#([\w-]+)\)", row[2])]
    assert len(links) >= len(rows) and all(a in own for a in links), links
    names = [tok for row in rows for tok in BACKTICKED.findall(row[3])]
    assert all(n.startswith("refvae.math.") for n in names), names
    for name in names:
        import_name(name)
