"""1-D convolution and pooling, for sequences (N, C, L): the 2-D kernels on a height of 1.

A sequence is an image of one row: x (N, C, L) -> (N, C, 1, L), a kernel k -> (1, k), stride s ->
(1, s), padding p -> (0, p).  So every equation is the 2-D one, and so is every line of code.
Unbatched (C, L) inputs work too, as in torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _checks as chk
from .conv import conv2d, conv2d_backward
from .pool import (
    avg_pool2d,
    avg_pool2d_backward,
    check_positions,
    max_pool2d,
    max_pool2d_backward,
    max_unpool2d,
    max_unpool2d_backward,
    unpool_extent,
)

__all__ = ["conv1d", "conv1d_backward", "max_pool1d", "max_pool1d_backward", "max_unpool1d", "max_unpool1d_backward",
           "avg_pool1d", "avg_pool1d_backward"]


@dataclass(frozen=True, eq=False)
class OneDimCache:
    op: str
    inner: Any  # the 2-D op's cache
    unbatched: bool
    out_shape: tuple[int, ...]  # the forward output's: (N, C, L') or (C, L')

    @property
    def indices(self) -> np.ndarray:
        """max_pool1d: the index along L of every maximum (torch's return_indices)."""
        return self.inner.indices[..., 0, :][0] if self.unbatched else self.inner.indices[..., 0, :]


def _one(v: Any, name: str, minimum: int) -> int:
    """An int, or a 1-tuple of one (torch's _single)."""
    if isinstance(v, (tuple, list)) and len(v) == 1:
        v = v[0]
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum} (or a 1-tuple), got {v!r}")
    return int(v)


def _rows(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """(N, C, L) -> (N, C, 1, L); (C, L) -> (1, C, 1, L)."""
    chk.float_array(x, "x", (2, 3), "N, C, L or C, L")
    unbatched = x.ndim == 2
    return (x[None] if unbatched else x)[:, :, None, :], unbatched


def _back(out: np.ndarray, unbatched: bool) -> np.ndarray:
    """(N, C, 1, L') -> (N, C, L') (or (C, L'))."""
    out = out[:, :, 0, :]
    return out[0] if unbatched else out


def _dout(dout: np.ndarray, cache: OneDimCache, op: str) -> np.ndarray:
    chk.cache_of(cache, OneDimCache, op)
    if cache.op != op:
        raise TypeError(f"cache: expected the cache returned by {op}, got one from {cache.op}")
    dout = chk.grad_output(dout, cache.out_shape, getattr(dout, "dtype", None))
    return (dout[None] if cache.unbatched else dout)[:, :, None, :]


def conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> tuple[np.ndarray, OneDimCache]:
    """Z = K * A + B along L.   x (N, C_in, L) or (C_in, L), w (C_out, C_in/groups, k), b (C_out,)."""
    xr, unbatched = _rows(x)
    chk.float_array(w, "w", 3, "out_channels, in_channels/groups, k")
    pad = padding if isinstance(padding, str) else (0, _one(padding, "padding", 0))
    out, cache = conv2d(xr, w[:, :, None, :], b, stride=(1, _one(stride, "stride", 1)), padding=pad,
                        dilation=(1, _one(dilation, "dilation", 1)), groups=groups)
    out = _back(out, unbatched)
    return out, OneDimCache("conv1d", cache, unbatched, out.shape)


def conv1d_backward(dout: np.ndarray, cache: OneDimCache, *, input_grad: bool = True,
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """(∂x, ∂w, ∂b): conv2d_backward on the one-row images."""
    dx, dw, db = conv2d_backward(_dout(dout, cache, "conv1d"), cache.inner, input_grad=input_grad)
    return (None if dx is None else _back(dx, cache.unbatched)), dw[:, :, 0, :], db


def max_pool1d(x: np.ndarray, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], OneDimCache]:
    """Max over windows along L.   (N, C, L) or (C, L); with return_indices ((out, indices), cache), the
    indices torch's (int64 positions along L, also cache.indices)."""
    return_indices = chk.flag(return_indices, "return_indices")
    xr, unbatched = _rows(x)
    out, inner = max_pool2d(xr, (1, _one(kernel_size, "kernel_size", 1)),
                            stride=None if stride is None else (1, _one(stride, "stride", 1)),
                            padding=(0, _one(padding, "padding", 0)), dilation=(1, _one(dilation, "dilation", 1)),
                            ceil_mode=ceil_mode)
    out = _back(out, unbatched)
    cache = OneDimCache("max_pool1d", inner, unbatched, out.shape)
    return ((out, cache.indices) if return_indices else out), cache


def max_pool1d_backward(dout: np.ndarray, cache: OneDimCache) -> np.ndarray:
    return _back(max_pool2d_backward(_dout(dout, cache, "max_pool1d"), cache.inner), cache.unbatched)


def max_unpool1d(x: np.ndarray, indices: np.ndarray, kernel_size, stride=None, padding=0,
                 output_size=None) -> tuple[np.ndarray, OneDimCache]:
    """Put every x[n, c, i] at position indices[n, c, i] of a zero row of length L = (L' − 1)s − 2p + k,
    or output_size's last entry ((L,) or (N, C, L)).   x, indices (N, C, L') or (C, L') -> (N, C, L) or (C, L)."""
    xr, unbatched = _rows(x)
    if isinstance(indices, np.ndarray):  # (a non-array: max_unpool2d says what it expects)
        if indices.shape != x.shape:
            raise ValueError(f"indices: expected the shape of x {x.shape}, got {indices.shape}")
        indices = (indices[None] if unbatched else indices)[:, :, None, :]
    if output_size is not None and (not isinstance(output_size, (tuple, list)) or len(output_size) not in (1, 3)):
        raise ValueError(f"output_size: expected (L,) or (N, C, L), got {output_size!r}")
    k = _one(kernel_size, "kernel_size", 1)
    s, p = k if stride is None else _one(stride, "stride", 1), _one(padding, "padding", 0)
    length = unpool_extent(x.shape[-1], k, s, p, None if output_size is None else output_size[-1], "L")
    if isinstance(indices, np.ndarray) and indices.dtype.kind in "iu":
        check_positions(indices, length, f"an output of length {length}")
    out, inner = max_unpool2d(xr, indices, (1, k), stride=(1, s), padding=(0, p), output_size=(1, length))
    out = _back(out, unbatched)
    return out, OneDimCache("max_unpool1d", inner, unbatched, out.shape)


def max_unpool1d_backward(dout: np.ndarray, cache: OneDimCache) -> np.ndarray:
    return _back(max_unpool2d_backward(_dout(dout, cache, "max_unpool1d"), cache.inner), cache.unbatched)


def avg_pool1d(x: np.ndarray, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> tuple[np.ndarray, OneDimCache]:
    """Mean over windows along L.   (N, C, L) or (C, L)."""
    xr, unbatched = _rows(x)
    out, cache = avg_pool2d(xr, (1, _one(kernel_size, "kernel_size", 1)),
                            stride=None if stride is None else (1, _one(stride, "stride", 1)),
                            padding=(0, _one(padding, "padding", 0)), ceil_mode=ceil_mode,
                            count_include_pad=count_include_pad)
    out = _back(out, unbatched)
    return out, OneDimCache("avg_pool1d", cache, unbatched, out.shape)


def avg_pool1d_backward(dout: np.ndarray, cache: OneDimCache) -> np.ndarray:
    return _back(avg_pool2d_backward(_dout(dout, cache, "avg_pool1d"), cache.inner), cache.unbatched)
