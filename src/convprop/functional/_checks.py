"""Argument checks shared by every kernel: one clear message per user error.

Every message names the argument and says what was expected and what was given, so a user never
meets a bare NumPy traceback for a mistake of theirs.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

MAX_INT = 2**31 - 1  # the largest stride, padding, kernel or dilation taken (torch's C int)


def pair(value: Any, name: str, minimum: int, single: bool = True) -> tuple[int, int]:
    """An int or a pair of ints, each in [minimum, MAX_INT], as torch's `_pair`; with `single`, also a
    one-element sequence (both values), as torch's kernels take one."""
    if single and isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        value = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
    if min(value) < minimum:
        raise ValueError(f"{name}: expected every value >= {minimum}, got {value}")
    if max(value) > MAX_INT:
        raise ValueError(f"{name}: expected every value <= 2**31 - 1, got {value}")
    return value


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**48


def fits_in_memory(shape: tuple[int, ...], dtype, name: str, detail: str) -> None:
    """ValueError naming the argument that asks for an array larger than this machine's memory."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > physical_memory():
        raise ValueError(f"{name}: {detail}, {nbytes:.3g} bytes: more than this machine's memory "
                         f"({physical_memory() / 2**30:.0f} GiB)")


def positive_int(value: Any, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def nonzero_int(value: Any, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value == 0:
        raise ValueError(f"{name}: expected a non-zero int, got {value!r}")
    return int(value)


def flag(value: Any, name: str) -> bool:
    """A flag torch tests by its truth value (return_indices): a bool, an int (0 is False) or None."""
    if value is not None and not isinstance(value, (bool, np.bool_, int, np.integer)):
        raise TypeError(f"{name}: expected True or False (or an int: 0 is False), got {value!r}")
    return bool(value)


def float_array(x: Any, name: str, ndim: int | tuple[int, ...], layout: str = "") -> np.ndarray:
    """x must be a floating NumPy array with `ndim` dimensions (`layout` names them in errors)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating dtype (float32 or float64), got {x.dtype}")
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ValueError(
            f"{name}: expected {want} dimensions{f' ({layout})' if layout else ''}, "
            f"got {x.ndim} with shape {x.shape}"
        )
    return x


def same_dtype(x: np.ndarray, other: np.ndarray | None, name: str) -> None:
    if other is not None and other.dtype != x.dtype:
        raise TypeError(f"{name}: expected dtype {x.dtype} (the input's), got {other.dtype}")


def bias(b: Any, x: np.ndarray, channels: int, name: str = "b") -> np.ndarray | None:
    if b is None:
        return None
    float_array(b, name, 1, "channels")
    same_dtype(x, b, name)
    if b.shape[0] != channels:
        raise ValueError(f"{name}: expected shape ({channels},), got {b.shape}")
    return b


def grad_output(dout: Any, shape: tuple[int, ...], dtype: np.dtype, name: str = "dout") -> np.ndarray:
    """dout must match the forward output exactly: its shape, and a floating dtype."""
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(dout).__name__}")
    if dout.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating dtype, got {dout.dtype}")
    if dout.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (the forward output's), got {dout.shape}")
    return dout.astype(dtype, copy=False)


def cache_of(cache: Any, cls: type, op: str) -> None:
    if not isinstance(cache, cls):
        raise TypeError(f"cache: expected the cache returned by {op}, got {type(cache).__name__}")


def output_size(size: int, name: str) -> int:
    if size < 1:
        raise ValueError(f"{name}: the output would be {size} pixels; expected >= 1 (input too small for "
                         "this kernel, stride, padding and dilation)")
    return size
