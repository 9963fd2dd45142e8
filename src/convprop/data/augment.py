"""Random affine augmentation — rotation, scale and shift — as one bilinear warp per batch.

Each transform is one function drawing its part of the batch's 2×2 matrices or offsets; `random_affine`
composes them and `warp` samples every output pixel once, for the whole batch, with no loop over images.
The maths (p: an output pixel's (row, col), c: the image's centre, t: the shift, R(θ): rotation, s: scale):
the output at p is the input at  R(−θ)·(p − c − t)/s + c,  read bilinearly; outside the image: `fill`.
The draws come from the generator handed in, so a seed gives the same batches on every rerun.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rotation", "scaling", "translation", "warp", "random_affine"]


def _draw(rng: np.random.Generator, low: float, high: float, shard: tuple[int, int], n: int) -> np.ndarray:
    """Uniform draws for the whole batch of shard[1], of which this shard gets its n from shard[0]."""
    start, total = shard
    return rng.uniform(low, high, size=total)[start:start + n]


def rotation(n: int, degrees: float, rng: np.random.Generator, shard: tuple[int, int] | None = None) -> np.ndarray:
    """(n, 2, 2) inverse rotations R(−θ), θ uniform in [−degrees, degrees] (rows and columns as (y, x))."""
    theta = np.deg2rad(_draw(rng, -degrees, degrees, shard or (0, n), n))
    cos, sin = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)


def scaling(n: int, amount: float, rng: np.random.Generator, shard: tuple[int, int] | None = None) -> np.ndarray:
    """(n,) inverse scales 1/s, s uniform in [1 − amount, 1 + amount]."""
    return 1.0 / _draw(rng, 1.0 - amount, 1.0 + amount, shard or (0, n), n)


def translation(n: int, pixels: float, rng: np.random.Generator, shard: tuple[int, int] | None = None) -> np.ndarray:
    """(n, 2) shifts (dy, dx), each uniform in [−pixels, pixels]."""
    sh = shard or (0, n)
    return np.stack([_draw(rng, -pixels, pixels, sh, n), _draw(rng, -pixels, pixels, sh, n)], -1)


def warp(x: np.ndarray, inverse: np.ndarray, shift: np.ndarray, fill: np.ndarray | float) -> np.ndarray:
    """x (N, C, H, W) warped: output pixel p reads x at inverse[n]·(p − c − shift[n]) + c, bilinearly.

    inverse (N, 2, 2), shift (N, 2) as (y, x); fill: a number, or per image (N, 1, 1, 1) / per channel,
    for what falls outside the image.  Returns a new (N, C, H, W) array of x's dtype."""
    n, c, h, w = x.shape
    dt = x.dtype
    f32 = np.float32
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ry = (np.arange(h, dtype=f32) - f32(cy))[None, :, None]  # (1, H, 1)
    rx = (np.arange(w, dtype=f32) - f32(cx))[None, None, :]  # (1, 1, W)
    m = inverse.astype(f32)[:, :, :, None, None]  # (N, 2, 2, 1, 1)
    t = shift.astype(f32)
    ry, rx = ry - t[:, 0, None, None], rx - t[:, 1, None, None]  # p − c − shift: (N, H, 1), (N, 1, W)
    # where each output pixel reads, + 1 for the padding, clipped onto the one-pixel border of fill
    sy = np.clip(m[:, 0, 0] * ry + m[:, 0, 1] * rx + f32(cy + 1), 0, h + 1)  # (N, H, W)
    sx = np.clip(m[:, 1, 0] * ry + m[:, 1, 1] * rx + f32(cx + 1), 0, w + 1)
    y0 = np.minimum(sy.astype(np.intp), h)  # (floor: sy >= 0)
    x0 = np.minimum(sx.astype(np.intp), w)
    wy = (sy - y0).astype(dt)[:, None]  # (N, 1, H, W)
    wx = (sx - x0).astype(dt)[:, None]
    padded = np.empty((n, c, h + 2, w + 2), dt)
    padded[...] = np.asarray(fill, dt) if np.ndim(fill) else dt.type(fill)
    padded[:, :, 1:-1, 1:-1] = x
    # one flat index per output pixel and channel: image n, channel k, row y0, column x0
    base = (np.arange(n)[:, None, None, None] * c + np.arange(c)[None, :, None, None]) * ((h + 2) * (w + 2))
    i00 = base + (y0 * (w + 2) + x0)[:, None]
    flat = padded.reshape(-1)
    top = flat[i00] * (1 - wx) + flat[i00 + 1] * wx
    bottom = flat[i00 + (w + 2)] * (1 - wx) + flat[i00 + (w + 3)] * wx
    return top * (1 - wy) + bottom * wy


def random_affine(x: np.ndarray, rng: np.random.Generator, degrees: float = 0.0, scale: float = 0.0,
                  shift: float = 0.0, fill: np.ndarray | float | None = None,
                  shard: tuple[int, int] | None = None) -> np.ndarray:
    """Rotate each image of (N, C, H, W) by its own θ ∈ [−degrees, degrees], scale it by s ∈ [1 − scale,
    1 + scale] and shift it by up to `shift` px each way, in one bilinear warp (see the module's maths).
    fill None: each image's minimum (its background, as random_shift).  shard (start, total): x is images
    start … start + N − 1 of a batch of `total`; the draws are the whole batch's, x gets its part."""
    n = len(x)
    inverse = rotation(n, degrees, rng, shard) * scaling(n, scale, rng, shard)[:, None, None]
    offsets = translation(n, shift, rng, shard)
    if fill is None:
        fill = x.min(axis=(1, 2, 3), keepdims=True)
    return warp(x, inverse, offsets, fill)
