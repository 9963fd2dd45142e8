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

from collections.abc import Callable, Iterable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _checks as chk
from . import _parallel

Pair = tuple[int, int]
Tile = tuple[slice, slice]  # (batch, output rows): a block of output positions


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


def col2im(tiles_of: Callable[[slice], Iterable[tuple[Tile, Callable[[int, int], np.ndarray]]]],
           padded_shape: tuple[int, ...], dtype: np.dtype, kernel: Pair, stride: Pair, dilation: Pair, out: Pair,
           batch_last_layout: bool = True, flops: int = 0) -> np.ndarray:
    """Scatter-add back into a zero input: dxp[.., y·sh + i·dh, x·sw + j·dw] += piece(i, j)[.., y, x].

    `tiles_of(block)` yields (where, piece) for a block of the batch: `where` = (batch slice within
    the block, output-row slice) picks output positions and `piece(i, j)` is the gradient reaching
    kernel offset (i, j) from them; overlapping windows sum.  Within one offset no two output
    positions share an input element, so `+=` is exact; blocks of the batch never share one, so
    they run on convprop's threads at once.  Returns the padded (N, C, H', W') gradient, batch-last
    in memory unless told otherwise; crop it with `unpad`.  flops: what tiles_of computes (for _parallel).
    """
    # windows that cannot overlap (stride ≥ the dilated kernel) write each cell once: assign, don't add;
    # windows that tile the input exactly write every cell: no zeroing first
    disjoint = all(s >= d * (k - 1) + 1 for s, d, k in zip(stride, dilation, kernel))
    tiled = disjoint and all(d == 1 and s == k and o * s == size
                             for s, d, k, o, size in zip(stride, dilation, kernel, out, padded_shape[2:]))
    dxp = allocate(padded_shape, dtype, batch_last_layout, zeroed=False)
    view = windows(dxp, kernel, stride, dilation, out, writeable=True)

    def scatter(block: slice) -> None:
        if not tiled:
            dxp[block] = 0
        for (batch, rows), piece in tiles_of(block):
            for i in range(kernel[0]):
                for j in range(kernel[1]):
                    if disjoint:
                        view[batch, :, i, j, rows] = piece(i, j)
                    else:
                        view[batch, :, i, j, rows] += piece(i, j)

    _parallel.run(scatter, _parallel.parts(padded_shape[0], 2 * dxp.nbytes, flops))
    return dxp
