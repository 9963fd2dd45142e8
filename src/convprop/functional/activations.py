"""Activations: A = act(Z) and the factor ⊙ act'(Z) of every ∂Z^l in the seed.

Each backward returns ∂Z = ∂A ⊙ act'(Z), with act' written from what the forward cached.
Masks are multiplied, never selected with np.where: one pass, dtype preserved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _checks as chk
from . import _parallel

__all__ = ["relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
           "tanh", "tanh_backward"]


@dataclass(frozen=True, eq=False)
class ActivationCache:
    """op: which activation; saved: the array its derivative is written in (Z or A)."""

    op: str
    saved: np.ndarray
    negative_slope: float = 0.0


def _check(x, op: str):
    return chk.float_array(x, "x", tuple(range(0, 33)))


def _cache(cache, op: str) -> ActivationCache:
    chk.cache_of(cache, ActivationCache, op)
    if cache.op != op:
        raise TypeError(f"cache: expected the cache returned by {op}, got one from {cache.op}")
    return cache


def _dout(dout, cache: ActivationCache):
    return chk.grad_output(dout, cache.saved.shape, cache.saved.dtype)


def relu(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """A = max(Z, 0).   any shape -> same shape."""
    _check(x, "relu")
    out = _parallel.elementwise(lambda z, out: np.maximum(z, 0, out=out), np.empty_like(x), x)
    return out, ActivationCache("relu", out)


def relu_backward(dout: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """∂Z = ∂A ⊙ [not Z ≤ 0]   (the subgradient at 0 is 0; at NaN, where Z ≤ 0 is false, ∂A passes, as torch)."""
    c = _cache(cache, "relu")
    dz = _dout(dout, c)
    return _parallel.elementwise(lambda da, a, out: np.multiply(da, ~(a <= 0), out=out), np.empty_like(dz), dz,
                                 c.saved)


def leaky_relu(x: np.ndarray, negative_slope: float = 0.01) -> tuple[np.ndarray, ActivationCache]:
    """A = Z if Z > 0 else slope·Z."""
    _check(x, "leaky_relu")
    pos = x > 0
    out = x * (pos + (~pos) * x.dtype.type(negative_slope))
    return out, ActivationCache("leaky_relu", x, float(negative_slope))


def leaky_relu_backward(dout: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """∂Z = ∂A ⊙ (1 if Z > 0 else slope)."""
    c = _cache(cache, "leaky_relu")
    pos = c.saved > 0
    return _dout(dout, c) * (pos + (~pos) * c.saved.dtype.type(c.negative_slope))


def sigmoid(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """A = 1 / (1 + e^{−Z}), computed without overflow for large |Z|."""
    _check(x, "sigmoid")
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    out = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
    return out, ActivationCache("sigmoid", out)


def sigmoid_backward(dout: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """∂Z = ∂A ⊙ A(1 − A)."""
    c = _cache(cache, "sigmoid")
    return _dout(dout, c) * c.saved * (1 - c.saved)


def tanh(x: np.ndarray) -> tuple[np.ndarray, ActivationCache]:
    """A = tanh(Z)."""
    _check(x, "tanh")
    out = np.tanh(x)
    return out, ActivationCache("tanh", out)


def tanh_backward(dout: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """∂Z = ∂A ⊙ (1 − A²)."""
    c = _cache(cache, "tanh")
    return _dout(dout, c) * (1 - c.saved * c.saved)
