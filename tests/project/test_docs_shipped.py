"""The docs that convprop's docstrings and messages cite ship with it: every `docs/NAME` named in src/ exists
and is among the files pyproject.toml installs into <environment>/share/doc/convprop/."""

from __future__ import annotations

import glob
import re

import tomllib
from runner import ROOT


def shipped() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["data-files"]["share/doc/convprop"]
    return {p.relative_to(ROOT).as_posix() for pattern in patterns for p in map(ROOT.joinpath, glob.glob(pattern,
                                                                                  root_dir=ROOT))}


def test_every_doc_cited_in_the_source_ships_with_the_package():
    cited = set()
    for path in (ROOT / "src" / "convprop").rglob("*"):
        if path.suffix in (".py", ".js", ".html"):
            cited |= set(re.findall(r"\bdocs/[\w.-]+\.(?:md|sh|png)", path.read_text(encoding="utf-8")))
    assert cited, "no docs/ citation found: the pattern is wrong"
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, f"cited but not in docs/: {missing}"
    unshipped = sorted(cited - shipped())
    assert not unshipped, f"cited but not installed with the package: {unshipped}"
