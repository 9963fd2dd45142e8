"""How convolution's sums are laid out and driven — nothing here changes a number, only where it lives.

conv.py writes each of its equations as the body of one tile: `body(tile)` computes the equation for
a block of output positions.  This module supplies everything around that body:

    layout     which memory layout a call uses (per-sample NCHW or batch-last), and the conversion of
               a tile's part of an (N, C, OH, OW) array to and from GEMM operands (B, G, rows, P)
    tiles      the output positions cut into tiles whose patches fill about TILE_BYTES
    scratch    one reused buffer per thread for a tile's temporaries (patches, GEMM products)
    each_tile  the one driver: the batch split over convprop's threads (_threads), and within each
               block `for each tile: body(tile)`

docs/performance.md ("Tiles", "Scratch buffers", "Batch-last layout") says why each exists and what it
bought.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from . import _threads
from ._windows import Pair, batch_last, is_batch_last, pad, windows

T = TypeVar("T")


# --------------------------------------------------------------------------- layout
# Every core works on GEMM operands (B, G, rows, P): B batches of P positions, one GEMM per batch and
# group.  Two layouts carry the same maths:
#   per-sample  B = N, P = OH·OW       data stays NCHW; good for wide images (long rows)
#   batch-last  B = 1, P = OH·OW·N     data lives (C, H, W, N) in memory (see _windows.py): one big
#                                      GEMM, and long contiguous runs for im2col/col2im when rows are short
# (For N = 1 the two coincide.)
def batch_last_pays(x: np.ndarray, out_w: int) -> bool:
    """Batch-last when x already lies so, or when output rows are short and the batch is large."""
    n = x.shape[0]
    return n > 1 and (is_batch_last(x) or (out_w < 16 and n >= 16))


def window_view(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, out_hw: Pair,
                ) -> np.ndarray:
    """The window view (N, C, kh, kw, OH, OW) of the padded x, batch-last in memory where that pays."""
    bl = batch_last_pays(x, out_hw[1])
    return windows(pad(batch_last(x) if bl else x, padding), kernel, stride, dilation, out_hw)


# --------------------------------------------------------------------------- scratch buffers
_buffers = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reused per-thread buffer for one tile's temporaries (patches, GEMM products): each thread
    keeps one buffer per name and dtype, grown as needed (docs/performance.md, "Scratch buffers")."""
    key, size = (name, np.dtype(dtype).str), int(np.prod(shape))
    buf = getattr(_buffers, "d", {}).get(key)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype)
        _buffers.__dict__.setdefault("d", {})[key] = buf
    return buf[:size].reshape(shape)


# --------------------------------------------------------------------------- tiles
TILE_BYTES = 2 << 20  # patches per tile (docs/performance.md, "Tiles")


def tiles(block: slice, oh: int, row_bytes: int, bl: bool) -> list[tuple[slice, slice]]:
    """The output positions of the batch block split into (batch, rows) tiles whose patches fill
    about TILE_BYTES, so that im2col writes a tile and its GEMM reads it back from cache.  row_bytes:
    the patches of one output row of one sample.  Batch-last: a block of rows for a chunk of ≥ 16
    samples (contiguous runs); per-sample: whole samples, or a block of rows of one sample."""
    n = block.stop - block.start
    if n == 0 or oh == 0:
        return []
    if n * oh * row_bytes <= 2 * TILE_BYTES:  # not worth two tiles: col2im's passes run longer in one
        return [(block, slice(0, oh))]
    if bl:
        nb = min(n, max(16, TILE_BYTES // row_bytes))
        rb = max(1, TILE_BYTES // (row_bytes * nb))
    elif row_bytes * oh <= TILE_BYTES:
        nb, rb = max(1, TILE_BYTES // (row_bytes * oh)), oh
    else:
        nb, rb = 1, max(1, TILE_BYTES // row_bytes)
    nb, rb = -(-n // -(-n // nb)), -(-oh // -(-oh // rb))  # even tiles: no small last one
    return [(slice(n0, min(block.stop, n0 + nb)), slice(y0, min(oh, y0 + rb)))
            for n0 in range(block.start, block.stop, nb) for y0 in range(0, oh, rb)]


class Tile:
    """A block of output positions — samples `batch`, output rows `rows` — and its GEMM operands."""

    def __init__(self, batch: slice, rows: slice, out_hw: Pair, groups: int, bl: bool) -> None:
        self.batch, self.rows, self.groups, self.bl = batch, rows, groups, bl
        self.nb, self.rb, self.ow = batch.stop - batch.start, rows.stop - rows.start, out_hw[1]
        self.whole = rows.start == 0 and rows.stop == out_hw[0]  # every output row of its samples
        self._patches: np.ndarray | None = None

    def patches(self, win: np.ndarray) -> np.ndarray:
        """im2col: the tile's windows of win (N, C, kh, kw, OH, OW) copied into GEMM columns,
        (B, G, Cg·kh·kw, P), one column per output position; computed once per tile, in a buffer."""
        if self._patches is None:
            g, bl, nb, rb = self.groups, self.bl, self.nb, self.rb
            _, c, kh, kw, _, ow = win.shape
            part = win[self.batch, :, :, :, self.rows]
            # the patches, split per group but not yet flattened: a view, whatever the layout
            src = (part.transpose(1, 2, 3, 4, 5, 0) if bl else part).reshape(
                ((1,) if bl else (nb,)) + (g, c // g) + ((kh, kw, rb, ow, nb) if bl else (kh, kw, rb, ow)))
            cols = scratch("cols", src.shape[:2] + (c // g * kh * kw, rb * ow * (nb if bl else 1)), win.dtype)
            np.copyto(cols.reshape(src.shape), src)
            self._patches = cols
        return self._patches

    def gemm(self, z: np.ndarray) -> np.ndarray:
        """The tile's positions of z (N, G·R, OH, OW) as GEMM columns (B, G, R, P)."""
        z = z[self.batch, :, self.rows]
        nb, c, h, w = z.shape
        if self.bl:
            return batch_last(z).transpose(1, 2, 3, 0).reshape(1, self.groups, c // self.groups, h * w * nb)
        return np.ascontiguousarray(z).reshape(nb, self.groups, c // self.groups, h * w)

    def nchw(self, zt: np.ndarray) -> np.ndarray:
        """GEMM columns (B, G, R, P) of the tile back as (nb, G·R, rb, ow), a view."""
        if self.bl:
            return zt.reshape(-1, self.rb, self.ow, self.nb).transpose(3, 0, 1, 2)
        return zt.reshape(self.nb, -1, self.rb, self.ow)

    def product(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """a @ b for GEMM operands, into out or a per-thread buffer."""
        if out is None:
            out = scratch("gemm", np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]),
                          b.dtype)
        return np.matmul(a, b, out=out)

    def output(self, z: np.ndarray, rows: int) -> np.ndarray | None:
        """The tile's part of z (N, G·rows, OH, OW) as GEMM columns a GEMM can write into: a view of
        z for whole per-sample tiles, else None (the product goes to a buffer and `put` copies it)."""
        if self.bl or not self.whole:
            return None
        return z[self.batch].reshape(self.nb, self.groups, rows, -1)

    def put(self, zt: np.ndarray, z: np.ndarray, bias: np.ndarray | None) -> None:
        """z[tile] = zt + bias, from GEMM columns (B, G, R, P); bias (G·R,) or None.  zt may already
        be z's own memory (from `output`): then only the bias is added."""
        if np.may_share_memory(zt, z):
            if bias is not None:
                zt += bias.reshape(zt.shape[1:3] + (1,))
        else:
            np.add(self.nchw(zt), 0 if bias is None else bias[:, None, None], out=z[self.batch, :, self.rows])


def each_tile(body: Callable[[Tile, T], None], n: int, out_hw: Pair, row_bytes: int, bl: bool, groups: int,
              work: tuple[int, int], start: Callable[[slice], T] | None = None) -> list[T]:
    """The one tile driver.  The batch 0..n split into blocks on convprop's threads (by `work`,
    bytes and flops, as _threads.parts), and in each block:

        acc = start(block)                     (None without start)
        for each tile of the block: body(tile, acc)

    -> [acc of each block], in block order.  row_bytes: the patches of one output row of one sample."""

    def block_body(block: slice) -> T:
        acc = None if start is None else start(block)
        for batch, rows in tiles(block, out_hw[0], row_bytes, bl):
            body(Tile(batch, rows, out_hw, groups, bl), acc)
        return acc

    return _threads.run(block_body, _threads.parts(n, *work))
