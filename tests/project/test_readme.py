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


def test_readme_train_on_your_own_images_runs_as_pasted(tmp_path):
    """The shell block of "Train on your own images", line by line (python and convprop: this checkout's)."""
    import shlex
    import subprocess
    import sys

    section = README.read_text().split("### Train on your own images", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():  # a python -c "…" spans lines until its closing quote
        current = f"{current}\n{line}" if current else line
        if current.count('"') % 2 == 0:
            commands.append(current)
            current = ""
    assert len(commands) == 4 and commands[1].startswith("convprop train --data digits")
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        argv = [sys.executable] + argv[1:] if argv[0] == "python" else [sys.executable, "-m", "convprop"] + argv[1:]
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (command, r.stderr)
        outputs.append(r.stdout)
    assert "10 classes, 28×28, 1 channel" in outputs[1] and (tmp_path / "runs/digits/checkpoint-best.npz").exists()
    assert "accuracy" in outputs[2] and "digits/7/" in outputs[3]
