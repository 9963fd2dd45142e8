"""Files convprop reads and writes: the first check on every untrusted file it reads whole (ONNX models,
safetensors weights), and the umask that gives the files it writes their mode."""

from __future__ import annotations

import os


def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
