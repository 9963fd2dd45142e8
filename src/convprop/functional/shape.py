"""Flatten: a reshape forward, the inverse reshape backward (no arithmetic, so no equation)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _checks as chk

__all__ = ["flatten", "flatten_backward"]


@dataclass(frozen=True, eq=False)
class FlattenCache:
    shape: tuple[int, ...]  # the input's shape


def flatten(x: np.ndarray, start_dim: int = 0, end_dim: int = -1) -> tuple[np.ndarray, FlattenCache]:
    """Dimensions start_dim … end_dim merged into one, as torch.flatten (a view where NumPy can).

    (d0, …, d_s, …, d_e, …) -> (d0, …, d_s·…·d_e, …); a 0-d input becomes (1,)."""
    chk.float_array(x, "x", tuple(range(0, 33)))
    nd = max(x.ndim, 1)
    for name, d in (("start_dim", start_dim), ("end_dim", end_dim)):
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or not -nd <= d < nd:
            raise ValueError(f"{name}: expected an int in [{-nd}, {nd}) for shape {x.shape}, got {d!r}")
    start, end = start_dim % nd, end_dim % nd
    if start > end:
        raise ValueError(f"start_dim: expected start_dim <= end_dim, got {start_dim} > {end_dim} for shape {x.shape}")
    shape = x.shape if x.ndim else (1,)
    # the merged size spelled out, not -1: an empty batch (0, C, H, W) has a size to flatten too
    return x.reshape(shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:]), FlattenCache(x.shape)


def flatten_backward(dout: np.ndarray, cache: FlattenCache) -> np.ndarray:
    """∂x = ∂out reshaped back to the input's shape."""
    chk.cache_of(cache, FlattenCache, "flatten")
    if not isinstance(dout, np.ndarray) or dout.size != math.prod(cache.shape):
        raise ValueError(f"dout: expected {math.prod(cache.shape)} values (the input {cache.shape}), got "
                         f"{getattr(dout, 'shape', type(dout).__name__)}")
    return dout.reshape(cache.shape)
