"""Losses: `loss, dlogits = loss_fn(logits, targets)` — the value and the gradient that starts backward."""

from __future__ import annotations

import numpy as np

from .. import functional as F


class CrossEntropyLoss:
    """Mean softmax cross-entropy over the batch, with optional label smoothing (torch's semantics)."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def __call__(self, logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
        return F.softmax_cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def __repr__(self) -> str:
        return f"CrossEntropyLoss(label_smoothing={self.label_smoothing})"


class MSELoss:
    """Mean squared error over every element."""

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        return F.mse_loss(pred, target)

    def __repr__(self) -> str:
        return "MSELoss()"
