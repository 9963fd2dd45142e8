"""Max and average pooling: one window view in, one col2im scatter-add out.

Symbols (docs/math.md): Z^{l-1} = x (N, C, H, W) the pooling input, Z^l = out (N, C, OH, OW), ∂Z^l = dout.

    max:  Z^l_ij = max over window ij of Z^{l-1};  the argmax offset is cached.
          ∂Z^{l-1} = max-unpool(∂Z^l at the cached argmax, into a zero mask)   (overlaps sum)
    avg:  Z^l_ij = Σ window ij / r_size;
          ∂Z^{l-1} = every ∂Z^l_ij / r_size spread over its window          (overlaps sum)

The activation factor ⊙ act'(Z^{l-1}) of docs/math.md belongs to the activation's own backward.
Pooling works on each channel's plane alone, so it runs in its input's memory layout: a channels-last
input (a model's activations, _windows.py) as (N, H, W, C) rows — a window's slice at one kernel offset
is an (N, OH, OW, C) run of whole channel rows — and an NCHW one (a user's array) as N·C planes of one
channel, (N·C, H, W, 1), with no conversion; outputs and gradients keep the layout (`_Geometry.rows`).
Loop twins (reference.py, which `use_reference` switches to): max_pool2d, max_pool2d_backward,
avg_pool2d, avg_pool2d_backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from . import _checks as chk
from . import _schedule as S
from . import reference as R
from ._unbatched import unbatched, unbatched_backward
from ._windows import Col2im, Pair, is_channels_last, nchw, nhwc, out_size, pad, windows

__all__ = ["max_pool2d", "max_pool2d_backward", "max_unpool2d", "max_unpool2d_backward",
           "avg_pool2d", "avg_pool2d_backward"]


@dataclass(frozen=True)
class _Geometry:
    """The window geometry of a pooling call: everything forward and backward share."""

    x_shape: tuple[int, int, int, int]
    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    out: Pair
    extra: Pair  # bottom/right padding that ceil_mode's last window needs
    planes: bool  # the input lies NCHW (or has one channel): run on N·C planes of one channel

    def rows(self, a: np.ndarray) -> np.ndarray:
        """(N, C, h, w) in this call's layout: (N, h, w, C) channels-last, or (N·C, h, w, 1) planes."""
        if self.planes:
            return np.ascontiguousarray(a).reshape((-1,) + a.shape[2:] + (1,))
        return nhwc(a)

    def logical(self, a: np.ndarray) -> np.ndarray:
        """rows() undone: (N', h, w, C') -> (N, C, h, w), a view."""
        return a.reshape(self.x_shape[:2] + a.shape[1:3]) if self.planes else nchw(a)

    def view(self, x: np.ndarray, fill: float) -> np.ndarray:
        """(N, C, H, W) -> the window view (N', OH, OW, kh, kw, C') of rows(x) padded with `fill`."""
        return windows(pad(self.rows(x), self.padding, self.extra, fill), self.kernel, self.stride, self.dilation,
                       self.out)

    def scatter(self, piece, dtype) -> np.ndarray:
        """col2im: Σ over kernel offsets (i, j) of piece(batch, i, j) (nb, OH, OW, C') put back where
        window ij read it, the batch in blocks on convprop's threads; cropped to the input (N, C, H, W)."""
        (n, c, h, w), (ph, pw), (eh, ew) = self.x_shape, self.padding, self.extra
        n, c = (n * c, 1) if self.planes else (n, c)
        da = Col2im((n, h + 2 * ph + eh, w + 2 * pw + ew, c), dtype, self.kernel, self.stride, self.dilation,
                    self.out)
        S.run(lambda b: da.add(lambda i, j: piece(b, i, j), b, slice(None)), S.parts(n, 2 * da.dxp.nbytes))
        return self.logical(da.dxp[:, ph: ph + h, pw: pw + w])


def _geometry(x, kernel_size, stride, padding, dilation, ceil_mode) -> _Geometry:
    chk.float_array(x, "x", 4, "N, C, H, W; or C, H, W unbatched")
    kernel = chk.pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) \
        else chk.pair(stride, "stride", 1)  # None or (): the kernel size, as torch
    padding = chk.pair(padding, "padding", 0)
    dilation = chk.pair(dilation, "dilation", 1)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding: expected at most half the kernel size {kernel}, "
                         f"i.e. <= {(kernel[0] // 2, kernel[1] // 2)}, got {padding}")
    h, w = x.shape[2:]
    out = tuple(
        chk.output_size(out_size(size, kernel[k], stride[k], padding[k], dilation[k], bool(ceil_mode)),
                        f"x ({'height' if k == 0 else 'width'})")
        for k, size in enumerate((h, w)))
    extra = tuple(max(0, (out[k] - 1) * stride[k] + dilation[k] * (kernel[k] - 1) + 1 - (size + 2 * padding[k]))
                  for k, size in enumerate((h, w)))
    return _Geometry(x.shape, kernel, stride, padding, dilation, out, extra, not is_channels_last(x))


# --------------------------------------------------------------------------- max pooling
@dataclass(frozen=True, eq=False)
class MaxPool2dCache:
    """argmax: the winning kernel offset i·kw + j per output (N, C, OH, OW);
    `indices`: the same winners as torch's flat indices y·W + x into each input plane."""

    argmax: np.ndarray
    geometry: _Geometry
    dtype: np.dtype

    @property
    def indices(self) -> np.ndarray:
        g = self.geometry
        kw, (sh, sw), (ph, pw), (dh, dw) = g.kernel[1], g.stride, g.padding, g.dilation
        i, j = np.divmod(self.argmax.astype(np.int64), kw)
        rows = (np.arange(g.out[0]) * sh - ph)[:, None] + i * dh  # y = oy·sh − ph + i·dh
        cols = (np.arange(g.out[1]) * sw - pw)[None, :] + j * dw  # x = ox·sw − pw + j·dw
        return rows * g.x_shape[3] + cols


@unbatched  # (C, H, W): a batch of one
def max_pool2d(x: np.ndarray, kernel_size: int | Pair, stride: int | Pair | None = None,
               padding: int | Pair = 0, dilation: int | Pair = 1, ceil_mode: bool = False,
               return_indices: bool = False,
               ) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], MaxPool2dCache]:
    """Z^l_ij = max of window ij (padding counts as −inf), as torch.nn.functional.max_pool2d.
    Loop twin: reference.max_pool2d.

    x (N, C, H, W) or (C, H, W) -> out (N, C, OH, OW), or with return_indices ((out, indices), cache):
    indices (N, C, OH, OW) int64, torch's flat y·W + x per input plane, as max_unpool2d takes them
    (also cache.indices).  The backward takes dout for out alone.
    Ties go to the first offset in row-major window order; a NaN wins, as in torch.
    """
    return_indices = chk.flag(return_indices, "return_indices")
    g = _geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    kh, kw = g.kernel
    if R.active():
        z, arg = R.max_pool2d(x, g.kernel, g.stride, g.padding, g.dilation, bool(ceil_mode))
        rows = arg[..., 0] + g.padding[0] - (np.arange(g.out[0]) * g.stride[0])[:, None]  # i·dh
        cols = arg[..., 1] + g.padding[1] - np.arange(g.out[1]) * g.stride[1]  # j·dw
        cache = MaxPool2dCache((rows // g.dilation[0] * kw + cols // g.dilation[1]).astype(np.int64), g, x.dtype)
        out = z.astype(x.dtype)
        return ((out, cache.indices) if return_indices else out), cache
    win = g.view(x, -np.inf)
    out = np.empty(win.shape[:3] + win.shape[5:], x.dtype)  # (N', OH, OW, C')
    argmax = np.empty(out.shape, np.int16 if kh * kw < 2**15 else np.int64)

    def window_max(t: S.Tile, _) -> None:
        best, arg = out[t.batch, t.rows], argmax[t.batch, t.rows]
        # the window's kh·kw offsets gathered once into scratch, each a contiguous (nb, rb, OW, C) slab:
        # the passes below then run over whole slabs, not over runs of C values (few channels)
        offsets = S.scratch((kh * kw,) + best.shape, x.dtype)
        for k in range(kh * kw):
            offsets[k] = win[t.batch, t.rows, :, k // kw, k % kw]
        np.max(offsets, axis=0, out=best)  # Z_ij = max of the window (a NaN propagates)
        # argmax = the first offset holding the max: K − max_k [A_k = Z]·(K − k), in small ints
        first = np.zeros_like(arg)
        for k, cand in enumerate(offsets):
            np.maximum(first, (cand == best) * arg.dtype.type(kh * kw - k), out=first)
        np.subtract(kh * kw, first, out=arg)
        nan = np.isnan(best)
        if nan.any():  # a NaN wins, and the last one in the window, as in torch
            for k, cand in enumerate(offsets):
                arg += (nan & np.isnan(cand)) * (k - arg).astype(arg.dtype)

    S.each_tile(window_max, out.shape[0], g.out[0], g.out[1] * out.shape[3] * kh * kw * x.itemsize,
                (x.nbytes + out.nbytes + argmax.nbytes, 0))
    out, cache = g.logical(out), MaxPool2dCache(g.logical(argmax), g, x.dtype)
    return ((out, cache.indices) if return_indices else out), cache


@unbatched_backward
def max_pool2d_backward(dout: np.ndarray, cache: MaxPool2dCache) -> np.ndarray:
    """∂Z^{l-1} = max-unpool(∂Z^l): each ∂Z^l_ij lands on its window's argmax in a zero mask.
    Loop twin: reference.max_pool2d_backward.

    dout (N, C, OH, OW) -> dx (N, C, H, W); where windows overlap, gradients sum.
    """
    chk.cache_of(cache, MaxPool2dCache, "max_pool2d")
    g = cache.geometry
    dz = chk.grad_output(dout, g.x_shape[:2] + g.out, cache.dtype)
    if R.active():
        rows_cols = np.stack(np.divmod(cache.indices, g.x_shape[3]), axis=-1)
        return R.max_pool2d_backward(dz, g.x_shape, rows_cols).astype(dz.dtype)
    return g.scatter(partial(_unpool_piece, g.rows(dz), g.rows(cache.argmax), g.kernel[1]), dz.dtype)


def _unpool_piece(dzh: np.ndarray, argmax: np.ndarray, kw: int, batch: slice, i: int, j: int) -> np.ndarray:
    """Max-unpool at kernel offset (i, j): ∂A_(y·s+i·d, x·s+j·d) += ∂Z_yx · [argmax_yx = (i, j)] —
    each window's gradient goes to the one input cell that won its max, nothing to the others.
    dzh, argmax (N', OH, OW, C') in the call's rows -> the piece for the samples `batch`."""
    return dzh[batch] * (argmax[batch] == i * kw + j)


@dataclass(frozen=True, eq=False)
class MaxUnpool2dCache:
    """indices (N, C, OH, OW): where each input value went in its (H, W) output plane; out_shape."""

    indices: np.ndarray
    out_shape: tuple[int, int, int, int]
    dtype: np.dtype


def _unpool_size(in_hw: Pair, kernel: Pair, stride: Pair, padding: Pair, output_size) -> Pair:
    """max_unpool2d's (H, W): (OH − 1)s − 2p + k along each axis, or output_size's last two entries."""
    if output_size is not None and (not isinstance(output_size, (tuple, list)) or len(output_size) not in (2, 4)):
        raise ValueError(f"output_size: expected (H, W) or (N, C, H, W), got {output_size!r}")
    wanted = (None, None) if output_size is None else output_size[-2:]
    return tuple(unpool_extent(*a) for a in zip(in_hw, kernel, stride, padding, wanted, ("H", "W")))


def unpool_default(size: int, k: int, s: int, p: int) -> int:
    """Unpooling's default output length along one axis, (size − 1)s − 2p + k: pooling's size formula inverted."""
    return (size - 1) * s - 2 * p + k


def unpool_extent(size: int, k: int, s: int, p: int, wanted: int | None, axis: str) -> int:
    """Unpooling's output length along one axis: unpool_default, or `wanted`, which torch allows only
    strictly within a stride of that length (the other lengths pooling could have come from)."""
    default = unpool_default(size, k, s, p)
    if wanted is None:
        return chk.output_size(default, "output_size")
    v = chk.positive_int(wanted, "output_size")
    if not default - s < v < default + s:
        raise ValueError(f"output_size: expected {axis} strictly between {default - s} and {default + s} "
                         f"(the input's size {default} ± the stride {s}), got {v}")
    return v


def check_positions(indices: np.ndarray, size: int, where: str) -> None:
    """Unpooling's indices must be flat positions in [0, size) of `where` (an output plane or row)."""
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        raise ValueError(f"indices: expected values in [0, {size}) for {where}, got "
                         f"[{indices.min()}, {indices.max()}]")


@unbatched(also="indices")  # (C, OH, OW) and its indices: a batch of one
def max_unpool2d(x: np.ndarray, indices: np.ndarray, kernel_size: int | Pair,
                 stride: int | Pair | None = None, padding: int | Pair = 0,
                 output_size: tuple[int, ...] | None = None) -> tuple[np.ndarray, MaxUnpool2dCache]:
    """Put every x[n, c, i, j] at flat position indices[n, c, i, j] of a zero (H, W) plane.

    x, indices (N, C, OH, OW) or (C, OH, OW) -> out (N, C, H, W) or (C, H, W),
    H = (OH − 1)s − 2p + kh unless output_size is given (its last two entries),
    as torch.nn.functional.max_unpool2d; and the cache for backward.
    """
    chk.float_array(x, "x", 4, "N, C, OH, OW; or C, OH, OW unbatched")
    if not isinstance(indices, np.ndarray) or indices.dtype.kind not in "iu":
        raise TypeError(f"indices: expected an integer NumPy array, got "
                        f"{getattr(indices, 'dtype', type(indices).__name__)}")
    if indices.shape != x.shape:
        raise ValueError(f"indices: expected the shape of x {x.shape}, got {indices.shape}")
    kernel = chk.pair(kernel_size, "kernel_size", 1)
    stride = kernel if stride is None else chk.pair(stride, "stride", 1)
    padding = chk.pair(padding, "padding", 0)
    n, c, oh, ow = x.shape
    h, w = _unpool_size((oh, ow), kernel, stride, padding, output_size)
    check_positions(indices, h * w, f"a {h}×{w} output")
    out = np.zeros((n, c, h * w), dtype=x.dtype)
    np.put_along_axis(out, indices.reshape(n, c, oh * ow), x.reshape(n, c, oh * ow), axis=2)  # out[indices] = x
    return out.reshape(n, c, h, w), MaxUnpool2dCache(indices, (n, c, h, w), x.dtype)


@unbatched_backward
def max_unpool2d_backward(dout: np.ndarray, cache: MaxUnpool2dCache) -> np.ndarray:
    """∂x[n, c, i, j] = ∂out[n, c] at flat position indices[n, c, i, j]: unpooling's adjoint, a gather.

    dout (N, C, H, W) -> (N, C, OH, OW); unbatched (C, H, W) -> (C, OH, OW).
    """
    chk.cache_of(cache, MaxUnpool2dCache, "max_unpool2d")
    dout = chk.grad_output(dout, cache.out_shape, cache.dtype)
    (n, c, h, w), idx = cache.out_shape, cache.indices
    return np.take_along_axis(dout.reshape(n, c, h * w), idx.reshape(n, c, idx.shape[2] * idx.shape[3]),
                              axis=2).reshape(idx.shape)


# --------------------------------------------------------------------------- average pooling
@dataclass(frozen=True, eq=False)
class AvgPool2dCache:
    """divisor: r_size of each window (OH, OW) — the cells it counts, as torch counts them."""

    divisor: np.ndarray
    geometry: _Geometry
    dtype: np.dtype
    include_pad: bool = True


def _window_counts(size: int, k: int, s: int, p: int, n_out: int, include_pad: bool) -> np.ndarray:
    """Cells each window covers along one axis, as torch: padding counts, ceil_mode's overhang never."""
    start = np.arange(n_out) * s - p
    end = np.minimum(start + k, size + p)
    if include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


@unbatched  # (C, H, W): a batch of one
def avg_pool2d(x: np.ndarray, kernel_size: int | Pair, stride: int | Pair | None = None,
               padding: int | Pair = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None) -> tuple[np.ndarray, AvgPool2dCache]:
    """Z^l_ij = Σ window ij / r_size, as torch.nn.functional.avg_pool2d.  Loop twin: reference.avg_pool2d
    (which has no divisor_override: with one, the switch leaves this function on its fast kernel).

    x (N, C, H, W) or (C, H, W) -> out (N, C, OH, OW).  r_size counts the zero padding when
    count_include_pad; divisor_override replaces it for every window.
    """
    g = _geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    kh, kw = g.kernel
    if divisor_override is not None:
        divisor = np.full(g.out, chk.nonzero_int(divisor_override, "divisor_override"), x.dtype)
    else:
        counts = [_window_counts(x.shape[2 + a], g.kernel[a], g.stride[a], g.padding[a], g.out[a],
                                 bool(count_include_pad)) for a in range(2)]
        divisor = np.outer(*counts).astype(x.dtype)  # r_size (OH, OW)
    if R.active() and divisor_override is None:
        return (R.avg_pool2d(x, g.kernel, g.stride, g.padding, bool(ceil_mode), bool(count_include_pad))
                .astype(x.dtype), AvgPool2dCache(divisor, g, x.dtype, bool(count_include_pad)))
    win = g.view(x, 0.0)
    out = np.empty(win.shape[:3] + win.shape[5:], x.dtype)  # (N', OH, OW, C')
    per_cell = divisor[:, :, None]

    def window_mean(block: slice) -> None:
        total = out[block]
        total[...] = win[block, :, :, 0, 0]
        for k in range(1, kh * kw):
            total += win[block, :, :, k // kw, k % kw]  # Σ over the window, one kernel offset at a time
        total /= per_cell

    S.run(window_mean, S.parts(out.shape[0], x.nbytes + out.nbytes))
    return g.logical(out), AvgPool2dCache(divisor, g, x.dtype, bool(count_include_pad))


@unbatched_backward
def avg_pool2d_backward(dout: np.ndarray, cache: AvgPool2dCache) -> np.ndarray:
    """∂Z^{l-1} = Σ_windows ∂Z^l_ij / r_size spread evenly over window ij (overlaps sum).
    Loop twin: reference.avg_pool2d_backward.

    dout (N, C, OH, OW) -> dx (N, C, H, W).
    """
    chk.cache_of(cache, AvgPool2dCache, "avg_pool2d")
    g = cache.geometry
    dz = chk.grad_output(dout, g.x_shape[:2] + g.out, cache.dtype)
    if R.active():
        return R.avg_pool2d_backward(dz * (np.outer(*cache_counts(cache)) / cache.divisor), np.empty(g.x_shape),
                                     g.kernel, g.stride, g.padding, cache.include_pad).astype(dz.dtype)
    dzh = g.rows(dz)
    share = S.elementwise(np.divide, np.empty_like(dzh), dzh, np.broadcast_to(cache.divisor[:, :, None], dzh.shape))
    return g.scatter(partial(_even_spread_piece, share), dz.dtype)


def cache_counts(cache: AvgPool2dCache) -> list[np.ndarray]:
    """r_size along each axis, as the loop twin counts it (the divisor without divisor_override)."""
    g = cache.geometry
    return [_window_counts(g.x_shape[2 + a], g.kernel[a], g.stride[a], g.padding[a], g.out[a], cache.include_pad)
            for a in range(2)]


def _even_spread_piece(share: np.ndarray, batch: slice, i: int, j: int) -> np.ndarray:
    """The even spread at kernel offset (i, j): ∂A_(y·s+i, x·s+j) += ∂Z_yx / r_size — every cell of a
    window gets the same share, so the piece is share = ∂Z / r_size (N, OH, OW, C) at every offset."""
    return share[batch]
