"""Batches for training: shuffling that a seed and the epoch fix, normalisation, random shifts."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ..functional import standardize as affine
from .augment import random_affine

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# CIFAR-10: per-channel mean and standard deviation of the 50,000 training images (pixels / 255)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def normalize(images: np.ndarray, mean=None, std=None, dtype=np.float32) -> np.ndarray:
    """uint8 (N, H, W) or (N, C, H, W) -> (x/255 − mean)/std as (N, C, H, W) of dtype: F.standardize with
    scale 1/255, (x·(1/255) − mean)·(1/std) — nn.Normalize's arithmetic, so a model exported with its
    normalisation inside computes the same bits.

    mean and std: numbers, or one per channel; None: MNIST's for one channel, CIFAR-10's for three."""
    c = 1 if images.ndim == 3 else images.shape[1]
    dtype = np.dtype(dtype).type
    if mean is None:
        mean = MNIST_MEAN if c == 1 else CIFAR10_MEAN
    if std is None:
        std = MNIST_STD if c == 1 else CIFAR10_STD
    x = images.astype(dtype)
    x = x[:, None] if x.ndim == 3 else x
    one = np.ones(1, dtype)
    out, _ = affine(x, np.asarray(mean, dtype).reshape(-1), np.asarray(std, dtype).reshape(-1),
                    one * dtype(1 / 255.0))
    return out


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


def random_crop_flip(x: np.ndarray, padding: int, flip: bool, fill: np.ndarray, rng: np.random.Generator,
                     shard: tuple[int, int] | None = None) -> np.ndarray:
    """The CIFAR augmentation: pad (N, C, H, W) by `padding` px of `fill` (per channel: black, normalised),
    take a random H×W crop of each image, and mirror each left-right with probability 1/2 if flip.
    shard (start, total): the draws are the whole batch's, x gets its part (as random_shift)."""
    n, c, h, w = x.shape
    p = padding
    start, total = shard or (0, n)
    padded = np.empty((n, c, h + 2 * p, w + 2 * p), x.dtype)
    padded[...] = fill
    padded[:, :, p:p + h, p:p + w] = x
    dy, dx = (rng.integers(0, 2 * p + 1, size=total)[start:start + n] for _ in range(2))
    cols = dx[:, None] + np.arange(w)  # (N, W)
    if flip:
        mirror = rng.random(total)[start:start + n] < 0.5
        cols[mirror] = cols[mirror][:, ::-1]
    rows = (dy[:, None] + np.arange(h))[:, None, :, None]
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols[:, None, None, :]]


class DataLoader:
    """Iterate (x float (B, C, H, W), y int64 (B,)) batches over uint8 images and labels — or over a
    dataset: `DataLoader(dataset, batch_size=…)` with an ArrayDataset, an ImageFolder (whose own mean
    and std it normalises with), or any sequence of (image, label) pairs.

    Augmentation: ±max_shift px random shifts (MNIST); with max_rotation (degrees) or max_scale (s in
    [1 − max_scale, 1 + max_scale]) also, one random affine warp per batch (data/augment.py) that
    rotates, scales and shifts (by up to max_shift px, not only whole pixels) each image; or random
    crops of the image padded by crop_padding px and random horizontal flips (hflip) — CIFAR's.  The order
    and the draws of epoch e come from a generator seeded by (seed, e): the same seed gives the same
    batches, and a resumed run continues exactly where it stopped (set `epoch`).

    num_replicas K > 1, rank k (data parallelism, as torch's DistributedSampler; convprop.distributed):
    every process draws the same order and shifts, and yields only its shard of each batch — of a
    batch of B samples, samples ⌊B·k/K⌋ … ⌊B·(k+1)/K⌋ − 1 (contiguous; sizes differ by at most one),
    so the K processes together see exactly the batches one process would.  The remainder rule: a
    last batch with fewer than K samples (which would leave a process none) is dropped, so at most
    K − 1 samples of an epoch go unused (a different few each epoch when shuffled); len() counts
    batches (steps), the same on every process.
    """

    def __init__(self, images, labels: np.ndarray | None = None, batch_size: int = 64, shuffle: bool = False,
                 seed: int = 0, drop_last: bool = False, max_shift: int = 0, mean=None, std=None, dtype=np.float32,
                 crop_padding: int = 0, hflip: bool = False, num_replicas: int = 1, rank: int = 0,
                 max_rotation: float = 0.0, max_scale: float = 0.0) -> None:
        if labels is None:  # a dataset
            images, labels, mean, std = _unpack(images, mean, std)
        images = np.asarray(images)
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
        if not isinstance(crop_padding, (int, np.integer)) or crop_padding < 0:
            raise ValueError(f"crop_padding: expected a non-negative int, got {crop_padding!r}")
        self.crop_padding, self.hflip = int(crop_padding), bool(hflip)
        for name, v, top in (("max_rotation", max_rotation, 180), ("max_scale", max_scale, 0.9)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not 0 <= v <= top:
                raise ValueError(f"{name}: expected a number from 0 to {top}, got {v!r}")
        self.max_rotation, self.max_scale = float(max_rotation), float(max_scale)
        zero = np.zeros((1,) + self.x.shape[1:2] + (1, 1) if images.ndim == 4 else (1, 1, 1), np.uint8)
        self.fill = normalize(zero, mean, std, dtype).reshape(1, -1, 1, 1)  # a black pixel, normalised

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
            if self.max_rotation or self.max_scale:
                x = random_affine(x, rng, self.max_rotation, self.max_scale, self.max_shift, shard=(start, total))
            elif self.max_shift:
                x = random_shift(x, self.max_shift, rng, (start, total))
            if self.crop_padding or self.hflip:
                x = random_crop_flip(x, self.crop_padding, self.hflip, self.fill, rng, (start, total))
            yield x, self.y[idx]


def _unpack(dataset, mean, std) -> tuple[np.ndarray, np.ndarray, object, object]:
    """(images, labels, mean, std) of a dataset: its arrays (ArrayDataset, ImageFolder) and normalisation
    (where the caller gave none), or its (image, label) pairs stacked."""
    if hasattr(dataset, "images") and hasattr(dataset, "targets"):
        return (dataset.images, dataset.targets, getattr(dataset, "mean", None) if mean is None else mean,
                getattr(dataset, "std", None) if std is None else std)
    try:
        pairs = [dataset[i] for i in range(len(dataset))]
    except TypeError:
        raise TypeError(f"DataLoader: expected images and labels, or a dataset of (image, label) pairs, got "
                        f"{type(dataset).__name__}") from None
    if not pairs:
        raise ValueError("DataLoader: the dataset holds no samples")
    return np.stack([np.asarray(x) for x, _ in pairs]), np.array([y for _, y in pairs]), mean, std
