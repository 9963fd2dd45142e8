"""`convprop explain TOPIC`: every equation of docs/math.md, worked on small numbers and checked.

`equations` holds the equations (shared with `convprop serve`), `topics` the worked examples and their
checks, `render` the text and markdown.  Importing `convprop.explain.equations` alone loads neither of
the others: the names below other than the equations are imported from them on first use.
"""

from __future__ import annotations

import importlib

from .equations import EQUATIONS, LAYER_RULES

_LAZY = {**dict.fromkeys(("TOPICS", "MAX_SIZE", "RTOL", "Step", "Check", "Explanation", "explain", "accepted",
                          "OPTIONS", "BUILDERS"), "topics"),
         **dict.fromkeys(("WIDTH", "render_text", "render_markdown"), "render")}
__all__ = ["EQUATIONS", "LAYER_RULES", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
