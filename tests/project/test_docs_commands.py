"""Every shell line of README.md and docs/*.md runs as pasted, in order, in a fresh copy of the checkout whose
venv the documents' own set-up lines create (README.md first, then docs/*.md by name).

Shell blocks: fenced ```bash / ```sh / ```shell / ```console blocks, untagged fenced blocks whose lines start
with a `$ ` prompt (only the prompted lines run; the rest is output), and 4-space indented blocks whose first
command is a program (python3, .venv/bin/…, convprop, pip, mpiexec, curl, …) — not the formulas and Python
fragments that are indented too.  A block that cannot run here carries a visible marker right before it in
the Markdown source, `<!-- not run: <reason> -->`; the reason says why, and names the test that covers it
where one does (that file must exist).  test_blocks_not_run_say_why prints the list."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import pytest
from runner import DOCS, README, ROOT

PROGRAMS = ("python3?|pip3?|convprop|mpiexec|mpirun|curl|wget|tar|unzip|gunzip|cat|cd|ls|git|source|export|bash|sh|"
            "rm|mkdir|cp|mv|echo|apt-get|apt|sudo|pytest|make|ruff")
COMMAND = re.compile(rf"^(\$ )?([A-Za-z_][A-Za-z0-9_]*=\S* )*(\.venv/bin/|\./|\S*/)?({PROGRAMS})( |$)")
MARKER = re.compile(r"^\s*<!--\s*not run:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh", "shell-session"}


@dataclass(frozen=True)
class Block:
    file: str  # relative to the checkout
    line: int  # the block's first line, 1-based
    script: str  # what runs: the block's commands, prompts and output lines removed
    not_run: str | None  # the marker's reason, or None

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def _commands(lines: list[str]) -> str:
    """A block's lines as a script: with `$ ` prompts, the prompted lines (and their `\\` continuations)."""
    if not any(line.startswith("$ ") for line in lines):
        return "\n".join(lines).strip("\n")
    out, continued = [], False
    for line in lines:
        if line.startswith("$ ") or continued:
            out.append(line[2:] if line.startswith("$ ") and not continued else line)
            continued = line.endswith("\\")
    return "\n".join(out)


def _marker(lines: list[str], start: int) -> str | None:
    i = start - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    m = MARKER.match(lines[i]) if i >= 0 else None
    return m.group(1) if m else None


def shell_blocks(text: str, name: str) -> list[Block]:
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(fence.group(1)):
                end += 1
            indent = len(lines[i]) - len(lines[i].lstrip(" "))  # a fence inside a list item: its own indent goes
            body = [line[min(indent, len(line) - len(line.lstrip(" "))):].rstrip() for line in lines[i + 1:end]]
            lang = fence.group(2).lower()
            if lang in SHELL_LANGS or (not lang and any(line.startswith("$ ") for line in body)):
                blocks.append(Block(name, i + 2, _commands(body), _marker(lines, i)))
            i = end + 1
            continue
        indent = len(lines[i]) - len(lines[i].lstrip(" "))
        previous = lines[i - 1] if i else ""
        if lines[i].strip() and indent >= 4 and (not previous.strip() or MARKER.match(previous)):
            end = i
            while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" " * indent)):
                end += 1
            body = [line[indent:] for line in lines[i:end]]
            first = next((line for line in body if line.strip() and not line.startswith("#")), "")
            if COMMAND.match(first):
                blocks.append(Block(name, i + 1, _commands(body), _marker(lines, i)))
            i = end
            continue
        i += 1
    return blocks


def _documents() -> list[Block]:
    files = [README] + sorted(DOCS.glob("*.md"))
    return [b for f in files for b in shell_blocks(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]


BLOCKS = _documents()
RUN = [b for b in BLOCKS if b.not_run is None]
NOT_RUN = [b for b in BLOCKS if b.not_run is not None]


def test_the_extractor_finds_shell_blocks_and_markers_and_leaves_the_rest():
    text = "\n".join([
        "Install:", "", "    python3 -m venv .venv && .venv/bin/pip install .", "",
        "A formula:", "", "    ∂L/∂W = Σ_k ∂L_k/∂W", "",
        "A fragment of Python:", "", "    rank, world = distributed.init()", "",
        "<!-- not run: needs a cluster -->", "    $ cat hosts", "    node1:2", "    $ mpiexec -f hosts -n 2 \\",
        "        convprop train", "",
        "```", "$ convprop train", "epoch 1/15 ...", "```", "",
        "```python", "print('not shell')", "```", "",
        "```bash", "# a comment", "ls runs", "```", "",
        "- a list item", "", "      CONVPROP_FUZZ_EXAMPLES=5 .venv/bin/python -m pytest tests", ""])
    blocks = shell_blocks(text, "x.md")
    assert [(b.line, b.script, b.not_run) for b in blocks] == [
        (3, "python3 -m venv .venv && .venv/bin/pip install .", None),
        (14, "cat hosts\nmpiexec -f hosts -n 2 \\\n    convprop train", "needs a cluster"),
        (20, "convprop train", None),
        (29, "# a comment\nls runs", None),
        (35, "CONVPROP_FUZZ_EXAMPLES=5 .venv/bin/python -m pytest tests", None)]


def test_the_readme_has_its_set_up_line_and_the_then_commands_to_run():
    scripts = [b.script for b in RUN if b.file == "README.md"]
    assert scripts and scripts[0].startswith("python3 -m venv .venv") and "convprop train" in scripts[0]
    assert any("convprop evaluate" in s for s in scripts) and any("convprop explain" in s for s in scripts)
    for s in scripts:  # run as pasted: every convprop and python after the set-up line is the venv's
        for line in s.splitlines():
            assert not re.match(r"^(convprop|python|pip)\b", line.strip()), f"README.md: bare command: {line}"


def test_blocks_not_run_say_why():
    print("\nshell blocks not run (reason from the <!-- not run: … --> marker before each):")
    for b in NOT_RUN:
        print(f"  {b.id}: {b.not_run}")
        assert len(b.not_run) >= 10, f"{b.id}: say why the block does not run"
        for path in re.findall(r"tests/[\w/]+\.py", b.not_run):
            assert (ROOT / path).exists(), f"{b.id}: the marker names {path}, which does not exist"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the checkout as a fresh clone has it: tracked files and new ones git does not ignore."""
    dest = tmp_path_factory.mktemp("docs-commands") / "convprop"
    try:
        names = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                               capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.egg-info"))
        return dest
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_docs_shell_block_runs_as_pasted(block, checkout):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("CONVPROP_")}
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-x", "-c", block.script], cwd=checkout, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (f"{block.id} exited {r.returncode}:\n{block.script}\n--- output:\n"
                               f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
