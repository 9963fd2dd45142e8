"""Files: the first check on every untrusted file that convprop reads whole (ONNX models, safetensors
weights), and the one way convprop writes a file that must never be seen half-written (atomic_write)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from typing import BinaryIO


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


def open_regular(path: str, kind: str, error: type[Exception], max_bytes: int) -> tuple[BinaryIO, int]:
    """`path` open for reading, and its size, if it is a regular file of at most max_bytes — checked with
    checked_size, then again on the file opened (without waiting: a name swapped for a fifo in between is
    refused, not waited on).  Otherwise FileNotFoundError or `error`, in one line."""
    checked_size(path, kind, error, max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (expected {kind})") from None
    except OSError as e:
        raise error(f"{path}: cannot open {kind} ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        os.close(fd)
        got = f"a file of {st.st_size:,} bytes" if stat.S_ISREG(st.st_mode) else "a special file"
        raise error(f"{path}: expected {kind} of at most {max_bytes:,} bytes, got {got}")
    return os.fdopen(fd, "rb"), st.st_size


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


def atomic_write(path: str, content: bytes | str | Callable[[BinaryIO], object], *, prefix: str = ".tmp-",
                 durable: bool = True) -> str:
    """Write `path` so that a reader (or a crash) sees the old file whole or the new one whole, never a mix.

    content: bytes, text (UTF-8), or a function that writes into the binary file it is given.  It goes
    into a temporary `<prefix><pid>-….tmp` in the same directory (with the mode of any other new file:
    0666 less the umask), which is renamed over `path`; on any error the temporary is removed.
    durable: flush and fsync the file, and after the rename the directory, so the new file survives a
    power cut too.  Returns path."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=".tmp", dir=directory)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~umask())  # (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable and os.name == "posix":  # (a directory cannot be opened for fsync on Windows)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def remove_stale_temporaries(directory: str, prefix: str = ".tmp-") -> None:
    """Half-written files that a killed atomic_write left behind: `<prefix><pid>-….tmp` of processes
    that no longer run.  Never the temporary of a write still under way in another process."""
    for name in os.listdir(directory):
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:  # (Windows: no such process)
        return False
    return True
