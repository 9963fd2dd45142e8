"""JSON from files a stranger may have written: bounded in size and nesting before it is parsed.

Python's json parser recurses once per nesting level, so `[[[[…]]]]` 100,000 deep ends in a
RecursionError; the depth is measured first, outside strings, without recursion.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def nesting_depth(text: bytes) -> int:
    """The deepest nesting of [ and { in JSON text (strings skipped)."""
    b = np.frombuffer(_STRING.sub(b'""', text), np.uint8)
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(b, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def loads(text: bytes | str, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads, or ValueError naming `what` (not JSON, not UTF-8, or nested deeper than max_depth)."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    depth = nesting_depth(data)
    if depth > max_depth:
        raise ValueError(f"{what}: JSON nested {depth} deep, more than the {max_depth} levels it may have")
    try:
        return json.loads(data.decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{what}: not valid JSON ({e})") from None
