"""Sliding windows over channels-last memory: output sizes, the memory layout, padding, the window
view and col2im.

Symbols: N batch, C channels, H×W input, kh×kw kernel, sh×sw stride, ph×pw padding, dh×dw dilation,
OH×OW output.

Memory layout, as torch's `channels_last`.  Arrays keep the logical (N, C, H, W) shape at every
public boundary, but convolution and pooling put their outputs in (N, H, W, C) memory — a transposed
view — and BatchNorm and the activations keep their input's layout.  `nhwc(x)` is the (N, H, W, C)
array behind x: a view when x lies so, one copy otherwise (a model's input, an NCHW array of a
user's, a gradient coming back through a Flatten); `nchw(a)` is the logical view of it.  In this
layout a window's patch (kh, kw, C) is one row of a GEMM, so Z = patches @ K lands in (N, H, W, C)
with no copy, and col2im scatters whole rows of C values back.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _checks as chk

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


def is_channels_last(x: np.ndarray) -> bool:
    """Whether the (N, C, H, W) array x has its channels fastest in memory: a channels-last array, or a
    view of one (a gradient cropped from its padding)."""
    return x.ndim == 4 and x.shape[1] > 1 and x.strides[1] == x.itemsize


# channels copied at once when converting to channels-last: 8 planes read side by side (docs/performance.md,
# "Channels-last layout": (32, 32, 32, 32) float32 2.1 → 0.8 ms here; all 32 at once alias in the cache)
CONVERT_CHANNELS = 8


def nhwc(x: np.ndarray) -> np.ndarray:
    """The contiguous (N, H, W, C) array behind x (N, C, H, W): a view, or one copy, made
    CONVERT_CHANNELS channels at a time."""
    xt = x.transpose(0, 2, 3, 1)
    if xt.flags.c_contiguous or x.shape[1] <= CONVERT_CHANNELS:
        return np.ascontiguousarray(xt)
    out = np.empty(xt.shape, x.dtype)
    for c in range(0, x.shape[1], CONVERT_CHANNELS):
        np.copyto(out[..., c: c + CONVERT_CHANNELS], xt[..., c: c + CONVERT_CHANNELS])
    return out


def nchw(a: np.ndarray) -> np.ndarray:
    """(N, H, W, C) memory seen as (N, C, H, W): a view."""
    return a.transpose(0, 3, 1, 2)


def channel_sum(a: np.ndarray) -> np.ndarray:
    """Σ of a (N, C, H, W) over every axis but C -> (C,).  Channels-last, as 1ᵀ A over its (N·H·W, C)
    rows: one GEMV, where NumPy's reduction would loop over runs of C values."""
    if a.ndim == 4 and a.size and a.transpose(0, 2, 3, 1).flags.c_contiguous:
        rows = a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])
        return np.ones(rows.shape[0], a.dtype) @ rows
    return a.sum(axis=(0,) + tuple(range(2, a.ndim)))


def like(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """a (N, C, H, W) in ref's memory layout, channels-last or not, copied only when they differ.
    An element-wise pass over operands of two layouts strides through memory (docs/performance.md,
    "One layout per element-wise pass"); one copy first is cheaper."""
    if a.ndim != 4 or a.shape != ref.shape or is_channels_last(a) == is_channels_last(ref):
        return a
    return nchw(nhwc(a)) if is_channels_last(ref) else np.ascontiguousarray(a)


def pad(xh: np.ndarray, padding: Pair, extra: Pair = (0, 0), value: float = 0.0, planes: bool = False,
        ) -> np.ndarray:
    """Pad the H and W of xh (N, H, W, C) by `padding` on both sides, plus `extra` at the bottom/right
    (ceil_mode).  The result keeps xh's memory order, or with `planes` lies in NCHW memory (each
    channel's padded plane one contiguous run)."""
    (ph, pw), (eh, ew) = padding, extra
    if ph == pw == eh == ew == 0:
        return xh
    n, h, w, c = xh.shape
    shape = (n, h + 2 * ph + eh, w + 2 * pw + ew, c)
    chk.fits_in_memory(shape, xh.dtype, "padding", f"{padding} pads x {(n, c, h, w)} to {shape}")
    if planes:
        xp = np.full((n, c) + shape[1:3], value, xh.dtype).transpose(0, 2, 3, 1)
    else:
        xp = np.full_like(xh, value, shape=shape)
    xp[:, ph: ph + h, pw: pw + w] = xh
    return xp


def windows(xp: np.ndarray, kernel: Pair, stride: Pair, dilation: Pair, out: Pair,
            writeable: bool = False, wrap: bool = False) -> np.ndarray:
    """The window view of a padded xp (N, H', W', C) -> (N, OH, OW, kh, kw, C), no copy:

    view[n, y, x, i, j, c] = xp[n, y·sh + i·dh, x·sw + j·dw, c]

    wrap: windows of the last columns run on into the next row — stride 1 and OW = W' (every column
    of the padded width, wider than the true output), xp freshly allocated with an extra bottom row
    for the last windows to run into.  Then a window column is one run of OH·W' values in memory
    (conv's wide rows: `_correlate`).
    """
    n, h, w, c = xp.shape
    if wrap and not (stride[1] == 1 and out[1] == w and xp.strides[1] == w * xp.strides[2]
                     and dilation[1] * (kernel[1] - 1) < w):
        raise AssertionError(f"a wrapping window view needs stride 1 over whole rows of {w}")
    for size, k, s, d, o in zip((h - wrap, w), kernel, stride, dilation, out[:2 - wrap]):  # stay inside xp
        if o > 0 and (o - 1) * s + d * (k - 1) + 1 > size:
            raise AssertionError(f"window view of {o} outputs overruns an axis of {size}")
    sn, sh, sw, sc = xp.strides
    shape = (n, out[0], out[1], kernel[0], kernel[1], c)
    strides = (sn, stride[0] * sh, stride[1] * sw, dilation[0] * sh, dilation[1] * sw, sc)
    owner = xp if xp.flags.c_contiguous else xp.base  # a padded copy, or a transposed view of all of one
    if isinstance(owner, np.ndarray) and owner.flags.c_contiguous and (
            owner is xp or sorted(zip(xp.strides, xp.shape), reverse=True) == list(zip(owner.strides, owner.shape))):
        view = np.ndarray(shape, xp.dtype, owner, 0, strides)  # as as_strided, at a sixth of its cost
        view.flags.writeable = writeable and owner.flags.writeable
        return view
    return as_strided(xp, shape=shape, strides=strides, writeable=writeable)


class Col2im:
    """The scatter-add of col2im onto a zero padded gradient dxp (N, H', W', C):

        dxp[n, y·sh + i·dh, x·sw + j·dw, :] += piece(i, j)[n, y, x, :]   for every kernel offset (i, j)

    Within one offset no two output positions share an input cell, so `+=` is exact; blocks of the
    batch never share one, so they may run on convprop's threads at once.
    """

    def __init__(self, padded_shape: tuple[int, ...], dtype, kernel: Pair, stride: Pair, dilation: Pair,
                 out: Pair) -> None:
        self.kernel = kernel
        # windows that cannot overlap (stride ≥ the dilated kernel) write each cell once: assign, don't add;
        # windows that tile the input exactly write every cell: no zeroing first
        self.disjoint = all(s >= d * (k - 1) + 1 for s, d, k in zip(stride, dilation, kernel))
        self.tiled = self.disjoint and all(d == 1 and s == k and o * s == size for s, d, k, o, size
                                           in zip(stride, dilation, kernel, out, padded_shape[1:3]))
        self.dxp = (np.empty if self.tiled else np.zeros)(padded_shape, dtype)
        self.view = windows(self.dxp, kernel, stride, dilation, out, writeable=True)

    def add(self, piece, batch: slice, rows: slice, last: slice = slice(None)) -> None:
        """Add piece(i, j) (nb, rb, OW, C) — the gradient reaching kernel offset (i, j) from the output
        positions (batch, rows) — onto the cells those positions read, for every (i, j); `last`: a part
        of the last axis only (the batch, where it lies innermost: conv's 'batch-inner' route)."""
        for i in range(self.kernel[0]):
            for j in range(self.kernel[1]):
                target = self.view[batch, rows, :, i, j, last]
                if self.disjoint:
                    target[...] = piece(i, j)
                else:
                    target += piece(i, j)
