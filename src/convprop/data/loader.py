"""Batches for training: shuffling that a seed and the epoch fix, normalisation, random shifts."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def normalize(images: np.ndarray, mean: float = MNIST_MEAN, std: float = MNIST_STD,
              dtype=np.float32) -> np.ndarray:
    """uint8 (N, H, W) or (N, C, H, W) -> (x/255 − mean)/std as (N, C, H, W) of dtype."""
    dtype = np.dtype(dtype).type
    x = images.astype(dtype) * dtype(1 / 255.0)
    x = (x - dtype(mean)) * dtype(1 / std)
    return x[:, None] if x.ndim == 3 else x


def class_labels(labels, name: str = "labels") -> np.ndarray:
    """labels as int64 class indices; floats only if every one is a whole number (NaN, 2.5: ValueError)."""
    y = np.asarray(labels)
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise ValueError(f"{name}: expected whole numbers (class indices), got {y[bad][0]} at index "
                             f"{int(np.flatnonzero(bad)[0])}")
    elif y.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected integer class indices, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{name}: expected class indices >= 0, got {y.min()}")
    return y.astype(np.int64)


def random_shift(x: np.ndarray, max_shift: int, rng: np.random.Generator,
                 shard: tuple[int, int] | None = None) -> np.ndarray:
    """Shift every image of (N, C, H, W) by its own random (dy, dx) in [−max_shift, max_shift],
    filling with the background (each image's minimum) — one gather, no loop over images.

    shard (start, total): x is images start … start + N − 1 of a batch of `total`; the shifts are drawn
    for the whole batch and x gets its part of them, as it would in the whole batch.
    """
    if max_shift <= 0:
        return x
    m = max_shift
    start, total = shard or (0, len(x))
    dy, dx = (rng.integers(0, 2 * m + 1, size=total)[start:start + len(x)] for _ in range(2))
    n, c, h, w = x.shape
    background = x.min(axis=(1, 2, 3), keepdims=True)
    padded = np.empty((n, c, h + 2 * m, w + 2 * m), x.dtype)
    padded[...] = background
    padded[:, :, m:m + h, m:m + w] = x
    rows = (dy[:, None] + np.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + np.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]


class DataLoader:
    """Iterate (x float (B, C, H, W), y int64 (B,)) batches over uint8 images and labels.

    The order and the shifts of epoch e come from a generator seeded by (seed, e): the same seed
    gives the same batches, and a resumed run continues exactly where it stopped (set `epoch`).

    num_replicas K > 1, rank k (data parallelism, as torch's DistributedSampler; convprop.distributed):
    every process draws the same order and shifts, and yields only its shard of each batch — of a
    batch of B samples, samples ⌊B·k/K⌋ … ⌊B·(k+1)/K⌋ − 1 (contiguous; sizes differ by at most one),
    so the K processes together see exactly the batches one process would.  The remainder rule: a
    last batch with fewer than K samples (which would leave a process none) is dropped, so at most
    K − 1 samples of an epoch go unused (a different few each epoch when shuffled); len() counts
    batches (steps), the same on every process.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 64, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, max_shift: int = 0, mean: float = MNIST_MEAN,
                 std: float = MNIST_STD, dtype=np.float32, num_replicas: int = 1, rank: int = 0) -> None:
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"num_replicas: expected a positive int, got {num_replicas!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank: expected an int in [0, {num_replicas - 1}] (num_replicas={num_replicas}), "
                             f"got {rank!r}")
        if len(images) != len(labels):
            raise ValueError(f"labels: expected {len(images)} labels (one per image), got {len(labels)}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self.x = normalize(images, mean, std, dtype)
        self.y = class_labels(labels)
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, seed
        self.drop_last, self.max_shift, self.epoch = drop_last, max_shift, 0
        self.num_replicas, self.rank = int(num_replicas), int(rank)

    def __len__(self) -> int:
        n = len(self.y)
        if self.drop_last or n % self.batch_size < self.num_replicas:  # (the remainder rule above)
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.y)) if self.shuffle else np.arange(len(self.y))
        self.epoch += 1
        K, r = self.num_replicas, self.rank
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            start, total = len(idx) * r // K, len(idx)
            idx = idx[start:len(idx) * (r + 1) // K]  # this process's shard (all of it when K = 1)
            x = self.x[idx]
            yield (random_shift(x, self.max_shift, rng, (start, total)) if self.max_shift else x), self.y[idx]
