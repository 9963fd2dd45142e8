"""Optional dependencies (pyproject's extras): import one, or say in one line how to install it."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, purpose: str, error: type[Exception] = ImportError) -> ModuleType:
    """`module` imported (a dotted name imports its package too, e.g. "PIL.Image"); if it is not installed,
    `error` with one line: `purpose` (what needs it) and the pip command, from PyPI or from a checkout."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(f"{purpose}: pip install 'convprop[{extra}]' (from a checkout: pip install '.[{extra}]')"
                    ) from None
