"""Softmax cross-entropy: the loss, and the ∂Z of the last layer that starts every backward pass."""

from __future__ import annotations

import numpy as np

from . import _checks as chk

__all__ = ["log_softmax", "softmax_cross_entropy", "mse_loss"]


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """log softmax(Z) = Z − max Z − log Σ e^{Z − max Z}, stable for any logits."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray, *, label_smoothing: float = 0.0,
                          ) -> tuple[float, np.ndarray]:
    """L = −(1/β) Σ_n Σ_k q_nk log softmax(Z_n)_k with q = (1 − ε)·onehot(y) + ε/K.

    logits (β, K), targets (β,) integer classes -> (loss, ∂L/∂Z (β, K)), where
    ∂L/∂Z = (softmax(Z) − q) / β.  The 1/β is the batch averaging (docs/math.md), done once, here.
    """
    chk.float_array(logits, "logits", 2, "batch, classes")
    if not isinstance(targets, np.ndarray) or targets.dtype.kind not in "iu":
        raise TypeError(f"targets: expected an integer NumPy array of class indices, got "
                        f"{getattr(targets, 'dtype', type(targets).__name__)}")
    beta, k = logits.shape
    if targets.shape != (beta,):
        raise ValueError(f"targets: expected shape ({beta},) (one class per logits row), got {targets.shape}")
    if beta and (targets.min() < 0 or targets.max() >= k):
        raise ValueError(f"targets: expected classes in [0, {k}), got values in [{targets.min()}, {targets.max()}]")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    logp = log_softmax(logits)
    q = np.full_like(logits, label_smoothing / k)
    q[np.arange(beta), targets] += 1 - label_smoothing  # q = (1 − ε)·onehot(y) + ε/K
    loss = float(-(q * logp).sum() / beta)
    dlogits = (np.exp(logp) - q) / logits.dtype.type(beta)  # (softmax − q) / β
    return loss, dlogits


def mse_loss(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """L = mean((ŷ − y)²) over every element;  ∂L/∂ŷ = 2(ŷ − y) / numel."""
    chk.float_array(pred, "pred", tuple(range(0, 33)))
    chk.float_array(target, "target", tuple(range(0, 33)))
    if pred.shape != target.shape:
        raise ValueError(f"target: expected the shape of pred {pred.shape}, got {target.shape}")
    diff = pred - target.astype(pred.dtype, copy=False)
    return float((diff * diff).mean()), diff * pred.dtype.type(2.0 / max(diff.size, 1))
