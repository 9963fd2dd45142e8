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
    assert len(commands) == 4 and commands[1].startswith(".venv/bin/convprop train --data digits")
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        program = [sys.executable] if argv[0].endswith("python") else [sys.executable, "-m", "convprop"]
        argv = program + argv[1:]
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (command, r.stderr)
        outputs.append(r.stdout)
    assert "10 classes, 28×28, 1 channel" in outputs[1] and (tmp_path / "runs/digits/checkpoint-best.npz").exists()
    assert "accuracy" in outputs[2] and "digits/7/" in outputs[3]


def test_the_article_is_named_never_called_the_seed():
    """User-facing text names the article (vxnuaj, "Backprop for CNNs"), links it where the docs cite it, and never
    calls it "the seed" (a word the reader meets as --seed, the random seed)."""
    import pathlib

    from runner import DOCS, ROOT

    texts = [README, *DOCS.glob("*.md"), *(ROOT / "src").rglob("*.py"), *(ROOT / "src").rglob("*.html"),
             *(ROOT / "src").rglob("*.js")]
    for path in texts:
        text = pathlib.Path(path).read_text(encoding="utf-8")
        found = re.findall(r"(?i)\bthe seed\b(?!\s+(?:and|=|\d|value|of the random))|\bseed['’]s\b", text)
        assert not found, f"{path}: {found} (name the article: vxnuaj, \"Backprop for CNNs\")"
    for path in (README, DOCS / "math.md"):
        text = path.read_text(encoding="utf-8")
        assert "Backprop for CNNs" in text and "vxnuaj" in text and "](https://github.com/vxnuaj)" in text, path
