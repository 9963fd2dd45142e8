"""Convolution and transposed convolution — each one the other's backward-data, written once.

Seed symbols: A^{l-1} = x (N, C, H, W), K^l = w (Cout, C/G, kh, kw), Z^l = out (N, Cout, OH, OW),
∂Z^l = dout.  G = groups, Cg = C/G, Cog = Cout/G, K = Cg·kh·kw, L = OH·OW.

Three cores carry all the maths:
    _conv_forward          Z = K * A          GEMMs over the im2col patches
    _conv_backward_weight  ∂K = Σ_patches A_patch ⊙ ∂Z_ij    GEMMs over the same patches
    _conv_backward_data    ∂A = K ⋆ᵀ ∂Z       transposed convolution (GEMMs, then col2im); two
                                              cheaper forms of the same sums where they apply:
                                              'same' stride-1 shapes: the full correlation with
                                              the flipped kernel (one _conv_forward); strides that
                                              divide the kernel: the sub-pixel form (_subpixel)

The flip convention (docs/math.md proves it on numbers, tests/test_functional.py against torch):
    ∂A is the *transposed* convolution of ∂Z with K itself — every ∂Z_ij is scattered back, times
    the unflipped kernel, onto the window it came from.  That equals the *full cross-correlation*
    of the (zero-inserted, padded) ∂Z with the *flipped* kernel.  Either statement alone is right;
    the seed's "transposed convolution with the flipped kernel" flips twice and is wrong for any
    kernel that is not symmetric.  We compute the transposed convolution with the unflipped K.

conv_transpose2d's forward is `_conv_backward_data`; its backward is `_conv_forward` (∂x) and
`_conv_backward_weight` (∂w) with the roles of input and output swapped, in one pass (_patch_gemms).

Speed, not maths: the GEMMs run a cache-sized tile of output positions at a time (_tiles: im2col
writes a tile's patches, its GEMM reads them back from cache), and the batch is split over
convprop's threads (_parallel).  Backward re-reads the patches from the input's window view
instead of keeping them.  docs/performance.md has what each of these bought.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from . import _checks as chk
from . import _parallel
from ._windows import Pair, Tile, allocate, batch_last, col2im, is_batch_last, out_size, pad, unpad, windows

__all__ = ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward"]


# --------------------------------------------------------------------------- GEMM layouts
# Every core works on GEMM operands (B, G, rows, P): B batches of P positions, one GEMM per batch and
# group.  Two layouts, picked per call by `_batch_last_pays`, carry the same maths:
#   per-sample  B = N, P = OH·OW       data stays NCHW; good for wide images (long rows)
#   batch-last  B = 1, P = OH·OW·N     data lives (C, H, W, N) in memory (see _windows.py): one big
#                                      GEMM, and long contiguous runs for im2col/col2im when rows are short
# (For N = 1 the two coincide.)
def _batch_last_pays(x: np.ndarray, out_w: int) -> bool:
    """Batch-last when x already lies so, or when output rows are short and the batch is large."""
    n = x.shape[0]
    return n > 1 and (is_batch_last(x) or (out_w < 16 and n >= 16))


def _to_gemm(z: np.ndarray, groups: int, bl: bool) -> np.ndarray:
    """(N, G·R, H, W) -> (B, G, R, P), channels as GEMM rows, positions as columns."""
    n, c, h, w = z.shape
    if bl:
        return batch_last(z).transpose(1, 2, 3, 0).reshape(1, groups, c // groups, h * w * n)
    return np.ascontiguousarray(z).reshape(n, groups, c // groups, h * w)


def _from_gemm(z: np.ndarray, n: int, hw: Pair, bl: bool) -> np.ndarray:
    """(B, G, R, P) -> (N, G·R, H, W), a view: batch-last in memory or NCHW."""
    if bl:
        return z.reshape(-1, hw[0], hw[1], n).transpose(3, 0, 1, 2)
    return z.reshape(n, -1, hw[0], hw[1])


TILE_BYTES = 2 << 20  # patches per tile (measured best here among 0.25–8 MiB; L2 1 MiB, L3 32 MiB)


def _tiles(block: slice, oh: int, row_bytes: int, bl: bool) -> list[Tile]:
    """The output positions of the batch block split into tiles whose patches fill about TILE_BYTES,
    so that im2col writes a tile and its GEMM reads it back from cache rather than from main memory
    (2–2.5× faster here than one whole-batch GEMM for LeNet conv2 at batch 256).  row_bytes: the
    patches of one output row of one sample.  Batch-last: a block of rows for a chunk of ≥ 16
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


_buffers = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reused per-thread buffer for one tile's temporaries (patches, GEMM products).

    Fresh multi-megabyte arrays each call cost page faults (on glibc's defaults, 1,100 of a LeNet-5
    step's 2,000 at batch 64: 10.6 → 8.2 ms), so each thread keeps one buffer per name and dtype,
    grown as needed."""
    key, size = (name, np.dtype(dtype).str), int(np.prod(shape))
    buf = getattr(_buffers, "d", {}).get(key)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype)
        _buffers.__dict__.setdefault("d", {})[key] = buf
    return buf[:size].reshape(shape)


def _patches(win: np.ndarray, groups: int, bl: bool, block: slice) -> Iterator[tuple[Tile, np.ndarray]]:
    """im2col a tile at a time: the window view (N, C, kh, kw, OH, OW) of the batch block copied
    into GEMM columns, yielding (tile, its patches (B, G, Cg·kh·kw, P)); one buffer serves every tile."""
    _, c, kh, kw, oh, ow = win.shape
    for tile in _tiles(block, oh, c * kh * kw * ow * win.itemsize, bl):
        part = win[tile[0], :, :, :, tile[1]]
        nb, rb = part.shape[0], part.shape[4]
        # the patches, split per group but not yet flattened: a view, whatever the layout
        src = (part.transpose(1, 2, 3, 4, 5, 0) if bl else part).reshape(
            ((1,) if bl else (nb,)) + (groups, c // groups) + ((kh, kw, rb, ow, nb) if bl else (kh, kw, rb, ow)))
        cols = _scratch("cols", src.shape[:2] + (c // groups * kh * kw, rb * ow * (nb if bl else 1)), win.dtype)
        np.copyto(cols.reshape(src.shape), src)
        yield tile, cols


# --------------------------------------------------------------------------- the three cores
def _window_view(x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, out_hw: Pair,
                 ) -> np.ndarray:
    """The window view (N, C, kh, kw, OH, OW) of the padded x, batch-last in memory where that pays."""
    bl = _batch_last_pays(x, out_hw[1])
    return windows(pad(batch_last(x) if bl else x, padding), kernel, stride, dilation, out_hw)


def _patch_gemms(win: np.ndarray, groups: int, w: np.ndarray | None = None, b: np.ndarray | None = None,
                 dz: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The two GEMMs over the im2col patches of win (N, C, kh, kw, OH, OW), a tile at a time, the
    batch split over convprop's threads; where both are asked for (conv_transpose2d's backward)
    each tile's patches are copied once for both.

    Z = K * A + B                     w (Cout, Cg, kh, kw), b (Cout,) or None  -> Z (N, Cout, OH, OW)
    ∂K = Σ_n Σ_ij A_patch_ij ⊙ ∂Z_ij    dz (N, Cout, OH, OW)                    -> ∂K (Cout, Cg, kh, kw)
    """
    n, c, kh, kw, oh, ow = win.shape
    bl = n > 1 and win.strides[0] == win.itemsize  # the layout _window_view chose
    z = None
    if w is not None:
        wg = w.reshape(groups, w.shape[0] // groups, -1)
        z = allocate((n, w.shape[0], oh, ow), win.dtype, bl, zeroed=False)
        bias = 0 if b is None else b[:, None, None]
    if dz is not None:
        dz = batch_last(dz) if bl else dz

    def block_gemms(block: slice) -> np.ndarray | None:
        dw_t = None if dz is None else np.zeros((groups, c // groups * kh * kw, dz.shape[1] // groups), win.dtype)
        for (batch, rows), cols in _patches(win, groups, bl, block):  # A_patch of every position as a column
            if z is not None:                                           # (B, G, K, P)
                # Z_ij = Σ K ⊙ A_patch_ij + B for all positions of the tile at once       (B, G, Cog, P)
                if not bl and rows == slice(0, oh):  # whole NCHW samples: the GEMM writes Z itself
                    zt = np.matmul(wg, cols, out=z[batch].reshape(cols.shape[:2] + (wg.shape[1], oh * ow)))
                    if b is not None:
                        zt += b.reshape(wg.shape[:2] + (1,))
                else:
                    zt = np.matmul(wg, cols, out=_scratch("gemm", cols.shape[:2] + (wg.shape[1], cols.shape[3]),
                                                          cols.dtype))
                    np.add(_from_gemm(zt, batch.stop - batch.start, (rows.stop - rows.start, ow), bl), bias,
                           out=z[batch, :, rows])
            if dw_t is not None:
                # every patch times its ∂Z_ij, summed over positions (GEMM) and batches   (G, K, Cog)
                # (computed as ∂Kᵀ = patches • ∂Zᵀ: the long position axis as BLAS's inner dimension
                #  runs 25–45 % faster here than ∂Z • patchesᵀ)
                dw_t += (cols @ _to_gemm(dz[batch, :, rows], groups, bl).transpose(0, 1, 3, 2)).sum(axis=0)
        return dw_t

    cout = (0 if w is None else w.shape[0]) + (0 if dz is None else dz.shape[1])
    blocks = _parallel.parts(n, n * (c + cout) * oh * ow * win.itemsize, 2 * n * oh * ow * c * kh * kw * cout)
    partial = _parallel.run(block_gemms, blocks)
    dw = None if dz is None else sum(partial[1:], partial[0]).transpose(0, 2, 1).reshape(dz.shape[1], c // groups,
                                                                                       kh, kw)
    return z, dw


def _conv_forward(x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair, dilation: Pair,
                  groups: int, out_hw: Pair, b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Z = K * A + B as GEMMs over the im2col patches.  x (N, C, H, W), w (Cout, Cg, kh, kw), b (Cout,)
    or None -> Z (N, Cout, OH, OW), and the window view of the padded x, whose patches ∂K re-reads."""
    win = _window_view(x, w.shape[2:], stride, padding, dilation, out_hw)
    return _patch_gemms(win, groups, w=w, b=b)[0], win


def _conv_backward_weight(dz: np.ndarray, win: np.ndarray, groups: int) -> np.ndarray:
    """∂K = Σ_n Σ_ij A_patch_ij ⊙ ∂Z_ij.  dz (N, Cout, OH, OW), win the window view of the padded
    input (N, G·Cg, kh, kw, OH, OW) -> (Cout, Cg, kh, kw)."""
    return _patch_gemms(win, groups, dz=dz)[1]


def _conv_backward_data(dz: np.ndarray, w: np.ndarray, in_hw: Pair, stride: Pair, padding: Pair,
                        dilation: Pair, groups: int) -> np.ndarray:
    """∂A = K ⋆ᵀ ∂Z, the transposed convolution.  dz (N, Cout, OH, OW), w (Cout, Cg, kh, kw)
    -> ∂A (N, G·Cg, H, W) where in_hw = (H, W).

    Each ∂Z_ij times the (unflipped) kernel is scattered back onto window ij; overlaps sum.
    """
    n, _, oh, ow = dz.shape
    cout, cg, kh, kw = w.shape
    full = tuple(d * (k - 1) - p for d, k, p in zip(dilation, (kh, kw), padding))
    covers = all(o + 2 * f - d * (k - 1) == size  # the correlation yields exactly H × W (no output_padding)
                 for o, f, d, k, size in zip((oh, ow), full, dilation, (kh, kw), in_hw))
    if stride == (1, 1) and min(full) >= 0 and covers and cout * in_hw[0] * in_hw[1] <= 1.5 * groups * cg * oh * ow:
        # Same numbers, cheaper route when the output is as large as the input ('same' padding):
        # the full cross-correlation of ∂Z, padded by d(k−1) − p, with the flipped kernel whose
        # in/out channels swap — a plain forward convolution, no (K, P) patch gradient to scatter.
        flipped = w.reshape(groups, cout // groups, cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
        flipped = np.ascontiguousarray(flipped).reshape(groups * cg, cout // groups, kh, kw)
        return _conv_forward(dz, flipped, (1, 1), full, dilation, groups, in_hw)[0]
    if stride != (1, 1) and dilation == (1, 1) and kh % stride[0] == 0 and kw % stride[1] == 0:
        return _subpixel(dz, w, in_hw, stride, padding, groups)
    bl = _batch_last_pays(dz, ow)
    dz = batch_last(dz) if bl else dz
    wt = w.reshape(groups, cout // groups, -1).transpose(0, 2, 1)

    def tiles_of(block: slice) -> Iterator[tuple[Tile, Callable[[int, int], np.ndarray]]]:
        for batch, rows in _tiles(block, oh, groups * cg * kh * kw * ow * dz.itemsize, bl):
            # the gradient reaching every patch element of the tile:  Kᵀ • ∂Z     (B, G, Cg·kh·kw, P)
            dzt = _to_gemm(dz[batch, :, rows], groups, bl)
            dcols = np.matmul(wt, dzt, out=_scratch("gemm", dzt.shape[:2] + (wt.shape[1], dzt.shape[3]), dz.dtype))
            nb, rb = batch.stop - batch.start, rows.stop - rows.start
            dcols = _from_gemm(dcols, nb, (rb, ow), bl).reshape(nb, groups * cg, kh, kw, rb, ow)
            yield (batch, rows), lambda i, j, d=dcols: d[:, :, i, j]

    h, wd = in_hw
    # put every patch gradient back where the patch came from, summing overlaps (col2im)
    dxp = col2im(tiles_of, (n, groups * cg, h + 2 * padding[0], wd + 2 * padding[1]),
                 dz.dtype, (kh, kw), stride, dilation, (oh, ow), bl, flops=2 * dz.size * cg * kh * kw)
    return unpad(dxp, padding, in_hw)


def _subpixel(dz: np.ndarray, w: np.ndarray, in_hw: Pair, stride: Pair, padding: Pair, groups: int) -> np.ndarray:
    """K ⋆ᵀ ∂Z for stride s dividing the kernel, without a strided scatter (the sub-pixel form).

    Output row y = x·s + i − p receives ∂Z_x·K_i.  Write y + p = q·s + r: only the kernel rows
    i = r + s·t contribute, from x = q − t.  So each phase r (of s×s) is a stride-1 correlation of
    ∂Z with the flipped sub-kernel K[r::s], and all phases are one convolution with s² times the
    output channels; interleaving them ("pixel shuffle") and cropping p gives ∂A.  Same sums as
    the scatter, every term once.
    """
    n, cx, oh, ow = dz.shape
    _, cg, kh, kw = w.shape
    (sh, sw), (th, tw) = stride, (kh // stride[0], kw // stride[1])
    q = [(size - 1 + p) // s + 1 for size, p, s in zip(in_hw, padding, stride)]  # phases' rows, columns
    extra = [max(0, qq - o) for qq, o in zip(q, (oh, ow))]
    xp = np.zeros((n, cx, th - 1 + oh + extra[0], tw - 1 + ow + extra[1]), dz.dtype)
    xp[:, :, th - 1: th - 1 + oh, tw - 1: tw - 1 + ow] = dz  # t = 0 … th−1 reach back to x = q − t
    # K[ci, co, t·s + r] -> W2[(g, r_h, r_w, co), ci, th−1−t_h, tw−1−t_w]
    w2 = w.reshape(groups, cx // groups, cg, th, sh, tw, sw)[:, :, :, ::-1, :, ::-1, :]
    w2 = np.ascontiguousarray(w2.transpose(0, 4, 6, 2, 1, 3, 5)).reshape(groups * sh * sw * cg, cx // groups, th, tw)
    z, _ = _conv_forward(xp, w2, (1, 1), (0, 0), (1, 1), groups, (oh + extra[0], ow + extra[1]))
    dx = allocate((n, groups * cg) + tuple(in_hw), dz.dtype, is_batch_last(z), zeroed=False)  # z's layout
    z = z.reshape((n, groups, sh, sw, cg) + z.shape[2:])  # the phases apart (a view)
    dx5 = dx.reshape((n, groups, cg) + tuple(in_hw))
    for rh in range(sh):  # pixel shuffle and crop: phase (r_h, r_w) fills every s-th pixel
        for rw in range(sw):
            # output pixel y = q·s + r − p: the first with phase r is y0 = (r − p) mod s, at q0 = (y0 + p − r)/s
            (y0, x0) = (rh - padding[0]) % sh, (rw - padding[1]) % sw
            (qy, qx) = (y0 + padding[0] - rh) // sh, (x0 + padding[1] - rw) // sw
            ny, nx = len(range(y0, in_hw[0], sh)), len(range(x0, in_hw[1], sw))
            dx5[:, :, :, y0::sh, x0::sw] = z[:, :, rh, rw, :, qy: qy + ny, qx: qx + nx]
    return dx


# --------------------------------------------------------------------------- shared checks
def _conv_args(x, w, stride, padding, dilation, groups, transposed: bool):
    chk.float_array(x, "x", 4, "N, C, H, W")
    chk.float_array(w, "w", 4, "Cin, Cout/groups, kh, kw" if transposed else "Cout, Cin/groups, kh, kw")
    chk.same_dtype(x, w, "w")
    stride = chk.pair(stride, "stride", 1)
    padding = chk.pair(padding, "padding", 0)
    dilation = chk.pair(dilation, "dilation", 1)
    groups = chk.positive_int(groups, "groups")
    cin = x.shape[1]
    if cin < 1:
        raise ValueError(f"x: expected at least 1 channel, got shape {x.shape}")
    if w.shape[1 if transposed else 0] < 1:
        raise ValueError(f"w: expected at least 1 output channel, got shape {w.shape}")
    if w.shape[2] < 1 or w.shape[3] < 1:
        raise ValueError(f"w: expected a kernel of at least 1×1, got {w.shape[2]}×{w.shape[3]}")
    if cin % groups:
        raise ValueError(f"groups: expected a divisor of the input's {cin} channels, got {groups}")
    if transposed:
        if w.shape[0] != cin:
            raise ValueError(f"w: expected w.shape[0] == {cin} (x's channels), got shape {w.shape}")
    else:
        if w.shape[0] % groups:
            raise ValueError(f"groups: expected a divisor of the {w.shape[0]} output channels, got {groups}")
        if w.shape[1] * groups != cin:
            raise ValueError(f"w: expected w.shape[1] == {cin // groups} (x's {cin} channels / groups "
                             f"{groups}), got shape {w.shape}")
    return stride, padding, dilation, groups


def _bias_grad(dz: np.ndarray, has_bias: bool) -> np.ndarray | None:
    """∂B = Σ over batch and spatial positions of ∂Z.  (N, Cout, OH, OW) -> (Cout,)"""
    return dz.sum(axis=(0, 2, 3)) if has_bias else None


# --------------------------------------------------------------------------- conv2d
@dataclass(frozen=True, eq=False)
class _ConvCache:
    """The kernel and the geometry, which both convolutions' backward passes need."""

    w: np.ndarray
    out_shape: tuple[int, int, int, int]
    has_bias: bool
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int


@dataclass(frozen=True, eq=False)
class Conv2dCache(_ConvCache):
    """conv2d's: also the window view of the padded input, whose patches ∂K re-reads, and the
    input size (for ∂A)."""

    windows: np.ndarray
    x_hw: Pair


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, stride: int | Pair = 1,
           padding: int | Pair = 0, dilation: int | Pair = 1, groups: int = 1,
           ) -> tuple[np.ndarray, Conv2dCache]:
    """Z = K * A + B (a cross-correlation, as torch.nn.functional.conv2d).

    x (N, Cin, H, W), w (Cout, Cin/groups, kh, kw), b (Cout,) or None
    -> out (N, Cout, OH, OW) with OH = ⌊(H + 2p − d(kh−1) − 1)/s⌋ + 1, and the cache for backward.
    """
    stride, padding, dilation, groups = _conv_args(x, w, stride, padding, dilation, groups, False)
    b = chk.bias(b, x, w.shape[0])
    (_, _, h, wd), (_, _, kh, kw) = x.shape, w.shape
    oh = chk.output_size(out_size(h, kh, stride[0], padding[0], dilation[0]), "x (height)")
    ow = chk.output_size(out_size(wd, kw, stride[1], padding[1], dilation[1]), "x (width)")
    out, win = _conv_forward(x, w, stride, padding, dilation, groups, (oh, ow), b)
    return out, Conv2dCache(w, out.shape, b is not None, stride, padding, dilation, groups, win, (h, wd))


def conv2d_backward(dout: np.ndarray, cache: Conv2dCache, *, input_grad: bool = True,
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of conv2d for the upstream gradient ∂Z = dout (N, Cout, OH, OW).

    ∂A = K ⋆ᵀ ∂Z  (N, Cin, H, W)  — transposed convolution with the *unflipped* K (see module doc);
                                     None when input_grad=False (a first layer needs none)
    ∂K = Σ_patches A_patch ⊙ ∂Z_ij  (Cout, Cin/groups, kh, kw)
    ∂B = Σ_{n,i,j} ∂Z_nij  (Cout,), or None without bias
    Summed over the batch, not averaged: the loss's mean carries the seed's 1/β.
    """
    chk.cache_of(cache, Conv2dCache, "conv2d")
    c = cache
    dz = chk.grad_output(dout, c.out_shape, c.w.dtype)
    def data() -> np.ndarray:
        return _conv_backward_data(dz, c.w, c.x_hw, c.stride, c.padding, c.dilation, c.groups)

    def weight() -> np.ndarray:
        return _conv_backward_weight(dz, c.windows, c.groups)

    if not input_grad:
        return None, weight(), _bias_grad(dz, c.has_bias)
    # ∂A and ∂K are independent: on two threads at once where the batch is too small to split
    dx, dw = _parallel.both(data, weight, dz.shape[0], 2 * dz.nbytes, 2 * dz.size * c.w[0].size)
    return dx, dw, _bias_grad(dz, c.has_bias)


# --------------------------------------------------------------------------- conv_transpose2d
@dataclass(frozen=True, eq=False)
class ConvTranspose2dCache(_ConvCache):
    """conv_transpose2d's: also its input X (for ∂K)."""

    x: np.ndarray


def conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *,
                     stride: int | Pair = 1, padding: int | Pair = 0, output_padding: int | Pair = 0,
                     dilation: int | Pair = 1, groups: int = 1,
                     ) -> tuple[np.ndarray, ConvTranspose2dCache]:
    """Y = K ⋆ᵀ X + B: the transposed convolution, i.e. conv2d's backward-data applied to x.

    x (N, Cin, H, W), w (Cin, Cout/groups, kh, kw), b (Cout,) or None -> out (N, Cout, OH, OW),
    OH = (H − 1)s − 2p + d(kh − 1) + output_padding + 1, as torch.nn.functional.conv_transpose2d.
    """
    stride, padding, dilation, groups = _conv_args(x, w, stride, padding, dilation, groups, True)
    output_padding = chk.pair(output_padding, "output_padding", 0)
    for k in range(2):
        if output_padding[k] >= max(stride[k], dilation[k]):
            raise ValueError(f"output_padding: expected values smaller than stride {stride} or dilation "
                             f"{dilation}, got {output_padding}")
    b = chk.bias(b, x, w.shape[1] * groups)
    n, _, h, wd = x.shape
    _, cog, kh, kw = w.shape
    hw = [(size - 1) * stride[k] - 2 * padding[k] + dilation[k] * (ksz - 1) + output_padding[k] + 1
          for k, (size, ksz) in enumerate(((h, kh), (wd, kw)))]
    oh = chk.output_size(hw[0], "x (height)")
    ow = chk.output_size(hw[1], "x (width)")
    out = _conv_backward_data(x, w, (oh, ow), stride, padding, dilation, groups)
    if b is not None:
        out += b[:, None, None]
    return out, ConvTranspose2dCache(w, out.shape, b is not None, stride, padding, dilation, groups, x)


def conv_transpose2d_backward(dout: np.ndarray, cache: ConvTranspose2dCache, *, input_grad: bool = True,
                              ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of conv_transpose2d for dout (N, Cout, OH, OW).

    ∂X = K * ∂Y  (N, Cin, H, W)   — the adjoint of a transposed convolution is the convolution
    ∂K = Σ_patches ∂Y_patch ⊙ X_ij  (Cin, Cout/groups, kh, kw)
    ∂B = Σ ∂Y over batch and positions  (Cout,), or None without bias
    """
    chk.cache_of(cache, ConvTranspose2dCache, "conv_transpose2d")
    c = cache
    dy = chk.grad_output(dout, c.out_shape, c.w.dtype)
    # ∂X and ∂K read the same patches of ∂Y: one pass over them computes both
    win = _window_view(dy, c.w.shape[2:], c.stride, c.padding, c.dilation, c.x.shape[2:])
    dx, dw = _patch_gemms(win, c.groups, w=c.w, dz=c.x)
    return (dx if input_grad else None), dw, _bias_grad(dy, c.has_bias)
