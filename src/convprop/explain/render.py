"""An `Explanation` as 80-column text (`convprop explain`) or markdown (docs/explain.md)."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .topics import Explanation

WIDTH = 80


def _sq(a) -> np.ndarray:
    """Drop the singleton batch and channel axes of the tiny examples for display."""
    a = np.asarray(a, dtype=np.float64)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    return a


def _fmt(v: float) -> str:
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.3f}".rstrip("0").rstrip(".")


def _matrix(name: str, a: np.ndarray) -> list[str]:
    a = _sq(a)
    if a.ndim == 0:
        a = a.reshape(1, 1)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim == 3:  # channels stacked vertically
        rows = [r for c in a for r in list(c) + [None]][:-1]
    else:
        rows = list(a)
    cells = [[_fmt(v) for v in r] if r is not None else None for r in rows]
    w = max((len(c) for r in cells if r for c in r), default=1)
    lines = [" ".join(c.rjust(w) for c in r) if r else "" for r in cells]
    width = max(len(name), max(len(line) for line in lines))
    return [name.ljust(width)] + [line.ljust(width) for line in lines]


def _side_by_side(blocks: list[list[str]], indent: str = "   ") -> list[str]:
    out, row, row_width = [], [], len(indent)
    for b in blocks:
        bw = max(len(line) for line in b)
        if row and row_width + bw + 3 > WIDTH:
            out += _join(row, indent) + [""]
            row, row_width = [], len(indent)
        row.append(b)
        row_width += bw + 3
    if row:
        out += _join(row, indent)
    return out


def _join(row, indent):
    height = max(len(b) for b in row)
    widths = [max(len(line) for line in b) for b in row]
    return [indent + "   ".join((b[i] if i < len(b) else "").ljust(w) for b, w in zip(row, widths)).rstrip()
            for i in range(height)]


def render_text(e: Explanation) -> str:
    wrap = textwrap.TextWrapper(WIDTH, initial_indent="", subsequent_indent="")
    lines = [f"== {e.topic}: {e.title} ==", *wrap.wrap(e.intro), ""]
    for n, step in enumerate(e.steps, 1):
        lines.append(f"-- {n}. {step.title}")
        lines += textwrap.wrap(step.equation, WIDTH, initial_indent="   ", subsequent_indent="     ")
        lines.append("")
        lines += _side_by_side([_matrix(name, a) for name, a in step.arrays.items()])
        if step.note:
            lines += textwrap.wrap(step.note, WIDTH, initial_indent="   ", subsequent_indent="   ")
        lines.append("")
    lines.append("-- checks")
    for c in e.checks:
        lines += textwrap.wrap(f"{c.name}: vs {c.method}, max error {c.max_error:.1e} — {c.verdict}", WIDTH,
                               initial_indent="   ", subsequent_indent="     ")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def render_markdown(e: Explanation) -> str:
    lines = [f"## {e.topic}: {e.title}", "", e.intro, ""]
    for n, step in enumerate(e.steps, 1):
        lines += [f"### {n}. {step.title}", "", f"`{step.equation}`", "", "```"]
        lines += _side_by_side([_matrix(name, a) for name, a in step.arrays.items()], indent="")
        lines += ["```", ""]
        if step.note:
            lines += [step.note, ""]
    lines += ["### Checks", "", "| check | against | max error | verdict |", "|---|---|---:|---|"]
    for c in e.checks:
        lines.append(f"| {c.name} | {c.method} | {c.max_error:.1e} | {c.verdict} |")
    return "\n".join(line.rstrip() for line in lines) + "\n"
