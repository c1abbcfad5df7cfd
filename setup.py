"""Build hook (the metadata is in pyproject.toml): the documentation in ``docs/`` ships inside the
package as ``refvae/docs/``, so that an installed refvae has the files its help and docstrings
cite (``refvae docs`` prints where they are). The files stay in one place in the repository."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DOCS = Path(__file__).resolve().parent / "docs"


class BuildPyWithDocs(build_py):
    """``build_py``, then ``docs/*.md`` copied into the built package's ``docs/`` folder."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "refvae" / "docs"
        target.mkdir(parents=True, exist_ok=True)
        for doc in sorted(DOCS.glob("*.md")):
            shutil.copyfile(doc, target / doc.name)


setup(cmdclass={"build_py": BuildPyWithDocs})
