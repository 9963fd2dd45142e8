"""Batch normalisation and dropout: the two layers whose behaviour depends on train/eval mode.

Batch norm normalises every channel c over all axes but the channel axis (N for (N, C); N, H, W
for (N, C, H, W)); m = the number of values per channel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import _checks as chk

__all__ = ["batch_norm", "batch_norm_backward", "dropout", "dropout_backward"]


@dataclass(frozen=True, eq=False)
class BatchNormCache:
    xhat: np.ndarray  # the normalised input x̂ = (x − μ) / σ
    inv_std: np.ndarray  # 1/σ per channel, broadcastable against x
    gamma: np.ndarray | None
    training: bool
    allreduce: Callable[[np.ndarray], np.ndarray] | None = None  # SyncBatchNorm: sums over every process
    count: float = 0.0  # m, the values per channel over every process (with allreduce)


def _channel_view(v: np.ndarray, ndim: int) -> np.ndarray:
    """(C,) -> broadcastable against (N, C, ...)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm(x: np.ndarray, running_mean: np.ndarray | None, running_var: np.ndarray | None,
               weight: np.ndarray | None = None, bias: np.ndarray | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, allreduce: Callable[[np.ndarray], np.ndarray] | None = None,
               ) -> tuple[np.ndarray, BatchNormCache]:
    """y = γ (x − μ) / √(σ² + ε) + β, as torch.nn.functional.batch_norm (same argument order).

    x (N, C) or (N, C, H, W); running_mean, running_var, weight γ, bias β: (C,).
    Training: μ, σ² are the batch's (biased σ² normalises; the running average takes the unbiased
    one, m/(m−1)·σ², as torch) and running_mean/var are updated in place.  Eval: the running ones.

    allreduce (SyncBatchNorm, as torch.nn.SyncBatchNorm): when x is one process's shard of a batch
    spread over several, a function that sums a float64 array over every process (an MPI
    Allreduce; see convprop.distributed).  Training then normalises with the whole batch's μ, σ²,
    from the per-channel sums (m, Σx, Σx²) over every process, and so updates identical running
    statistics everywhere; the backward sums its two per-channel sums the same way.
    """
    chk.float_array(x, "x", (2, 3, 4, 5), "N, C, ...")
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
            mean = x.mean(axis=axes)
            var = x.var(axis=axes)  # biased: what normalises the batch
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += momentum * var * (m / (m - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean: expected running statistics in eval mode, got None")
        mean, var = running_mean, running_var
    inv_std = _channel_view((1 / np.sqrt(var + eps)).astype(x.dtype), x.ndim)
    xhat = (x - _channel_view(mean.astype(x.dtype), x.ndim)) * inv_std  # x̂ = (x − μ)/σ
    out = xhat if weight is None else xhat * _channel_view(weight, x.ndim)  # γ x̂
    if bias is not None:
        out = out + _channel_view(bias, x.ndim)  # + β
    return out, BatchNormCache(xhat, inv_std, weight, training, allreduce if training else None, m)


def batch_norm_backward(dout: np.ndarray, cache: BatchNormCache,
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """dout (like x) -> (∂x, ∂γ, ∂β).

    ∂β = Σ ∂y,   ∂γ = Σ ∂y ⊙ x̂   (sums over all axes but C)
    training: ∂x = (1/σ)(∂x̂ − mean(∂x̂) − x̂ ⊙ mean(∂x̂ ⊙ x̂)) with ∂x̂ = γ ∂y   (μ, σ depend on x)
    eval:     ∂x = ∂x̂ / σ                                                  (μ, σ are constants)
    With the forward's allreduce, the two means are over every process's shard: Σ∂x̂ = γ ⊙ Σ∂y and
    Σ∂x̂ ⊙ x̂ = γ ⊙ Σ∂y ⊙ x̂ are summed over the processes (∂γ, ∂β stay this shard's: the gradient
    Allreduce adds them up).
    """
    chk.cache_of(cache, BatchNormCache, "batch_norm")
    c = cache
    dy = chk.grad_output(dout, c.xhat.shape, c.xhat.dtype)
    axes = (0,) + tuple(range(2, dy.ndim))
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * c.xhat).sum(axis=axes)
    dxhat = dy if c.gamma is None else dy * _channel_view(c.gamma, dy.ndim)
    if c.training and c.allreduce is not None:
        g = 1.0 if c.gamma is None else c.gamma.astype(np.float64)
        sums = c.allreduce(np.stack([g * dbeta, g * dgamma]).astype(np.float64))  # Σ∂x̂, Σ∂x̂ ⊙ x̂ everywhere
        means = (sums / c.count).astype(dy.dtype)
        dxhat = dxhat - _channel_view(means[0], dy.ndim) - c.xhat * _channel_view(means[1], dy.ndim)
    elif c.training:
        dxhat = (dxhat - dxhat.mean(axis=axes, keepdims=True)
                 - c.xhat * (dxhat * c.xhat).mean(axis=axes, keepdims=True))
    return dxhat * c.inv_std, (None if c.gamma is None else dgamma), dbeta


@dataclass(frozen=True, eq=False)
class DropoutCache:
    mask: np.ndarray | None  # kept / (1 − p), or None when dropout was the identity


def dropout(x: np.ndarray, p: float = 0.5, training: bool = True,
            rng: np.random.Generator | None = None) -> tuple[np.ndarray, DropoutCache]:
    """Zero each value with probability p and scale the rest by 1/(1 − p) (inverted dropout).

    The identity in eval mode or for p = 0.  rng defaults to convprop's seeded generator.
    """
    chk.float_array(x, "x", tuple(range(0, 33)))
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a dropout probability in [0, 1), got {p}")
    if not training or p == 0.0:
        return x, DropoutCache(None)
    if rng is None:
        from .. import random as _random

        rng = _random.generator()
    keep = rng.random(x.shape, dtype=np.float64 if x.dtype == np.float64 else np.float32) >= p
    mask = keep * x.dtype.type(1.0 / (1.0 - p))
    return x * mask, DropoutCache(mask)


def dropout_backward(dout: np.ndarray, cache: DropoutCache) -> np.ndarray:
    """∂x = ∂y ⊙ mask, the same mask the forward applied."""
    chk.cache_of(cache, DropoutCache, "dropout")
    return dout if cache.mask is None else dout * cache.mask
