"""Unbatched inputs, as torch takes them: an image (C, H, W) is a batch of one (1, C, H, W).

`@unbatched` on a forward `op(x, ...) -> (out, cache)` and `@unbatched_backward` on its backward
add and remove that batch axis around the batched code, which never sees the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Unbatched:
    """The batched op's cache for a batch of one, and the unbatched output's shape."""

    inner: Any
    out_shape: tuple[int, ...]

    @property
    def indices(self) -> np.ndarray:
        """max_pool2d's indices, without the batch axis."""
        return self.inner.indices[0]


def unbatched(forward):
    @wraps(forward)
    def op(x, *args, **kwargs):
        if isinstance(x, np.ndarray) and x.ndim == 3:
            out, cache = forward(x[None], *args, **kwargs)
            return out[0], Unbatched(cache, out.shape[1:])
        return forward(x, *args, **kwargs)
    return op


def unbatched_backward(backward):
    @wraps(backward)
    def op(dout, cache, *args, **kwargs):
        if not isinstance(cache, Unbatched):
            return backward(dout, cache, *args, **kwargs)
        if not isinstance(dout, np.ndarray) or dout.shape != cache.out_shape:
            raise ValueError(f"dout: expected shape {cache.out_shape} (the forward output's), got "
                             f"{getattr(dout, 'shape', type(dout).__name__)}")
        grads = backward(dout[None], cache.inner, *args, **kwargs)
        if isinstance(grads, tuple):  # (∂x, ∂w, ∂b): only ∂x has the batch axis
            return (None if grads[0] is None else grads[0][0],) + grads[1:]
        return grads[0]
    return op
