"""Sliding windows: the one place for output sizes, padding, the im2col view and col2im.

Symbols used in every kernel file:
    N batch, C channels, H×W input, kh×kw kernel, sh×sw stride, ph×pw padding, dh×dw dilation,
    OH×OW output, L = OH·OW output positions.

Convolution, max pooling and average pooling all read their input through `windows(...)`, a
zero-copy strided view (N, C, kh, kw, OH, OW) whose [:, :, i, j] slice holds the input element
that kernel offset (i, j) sees at every output position.  Their backward passes all go through
`col2im(...)`, which scatter-adds one (N, C, OH, OW) piece per kernel offset back into the input,
summing where windows overlap.  Python loops run over the kh·kw kernel offsets only.

Memory layout.  Arrays are always indexed (N, C, H, W), but convolution keeps its data *batch-last*
in memory — physically (C, H, W, N), seen through a transposed view.  Then a window slice
[:, :, i, j] is made of long contiguous runs (OW·N values at stride 1, N at larger strides) instead
of rows of OW values, so im2col, col2im and pooling stream through memory; and the convolution is
one large GEMM over all N·L positions.  `batch_last(x)` converts once where needed; every op
accepts either layout and preserves what it is given.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _checks as chk
from . import _threads

Pair = tuple[int, int]


def out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool = False) -> int:
    """OH = ⌊(H + 2p − d(k−1) − 1) / s⌋ + 1   (⌈·⌉ with ceil_mode, as torch).

    With ceil_mode the last window must start inside the input or its left padding.
    """
    span = size + 2 * p - d * (k - 1) - 1
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    o = -(-span // s) + 1
    if (o - 1) * s >= size + p:
        o -= 1
    return o


def is_batch_last(x: np.ndarray) -> bool:
    """Whether the (N, C, H, W) array x lies in memory as a C-contiguous (C, H, W, N) block."""
    return x.transpose(1, 2, 3, 0).flags.c_contiguous


def batch_last(x: np.ndarray) -> np.ndarray:
    """x (N, C, H, W) as a view of a contiguous (C, H, W, N) block: copied only if it is not one."""
    return x if is_batch_last(x) else np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


def is_batch_last_view(x: np.ndarray) -> bool:
    """Whether x (N, …) has its batch axis fastest in memory: a batch-last array, or a view of one (a
    window view, an unpadded slice)."""
    return x.shape[0] > 1 and x.strides[0] == x.itemsize


def like(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """a (N, C, H, W) in ref's memory layout, batch-last or C-contiguous, copied only when they differ.
    An element-wise pass over operands of two layouts strides through memory (docs/performance.md,
    "One layout per element-wise pass"); one copy first is cheaper."""
    if a.ndim != 4 or a.shape != ref.shape or is_batch_last_view(a) == is_batch_last_view(ref):
        return a
    return batch_last(a) if is_batch_last_view(ref) else np.ascontiguousarray(a)


def allocate(shape: tuple[int, ...], dtype, batch_last_layout: bool, zeroed: bool = True) -> np.ndarray:
    """An array indexed (N, C, H, W), laid out batch-last in memory or not; uninitialised unless zeroed."""
    make = np.zeros if zeroed else np.empty
    if not batch_last_layout:
        return make(shape, dtype)
    n, c, h, w = shape
    return make((c, h, w, n), dtype).transpose(3, 0, 1, 2)


def pad(x: np.ndarray, padding: Pair, extra: Pair = (0, 0), value: float = 0.0) -> np.ndarray:
    """Pad H and W by `padding` on both sides, plus `extra` on the bottom/right (ceil_mode).
    The result keeps x's memory layout."""
    (ph, pw), (eh, ew) = padding, extra
    if ph == pw == eh == ew == 0:
        return x
    n, c, h, w = x.shape
    shape = (n, c, h + 2 * ph + eh, w + 2 * pw + ew)
    chk.fits_in_memory(shape, x.dtype, "padding", f"{padding} pads x {x.shape} to {shape}")
    xp = np.full_like(x, value, shape=shape)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    return xp


def unpad(xp: np.ndarray, padding: Pair, hw: Pair) -> np.ndarray:
    """The inverse of `pad`: crop the padded H, W back to hw."""
    (ph, pw), (h, w) = padding, hw
    return xp[:, :, ph : ph + h, pw : pw + w]


def windows(xp: np.ndarray, kernel: Pair, stride: Pair, dilation: Pair, out: Pair,
            writeable: bool = False) -> np.ndarray:
    """The window view of a padded input: (N, C, H', W') -> (N, C, kh, kw, OH, OW), no copy.

    view[n, c, i, j, y, x] = xp[n, c, y·sh + i·dh, x·sw + j·dw]
    """
    n, c, h, w = xp.shape
    for size, k, s, d, o in zip((h, w), kernel, stride, dilation, out):  # as_strided must stay inside xp
        if o > 0 and (o - 1) * s + d * (k - 1) + 1 > size:
            raise AssertionError(f"window view of {o} outputs overruns an axis of {size}")
    sN, sC, sH, sW = xp.strides
    return as_strided(
        xp,
        shape=(n, c, kernel[0], kernel[1], out[0], out[1]),
        strides=(sN, sC, dilation[0] * sH, dilation[1] * sW, stride[0] * sH, stride[1] * sW),
        writeable=writeable,
    )


class Col2im:
    """The scatter-add of col2im: a zero (padded) input gradient dxp (N, C, H', W') and its
    writable window view, onto which pieces of gradient at each kernel offset are added back:

        dxp[n, c, y·sh + i·dh, x·sw + j·dw] += piece(batch, rows, i, j)[n, c, y, x]

    Within one offset no two output positions share an input element, so `+=` is exact; blocks of
    the batch never share one, so they may run on convprop's threads at once.
    """

    def __init__(self, padded_shape: tuple[int, ...], dtype, kernel: Pair, stride: Pair, dilation: Pair,
                 out: Pair, batch_last_layout: bool = True) -> None:
        self.kernel = kernel
        # windows that cannot overlap (stride ≥ the dilated kernel) write each cell once: assign, don't add;
        # windows that tile the input exactly write every cell: no zeroing first
        self.disjoint = all(s >= d * (k - 1) + 1 for s, d, k in zip(stride, dilation, kernel))
        self.tiled = self.disjoint and all(d == 1 and s == k and o * s == size for s, d, k, o, size
                                           in zip(stride, dilation, kernel, out, padded_shape[2:]))
        self.dxp = allocate(padded_shape, dtype, batch_last_layout, zeroed=False)
        self.view = windows(self.dxp, kernel, stride, dilation, out, writeable=True)

    def zero(self, block: slice) -> None:
        """Clear the batch block of dxp before its pieces arrive (unless they will cover it)."""
        if not self.tiled:
            self.dxp[block] = 0

    def add(self, piece: Callable[[slice, slice, int, int], np.ndarray], batch: slice, rows: slice) -> None:
        """Add piece(batch, rows, i, j) — the gradient reaching kernel offset (i, j) from the output
        positions (batch, rows) — onto the input cells those positions read, for every (i, j)."""
        for i in range(self.kernel[0]):
            for j in range(self.kernel[1]):
                if self.disjoint:
                    self.view[batch, :, i, j, rows] = piece(batch, rows, i, j)
                else:
                    self.view[batch, :, i, j, rows] += piece(batch, rows, i, j)


def col2im(piece: Callable[[slice, slice, int, int], np.ndarray], padded_shape: tuple[int, ...], dtype,
           kernel: Pair, stride: Pair, dilation: Pair, out: Pair, batch_last_layout: bool = True) -> np.ndarray:
    """Σ over kernel offsets (i, j) of piece(batch, rows, i, j) put back where window ij read it
    (see Col2im), the batch in blocks on convprop's threads.  Returns the padded (N, C, H', W')
    gradient, batch-last in memory unless told otherwise; crop it with `unpad`."""
    target = Col2im(padded_shape, dtype, kernel, stride, dilation, out, batch_last_layout)

    def scatter(block: slice) -> None:
        target.zero(block)
        target.add(piece, block, slice(None))

    _threads.run(scatter, _threads.parts(padded_shape[0], 2 * target.dxp.nbytes))
    return target.dxp
