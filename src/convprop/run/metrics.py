"""A run's metrics.json: written atomically after every epoch (so an interrupted run is still drawn by
`convprop plot`), and read back as a stranger's file."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from .. import safe_json
from .._files import atomic_write
from .settings import RunError, Settings

MAX_METRICS_BYTES = 64 << 20


def metrics(settings: Settings, status: str, history: list[dict], seconds: float) -> dict:
    """metrics.json's content: the settings, the status, one row per epoch (the test scores: Run adds
    them, of the one evaluation at the end)."""
    return {"model": settings.model, "args": settings.dict(), "status": status, "epochs": history,
            "test_accuracy": None, "test_loss": None, "seconds": seconds}


def write_metrics(path: str, value: dict, what_exists: str) -> None:
    """Write metrics.json atomically; a full or read-only disk is RunError (saying `what_exists`)."""
    try:
        atomic_write(path, json.dumps(value, indent=2), durable=False)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES):
            raise RunError(f"could not write {path} ({e.strerror}); {what_exists}") from None
        raise


def read_metrics(path: str) -> tuple[list[dict], Settings]:
    """A run's metrics.json, checked as a stranger's file: (its epochs' rows, its settings).
    ValueError naming the file and what is wrong with it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no metrics.json (is {os.path.dirname(path) or '.'} a convprop train "
                                "--out directory?)")
    size = os.path.getsize(path)
    if size > MAX_METRICS_BYTES:
        raise RunError(f"{path}: {size:,} bytes, more than a metrics file holds ({MAX_METRICS_BYTES:,})")
    with open(path, "rb") as f:
        content = safe_json.loads(f.read(), path)
    if not isinstance(content, dict) or not isinstance(content.get("epochs"), list):
        raise RunError(f"{path}: not a convprop metrics file (expected an object with a list of 'epochs')")
    rows = content["epochs"]
    if not rows:
        raise RunError(f"{path}: no epoch has finished yet: nothing to draw")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    scored = ("val_loss", "val_acc") if "val_loss" in rows[0] else ("test_loss", "test_acc") if "test_loss" in rows[0] \
        else ()  # (test: a run from before the validation split)
    for k, row in enumerate(rows):
        keys = ("epoch", "train_loss", "train_acc") + scored
        if not isinstance(row, dict) or not all(number(row.get(key)) for key in keys):
            raise RunError(f"{path}: epochs[{k}]: expected numbers {', '.join(keys)}, got {str(row)[:80]}")
    args = content.get("args")
    settings = Settings.from_saved(args, path) if args is not None else Settings()
    return rows, settings
