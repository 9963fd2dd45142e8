"""Keep freed memory for reuse: every training step allocates the same large temporaries again.

glibc returns big freed blocks to the kernel (munmap, or trimming the top of its heap), so the
next step's arrays of the same sizes fault in fresh zeroed pages. Raising the mmap and trim
thresholds makes it keep those pages and hand them out again (what that bought: docs/performance.md,
"What each optimisation bought").

This is a process-wide setting, so the library never makes it on import; the `convprop train`
command does, and a program of yours may call `keep_freed_memory()` itself. Off glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Serve blocks up to `mmap_threshold` bytes from the heap (32 MiB is glibc's maximum) and keep
    up to `trim_threshold` free bytes mapped. Returns whether glibc accepted both settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
