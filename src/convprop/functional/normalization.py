"""Input normalisation, batch normalisation and dropout.

normalize is the fixed per-channel affine map a model's input goes through ((x·scale − mean)/std,
e.g. raw pixels 0–255 to zero mean and unit variance); batch norm and dropout are the two layers whose
behaviour depends on train/eval mode.  Batch norm normalises every channel c over all axes but the
channel axis (N for (N, C); N, H, W for (N, C, H, W)); m = the number of values per channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import _checks as chk
from ._windows import channel_sum, like

__all__ = ["standardize", "standardize_backward", "batch_norm", "batch_norm_backward", "dropout", "dropout_backward"]


@dataclass(frozen=True, eq=False)
class BatchNormCache:
    xc: np.ndarray  # the centred input x − μ (training: the batch's μ); x itself in eval mode
    mean: np.ndarray | None  # eval mode: the running μ still to subtract from xc; None in training
    inv_std: np.ndarray  # 1/σ per channel, broadcastable against x
    gamma: np.ndarray | None
    training: bool
    has_bias: bool = True
    allreduce: Callable[[np.ndarray], np.ndarray] | None = None  # SyncBatchNorm: sums over every process
    count: float = 0.0  # m, the values per channel (over every process, with allreduce)


def _channel_view(v: np.ndarray, ndim: int) -> np.ndarray:
    """(C,) -> broadcastable against (N, C, ...)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: np.ndarray
              ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """y = (x·scale − mean) · (1/std) per channel (axis 1).  x (N, C, …) floating; mean, std, scale (C,)
    or (1,) in x's dtype.  Three IEEE operations in this order, 1/std rounded to x's dtype first, so
    that ONNX's Mul, Sub, Mul by (scale, mean, 1/std) give the same bits.  cache: (scale, 1/std)."""
    scale, mean, inv_std = (_channel_view(v, x.ndim) for v in (scale, mean, np.reciprocal(std)))
    return (x * scale - mean) * inv_std, (scale, inv_std)


def standardize_backward(dout: np.ndarray, cache: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """∂x = ∂y · scale · (1/std) (no parameters: mean and std are constants)."""
    scale, inv_std = cache
    return dout * (scale * inv_std)


def _fold(a: np.ndarray) -> int:
    """k: how many positions of a channels-last (N, C, H, W) array one wide row holds (its (N·H·W/k, k·C)
    view), so that a per-channel pass loops over runs of k·C values, not of C; 0 for another layout."""
    if a.ndim != 4 or not a.size or not a.transpose(0, 2, 3, 1).flags.c_contiguous:
        return 0
    return math.gcd(a.size // a.shape[1], 32)


def _wide_rows(a: np.ndarray, k: int) -> np.ndarray:
    """The (N·H·W/k, k·C) view of a channels-last (N, C, H, W) array a, k = _fold(a)."""
    return a.transpose(0, 2, 3, 1).reshape(-1, k * a.shape[1])


def _per_channel(fn, a: np.ndarray, v: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """fn(a, v) with v (C,) broadcast along a's channel axis 1 (fn: a NumPy ufunc); out: an array laid out
    as a, or None.  Channels-last a is taken as wide rows against v tiled k times (_fold)."""
    k = _fold(a)
    if not k or (out is not None and _fold(out) != k):
        return fn(a, _channel_view(v, a.ndim), out=out)
    out = np.empty_like(a) if out is None else out  # (a's layout: empty_like keeps it)
    fn(_wide_rows(a, k), np.tile(v.astype(a.dtype, copy=False), k), out=_wide_rows(out, k))
    return out


def _channel_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ a ⊙ b over every axis but the channel axis 1: (C,), in one pass without a temporary
    (row-by-row dot products through BLAS when both are C-contiguous; channels-last, einsum over rows of
    k positions' C values at once, the k partial sums added after; else einsum)."""
    if a.ndim > 2 and a.flags.c_contiguous and b.flags.c_contiguous and a.size:
        n, c = a.shape[:2]
        rows_a, rows_b = a.reshape(n, c, 1, -1), b.reshape(n, c, -1, 1)
        return np.matmul(rows_a, rows_b).reshape(n, c).sum(axis=0)  # Σ_n (a_nc · b_nc)
    k = _fold(a)
    if k and _fold(b) == k:  # einsum's inner loop over k·C values, not C
        dots = np.einsum("pk,pk->k", _wide_rows(a, k), _wide_rows(b, k))
        return dots.reshape(k, a.shape[1]).sum(axis=0)  # Σ_p (a_pc · b_pc)
    letters = "abdefghijklmnopqrstuvwxyz"[:a.ndim - 2]
    spec = f"n c {letters}".replace(" ", "")
    return np.einsum(f"{spec},{spec}->c", a, b)


def batch_norm(x: np.ndarray, running_mean: np.ndarray | None, running_var: np.ndarray | None,
               weight: np.ndarray | None = None, bias: np.ndarray | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, allreduce: Callable[[np.ndarray], np.ndarray] | None = None,
               ) -> tuple[np.ndarray, BatchNormCache]:
    """y = γ (x − μ) / √(σ² + ε) + β, as torch.nn.functional.batch_norm (same argument order).

    x (N, C) or (N, C, H, W); running_mean, running_var, weight γ, bias β: (C,).
    Training: μ, σ² are the batch's (biased σ² normalises; the running average takes the unbiased
    one, m/(m−1)·σ², as torch) and running_mean/var are updated in place.  Eval: the running ones.
    Computed as y = (x − μ) ⊙ (γ/σ) + β: two passes over x after the statistics.

    allreduce (SyncBatchNorm, as torch.nn.SyncBatchNorm): when x is one process's shard of a batch
    spread over several, a function that sums a float64 array over every process (an MPI
    Allreduce; see convprop.distributed).  Training then normalises with the whole batch's μ, σ²,
    from the per-channel sums (m, Σx, Σx²) over every process, and so updates identical running
    statistics everywhere; the backward sums its two per-channel sums the same way.
    """
    chk.float_array(x, "x", (1, 2, 3, 4, 5), "N, C, ...")
    if x.ndim == 1 and x.size:  # torch reads (L,) as values of no channel: only an empty one passes its checks
        raise ValueError(f"x: expected 2 to 5 dimensions (N, C, ...), got 1 with shape {x.shape}")
    if not x.size:  # an empty batch, as torch: an empty output, the running statistics unchanged, zero ∂γ, ∂β
        if not training and (running_mean is None or running_var is None):
            raise ValueError("running_mean: expected running statistics in eval mode, got None")
        channels = x.shape[1] if x.ndim > 1 else 0
        return np.empty_like(x), BatchNormCache(x, None, np.ones(channels, x.dtype), weight, training,
                                                bias is not None)
    axes = (0,) + tuple(range(2, x.ndim))
    m = x.size // x.shape[1]
    if training and allreduce is not None:
        sums = np.empty((3, x.shape[1]))
        sums[0] = m
        sums[1] = x.sum(axis=axes, dtype=np.float64)  # Σx per channel (float64: a difference of sums follows)
        sums[2] = (x * x).sum(axis=axes, dtype=np.float64)  # Σx²
        sums = allreduce(sums)  # ... over every process's shard
        m = int(round(sums[0, 0]))
        if m >= 2:
            mean = sums[1] / m  # μ = Σx / m
            var = np.maximum(sums[2] / m - mean * mean, 0.0)  # σ² = Σx²/m − μ²
    if training:
        if m < 2:
            raise ValueError(f"x: expected more than 1 value per channel when training, got shape {x.shape}")
        if allreduce is None:
            mean = channel_sum(x) / x.dtype.type(m)  # μ
        xc = _per_channel(np.subtract, x, mean.astype(x.dtype))  # x − μ
        if allreduce is None:
            var = _channel_dot(xc, xc) / x.dtype.type(m)  # σ² = mean((x − μ)²), biased: what normalises the batch
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * var * (m / (m - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean: expected running statistics in eval mode, got None")
        mean, var, xc = running_mean, running_var, x
    inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype)  # 1/σ
    scale = inv_std if weight is None else inv_std * weight  # γ/σ
    if training:
        out = _per_channel(np.multiply, xc, scale)  # γ x̂ = (x − μ) γ/σ
        if bias is not None:
            _per_channel(np.add, out, bias, out=out)  # + β
    else:  # y = x ⊙ γ/σ + (β − μ γ/σ): the running μ folded into the shift
        shift = -mean.astype(x.dtype) * scale + (0 if bias is None else bias)
        out = _per_channel(np.multiply, x, scale)
        _per_channel(np.add, out, shift.astype(x.dtype), out=out)
    return out, BatchNormCache(xc, None if training else mean, _channel_view(inv_std, x.ndim), weight, training,
                               bias is not None, allreduce if training else None, m)


def batch_norm_backward(dout: np.ndarray, cache: BatchNormCache,
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """dout (like x) -> (∂x, ∂γ, ∂β), with x̂ = (x − μ)/σ:

    ∂β = Σ ∂y,   ∂γ = Σ ∂y ⊙ x̂   (sums over all axes but C)
    training: ∂x = (γ/σ)(∂y − mean(∂y) − x̂ ⊙ mean(∂y ⊙ x̂))   (μ, σ depend on x)
    eval:     ∂x = (γ/σ) ∂y                                  (μ, σ are constants)
    The training ∂x is computed as A ∂y + B (x − μ) + C per channel: A = γ/σ,
    B = −(γ/σ²) mean(∂y ⊙ x̂), C = −(γ/σ) mean(∂y).
    With the forward's allreduce, the two means are over every process's shard: Σ∂y and Σ∂y ⊙ x̂
    are summed over the processes (∂γ, ∂β stay this shard's: the gradient Allreduce adds them up).
    """
    chk.cache_of(cache, BatchNormCache, "batch_norm")
    c = cache
    dy = like(chk.grad_output(dout, c.xc.shape, c.xc.dtype), c.xc)
    if not dy.size:  # the empty batch
        zeros = np.zeros(c.inv_std.size, dy.dtype)
        return np.zeros_like(dy), (None if c.gamma is None else zeros), (zeros.copy() if c.has_bias else None)
    inv_std = c.inv_std.reshape(-1)
    k = inv_std if c.gamma is None else inv_std * c.gamma  # γ/σ
    xc = c.xc if c.mean is None else _per_channel(np.subtract, c.xc, c.mean.astype(c.xc.dtype))
    dbeta = channel_sum(dy)  # Σ ∂y
    dgamma = _channel_dot(dy, xc) * inv_std  # Σ ∂y ⊙ x̂ = (1/σ) Σ ∂y ⊙ (x − μ)
    dx = _per_channel(np.multiply, dy, k.astype(dy.dtype))
    if c.training:
        g = 1 if c.gamma is None else c.gamma
        sums, m = (g * dbeta, g * dgamma), max(c.count, 1)  # Σ∂x̂ = γ Σ∂y,  Σ∂x̂ ⊙ x̂ = γ Σ∂y ⊙ x̂
        if c.allreduce is not None:  # ... over every process's shard
            sums = c.allreduce(np.stack(sums).astype(np.float64)).astype(dy.dtype)
        b = (-inv_std * inv_std * sums[1] / m).astype(dy.dtype)
        dx += _per_channel(np.multiply, xc, b)  # − (γ/σ) x̂ mean(∂y ⊙ x̂)
        _per_channel(np.add, dx, (-inv_std * sums[0] / m).astype(dy.dtype), out=dx)  # − (γ/σ) mean(∂y)
    return dx, (None if c.gamma is None else dgamma), (dbeta if c.has_bias else None)


@dataclass(frozen=True, eq=False)
class DropoutCache:
    mask: np.ndarray | None  # kept / (1 − p), or None when dropout was the identity


def dropout(x: np.ndarray, p: float = 0.5, training: bool = True, inplace: bool = False,
            rng: np.random.Generator | None = None) -> tuple[np.ndarray, DropoutCache]:
    """Zero each value with probability p and scale the rest by 1/(1 − p) (inverted dropout).

    The identity in eval mode or for p = 0.  inplace: into x (torch's argument order).  rng defaults to
    convprop's seeded generator.
    """
    chk.float_array(x, "x", tuple(range(0, 33)))
    if not isinstance(p, (int, float, np.floating, np.integer)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p: expected a dropout probability in [0, 1], got {p!r}")
    if not training or p == 0.0:
        return x, DropoutCache(None)
    inplace = chk.flag(inplace, "inplace")
    if p == 1.0:  # every value dropped, as torch: zeros, and a zero gradient
        return (np.multiply(x, 0, out=x) if inplace else np.zeros_like(x)), DropoutCache(np.zeros_like(x))
    if rng is None:
        from .. import random as _random

        rng = _random.generator()
    keep = rng.random(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32) >= p
    mask = keep * x.dtype.type(1.0 / (1.0 - p))
    return np.multiply(x, mask, out=x if inplace else None), DropoutCache(mask)


def dropout_backward(dout: np.ndarray, cache: DropoutCache) -> np.ndarray:
    """∂x = ∂y ⊙ mask, the same mask the forward applied."""
    chk.cache_of(cache, DropoutCache, "dropout")
    return dout if cache.mask is None else dout * cache.mask
