"""``refvae docs``: where the documentation that the help and the docstrings cite is.

A wheel carries ``docs/*.md`` inside the package as ``refvae/docs/`` (``setup.py`` copies them
when the wheel is built); a checkout (``pip install -e .``) has them in its ``docs/`` folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError

DOCS = {"ORACLE.md": "the oracle: file formats, layouts, tolerances, check_torch",
        "DERIVATIONS.md": "every derivation the code implements, by section and equation"}


def docs_dir() -> Path:
    """The folder holding ORACLE.md and DERIVATIONS.md: inside the installed package, else the
    checkout's ``docs/``."""
    import refvae  # noqa: PLC0415

    package = Path(refvae.__file__).resolve().parent
    for folder in (package / "docs", package.parent / "docs"):
        if all((folder / name).is_file() for name in DOCS):
            return folder
    raise ConfigError(f"the documentation is not installed beside {package}; reinstall refvae "
                      "from a wheel or a checkout (the files are docs/*.md of the repository)")


def _cmd_docs(args) -> int:
    folder = docs_dir()
    print(folder)
    if not args.quiet:
        for name, what in DOCS.items():
            print(f"  {folder / name}: {what}", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("docs", help="print the folder of the documentation (ORACLE.md, "
                                    "DERIVATIONS.md) that the help and docstrings cite")
    p.add_argument("--quiet", action="store_true", help="print the folder only")
    p.set_defaults(func=_cmd_docs)
