"""Losses: `loss, dlogits = loss_fn(logits, targets)` — the value and the gradient that starts backward."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..functional.losses import REDUCTIONS


class CrossEntropyLoss:
    """Softmax cross-entropy with torch's options: per-class `weight`, `ignore_index`,
    `reduction` 'mean' | 'sum' | 'none', `label_smoothing`; class-index or probability targets;
    logits (N, C), (N, C, d1, …) or (C,).

    Returns (loss, ∂loss/∂logits): loss a float for 'mean' and 'sum'; for 'none' the array of
    per-sample losses, with the gradient of their sum.
    """

    def __init__(self, weight: np.ndarray | None = None, *, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")
        if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
        self.weight, self.ignore_index, self.reduction = weight, ignore_index, reduction
        self.label_smoothing = label_smoothing

    def __call__(self, logits: np.ndarray, targets: np.ndarray) -> tuple[float | np.ndarray, np.ndarray]:
        weight = None if self.weight is None else np.asarray(self.weight, dtype=getattr(logits, "dtype", None))
        loss, cache = F.cross_entropy(logits, targets, weight, ignore_index=self.ignore_index,
                                      reduction=self.reduction, label_smoothing=self.label_smoothing)
        dlogits, _ = F.cross_entropy_backward(np.ones_like(loss), cache)
        return (loss if self.reduction == "none" else float(loss)), dlogits

    def __repr__(self) -> str:
        return (f"CrossEntropyLoss(reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"
                + ("" if self.weight is None else ", weight=...")
                + ("" if self.ignore_index == -100 else f", ignore_index={self.ignore_index}") + ")")


class MSELoss:
    """Squared error (ŷ − y)² per element, reduced as torch's `reduction` 'mean' | 'sum' | 'none'.

    Returns (loss, ∂loss/∂pred): loss a float for 'mean' and 'sum'; for 'none' the array of squared
    errors, with the gradient of their sum.
    """

    def __init__(self, *, reduction: str = "mean") -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> tuple[float | np.ndarray, np.ndarray]:
        return F.mse_loss(pred, target, reduction=self.reduction)

    def __repr__(self) -> str:
        return "MSELoss()" if self.reduction == "mean" else f"MSELoss(reduction={self.reduction!r})"
