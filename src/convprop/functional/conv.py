"""Convolution and transposed convolution — each one the other's backward-data, written once.

Symbols (docs/math.md): A^{l-1} = x (N, C, H, W), K^l = w (Cout, C/G, kh, kw), Z^l = out
(N, Cout, OH, OW), ∂Z^l = dout.  G = groups, Cg = C/G, Cog = Cout/G.

Three cores carry all the maths, each the body of one tile of output positions (a block of samples
and output rows; `_tiling.each_tile` runs it over every tile, the batch split over convprop's threads):

    _conv_tile         Z = K * A + B              every patch of A (a GEMM column) times the kernel
    _weight_grad_tile  ∂K = Σ_ij A_patch_ij ⊙ ∂Z_ij   the same patches times ∂Z, summed over positions
    _data_grad_tile    ∂A = K ⋆ᵀ ∂Z               Kᵀ • ∂Z for every patch, scattered back (col2im)

∂A has two cheaper routes to the same sums, chosen in one place (`_data_grad_route`): the 'same'
route (stride 1, output as large as the input: a full correlation with the flipped kernel) and the
sub-pixel route (the stride divides the kernel).  docs/math.md ("The flip convention") derives both.

The flip convention (docs/math.md proves it on numbers, tests/unit/functional/test_functional.py against torch):
∂A is the *transposed* convolution of ∂Z with K itself — every ∂Z_ij is scattered back, times the
unflipped kernel, onto the window it came from.  That equals the *full cross-correlation* of the
(zero-inserted, padded) ∂Z with the *flipped* kernel; "a transposed convolution with the flipped
kernel" flips twice and is wrong for any kernel that is not symmetric.

conv_transpose2d's forward is `_data_grad`; its backward is `_conv_tile` (∂x) and `_weight_grad_tile`
(∂w) with the roles of input and output swapped, both on each tile's patches of ∂Y.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from . import _checks as chk
from . import _threads
from ._tiling import Tile, batch_last_pays, each_tile, window_view
from ._unbatched import unbatched, unbatched_backward
from ._windows import Col2im, Pair, allocate, batch_last, is_batch_last, is_batch_last_view, out_size, unpad

__all__ = ["conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward"]


# --------------------------------------------------------------------------- the three cores, one tile each
def _conv_tile(t: Tile, k: np.ndarray, a: np.ndarray, b: np.ndarray | None, z: np.ndarray) -> None:
    """Z = K * A + B on tile t.  k (G, Cog, Cg·kh·kw) the kernel as GEMM rows, a (B, G, Cg·kh·kw, P)
    the tile's patches A_patch_ij as columns, b (Cout,) or None; writes the tile's part of z (N, Cout, OH, OW)."""
    zt = t.product(k, a, out=t.output(z, k.shape[1]))  # Z_ij = Σ K ⊙ A_patch_ij, every ij at once   (B, G, Cog, P)
    t.put(zt, z, b)                                      # + B


def _weight_grad_tile(t: Tile, a: np.ndarray, dz: np.ndarray, dkt: np.ndarray) -> None:
    """∂K += Σ_ij A_patch_ij ⊙ ∂Z_ij over tile t, summed over its samples.  a (B, G, Cg·kh·kw, P) the
    patches, dz (N, Cout, OH, OW); dkt (G, Cg·kh·kw, Cog) accumulates ∂Kᵀ (docs/performance.md, "∂K as ∂Kᵀ")."""
    dkt += (a @ t.gemm(dz).transpose(0, 1, 3, 2)).sum(axis=0)  # Σ_ij A_patch_ij ∂Z_ij: a GEMM over positions


def _data_grad_tile(t: Tile, kt: np.ndarray, dz: np.ndarray, da: Col2im) -> None:
    """∂A += K ⋆ᵀ ∂Z over tile t.  kt (G, Cg·kh·kw, Cog) the kernel transposed, dz (N, Cout, OH, OW);
    da receives, for every window ij of the tile, ∂Z_ij times the unflipped kernel (overlaps sum)."""
    dpatch = t.product(kt, t.gemm(dz))  # ∂A_patch_ij = Kᵀ ∂Z_ij: the gradient reaching each patch element
    da.add(partial(_patch_piece, t.nchw(dpatch).reshape((t.nb, -1) + da.kernel + (t.rb, t.ow))), t.batch, t.rows)


def _patch_piece(dpatch: np.ndarray, batch: slice, rows: slice, i: int, j: int) -> np.ndarray:
    """The piece of one tile's patch gradients dpatch (nb, C, kh, kw, rb, ow) at kernel offset (i, j):
    what col2im adds back at window position (y·s + i·d, x·s + j·d).  dpatch is the tile's already."""
    return dpatch[:, :, i, j]


# --------------------------------------------------------------------------- the cores over a whole batch
def _over_patches(body, win: np.ndarray, groups: int, cout: int, start=None) -> list:
    """each_tile over the output positions of the window view win (N, C, kh, kw, OH, OW), for GEMMs of
    its patches with cout channels (the work that decides the thread split)."""
    n, c, kh, kw, oh, ow = win.shape
    work = n * (c + cout) * oh * ow * win.itemsize, 2 * n * oh * ow * c * kh * kw * cout  # bytes, flops
    return each_tile(body, n, (oh, ow), c * kh * kw * ow * win.itemsize, is_batch_last_view(win), groups, work, start)


def _conv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair, padding: Pair,
                  dilation: Pair, groups: int, out_hw: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Z = K * A + B over every tile.  x (N, C, H, W), w (Cout, Cg, kh, kw), b (Cout,) or None
    -> Z (N, Cout, OH, OW), and the window view of the padded x, whose patches ∂K re-reads."""
    win = window_view(x, w.shape[2:], stride, padding, dilation, out_hw)
    k = w.reshape(groups, w.shape[0] // groups, -1)
    z = allocate((x.shape[0], w.shape[0]) + tuple(out_hw), x.dtype, is_batch_last_view(win), zeroed=False)
    _over_patches(lambda t, _: _conv_tile(t, k, t.patches(win), b, z), win, groups, w.shape[0])
    return z, win


def _weight_grad(dz: np.ndarray, win: np.ndarray, groups: int) -> np.ndarray:
    """∂K = Σ_n Σ_ij A_patch_ij ⊙ ∂Z_ij over every tile.  dz (N, Cout, OH, OW), win the window view of
    the padded input (N, G·Cg, kh, kw, OH, OW) -> (Cout, Cg, kh, kw)."""
    _, c, kh, kw, _, _ = win.shape
    dz = batch_last(dz) if is_batch_last_view(win) else dz
    dkt = _over_patches(lambda t, acc: _weight_grad_tile(t, t.patches(win), dz, acc), win, groups, dz.shape[1],
                        start=lambda _: np.zeros((groups, c // groups * kh * kw, dz.shape[1] // groups), win.dtype))
    return sum(dkt[1:], dkt[0]).transpose(0, 2, 1).reshape(dz.shape[1], c // groups, kh, kw)


def _data_grad(dz: np.ndarray, w: np.ndarray, in_hw: Pair, stride: Pair, padding: Pair, dilation: Pair,
               groups: int) -> np.ndarray:
    """∂A = K ⋆ᵀ ∂Z, the transposed convolution.  dz (N, Cout, OH, OW), w (Cout, Cg, kh, kw)
    -> ∂A (N, G·Cg, H, W) where in_hw = (H, W): by the route `_data_grad_route` picks, here the scatter."""
    route = _data_grad_route(dz.shape, w.shape, in_hw, stride, padding, dilation, groups)
    if route == "same":
        return _same_route(dz, w, in_hw, padding, dilation, groups)
    if route == "subpixel":
        return _subpixel_route(dz, w, in_hw, stride, padding, groups)
    n, _, oh, ow = dz.shape
    cout, cg, kh, kw = w.shape
    bl = batch_last_pays(dz, ow)
    dz = batch_last(dz) if bl else dz
    kt = w.reshape(groups, cout // groups, -1).transpose(0, 2, 1)
    da = Col2im((n, groups * cg, in_hw[0] + 2 * padding[0], in_hw[1] + 2 * padding[1]), dz.dtype, (kh, kw),
                stride, dilation, (oh, ow), bl)
    each_tile(lambda t, _: _data_grad_tile(t, kt, dz, da), n, (oh, ow), groups * cg * kh * kw * ow * dz.itemsize,
              bl, groups, (2 * da.dxp.nbytes, 2 * dz.size * cg * kh * kw), start=da.zero)
    return unpad(da.dxp, padding, in_hw)


# --------------------------------------------------------------------------- ∂A's cheaper routes
def _data_grad_route(dz_shape: tuple[int, ...], w_shape: tuple[int, ...], in_hw: Pair, stride: Pair,
                     padding: Pair, dilation: Pair, groups: int) -> str:
    """Which computation of ∂A = K ⋆ᵀ ∂Z these shapes take — the same sums each (docs/math.md):

    'same'      stride 1 and an output about as large as the input ('same' padding): the full
                cross-correlation of ∂Z with the flipped kernel, one forward convolution
    'subpixel'  the stride divides the kernel (×2 upsampling, k4 s2): s² stride-1 correlations
    'scatter'   otherwise: Kᵀ • ∂Z for every patch, added back onto its window (col2im)
    """
    _, cout, oh, ow = dz_shape
    _, cg, kh, kw = w_shape
    full = [d * (k - 1) - p for d, k, p in zip(dilation, (kh, kw), padding)]
    covers = all(o + 2 * f - d * (k - 1) == size  # the correlation yields exactly H × W (no output_padding)
                 for o, f, d, k, size in zip((oh, ow), full, dilation, (kh, kw), in_hw))
    if stride == (1, 1) and min(full) >= 0 and covers and cout * in_hw[0] * in_hw[1] <= 1.5 * groups * cg * oh * ow:
        return "same"
    if stride != (1, 1) and dilation == (1, 1) and kh % stride[0] == 0 and kw % stride[1] == 0:
        return "subpixel"
    return "scatter"


def _same_route(dz: np.ndarray, w: np.ndarray, in_hw: Pair, padding: Pair, dilation: Pair, groups: int) -> np.ndarray:
    """K ⋆ᵀ ∂Z at stride 1 as the full cross-correlation of ∂Z, padded by d(k−1) − p, with the flipped
    kernel whose in/out channels swap: a plain forward convolution, no patch gradient to scatter."""
    cout, cg, kh, kw = w.shape
    full = tuple(d * (k - 1) - p for d, k, p in zip(dilation, (kh, kw), padding))
    flipped = w.reshape(groups, cout // groups, cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    flipped = np.ascontiguousarray(flipped).reshape(groups * cg, cout // groups, kh, kw)
    return _conv_forward(dz, flipped, None, (1, 1), full, dilation, groups, in_hw)[0]


def _subpixel_route(dz: np.ndarray, w: np.ndarray, in_hw: Pair, stride: Pair, padding: Pair, groups: int,
                    ) -> np.ndarray:
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
    z, _ = _conv_forward(xp, w2, None, (1, 1), (0, 0), (1, 1), groups, (oh + extra[0], ow + extra[1]))
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
    extra: Pair = (0, 0)  # 'same' padding's extra bottom/right zeros, cropped from ∂A


@unbatched  # (C, H, W): a batch of one
def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride: int | Pair = 1,
           padding: int | Pair | str = 0, dilation: int | Pair = 1, groups: int = 1,
           ) -> tuple[np.ndarray, Conv2dCache]:
    """Z = K * A + B (a cross-correlation, as torch.nn.functional.conv2d).

    x (N, Cin, H, W) or (Cin, H, W), w (Cout, Cin/groups, kh, kw), b (Cout,) or None
    -> out (N, Cout, OH, OW) with OH = ⌊(H + 2p − d(kh−1) − 1)/s⌋ + 1, and the cache for backward.
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
    out, win = _conv_forward(x, w, b, stride, padding, dilation, groups, (oh, ow))
    return out, Conv2dCache(w, out.shape, b is not None, stride, padding, dilation, groups, win, (h, wd), extra)


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
    """Gradients of conv2d for the upstream gradient ∂Z = dout (N, Cout, OH, OW).

    ∂A = K ⋆ᵀ ∂Z  (N, Cin, H, W)  — transposed convolution with the *unflipped* K (see module doc);
                                     None when input_grad=False (a first layer needs none)
    ∂K = Σ_patches A_patch ⊙ ∂Z_ij  (Cout, Cin/groups, kh, kw)
    ∂B = Σ_{n,i,j} ∂Z_nij  (Cout,), or None without bias
    Summed over the batch, not averaged: the loss's mean carries the 1/β (docs/math.md, "Batch averaging").
    """
    chk.cache_of(cache, Conv2dCache, "conv2d")
    c = cache
    dz = chk.grad_output(dout, c.out_shape, c.w.dtype)

    def data() -> np.ndarray:
        da = _data_grad(dz, c.w, c.x_hw, c.stride, c.padding, c.dilation, c.groups)  # ∂A = K ⋆ᵀ ∂Z
        return da[:, :, :c.x_hw[0] - c.extra[0], :c.x_hw[1] - c.extra[1]] if any(c.extra) else da

    def weight() -> np.ndarray:
        return _weight_grad(dz, c.windows, c.groups)  # ∂K = Σ_ij A_patch_ij ⊙ ∂Z_ij

    if not input_grad:
        return None, weight(), _bias_grad(dz, c.has_bias)
    # ∂A and ∂K are independent: on two threads at once where the batch is too small to split
    dx, dw = _threads.both(data, weight, dz.shape[0], 2 * dz.nbytes, 2 * dz.size * c.w[0].size)
    return dx, dw, _bias_grad(dz, c.has_bias)


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
    out = _data_grad(x, w, (oh, ow), stride, padding, dilation, groups)  # Y = K ⋆ᵀ X
    if b is not None:
        out += b[:, None, None]
    return out, ConvTranspose2dCache(w, out.shape, b is not None, stride, padding, dilation, groups, x)


@unbatched_backward
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
    dx, dw = _conv_and_weight_grad(dy, c.x, c.w, c.stride, c.padding, c.dilation, c.groups)
    return (dx if input_grad else None), dw, _bias_grad(dy, c.has_bias)


def _conv_and_weight_grad(dy: np.ndarray, x: np.ndarray, w: np.ndarray, stride: Pair, padding: Pair,
                          dilation: Pair, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """conv_transpose2d's ∂X = K * ∂Y and ∂K = Σ_ij ∂Y_patch_ij ⊙ X_ij: both read the same patches
    of ∂Y, so one pass over the tiles computes both (each tile's patches copied once)."""
    win = window_view(dy, w.shape[2:], stride, padding, dilation, x.shape[2:])
    _, c, kh, kw, _, _ = win.shape
    bl = is_batch_last_view(win)
    x = batch_last(x) if bl else x
    k = w.reshape(groups, w.shape[0] // groups, -1)
    dx = allocate(x.shape, x.dtype, bl, zeroed=False)

    def both(t: Tile, dkt: np.ndarray) -> None:
        _conv_tile(t, k, t.patches(win), None, dx)  # ∂X = K * ∂Y
        _weight_grad_tile(t, t.patches(win), x, dkt)  # ∂K = Σ_ij ∂Y_patch_ij ⊙ X_ij

    dkt = _over_patches(both, win, groups, w.shape[0] + x.shape[1],
                        start=lambda _: np.zeros((groups, c // groups * kh * kw, x.shape[1] // groups), win.dtype))
    return dx, sum(dkt[1:], dkt[0]).transpose(0, 2, 1).reshape(x.shape[1], c // groups, kh, kw)
