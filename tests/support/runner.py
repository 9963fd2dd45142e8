"""Running convprop's command line as a user would: a fresh `python -m convprop` process."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the checkout: README.md, docs/, benchmarks/
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "convprop", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)
