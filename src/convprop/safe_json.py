"""JSON from files a stranger may have written: bounded in size and nesting before it is parsed.

Python's json parser recurses once per nesting level, so `[[[[…]]]]` 100,000 deep ends in a
RecursionError; the depth is measured first, outside strings, without recursion.  Python's parser
also keeps the last of two equal keys in an object silently; unique_keys=True refuses them.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 64
# a string, or an unterminated one up to the end: every match attempt succeeds at once, so the scan is
# linear (with a closing quote required, `"\"\"\"…` unterminated was tried from each quote: quadratic)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*\\?(?:"|\Z)', re.DOTALL)


def nesting_depth(text: bytes) -> int:
    """The deepest nesting of [ and { in JSON text (strings skipped)."""
    b = np.frombuffer(_STRING.sub(b'""', text), np.uint8)
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(b, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


class _DuplicateKey(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def loads(text: bytes | str, what: str, max_depth: int = MAX_DEPTH, unique_keys: bool = False) -> Any:
    """json.loads, or ValueError naming `what` (not JSON, not UTF-8, nested deeper than max_depth, or,
    with unique_keys, an object with a key twice)."""
    data = text.encode() if isinstance(text, str) else bytes(text)
    depth = nesting_depth(data)
    if depth > max_depth:
        raise ValueError(f"{what}: JSON nested {depth} deep, more than the {max_depth} levels it may have")
    try:
        return json.loads(data.decode(), object_pairs_hook=_unique if unique_keys else None)
    except _DuplicateKey as e:
        raise ValueError(f"{what}: key {e.args[0]!r} appears twice in one JSON object") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{what}: not valid JSON ({e})") from None
