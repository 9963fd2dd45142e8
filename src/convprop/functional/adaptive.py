"""Adaptive pooling: a fixed output size from any input size, as torch's adaptive_{avg,max}_pool2d.

Output cell i along an axis of input size H and output size O pools rows
start_i = ⌊i·H/O⌋ … end_i = ⌈(i+1)·H/O⌉ − 1 (windows of varying size that may overlap).

Averaging is separable: with P (O, H) holding 1/(end_i − start_i) on row i's window,
    Y = P_h X P_wᵀ          and its backward          ∂X = P_hᵀ ∂Y P_w.
Max pooling keeps, per cell, the flat index h·W + w of the maximum (torch's `indices`); its
backward adds ∂Y into those positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _checks as chk

__all__ = ["adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d",
           "adaptive_max_pool2d_backward"]


def _bounds(size: int, out: int) -> list[tuple[int, int]]:
    """[start_i, end_i) of every output cell i along one axis."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _output_size(x: np.ndarray, output_size) -> tuple[int, int]:
    """torch's output_size: an int, or a pair whose None entries keep the input's size."""
    h, w = x.shape[-2:]
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        output_size = tuple(s if s is not None else d for s, d in zip(output_size, (h, w)))
    return chk.pair(output_size, "output_size", 1, single=False)


def _averaging(size: int, out: int, dtype) -> np.ndarray:
    """P (out, size): row i holds 1/len on window i."""
    p = np.zeros((out, size), dtype)
    for i, (a, b) in enumerate(_bounds(size, out)):
        p[i, a:b] = 1.0 / (b - a)
    return p


@dataclass(frozen=True, eq=False)
class AdaptiveAvgPool2dCache:
    ph: np.ndarray  # P_h (OH, H)
    pw: np.ndarray  # P_w (OW, W)
    shape: tuple[int, ...]  # the input's


def adaptive_avg_pool2d(x: np.ndarray, output_size) -> tuple[np.ndarray, AdaptiveAvgPool2dCache]:
    """Y = P_h X P_wᵀ.   x (N, C, H, W) or (C, H, W) -> (…, OH, OW)."""
    chk.float_array(x, "x", (3, 4), "N, C, H, W or C, H, W")
    oh, ow = _output_size(x, output_size)
    ph, pw = _averaging(x.shape[-2], oh, x.dtype), _averaging(x.shape[-1], ow, x.dtype)
    # average along W, then along H: two GEMMs over every plane at once; the result (…, OH, OW)
    out = np.moveaxis(np.tensordot(ph, np.tensordot(x, pw, ([-1], [1])), ([1], [-2])), 0, -2)
    return out, AdaptiveAvgPool2dCache(ph, pw, x.shape)


def adaptive_avg_pool2d_backward(dout: np.ndarray, cache: AdaptiveAvgPool2dCache) -> np.ndarray:
    """∂X = P_hᵀ ∂Y P_w: each output's gradient spread evenly over its window (summed where windows overlap)."""
    chk.cache_of(cache, AdaptiveAvgPool2dCache, "adaptive_avg_pool2d")
    c = cache
    dy = chk.grad_output(dout, c.shape[:-2] + (c.ph.shape[0], c.pw.shape[0]), c.ph.dtype)
    return np.ascontiguousarray(np.moveaxis(np.tensordot(c.ph, np.tensordot(dy, c.pw, ([-1], [0])), ([0], [-2])),
                                            0, -2))


@dataclass(frozen=True, eq=False)
class AdaptiveMaxPool2dCache:
    indices: np.ndarray  # (…, OH, OW) flat index h·W + w of each maximum, as torch
    shape: tuple[int, ...]  # the input's
    dtype: np.dtype


def adaptive_max_pool2d(x: np.ndarray, output_size, return_indices: bool = False,
                        ) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], AdaptiveMaxPool2dCache]:
    """Y_ij = max over window (i, j); indices of the first maximum in row-major order (torch's).
    x (N, C, H, W) or (C, H, W) -> (…, OH, OW); with return_indices ((out, indices), cache), indices
    int64 flat h·W + w as torch's (also cache.indices)."""
    return_indices = chk.flag(return_indices, "return_indices")
    chk.float_array(x, "x", (3, 4), "N, C, H, W or C, H, W")
    oh, ow = _output_size(x, output_size)
    h, w = x.shape[-2:]
    if h == 0 or w == 0:
        raise ValueError(f"x: expected a non-empty plane to take maxima over, got shape {x.shape}")
    lead = x.shape[:-2]
    out = np.empty(lead + (oh, ow), x.dtype)
    indices = np.empty(lead + (oh, ow), np.int64)
    for i, (h0, h1) in enumerate(_bounds(h, oh)):
        for j, (w0, w1) in enumerate(_bounds(w, ow)):
            window = x[..., h0:h1, w0:w1].reshape(lead + ((h1 - h0) * (w1 - w0),))
            k = window.argmax(axis=-1)  # the first maximum (NaN counts as the maximum)
            out[..., i, j] = np.take_along_axis(window, k[..., None], -1)[..., 0]
            indices[..., i, j] = (h0 + k // (w1 - w0)) * w + w0 + k % (w1 - w0)  # flat h·W + w
    return ((out, indices) if return_indices else out), AdaptiveMaxPool2dCache(indices, x.shape, x.dtype)


def adaptive_max_pool2d_backward(dout: np.ndarray, cache: AdaptiveMaxPool2dCache) -> np.ndarray:
    """∂X[index_ij] += ∂Y_ij: each gradient to the input that was the maximum (added where windows share it)."""
    chk.cache_of(cache, AdaptiveMaxPool2dCache, "adaptive_max_pool2d")
    c = cache
    dy = chk.grad_output(dout, c.indices.shape, c.dtype)
    planes = int(np.prod(c.shape[:-2], dtype=np.int64))
    dx = np.zeros((planes, c.shape[-2] * c.shape[-1]), c.dtype)
    rows = np.repeat(np.arange(planes), c.indices.shape[-2] * c.indices.shape[-1])  # the plane of each output
    np.add.at(dx, (rows, c.indices.reshape(-1)), dy.reshape(-1))
    return dx.reshape(c.shape)
