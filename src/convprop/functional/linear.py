"""Fully connected layer.

Symbols (docs/math.md): A^{l-1} = x (N, in), W^l = w (out, in) as torch lays it out, Z^l = out (N, out).
Any leading dimensions of x are treated as batch: (*, in) -> (*, out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _checks as chk
from . import _schedule

__all__ = ["linear", "linear_backward"]


def _rows(x: np.ndarray) -> int:
    """The rows of x (*, in) as a matrix: the product of its leading dimensions."""
    return math.prod(x.shape[:-1])


@dataclass(frozen=True, eq=False)
class LinearCache:
    x: np.ndarray
    w: np.ndarray
    has_bias: bool


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, LinearCache]:
    """Z = A Wᵀ + B.   x (*, in), w (out, in), b (out,) or None -> out (*, out)."""
    chk.float_array(x, "x", tuple(range(1, 33)), "*, in_features")
    chk.float_array(w, "w", 2, "out_features, in_features")
    chk.same_dtype(x, w, "w")
    if w.shape[1] != x.shape[-1]:
        raise ValueError(f"w: expected in_features == {x.shape[-1]} (x's last dimension), got shape {w.shape}")
    b = chk.bias(b, x, w.shape[0])
    def affine(block: slice) -> None:
        np.matmul(x2[block], w.T, out=out2[block])  # Z = A • Wᵀ
        if b is not None:
            out2[block] += b  # + B

    x2 = x.reshape(_rows(x), w.shape[1])  # (explicit sizes: an empty batch or no features reshape too)
    out2 = np.empty((x2.shape[0], w.shape[0]), x.dtype)
    _schedule.run(affine, _schedule.parts(x2.shape[0], x2.nbytes + out2.nbytes, 2 * x2.size * w.shape[0]))
    return out2.reshape(x.shape[:-1] + (w.shape[0],)), LinearCache(x, w, b is not None)


def linear_backward(dout: np.ndarray, cache: LinearCache, *, input_grad: bool = True,
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """dout = ∂Z (*, out) ->
    ∂A = ∂Z • W         (*, in)  — docs/math.md's (W)ᵀ ∂Z, in row-vector layout
    ∂W = ∂Zᵀ • A        (out, in) — summed over the batch
    ∂B = Σ_batch ∂Z     (out,)
    """
    chk.cache_of(cache, LinearCache, "linear")
    x, w = cache.x, cache.w
    dz = chk.grad_output(dout, x.shape[:-1] + (w.shape[0],), w.dtype)
    dz2, x2 = dz.reshape(_rows(x), w.shape[0]), x.reshape(_rows(x), w.shape[1])
    dx2 = np.empty_like(x2) if input_grad else None

    def grads(block: slice) -> np.ndarray:
        if dx2 is not None:
            np.matmul(dz2[block], w, out=dx2[block])  # ∂A = ∂Z • W
        return dz2[block].T @ x2[block]  # this block's share of ∂W = ∂Zᵀ • A

    dw_parts = _schedule.run(grads, _schedule.parts(x2.shape[0], 2 * x2.nbytes + dz2.nbytes, 4 * x2.size * w.shape[0]))
    dw = sum(dw_parts[1:], dw_parts[0])
    db = dz2.sum(axis=0) if cache.has_bias else None
    return (None if dx2 is None else dx2.reshape(x.shape)), dw, db
