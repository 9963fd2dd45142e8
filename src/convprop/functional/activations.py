"""Activations: A = act(Z) and the factor ⊙ act'(Z) of every ∂Z^l (docs/math.md).

One pattern for all: an activation is two element-wise formulas, `_<name>(z, out)` for A and
`_<name>_grad(da, saved, out)` for ∂Z = ∂A ⊙ act'(·), with act' written in what the forward saved
(Z, or A where that is simpler), each into `out` with no other temporary.  `_forward` and `_backward`
do the rest: the checks, the cache, and the batch split over convprop's threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from . import _checks as chk
from . import _schedule
from ._windows import like

__all__ = ["relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
           "tanh", "tanh_backward"]


@dataclass(frozen=True, eq=False)
class ActivationCache:
    """op: which activation; saved: the array its derivative is written in (Z or A)."""

    op: str
    saved: np.ndarray
    negative_slope: float = 0.0


def _forward(op: str, value, x, saved: str, slope: float = 0.0, inplace: bool = False,
             ) -> tuple[np.ndarray, ActivationCache]:
    """A = value(Z) element-wise (the batch split over convprop's threads); the cache keeps Z or A,
    whichever act' is written in (saved = "z" or "a").  inplace: A written over Z (as torch's inplace=True)."""
    chk.float_array(x, "x", tuple(range(0, 33)))
    a = _schedule.elementwise(value, x if chk.flag(inplace, "inplace") else np.empty_like(x), x)
    return a, ActivationCache(op, x if saved == "z" else a, slope)


def _backward(op: str, grad, dout, cache) -> np.ndarray:
    """∂Z = grad(∂A, saved) = ∂A ⊙ act'(·) element-wise, for the cache of activation `op`."""
    chk.cache_of(cache, ActivationCache, op)
    if cache.op != op:
        raise TypeError(f"cache: expected the cache returned by {op}, got one from {cache.op}")
    da = like(chk.grad_output(dout, cache.saved.shape, cache.saved.dtype), cache.saved)
    return _schedule.elementwise(grad, np.empty_like(da), da, cache.saved)


# Each activation: two element-wise formulas, value(z, out) for A and grad(da, saved, out) for ∂Z.
def _relu(z, out):
    flat = _flat_views(z, out)
    if flat is None:
        return np.maximum(z, 0, out=out)  # A = max(Z, 0)
    np.maximum(flat[0], _zeros(flat[0].size, z.dtype), out=flat[1])  # A = max(Z, 0)
    return out


_zero_buffers: dict[np.dtype, np.ndarray] = {}


def _zeros(size: int, dtype) -> np.ndarray:
    """`size` zeros of dtype, from one buffer kept and grown (never written: threads may share it).
    NumPy's maximum of two arrays runs 2–4× faster than its maximum of an array and the scalar 0
    (301,056 float32 values: 41 vs 113–165 µs here), so ReLU compares with an array of zeros."""
    buf = _zero_buffers.get(np.dtype(dtype))
    if buf is None or buf.size < size:
        buf = _zero_buffers[np.dtype(dtype)] = np.zeros(size, dtype)
    return buf[:size]


def _flat_views(z, out):
    """(Z, out) as 1-D views of their memory where both lie alike and densely (any axis order), else None."""
    if z.strides != out.strides:
        return None
    order = np.argsort(z.strides, kind="stable")[::-1]
    zt, ot = z.transpose(order), out.transpose(order)
    if not (zt.flags.c_contiguous and ot.flags.c_contiguous):
        return None
    return zt.reshape(-1), ot.reshape(-1)


def _relu_grad(da, a, out):
    # ∂Z = ∂A ⊙ [A ≠ 0]: A = max(Z, 0) is never negative, so [A ≠ 0] = [Z > 0] — and 1 where Z is NaN
    # (A is NaN there, and NaN ≠ 0), as torch, whose mask is [not Z ≤ 0]
    return np.multiply(da, a != 0, out=out)


def _leaky_relu(z, out, slope):
    if np.may_share_memory(z, out):  # in place: only the negative values change, A = slope·Z
        return np.multiply(z, z.dtype.type(slope), out=out, where=z < 0)
    np.multiply(z, z.dtype.type(slope), out=out)
    # A = Z if Z > 0 else slope·Z, i.e. the larger of Z and slope·Z for slope ≤ 1 (the smaller for slope > 1)
    return (np.maximum if slope <= 1 else np.minimum)(z, out, out=out)


def _leaky_relu_grad(da, z, out, slope):
    np.multiply(z > 0, z.dtype.type(1 - slope), out=out)
    out += z.dtype.type(slope)            # 1 if Z > 0 else slope
    return np.multiply(da, out, out=out)  # ∂Z = ∂A ⊙ (1 if Z > 0 else slope)


def _sigmoid(z, out):
    e = np.exp(-np.abs(z))  # in (0, 1]: never overflows
    return np.divide(np.where(z >= 0, 1, e), 1 + e, out=out)  # A = 1/(1 + e^−Z) = e^Z/(1 + e^Z)


def _sigmoid_grad(da, a, out):
    np.subtract(1, a, out=out)
    out *= a                          # A(1 − A)
    return np.multiply(da, out, out=out)  # ∂Z = ∂A ⊙ A(1 − A)


def _tanh(z, out):
    return np.tanh(z, out=out)  # A = tanh(Z)


def _tanh_grad(da, a, out):
    np.multiply(a, a, out=out)
    np.subtract(1, out, out=out)          # 1 − A²
    return np.multiply(da, out, out=out)  # ∂Z = ∂A ⊙ (1 − A²)


def relu(x: np.ndarray, inplace: bool = False) -> tuple[np.ndarray, ActivationCache]:
    """A = max(Z, 0).   any shape -> same shape (the subgradient at 0 is 0, as torch); inplace: into x."""
    return _forward("relu", _relu, x, "a", inplace=inplace)


def relu_backward(dout: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """∂Z = ∂A ⊙ [not Z ≤ 0]   (0 at 0; at NaN, where Z ≤ 0 is false, ∂A passes, as torch)."""
    return _backward("relu", _relu_grad, dout, cache)


def leaky_relu(x: np.ndarray, negative_slope: float = 0.01, inplace: bool = False,
               ) -> tuple[np.ndarray, ActivationCache]:
    """A = Z if Z > 0 else slope·Z.  inplace (into x, as torch) needs slope >= 0, where A > 0 ⇔ Z > 0 lets the
    backward read A in place of the Z it overwrote (torch refuses a negative slope in place too)."""
    slope = float(negative_slope)
    if chk.flag(inplace, "inplace"):
        if slope < 0:
            raise ValueError(f"negative_slope: in place, expected a slope >= 0 (as torch), got {negative_slope!r}")
    return _forward("leaky_relu", partial(_leaky_relu, slope=slope), x, "z", slope, inplace=inplace)


def leaky_relu_backward(dout: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """∂Z = ∂A ⊙ (1 if Z > 0 else slope)."""
    return _backward("leaky_relu", partial(_leaky_relu_grad, slope=getattr(cache, "negative_slope", 0.0)), dout, cache)


def sigmoid(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """A = 1 / (1 + e^{−Z}), computed without overflow for large |Z|."""
    return _forward("sigmoid", _sigmoid, x, "a")


def sigmoid_backward(dout: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """∂Z = ∂A ⊙ A(1 − A)."""
    return _backward("sigmoid", _sigmoid_grad, dout, cache)


def tanh(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """A = tanh(Z)."""
    return _forward("tanh", _tanh, x, "a")


def tanh_backward(dout: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """∂Z = ∂A ⊙ (1 − A²)."""
    return _backward("tanh", _tanh_grad, dout, cache)
