"""Where the sums run — threads, tiles, scratch, accumulators; nothing here changes a number.

conv.py and pool.py write their equations as the body of a tile (a block of samples, or of output
rows of one sample); this module runs those bodies:

    threads    the batch split into one contiguous block per thread when the work is large enough
               to share (`parts`, `run`); the split depends only on the shapes and the thread count,
               so results are reproducible for a given count
    tiles      each block cut into tiles whose patches fill about TILE_BYTES, so that im2col writes
               a tile and its GEMM reads it back from cache (`each_tile`)
    scratch    one reused per-thread buffer for a tile's patches (`patches`)
    GEMM rows  a tile's part of a channels-last (N, H, W, C) array as GEMM operands (G, P, R): P
               positions by R channels of each of G groups (`rows`) — a view, no copy

The thread count: `set_num_threads(n)`; by default OMP_NUM_THREADS or OPENBLAS_NUM_THREADS when set,
else the CPUs this process may use.  NumPy's BLAS (OpenBLAS, MKL or BLIS, on Linux, macOS or
Windows) is set to one thread through threadpoolctl at convprop's first kernel: its idle threads
would spin on the cores convprop's threads need, and a GEMM's rounding must not depend on which
thread count it happened to get (docs/performance.md, "Threads").  Code of yours that wants BLAS
threads back after that can set them with threadpoolctl.  Where threadpoolctl finds no BLAS it can
set (or is not installed), convprop stays on one thread rather than oversubscribe the cores.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TypeVar

import numpy as np

try:
    import threadpoolctl
except ImportError:  # a runtime dependency of convprop; absent only from a hand-made environment
    threadpoolctl = None

T = TypeVar("T")

# Below this much work per thread, handing work to another thread costs more than it saves;
# work = bytes read and written + flops / FLOPS_PER_BYTE (docs/performance.md, "Threads").
MIN_WORK_PER_THREAD = 5 << 19
FLOPS_PER_BYTE = 8
TILE_BYTES = 2 << 20  # patches per tile (docs/performance.md, "Tiles")
COLUMNS_TILE_SHARE = 4  # patches copied by columns for few outputs: tiles of TILE_BYTES / 4 ("Patches by columns")


# --------------------------------------------------------------------------- threads
def _blas_settable() -> bool:
    return threadpoolctl is not None and any(i["user_api"] == "blas" for i in threadpoolctl.threadpool_info())


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all of them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _default_threads() -> int:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return available_cpus()


_blas = _blas_settable()
_count = _default_threads() if _blas else 1
_pool: ThreadPoolExecutor | None = None
_blas_pinned = False  # convprop has set the BLAS to one thread (once, at its first kernel)


def get_num_threads() -> int:
    """How many threads convprop's kernels use."""
    return _count


def set_num_threads(n: int) -> None:
    """Use n threads (n cores) for convprop's kernels, as torch.set_num_threads.  Where threadpoolctl
    cannot set NumPy's BLAS it stays 1 (see the module doc)."""
    global _count
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if not _blas:
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
    global _blas_pinned
    if not _blas_pinned and _blas:
        threadpoolctl.threadpool_limits(1, user_api="blas")  # kept: not used as a context manager
        _blas_pinned = True


def _reset_after_fork() -> None:  # a forked child has none of its parent's worker threads
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def parts(n: int, nbytes: int, flops: int = 0) -> list[slice]:
    """The batch 0..n split into up to get_num_threads() contiguous, nearly equal blocks, fewer when
    the work (nbytes read and written, flops computed) is too small to share."""
    if _count == 1:
        return [slice(0, n)]
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
    goes through here; inside a block, a kernel runs its own blocks one by one."""
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
    """(first(), second()): two independent kernels of about equal work (nbytes, flops each) over a
    batch of n — at once on two threads where each alone is too small to split its batch but the two
    together are worth sharing (the halves of a backward pass at batch 64)."""
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


# --------------------------------------------------------------------------- tiles
class Tile:
    """A block of output positions: samples `batch`, output rows `rows` (all of them unless the tile
    is part of one sample)."""

    def __init__(self, batch: slice, rows: slice) -> None:
        self.batch, self.rows = batch, rows


def tiles(block: slice, oh: int, row_bytes: int) -> list[Tile]:
    """The batch block's output positions in tiles of whole samples, or of rows of one sample, whose
    patches fill about TILE_BYTES (row_bytes: the patches of one output row of one sample)."""
    n = block.stop - block.start
    if n == 0 or oh == 0:
        return []
    if n * oh * row_bytes <= 2 * TILE_BYTES:
        return [Tile(block, slice(0, oh))]
    nb, rb = (max(1, TILE_BYTES // (row_bytes * oh)), oh) if row_bytes * oh <= TILE_BYTES else \
        (1, max(1, TILE_BYTES // row_bytes))
    nb, rb = -(-n // -(-n // nb)), -(-oh // -(-oh // rb))  # even tiles: no small last one
    return [Tile(slice(n0, min(block.stop, n0 + nb)), slice(y0, min(oh, y0 + rb)))
            for n0 in range(block.start, block.stop, nb) for y0 in range(0, oh, rb)]


def each_tile(body: Callable[[Tile, T], None], n: int, oh: int, row_bytes: int, work: tuple[int, int],
              start: Callable[[], T] | None = None) -> list[T]:
    """The one tile driver: the batch 0..n in blocks on convprop's threads (by `work`, bytes and flops,
    as `parts`), and in each block `acc = start(); for each tile: body(tile, acc)` -> [acc of each
    block] (block accumulators: a sum over the batch adds them up)."""

    def block_body(block: slice) -> T:
        acc = None if start is None else start()
        for tile in tiles(block, oh, row_bytes):
            body(tile, acc)
        return acc

    return run(block_body, parts(n, *work))


# --------------------------------------------------------------------------- GEMM operands
_buffers = threading.local()


def scratch(shape: tuple[int, ...], dtype, use: str = "patches") -> np.ndarray:
    """This thread's reused buffer for a tile's patches (or a pooling tile's window offsets; another
    `use`, another buffer), grown as needed (docs/performance.md, "Scratch buffers")."""
    size, key, held = math.prod(shape), (dtype, use), _buffers.__dict__.setdefault("d", {})
    buf = held.get(key)
    if buf is None or buf.size < size:
        buf = held[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def rows(a: np.ndarray, t: Tile, groups: int) -> np.ndarray:
    """Tile t's positions of the channels-last a (N, H, W, G·R) as GEMM rows (G, P, R): a view."""
    part = a[t.batch, t.rows]
    return part.reshape(-1, groups, a.shape[3] // groups).transpose(1, 0, 2)


def by_columns(kw: int, cg: int) -> bool:
    """Whether im2col copies a kernel with kw columns over cg channels a group by columns (see `patches`)."""
    return kw * cg < 16


def patches(win: np.ndarray, t: Tile, groups: int) -> np.ndarray:
    """im2col: tile t's windows of win (N, OH, OW, kh, kw, C) as GEMM rows (G, P, kh·kw·C/G), one row
    per output position, copied into this thread's scratch buffer.  With few channels (a first
    layer: kw·C/G < 16) the copy runs along the output rows instead, into the transposed (G,
    kh·kw·C/G, P) memory, whose transposed view it returns: the same rows to any GEMM, and a copy
    in runs of OW values rather than of kw·C (docs/performance.md, "Patches by columns")."""
    part = win[t.batch, t.rows]
    nb, rb, ow, kh, kw, c = part.shape
    src = part.reshape(nb, rb, ow, kh, kw, groups, c // groups)
    if by_columns(kw, c // groups):
        src = src.transpose(5, 3, 4, 6, 0, 1, 2)
        cols = scratch((groups, kh * kw * (c // groups), nb * rb * ow), win.dtype)
        np.copyto(cols.reshape(src.shape), src)
        return cols.transpose(0, 2, 1)
    src = src.transpose(5, 0, 1, 2, 3, 4, 6)
    cols = scratch((groups, nb * rb * ow, kh * kw * (c // groups)), win.dtype)
    np.copyto(cols.reshape(src.shape), src)
    return cols
