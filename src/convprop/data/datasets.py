"""Datasets as torch names them: `ArrayDataset(x, y)` over arrays a user holds, and the stratified,
seeded split that holds a validation set out of a training set."""

from __future__ import annotations

import numpy as np

from .loader import class_labels

__all__ = ["ArrayDataset", "stratified_split"]


class ArrayDataset:
    """(image, label) pairs over arrays: images uint8 (N, H, W) or (N, C, H, W), pixels 0–255, and
    labels (N,) class indices — what `DataLoader(dataset, …)` batches (as torch's TensorDataset).

    classes: the classes' names (default "0", "1", …); mean, std: the per-channel normalisation the
    loader applies (0–1 scale; default MNIST's for one channel, CIFAR-10's for three)."""

    def __init__(self, images, labels, classes: list[str] | None = None, mean=None, std=None) -> None:
        x = np.asarray(images)
        if x.ndim not in (3, 4):
            raise ValueError(f"images: expected (N, H, W) or (N, C, H, W), got shape {x.shape}")
        if x.dtype != np.uint8:
            if x.dtype.kind not in "uif" or (x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 255)):
                raise ValueError(f"images: expected pixels 0–255 (uint8), got dtype {x.dtype}")
            x = np.round(x).astype(np.uint8)
        y = class_labels(labels)
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"labels: expected {len(x)} labels (one per image), got shape {y.shape}")
        self.images, self.targets = x, y
        k = int(y.max(initial=-1)) + 1
        self.classes = list(classes) if classes is not None else [str(c) for c in range(k)]
        if len(self.classes) < k:
            raise ValueError(f"classes: {len(self.classes)} names for labels up to {k - 1}")
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.targets[i])


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted indices: of each class's n images, round(n · fraction) held out (at least
    one where the class has two or more and fraction > 0), chosen by a generator seeded by `seed`."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction: expected a number in [0, 1), got {fraction!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 4321])
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        held.append(rng.permutation(idx)[:k])
    out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.intp)
    keep = np.setdiff1d(np.arange(len(labels)), out)
    return keep, out
