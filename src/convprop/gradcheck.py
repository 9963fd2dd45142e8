"""Central differences: the independent check of every hand-written gradient."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def numeric_gradient(fn: Callable[..., np.ndarray], arrays: Sequence[np.ndarray], dout: np.ndarray,
                     eps: float = 1e-6) -> list[np.ndarray]:
    """∂/∂a of L = Σ fn(*arrays) ⊙ dout for every array a (float64, modified in place and restored):
    (L(a + ε) − L(a − ε)) / 2ε, one element at a time."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a, dtype=np.float64)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + eps
            up = float((fn(*arrays) * dout).sum())
            a[i] = old - eps
            down = float((fn(*arrays) * dout).sum())
            a[i] = old
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads
