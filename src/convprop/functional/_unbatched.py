"""Unbatched inputs, as torch takes them: an image (C, H, W) is a batch of one (1, C, H, W).

`@unbatched` on a forward `op(x, ...) -> (out, cache)` and `@unbatched_backward` on its backward
add and remove that batch axis around the batched code, which never sees the difference.  A forward
whose out is a pair (max_pool2d's (out, indices)) loses the axis on both; `@unbatched(also="indices")`
adds it to a second input of x's shape too (max_unpool2d's indices).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial, wraps
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Unbatched:
    """The batched op's cache for a batch of one, and the unbatched output's shape."""

    inner: Any
    out_shape: tuple[int, ...]

    @property
    def indices(self) -> np.ndarray:
        """The batched cache's indices (max_pool2d's, max_unpool2d's), without the batch axis."""
        return self.inner.indices[0]


def unbatched(forward=None, *, also: str | None = None):
    if forward is None:
        return partial(unbatched, also=also)

    @wraps(forward)
    def op(x, *args, **kwargs):
        if not (isinstance(x, np.ndarray) and x.ndim == 3):
            return forward(x, *args, **kwargs)
        if also is not None:  # the second batched input: the first positional argument after x, or by name
            second = args[0] if args else kwargs.get(also)
            if isinstance(second, np.ndarray):  # anything else: the batched code's own type error
                if second.shape != x.shape:
                    raise ValueError(f"{also}: expected the shape of x {x.shape}, got {second.shape}")
                args, kwargs = ((second[None],) + args[1:], kwargs) if args else (args, {**kwargs, also: second[None]})
        out, cache = forward(x[None], *args, **kwargs)
        if isinstance(out, tuple):  # (out, indices)
            return tuple(o[0] for o in out), Unbatched(cache, out[0].shape[1:])
        return out[0], Unbatched(cache, out.shape[1:])
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
