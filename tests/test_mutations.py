"""validation/mutations.py: every named bug still applies to the clean tree exactly once, a moved
snippet is refused rather than silently skipped, and a run without the claims' data is refused."""
from pathlib import Path

import pytest

from validation import mutations


def test_every_mutation_applies_once_to_the_clean_tree():
    assert mutations.main(["--check"]) == 0


def test_a_snippet_that_is_not_found_is_refused(tmp_path):
    (tmp_path / "refvae").mkdir()
    (tmp_path / "refvae" / "x.py").write_text("a = 1\n")
    bug = mutations.Mutation("test", (("refvae/x.py", "b = 2", "b = 3"),))
    with pytest.raises(mutations.SnippetError, match="found 0 times"):
        mutations.apply(tmp_path, "t", bug)


def test_a_mutation_changes_the_copy(tmp_path):
    key = "a"
    for file, _, _ in mutations.MUTATIONS[key].edits:
        dest = tmp_path / file
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text((mutations.ROOT / file).read_text())
    mutations.apply(tmp_path, key, mutations.MUTATIONS[key])
    file, old, new = mutations.MUTATIONS[key].edits[0]
    text = (tmp_path / file).read_text()
    assert new in text and old not in text


def test_missing_data_is_refused_in_one_line(tmp_path, capsys):
    assert mutations.main(["--only", "a", "--data-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--data-dir" in err
