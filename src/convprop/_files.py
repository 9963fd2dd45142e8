"""The first check on every untrusted file that convprop reads whole (ONNX models, safetensors weights)."""

from __future__ import annotations

import os


def checked_size(path: str, kind: str, error: type[Exception], max_bytes: int) -> int:
    """The size of `path` if it is a regular file of at most max_bytes; otherwise FileNotFoundError or
    `error`, in one line.  kind names the file with its article ("an ONNX file")."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (expected {kind})")
    if not os.path.isfile(path):
        raise error(f"{path}: expected {kind}, got a directory or device")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise error(f"{path}: {size:,} bytes, over the limit of {max_bytes:,} for {kind}")
    return size
