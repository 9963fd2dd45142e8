"""The sums of docs/math.md as plain loops: one output value, or one window's gradient, at a time.

No tiles, layouts or threads: slow, and meant to be read.  `convprop explain` computes with these,
and the tests hold every fast route of conv.py and pool.py to them (a second oracle beside torch).
All arrays are NCHW; results are float64.  Symbols: A input, K kernel (Cout, C/G, kh, kw), Z output.

The reference switch, as llm.c keeps its naive kernels beside the fast ones: inside
`use_reference()` (or after `use_reference(True)`, until `use_reference(False)`) conv2d,
conv_transpose2d, max_pool2d, avg_pool2d (and the 1-D ones built on them), forward and backward,
compute with these loops instead, so that whole models run on them (`convprop train --reference`).
The other ops (linear, BatchNorm, activations, losses, adaptive pooling) have no second kernel.
"""

from __future__ import annotations

import numpy as np

from ._windows import out_size


class use_reference:  # noqa: N801 (a switch that reads as a function, as torch.no_grad)
    """Run conv and pooling on the loops of this module: on from the call, until the `with` block
    ends (back to what was before) or `use_reference(False)`."""

    def __init__(self, on: bool = True) -> None:
        global _on
        self._before, _on = _on, bool(on)

    def __enter__(self) -> use_reference:
        return self

    def __exit__(self, *exc) -> None:
        global _on
        _on = self._before


_on = False


def active() -> bool:
    """Whether the reference switch is on."""
    return _on


def _pad(a, p, extra=(0, 0), fill=0.0):
    n, c, h, w = a.shape
    out = np.full((n, c, h + 2 * p[0] + extra[0], w + 2 * p[1] + extra[1]), fill)
    out[:, :, p[0]: p[0] + h, p[1]: p[1] + w] = a
    return out


def _window(y, x, k, s, d):
    """The (rows, cols) slices of window (y, x) in the padded input."""
    return (slice(y * s[0], y * s[0] + d[0] * (k[0] - 1) + 1, d[0]),
            slice(x * s[1], x * s[1] + d[1] * (k[1] - 1) + 1, d[1]))


def _patches(z_shape, k_hw, stride, dilation, groups, cg):
    """Every output value (n, o, y, x) of Z (N, Cout, OH, OW), with the index of its patch in the padded
    input: the channels of o's group, the rows and the columns of window (y, x)."""
    for ni, o, y, x in np.ndindex(z_shape):
        g = o // (z_shape[1] // groups)
        yield (ni, o, y, x), (ni, slice(g * cg, (g + 1) * cg)) + _window(y, x, k_hw, stride, dilation)


def conv2d(a, k, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Z[n, o, y, x] = Σ K[o] ⊙ A_patch(n, y, x) + B[o], the patch from o's group of channels."""
    ap = _pad(np.asarray(a, float), padding)
    oh, ow = (out_size(a.shape[2 + i], k.shape[2 + i], stride[i], padding[i], dilation[i]) for i in range(2))
    z = np.zeros((a.shape[0], k.shape[0], oh, ow))
    for (ni, o, y, x), patch in _patches(z.shape, k.shape[2:], stride, dilation, groups, k.shape[1]):
        z[ni, o, y, x] = np.sum(k[o] * ap[patch]) + (0.0 if b is None else b[o])
    return z


def conv2d_backward(dz, a, k, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """-> (∂A, ∂K, ∂B): ∂K[o] = Σ_(n,y,x) A_patch(n, y, x) ∂Z[n, o, y, x]; ∂A = K ⋆ᵀ ∂Z, every
    ∂Z[n, o, y, x] times K[o] (unflipped) added back onto the window it came from; ∂B = Σ ∂Z."""
    ap = _pad(np.asarray(a, float), padding)
    dap, dk = np.zeros_like(ap), np.zeros(k.shape)
    for (ni, o, y, x), patch in _patches(dz.shape, k.shape[2:], stride, dilation, groups, k.shape[1]):
        dk[o] += ap[patch] * dz[ni, o, y, x]
        dap[patch] += k[o] * dz[ni, o, y, x]
    h, w = a.shape[2:]
    return dap[:, :, padding[0]: padding[0] + h, padding[1]: padding[1] + w], dk, dz.sum(axis=(0, 2, 3))


def conv_transpose2d(x, k, out_hw, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """Y = K ⋆ᵀ X, conv2d's ∂A for ∂Z = X: every X[n, c, y, x] times K[c] (unflipped) added back onto
    window (y, x) of an (out_hw) output."""
    a = np.zeros((x.shape[0], k.shape[1] * groups) + tuple(out_hw))
    return conv2d_backward(x, a, k, stride, padding, dilation, groups)[0]


def _pool_geometry(a, kernel, stride, padding, dilation, ceil_mode):
    out = [out_size(a.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode) for i in range(2)]
    extra = [max(0, (out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 - a.shape[2 + i] - 2 * padding[i])
             for i in range(2)]
    return out, extra


def max_pool2d(a, kernel, stride, padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """-> (Z, argmax): Z[n, c, y, x] = max of window (y, x), padding counting as −inf; argmax the
    (row, col) in A of the window's first maximum (row-major; without NaNs)."""
    (oh, ow), extra = _pool_geometry(a, kernel, stride, padding, dilation, ceil_mode)
    ap = _pad(np.asarray(a, float), padding, extra, -np.inf)
    z = np.zeros(a.shape[:2] + (oh, ow))
    arg = np.zeros(z.shape + (2,), int)
    for ni, ci, y, x in np.ndindex(z.shape):
        rows, cols = _window(y, x, kernel, stride, dilation)
        window = ap[ni, ci, rows, cols]
        i, j = np.unravel_index(np.argmax(window), window.shape)
        z[ni, ci, y, x] = window[i, j]
        arg[ni, ci, y, x] = (rows.start + i * dilation[0] - padding[0], cols.start + j * dilation[1] - padding[1])
    return z, arg


def max_pool2d_backward(dz, a_shape, argmax):
    """max-unpool: ∂A[argmax of window (y, x)] += ∂Z[y, x]; zero where no window's max was."""
    da = np.zeros(a_shape)
    for ni, ci, y, x in np.ndindex(dz.shape):
        i, j = argmax[ni, ci, y, x]
        da[ni, ci, i, j] += dz[ni, ci, y, x]
    return da


def _avg_windows(out_hw, a_shape, kernel, stride, padding, include_pad):
    """Every window (y, x) of average pooling: the (rows, cols) of the input cells it sums, and its
    r_size (counting the zero padding if include_pad)."""
    for y, x in np.ndindex(*out_hw):
        (r0, r1, rh), (c0, c1, rw) = (_cells(v * stride[i] - padding[i], kernel[i], a_shape[2 + i], padding[i],
                                             include_pad) for i, v in enumerate((y, x)))
        yield y, x, (slice(r0, r1), slice(c0, c1)), rh * rw


def _cells(start, k, size, p, include_pad):
    """The input cells [lo, hi) a window starting at `start` (−p at the left edge) sums, and r_size along one axis."""
    end = min(start + k, size + p)
    lo, hi = max(start, 0), min(end, size)
    return lo, hi, (end - start) if include_pad else (hi - lo)


def avg_pool2d(a, kernel, stride, padding=(0, 0), ceil_mode=False, count_include_pad=True):
    """Z[n, c, y, x] = Σ window (y, x) / r_size, r_size counting the zero padding if asked."""
    (oh, ow), _ = _pool_geometry(a, kernel, stride, padding, (1, 1), ceil_mode)
    z = np.zeros(a.shape[:2] + (oh, ow))
    for y, x, (rows, cols), r_size in _avg_windows((oh, ow), a.shape, kernel, stride, padding, count_include_pad):
        z[:, :, y, x] = np.asarray(a, float)[:, :, rows, cols].sum(axis=(2, 3)) / r_size
    return z


def avg_pool2d_backward(dz, a, kernel, stride, padding=(0, 0), count_include_pad=True):
    """∂A += ∂Z[y, x] / r_size on every cell of window (y, x): the even spread, overlaps summed."""
    da = np.zeros(a.shape)
    for y, x, (rows, cols), r_size in _avg_windows(dz.shape[2:], a.shape, kernel, stride, padding, count_include_pad):
        da[:, :, rows, cols] += dz[:, :, y, x][:, :, None, None] / r_size
    return da
