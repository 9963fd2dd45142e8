"""Threads: the batch of a heavy kernel is split over a few threads of convprop's own.

NumPy's element-wise passes (im2col, col2im, pooling, activations) use one core, and OpenBLAS's
threads do not pay on convprop's cache-sized GEMM tiles (docs/performance.md, "Threads").  So,
like torch, convprop parallelises over the batch itself: `parts(n, nbytes, flops)` splits a batch
into one contiguous block per thread when the work is large enough to share, and `run(fn, blocks)`
runs fn(block) for every block at once, the first on the calling thread.  The split depends only on
the shapes and the thread count, so results are reproducible for a given thread count.

The thread count: `set_num_threads(n)`; by default OMP_NUM_THREADS or OPENBLAS_NUM_THREADS when
set, else the CPUs this process may use: n threads use n cores, as torch's do.  convprop takes
the threading over from OpenBLAS (NumPy's BLAS): at its first kernel it sets OpenBLAS to one thread,
process-wide, whatever n — with convprop's threads, OpenBLAS's idle ones spin on the cores those
need; on one thread, they made it slower while using two cores (both measured in
docs/performance.md, "Threads"); and a GEMM's rounding must not depend on which thread count
it happened to get, so results depend on n alone.  Code of yours that wants OpenBLAS threads back
after that can set them (threadpoolctl, say).  With a BLAS other than OpenBLAS, convprop stays on
one thread rather than oversubscribe the cores.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

import numpy as np  # (also loads NumPy's OpenBLAS before _blas_threads looks for it)

T = TypeVar("T")

# Below this much work per thread, handing work to another thread costs more than it saves;
# work = bytes read and written + flops / FLOPS_PER_BYTE.  Calibrated on LeNet-5's ops
# (docs/performance.md, "Threads": why the split pays only for big blocks).
MIN_WORK_PER_THREAD = 5 << 19
FLOPS_PER_BYTE = 8


def _blas_threads() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """(get, set) of the thread count of the OpenBLAS that NumPy loaded, or None."""
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.argtypes, get.restype, put.argtypes, put.restype = [], ctypes.c_int, [ctypes.c_int], None
                return get, put
    return None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _default_threads() -> int:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return available_cpus()


_blas = _blas_threads()
_count = _default_threads() if _blas else 1
_pool: ThreadPoolExecutor | None = None
_blas_pinned = False  # convprop has set OpenBLAS to one thread (once, at its first kernel)


def get_num_threads() -> int:
    """How many threads convprop's kernels use."""
    return _count


def set_num_threads(n: int) -> None:
    """Use n threads (n cores) for convprop's kernels, as torch.set_num_threads.  With a BLAS other
    than OpenBLAS it stays 1 (see the module doc)."""
    global _count
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if _blas is None:
        n = 1
    if n != _count:
        shutdown()
    _count = n


def shutdown() -> None:
    """End convprop's worker threads, if any (they start again at the next split kernel)."""
    global _pool
    if _pool is not None:
        _pool.shutdown()
        _pool = None


def _pin_blas() -> None:
    """OpenBLAS on one thread from convprop's first kernel on (see the module doc)."""
    global _blas_pinned
    if not _blas_pinned and _blas is not None:
        _blas[1](1)
        _blas_pinned = True


def _reset_after_fork() -> None:  # a forked child has none of its parent's worker threads
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def parts(n: int, nbytes: int, flops: int = 0) -> list[slice]:
    """The batch 0..n split into up to get_num_threads() contiguous, nearly equal blocks, fewer when
    the work (nbytes read and written, flops computed) is too small to share."""
    k = max(1, min(_count, n, (nbytes + flops // FLOPS_PER_BYTE) // MIN_WORK_PER_THREAD))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


_local = threading.local()  # .busy: this thread already runs a share of a split; split no further


@contextmanager
def serial() -> Iterator[None]:
    """Kernels run inside on the calling thread alone (it already runs a share of the work)."""
    previous, _local.busy = getattr(_local, "busy", False), True
    try:
        yield
    finally:
        _local.busy = previous


def _share(fn: Callable[[slice], T], block: slice) -> T:
    with serial():
        return fn(block)


def run(fn: Callable[[slice], T], blocks: Sequence[slice]) -> list[T]:
    """[fn(block) for block in blocks], the blocks at once on convprop's threads.  Every kernel
    goes through here, blocks or not; inside a block, a kernel runs its own blocks one by one."""
    global _pool
    _pin_blas()
    if len(blocks) == 1 or getattr(_local, "busy", False):
        return [fn(block) for block in blocks]
    if _pool is None:
        _pool = ThreadPoolExecutor(max(1, _count - 1), thread_name_prefix="convprop")
    futures = [_pool.submit(_share, fn, block) for block in blocks[1:]]
    try:
        first = _share(fn, blocks[0])
    finally:  # never leave a worker writing into arrays after we return or raise
        wait(futures)
    return [first, *(f.result() for f in futures)]


def both(first: Callable[[], T], second: Callable[[], T], n: int, nbytes: int, flops: int) -> tuple[T, T]:
    """(first(), second()): two independent kernels of about equal work (nbytes, flops each, as in
    `parts`) over a batch of n — at once on two threads where each alone is too small to split its
    batch but the two together are worth sharing (the halves of a backward pass at batch 64)."""
    if _count > 1 and len(parts(n, nbytes, flops)) == 1 and len(parts(2, 2 * nbytes, 2 * flops)) == 2:
        a, b = run(lambda task: (first, second)[task.start](), [slice(0, 1), slice(1, 2)])
        return a, b
    return first(), second()


def elementwise(fn: Callable[..., object], out: np.ndarray, *inputs: np.ndarray) -> np.ndarray:
    """fn(*inputs, out=out) — an element-wise pass — over blocks of the first axis at once."""
    if out.ndim == 0:
        fn(*inputs, out=out)
        return out
    run(lambda b: fn(*(a[b] for a in inputs), out=out[b]), parts(out.shape[0], out.nbytes * (1 + len(inputs))))
    return out
