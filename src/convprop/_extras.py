"""Optional dependencies (pyproject's extras): import one, or say in one line how to install it."""

from __future__ import annotations

import importlib
from types import ModuleType


def install(extra: str) -> str:
    """How to install an extra: convprop is installed from its checkout (it is not on PyPI)."""
    return f"pip install '.[{extra}]' in convprop's checkout"


def require(module: str, extra: str, purpose: str, error: type[Exception] = ImportError) -> ModuleType:
    """`module` imported (a dotted name imports its package too, e.g. "PIL.Image"); if it is not installed,
    `error` with one line: `purpose` (what needs it) and the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise error(f"{purpose}: {install(extra)}") from None
