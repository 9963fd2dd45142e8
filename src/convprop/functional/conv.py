"""Convolution and transposed convolution — each one the other's backward-data, written once.

Symbols (docs/math.md): A^{l-1} = x (N, C, H, W), K^l = w (Cout, C/G, kh, kw), Z^l = out
(N, Cout, OH, OW), ∂Z^l = dout.  G = groups, Cg = C/G, Cog = Cout/G.

Memory is channels-last (_windows.py): every array here is (N, H, W, C) behind its (N, C, H, W)
shape, so a patch A_patch_ij (kh, kw, Cg) is one GEMM row, the kernel is K as columns
(kh·kw·Cg, Cog), and the three equations are three GEMMs, each over a tile of positions
(_schedule.each_tile runs the tiles, the batch split over convprop's threads):

    Z   = patches @ K + B          Z_ij = A_patch_ij · K + B        lands in (N, OH, OW, Cout)
    ∂K  = patchesᵀ @ ∂Z            ∂K = Σ_ij A_patch_ijᵀ ∂Z_ij     summed over every position
    ∂A  = K ⋆ᵀ ∂Z                  the transposed convolution, by one of five routes (`_data_grad`)

The flip convention (docs/math.md, "The flip convention"; tests/unit/functional against torch):
∂A is the *transposed* convolution of ∂Z with K itself — every ∂Z_ij is scattered back, times the
unflipped kernel, onto the window it came from ('scatter': ∂A_patch = ∂Z @ Kᵀ, then col2im).  That
equals the *full cross-correlation* of the (padded) ∂Z with the *flipped* kernel ('same', at
stride 1); "a transposed convolution with the flipped kernel" flips twice and is wrong for any
kernel that is not symmetric.

conv_transpose2d's forward is `_data_grad`; its backward is the forward correlation (∂X) and the
patches' GEMM (∂K) with the roles of input and output swapped, both on each tile's patches of ∂Y.

Loop twins (functional/reference.py, which `use_reference` switches every call here to):
conv2d, conv2d_backward, conv_transpose2d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from . import _checks as chk
from . import _schedule as S
from . import reference as R
from ._unbatched import unbatched, unbatched_backward
from ._windows import Col2im, Pair, channel_sum, nchw, nhwc, out_size, pad, windows

__all__ = ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward"]


# --------------------------------------------------------------------------- the GEMMs, tile by tile
def _kernel_columns(w: np.ndarray, groups: int) -> np.ndarray:
    """K (Cout, Cg, kh, kw) as GEMM columns (G, kh·kw·Cg, Cog), in the patches' (kh, kw, C) order."""
    cout, cg, kh, kw = w.shape
    k = w.reshape(groups, cout // groups, cg, kh, kw).transpose(0, 3, 4, 2, 1)
    return k.reshape(groups, kh * kw * cg, cout // groups)


def _from_columns(dk: np.ndarray, w_shape: tuple[int, ...]) -> np.ndarray:
    """GEMM columns (G, kh·kw·Cg, Cog) back to a kernel (Cout, Cg, kh, kw)."""
    cout, cg, kh, kw = w_shape
    groups = dk.shape[0]
    return dk.reshape(groups, kh, kw, cg, cout // groups).transpose(0, 4, 3, 1, 2).reshape(w_shape)


def _work(win: np.ndarray, cout: int) -> tuple[int, int]:
    """(bytes, flops) of one GEMM over the window view win's patches with cout columns."""
    n, oh, ow, kh, kw, c = win.shape
    return n * oh * ow * (c + cout) * win.itemsize, 2 * n * oh * ow * kh * kw * c * cout


def _thin(kw: int, cg: int, cog: int) -> bool:
    """A first layer of few outputs: patches copied by columns (few channels) for a GEMM of fewer than 16
    outputs a group (LeNet-5's 1→6; not a CIFAR net's 3→16)."""
    return S.by_columns(kw, cg) and cog < 16


def _row_bytes(win: np.ndarray, groups: int, cout: int) -> int:
    """The patches of one output row of one sample, as the tiles count them: a thin layer's count
    COLUMNS_TILE_SHARE times, so that their tile stays in L2 (docs/performance.md, "Patches by columns")."""
    thin = _thin(win.shape[4], win.shape[5] // groups, cout // groups)
    return (S.COLUMNS_TILE_SHARE if thin else 1) * math.prod(win.shape[2:]) * win.itemsize


def _correlate(xh: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair, padding: Pair, dilation: Pair,
               groups: int, out_hw: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Z = K * A + B.  xh (N, H, W, C), w (Cout, Cg, kh, kw), b (Cout,) or None -> Z (N, OH, OW, Cout),
    and the window view of the padded xh, whose patches ∂K re-reads.  xh may be a view of NCHW memory
    (a model's input): kept so where im2col copies by columns (few channels), else made channels-last.

    Wide rows: for a thin layer (`_thin`) at column stride 1, the window view spans the padded width W'
    (`windows(wrap=True)`), so that a column of patches is one run of OH·W' values instead of OH runs of
    OW; the W' − OW extra positions per row are computed and dropped as Z is copied out of scratch
    (docs/performance.md, "Wide rows").  With more outputs that copy of Z costs more than it saves."""
    cout, cg, kh, kw = w.shape
    wide = stride[1] == 1 and kw > 1 and _thin(kw, cg, cout // groups)
    if not S.by_columns(kw, cg):
        xh = nhwc(nchw(xh))
    xp = pad(xh, padding, (1, 0), planes=True) if wide else pad(xh, padding)
    win = windows(xp, (kh, kw), stride, dilation, (out_hw[0], xp.shape[2] if wide else out_hw[1]), wrap=wide)
    k = _kernel_columns(w, groups)
    zh = np.empty((xh.shape[0],) + tuple(out_hw) + (cout,), xh.dtype)
    bias = None if b is None else np.tile(b, out_hw[1])  # B for a whole output row (OW·Cout): long runs

    def tile(t: S.Tile, _) -> None:
        p = S.patches(win, t, groups)
        if wide:  # Z over the wide rows, then the first OW of each row (+ B) into zh
            zw = S.scratch(p.shape[:2] + k.shape[2:], p.dtype, "rows")
            np.matmul(p, k, out=zw)  # Z_ij = A_patch_ij · K
            dst = zh[t.batch, t.rows].reshape(-1, t.rows.stop - t.rows.start, out_hw[1], groups, cout // groups)
            crop = zw.reshape((groups,) + dst.shape[:2] + (-1, cout // groups))[:, :, :, : out_hw[1]]
            crop = crop.transpose(1, 2, 3, 0, 4)
            if bias is None:
                np.copyto(dst, crop)
            else:
                np.add(crop, bias.reshape(dst.shape[2:]), out=dst)  # + B
            return
        np.matmul(p, k, out=S.rows(zh, t, groups))  # Z_ij = A_patch_ij · K
        if bias is not None:
            rows = zh[t.batch, t.rows].reshape(-1, bias.size)
            rows += bias  # + B

    S.each_tile(tile, xh.shape[0], out_hw[0], _row_bytes(win, groups, w.shape[0]), _work(win, w.shape[0]))
    return zh, win


def _weight_grad(win: np.ndarray, dzh: np.ndarray, w_shape: tuple[int, ...], groups: int) -> np.ndarray:
    """∂K = Σ_n Σ_ij A_patch_ijᵀ ∂Z_ij.  win the window view (N, OH, OW, kh, kw, C) of the padded input,
    dzh (N, OH, OW, Cout) -> (Cout, Cg, kh, kw)."""

    def tile(t: S.Tile, dk: np.ndarray) -> None:
        dz = S.rows(dzh, t, groups) if win.shape[2] == dzh.shape[2] else _widened_rows(dzh, t, groups, win.shape[2])
        dk += S.patches(win, t, groups).transpose(0, 2, 1) @ dz  # A_patchᵀ ∂Z

    cols = (groups, w_shape[1] * w_shape[2] * w_shape[3], w_shape[0] // groups)
    dk = S.each_tile(tile, dzh.shape[0], dzh.shape[1], _row_bytes(win, groups, dzh.shape[3]), _work(win, dzh.shape[3]),
                     start=lambda: np.zeros(cols, dzh.dtype))
    return _from_columns(sum(dk[1:], dk[0]), w_shape)


def _widened_rows(dzh: np.ndarray, t: S.Tile, groups: int, wide: int) -> np.ndarray:
    """Tile t's ∂Z (N, OH, OW, Cout) as GEMM rows (G, P, Cog) over output rows `wide` long (the wide
    rows of `_correlate`), zero at the extra positions: they add nothing to ∂K."""
    part = dzh[t.batch, t.rows]
    nb, rb, ow, cout = part.shape
    rows = S.scratch((groups, nb, rb, wide, cout // groups), dzh.dtype, "rows")
    rows[:, :, :, ow:] = 0
    np.copyto(rows[:, :, :, :ow], part.reshape(nb, rb, ow, groups, -1).transpose(3, 0, 1, 2, 4))
    return rows.reshape(groups, -1, cout // groups)


# --------------------------------------------------------------------------- ∂A = K ⋆ᵀ ∂Z, five routes
def _data_grad(dzh: np.ndarray, w: np.ndarray, in_hw: Pair, stride: Pair, padding: Pair, dilation: Pair,
               groups: int) -> np.ndarray:
    """∂A = K ⋆ᵀ ∂Z, the transposed convolution.  dzh (N, OH, OW, Cout), w (Cout, Cg, kh, kw)
    -> ∂A (N, H, W, G·Cg) where in_hw = (H, W), by the route `_data_grad_route` picks:

    same      ∂A = ∂Z ⋆ rot180(K)ᵀ   the full cross-correlation of ∂Z, padded d(k−1) − p, with the
                                     flipped kernel, Cin and Cout swapped: one forward correlation
    subpixel  the same for stride s dividing the kernel, one correlation per phase (`_subpixel_route`)
    scatter   ∂A_patch_ij = ∂Z_ij Kᵀ for every position, added back onto window ij (col2im)
    batch-inner, planes   the scatter as one GEMM Kᵀ ∂Zᵀ a tile, col2im onto (C, H, W, N) or onto each
                          channel's planes (`_batch_inner_route`, `_planes_route`)
    """
    cout, cg, kh, kw = w.shape
    route = _data_grad_route(dzh.shape, w.shape, in_hw, stride, padding, dilation, groups)
    if route == "same":
        full = tuple(d * (k - 1) - p for d, k, p in zip(dilation, (kh, kw), padding))
        flipped = w.reshape(groups, cout // groups, cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
        return _correlate(dzh, flipped.reshape(groups * cg, cout // groups, kh, kw), None, (1, 1), full, dilation,
                          groups, in_hw)[0]
    if route == "subpixel":
        return _subpixel_route(dzh, w, in_hw, stride, padding, groups)
    if route == "batch-inner":
        return _batch_inner_route(dzh, w, in_hw, stride, padding, dilation)
    if route == "planes":
        return _planes_route(dzh, w, in_hw, stride, padding, dilation)
    n, oh, ow, _ = dzh.shape
    # Kᵀ for each kernel offset (G, kh·kw, Cog, Cg): each offset's patch gradients come out as
    # contiguous (P, Cg) rows, which col2im adds onto its window cells in long runs
    kt = np.ascontiguousarray(w.reshape(groups, cout // groups, cg, kh * kw).transpose(0, 3, 1, 2))
    da = Col2im((n, in_hw[0] + 2 * padding[0], in_hw[1] + 2 * padding[1], groups * cg), dzh.dtype, (kh, kw),
                stride, dilation, (oh, ow))

    def tile(t: S.Tile, _) -> None:
        dpatch = np.matmul(S.rows(dzh, t, groups)[:, None], kt)  # ∂A_patch_ij = ∂Z_ij Kᵀ  (G, kh·kw, P, Cg)
        dp = dpatch.reshape(groups, kh, kw, -1, t.rows.stop - t.rows.start, ow, cg)
        da.add(lambda i, j: dp[:, i, j].transpose(1, 2, 3, 0, 4).reshape(dp.shape[3:6] + (-1,)), t.batch, t.rows)

    S.each_tile(tile, n, oh, ow * cg * groups * kh * kw * dzh.itemsize,
                (2 * da.dxp.nbytes, 2 * dzh.size * cg * kh * kw))
    return da.dxp[:, padding[0]: padding[0] + in_hw[0], padding[1]: padding[1] + in_hw[1]]


# ∂A of fewer channels than this, with a patch of at least BATCH_INNER_ROWS values: the batch-inner route
# (LeNet-5's conv2: 6 channels, 5×5; docs/performance.md, "The ∂A routes")
BATCH_INNER_CHANNELS, BATCH_INNER_ROWS = 16, 64


def _data_grad_route(dz_shape: tuple[int, ...], w_shape: tuple[int, ...], in_hw: Pair, stride: Pair,
                     padding: Pair, dilation: Pair, groups: int) -> str:
    """Which computation of ∂A = K ⋆ᵀ ∂Z these shapes take (dz_shape (N, OH, OW, Cout)) — the same
    sums each (docs/math.md): 'same' for stride 1 and an output about as large as the input,
    'subpixel' where the stride divides the kernel (×2 upsampling, k4 s2), 'batch-inner' for few input
    channels under a large kernel (a scatter whose GEMMs would be a few columns wide), 'planes' for an
    image's 1–3 channels, else 'scatter'."""
    _, oh, ow, cout = dz_shape
    _, cg, kh, kw = w_shape
    full = [d * (k - 1) - p for d, k, p in zip(dilation, (kh, kw), padding)]
    covers = all(o + 2 * f - d * (k - 1) == size  # the correlation yields exactly H × W (no output_padding)
                 for o, f, d, k, size in zip((oh, ow), full, dilation, (kh, kw), in_hw))
    if stride == (1, 1) and min(full) >= 0 and covers and cout * in_hw[0] * in_hw[1] <= 1.5 * groups * cg * oh * ow:
        return "same"
    if stride != (1, 1) and dilation == (1, 1) and kh % stride[0] == 0 and kw % stride[1] == 0:
        return "subpixel"
    if groups == 1 and cg < BATCH_INNER_CHANNELS and kh * kw * cg >= BATCH_INNER_ROWS:
        return "batch-inner"
    if groups == 1 and cg <= PLANES_CHANNELS:
        return "planes"
    return "scatter"


def _batch_inner_route(dzh: np.ndarray, w: np.ndarray, in_hw: Pair, stride: Pair, padding: Pair, dilation: Pair,
                       ) -> np.ndarray:
    """K ⋆ᵀ ∂Z for few input channels (groups 1): the scatter with the batch innermost.

    ∂A_patchᵀ = Kᵀ ∂Zᵀ — for every position (y, x, n) its patch gradient (kh, kw, C) — is one GEMM per
    tile with the positions as its long side (the per-offset scatter's GEMMs would be C columns wide),
    and ∂A is held as (C, H, W, N), so that col2im adds runs of OW·N values (not of C).
    """
    n, oh, ow, cout = dzh.shape
    _, cg, kh, kw = w.shape
    kt = w.transpose(2, 3, 1, 0).reshape(kh * kw * cg, cout)  # Kᵀ: rows (i, j, c)
    da = Col2im((cg, in_hw[0] + 2 * padding[0], in_hw[1] + 2 * padding[1], n), dzh.dtype, (kh, kw), stride,
                dilation, (oh, ow))
    row_bytes = kt.shape[0] * ow * dzh.itemsize  # one output row's patch gradients, per sample

    def block(b: slice) -> None:
        nb = b.stop - b.start
        rb = max(1, min(oh, S.TILE_BYTES // max(1, row_bytes * nb)))
        for y in range(0, oh, rb):
            rows = slice(y, min(oh, y + rb))
            dzt = dzh[b, rows].transpose(3, 1, 2, 0).reshape(cout, -1)  # ∂Zᵀ, positions ordered (y, x, n)
            dp = (kt @ dzt).reshape(kh, kw, cg, rows.stop - rows.start, ow, nb)  # ∂A_patchᵀ = Kᵀ ∂Zᵀ
            da.add(lambda i, j, dp=dp: dp[i, j], slice(None), rows, b)

    S.run(block, S.parts(n, 2 * da.dxp.nbytes, 2 * dzh.size * cg * kh * kw))
    crop = da.dxp[:, padding[0]: padding[0] + in_hw[0], padding[1]: padding[1] + in_hw[1]]
    return np.ascontiguousarray(crop.transpose(3, 1, 2, 0))  # (N, H, W, C)


# ∂A of at most this many channels (a first layer's image: grey or RGB): the planes route
PLANES_CHANNELS = 3


def _planes_route(dzh: np.ndarray, w: np.ndarray, in_hw: Pair, stride: Pair, padding: Pair, dilation: Pair,
                  ) -> np.ndarray:
    """K ⋆ᵀ ∂Z for an image's 1–3 channels (groups 1): the scatter onto each channel's planes.

    ∂A_patchᵀ = Kᵀ ∂Zᵀ for a tile of samples is one GEMM, ∂Z read in place (its transposed view), with
    the positions as its long side (the per-offset scatter's GEMMs would be 1–3 columns wide); col2im
    adds each offset's rows onto the tile's (C·nb) planes of H'×W' in runs of OW values, and the
    cropped planes are copied to channels-last once.
    """
    n, oh, ow, cout = dzh.shape
    _, cg, kh, kw = w.shape
    kt = w.transpose(2, 3, 1, 0).reshape(kh * kw * cg, cout)  # Kᵀ: rows (i, j, c)
    (hp, wp), (ph, pw) = (in_hw[0] + 2 * padding[0], in_hw[1] + 2 * padding[1]), padding
    dx = np.empty((n,) + tuple(in_hw) + (cg,), dzh.dtype)

    def tile(t: S.Tile, _) -> None:
        nb = t.batch.stop - t.batch.start
        dp = (kt @ dzh[t.batch].reshape(-1, cout).T).reshape(kh, kw, cg * nb, oh, ow, 1)  # ∂A_patchᵀ = Kᵀ ∂Zᵀ
        da = Col2im((cg * nb, hp, wp, 1), dzh.dtype, (kh, kw), stride, dilation, (oh, ow))  # planes (c, n)
        da.add(lambda i, j: dp[i, j], slice(None), slice(None))
        planes = da.dxp.reshape(cg, nb, hp, wp)[:, :, ph: ph + in_hw[0], pw: pw + in_hw[1]]
        dx[t.batch] = planes.transpose(1, 2, 3, 0)

    S.each_tile(tile, n, 1, kt.shape[0] * oh * ow * dzh.itemsize, (2 * dx.nbytes, 2 * dzh.size * kt.shape[0]))
    return dx


def _subpixel_route(dzh: np.ndarray, w: np.ndarray, in_hw: Pair, stride: Pair, padding: Pair, groups: int,
                    ) -> np.ndarray:
    """K ⋆ᵀ ∂Z for stride s dividing the kernel, without a strided scatter (the sub-pixel form).

    Output row y = x·s + i − p receives ∂Z_x·K_i.  Write y + p = q·s + r: only the kernel rows
    i = r + s·t contribute, from x = q − t.  So each phase r (of s×s) is a stride-1 correlation of
    ∂Z with the flipped sub-kernel K[r::s], and all phases are one correlation with s² times the
    output channels; interleaving them ("pixel shuffle") and cropping p gives ∂A.  Same sums as
    the scatter, every term once.
    """
    n, oh, ow, cx = dzh.shape
    _, cg, kh, kw = w.shape
    (sh, sw), (th, tw) = stride, (kh // stride[0], kw // stride[1])
    q = [(size - 1 + p) // s + 1 for size, p, s in zip(in_hw, padding, stride)]  # phases' rows, columns
    extra = [max(0, qq - o) for qq, o in zip(q, (oh, ow))]
    xp = np.zeros((n, th - 1 + oh + extra[0], tw - 1 + ow + extra[1], cx), dzh.dtype)
    xp[:, th - 1: th - 1 + oh, tw - 1: tw - 1 + ow] = dzh  # t = 0 … th−1 reach back to x = q − t
    # K[ci, co, t·s + r] -> W2[(g, r_h, r_w, co), ci, th−1−t_h, tw−1−t_w]
    w2 = w.reshape(groups, cx // groups, cg, th, sh, tw, sw)[:, :, :, ::-1, :, ::-1, :]
    w2 = w2.transpose(0, 4, 6, 2, 1, 3, 5).reshape(groups * sh * sw * cg, cx // groups, th, tw)
    z, _ = _correlate(xp, w2, None, (1, 1), (0, 0), (1, 1), groups, (oh + extra[0], ow + extra[1]))
    z = z.reshape(z.shape[:3] + (groups, sh, sw, cg))  # the phases apart (a view)
    dx = np.empty((n,) + tuple(in_hw) + (groups * cg,), dzh.dtype)
    dx5 = dx.reshape(dx.shape[:3] + (groups, cg))
    for rh in range(sh):  # pixel shuffle and crop: phase (r_h, r_w) fills every s-th pixel
        for rw in range(sw):
            # output pixel y = q·s + r − p: the first with phase r is y0 = (r − p) mod s, at q0 = (y0 + p − r)/s
            (y0, x0) = (rh - padding[0]) % sh, (rw - padding[1]) % sw
            (qy, qx) = (y0 + padding[0] - rh) // sh, (x0 + padding[1] - rw) // sw
            ny, nx = len(range(y0, in_hw[0], sh)), len(range(x0, in_hw[1], sw))
            dx5[:, y0::sh, x0::sw] = z[:, qy: qy + ny, qx: qx + nx, :, rh, rw]
    return dx


# --------------------------------------------------------------------------- shared checks
def _conv_args(x, w, stride, padding, dilation, groups, transposed: bool):
    chk.float_array(x, "x", 4, "N, C, H, W; or C, H, W unbatched")
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
    """conv2d's: also the input x and the window view (N, OH, OW, kh, kw, C) of its padded channels-last
    copy, whose patches ∂K re-reads (None where the loop twin ran)."""

    x: np.ndarray
    windows: np.ndarray | None
    extra: Pair = (0, 0)  # 'same' padding's extra bottom/right zeros, cropped from ∂A


@unbatched  # (C, H, W): a batch of one
def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride: int | Pair = 1,
           padding: int | Pair | str = 0, dilation: int | Pair = 1, groups: int = 1,
           ) -> tuple[np.ndarray, Conv2dCache]:
    """Z = K * A + B (a cross-correlation, as torch.nn.functional.conv2d).  Loop twin: reference.conv2d.

    x (N, Cin, H, W) or (Cin, H, W), w (Cout, Cin/groups, kh, kw), b (Cout,) or None
    -> out (N, Cout, OH, OW), channels-last in memory, with OH = ⌊(H + 2p − d(kh−1) − 1)/s⌋ + 1, and
    the cache for backward.
    padding 'valid' is 0; 'same' (stride 1) pads d(k−1) in all, the odd one at the bottom/right, as torch.
    """
    padding, extra = _string_padding(padding, stride, dilation, w)
    if isinstance(x, np.ndarray) and x.ndim == 4 and any(extra):  # 'same' with an even kernel: one more row/col
        x = np.pad(x, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))
    stride, padding, dilation, groups = _conv_args(x, w, stride, padding, dilation, groups, False)
    b = chk.bias(b, x, w.shape[0])
    (_, _, h, wd), (_, _, kh, kw) = x.shape, w.shape
    oh = chk.output_size(out_size(h, kh, stride[0], padding[0], dilation[0]), "x (height)")
    ow = chk.output_size(out_size(wd, kw, stride[1], padding[1], dilation[1]), "x (width)")
    if R.active():
        out = R.conv2d(x, w, b, stride, padding, dilation, groups).astype(x.dtype)
        return out, Conv2dCache(w, out.shape, b is not None, stride, padding, dilation, groups, x, None, extra)
    zh, win = _correlate(x.transpose(0, 2, 3, 1), w, b, stride, padding, dilation, groups, (oh, ow))
    out = nchw(zh)
    return out, Conv2dCache(w, out.shape, b is not None, stride, padding, dilation, groups, x, win, extra)


def _string_padding(padding, stride, dilation, w) -> tuple[Any, Pair]:
    """padding 'valid' -> 0; 'same' -> the symmetric part d(k−1)//2 and the extra (0 or 1) zero
    row/column torch adds at the bottom/right when d(k−1) is odd.  Other values pass through."""
    if not isinstance(padding, str):
        return padding, (0, 0)
    if padding == "valid":
        return 0, (0, 0)
    if padding != "same":
        raise ValueError(f"padding: expected an int, a pair, 'same' or 'valid', got {padding!r}")
    if chk.pair(stride, "stride", 1) != (1, 1):
        raise ValueError(f"padding: 'same' is for stride 1 (as in torch), got stride {stride}")
    chk.float_array(w, "w", 4, "Cout, Cin/groups, kh, kw")
    total = [d * (k - 1) for d, k in zip(chk.pair(dilation, "dilation", 1), w.shape[2:])]
    return (total[0] // 2, total[1] // 2), (total[0] % 2, total[1] % 2)


@unbatched_backward
def conv2d_backward(dout: np.ndarray, cache: Conv2dCache, *, input_grad: bool = True,
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of conv2d for the upstream gradient ∂Z = dout (N, Cout, OH, OW).  Loop twin:
    reference.conv2d_backward.

    ∂A = K ⋆ᵀ ∂Z  (N, Cin, H, W)  — transposed convolution with the *unflipped* K (see module doc);
                                     None when input_grad=False (a first layer needs none)
    ∂K = Σ_patches A_patchᵀ ∂Z_ij  (Cout, Cin/groups, kh, kw)
    ∂B = Σ_{n,i,j} ∂Z_nij  (Cout,), or None without bias
    Summed over the batch, not averaged: the loss's mean carries the 1/β (docs/math.md, "Batch averaging").
    """
    chk.cache_of(cache, Conv2dCache, "conv2d")
    c = cache
    dz = chk.grad_output(dout, c.out_shape, c.w.dtype)
    h, w = c.x.shape[2] - c.extra[0], c.x.shape[3] - c.extra[1]
    if c.windows is None or R.active():
        da, dk, db = R.conv2d_backward(dz, c.x, c.w, c.stride, c.padding, c.dilation, c.groups)
        return (nchw(nhwc(da[:, :, :h, :w].astype(dz.dtype))) if input_grad else None, dk.astype(dz.dtype),
                db.astype(dz.dtype) if c.has_bias else None)
    dzh = nhwc(dz)
    db = channel_sum(nchw(dzh)) if c.has_bias else None  # ∂B = Σ ∂Z
    dk = partial(_weight_grad, c.windows, dzh, c.w.shape, c.groups)  # ∂K = Σ_ij A_patch_ijᵀ ∂Z_ij
    if not input_grad:
        return None, dk(), db
    da = partial(_data_grad, dzh, c.w, c.x.shape[2:], c.stride, c.padding, c.dilation, c.groups)  # ∂A = K ⋆ᵀ ∂Z
    # ∂A and ∂K are independent: on two threads at once where the batch is too small to split
    da, dk = S.both(da, dk, dz.shape[0], 2 * dz.nbytes, 2 * dz.size * c.w[0].size)
    return nchw(da[:, :h, :w]), dk, db


# --------------------------------------------------------------------------- conv_transpose2d
@dataclass(frozen=True, eq=False)
class ConvTranspose2dCache(_ConvCache):
    """conv_transpose2d's: also its input X (for ∂K)."""

    x: np.ndarray


@unbatched  # (C, H, W): a batch of one
def conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride: int | Pair = 1,
                     padding: int | Pair = 0, output_padding: int | Pair = 0, groups: int = 1,
                     dilation: int | Pair = 1) -> tuple[np.ndarray, ConvTranspose2dCache]:
    """Y = K ⋆ᵀ X + B: the transposed convolution, i.e. conv2d's backward-data applied to x.
    Loop twin: reference.conv_transpose2d.

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
    out_hw = (chk.output_size(hw[0], "x (height)"), chk.output_size(hw[1], "x (width)"))
    if R.active():
        out = nchw(nhwc(R.conv_transpose2d(x, w, out_hw, stride, padding, dilation, groups).astype(x.dtype)))
    else:
        out = nchw(_data_grad(nhwc(x), w, out_hw, stride, padding, dilation, groups))  # Y = K ⋆ᵀ X
    if b is not None:
        out += b[:, None, None]
    return out, ConvTranspose2dCache(w, out.shape, b is not None, stride, padding, dilation, groups, x)


@unbatched_backward
def conv_transpose2d_backward(dout: np.ndarray, cache: ConvTranspose2dCache, *, input_grad: bool = True,
                              ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of conv_transpose2d for dout (N, Cout, OH, OW).  Loop twins: reference.conv2d (∂X) and
    reference.conv2d_backward (∂K).

    ∂X = K * ∂Y  (N, Cin, H, W)   — the adjoint of a transposed convolution is the convolution
    ∂K = Σ_patches ∂Y_patchᵀ X_ij  (Cin, Cout/groups, kh, kw)
    ∂B = Σ ∂Y over batch and positions  (Cout,), or None without bias
    """
    chk.cache_of(cache, ConvTranspose2dCache, "conv_transpose2d")
    c = cache
    dy = chk.grad_output(dout, c.out_shape, c.w.dtype)
    db = channel_sum(dy) if c.has_bias else None  # ∂B = Σ ∂Y
    if R.active():
        dx = R.conv2d(dy, c.w, None, c.stride, c.padding, c.dilation, c.groups).astype(dy.dtype)
        dk = R.conv2d_backward(c.x, dy, c.w, c.stride, c.padding, c.dilation, c.groups)[1].astype(dy.dtype)
        return (nchw(nhwc(dx)) if input_grad else None), dk, db
    xh = nhwc(c.x)
    win = windows(pad(nhwc(dy), c.padding), c.w.shape[2:], c.stride, c.dilation, xh.shape[1:3])
    k, g = _kernel_columns(c.w, c.groups), c.groups
    dxh = np.empty_like(xh)

    def tile(t: S.Tile, dk: np.ndarray) -> None:  # both read the same patches of ∂Y, copied once a tile
        patches = S.patches(win, t, g)
        np.matmul(patches, k, out=S.rows(dxh, t, g))  # ∂X = K * ∂Y
        dk += patches.transpose(0, 2, 1) @ S.rows(xh, t, g)  # ∂K = Σ_ij ∂Y_patch_ijᵀ X_ij

    dk = S.each_tile(tile, xh.shape[0], xh.shape[1], _row_bytes(win, g, xh.shape[3]),
                     _work(win, c.w.shape[0] + xh.shape[3]), start=lambda: np.zeros(k.shape, dy.dtype))
    return (nchw(dxh) if input_grad else None), _from_columns(sum(dk[1:], dk[0]), c.w.shape), db
