"""CIFAR-10, binary version (https://www.cs.toronto.edu/~kriz/cifar.html, cifar-10-binary.tar.gz).

data_batch_1.bin … data_batch_5.bin (training, 10,000 images each) and test_batch.bin: records of
1 label byte (0–9) then 3072 pixel bytes, the red, green and blue 32×32 planes row-major.
"""

from __future__ import annotations

import os

import numpy as np

from .idx import IDXError

RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
_LAYOUTS = ("", "cifar-10-batches-bin")


class CIFARError(IDXError):
    """A file that is not in the CIFAR-10 binary format (the message names the file and what is wrong)."""


def find_cifar10(root: str) -> str | None:
    """The directory under root (itself or root/cifar-10-batches-bin) that holds test_batch.bin, or None."""
    for sub in _LAYOUTS:
        d = os.path.join(root, sub)
        if os.path.isfile(os.path.join(d, TEST_FILES[0])):
            return d
    return None


def read_cifar_bin(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one binary batch file."""
    size = os.path.getsize(path)
    if size == 0 or size % RECORD:
        raise CIFARError(f"{path}: {size} bytes, expected a positive multiple of {RECORD} (1 label byte + "
                         "3072 pixel bytes per image)")
    raw = np.fromfile(path, np.uint8).reshape(-1, RECORD)
    labels = raw[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise CIFARError(f"{path}: labels must lie in [0, 10), got {int(labels.max())} (not a CIFAR-10 batch file; "
                         "CIFAR-100's records have 2 label bytes)")
    return raw[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of the training (data_batch_*.bin present) or
    test split under root (root itself or root/cifar-10-batches-bin)."""
    d = find_cifar10(root)
    if d is None:
        looked = ", ".join(repr(s or ".") for s in _LAYOUTS)
        raise FileNotFoundError(f"{root}: no test_batch.bin found (looked in {looked})")
    names = [n for n in (TRAIN_FILES if train else TEST_FILES) if os.path.isfile(os.path.join(d, n))]
    if not names:
        raise FileNotFoundError(f"{d}: no data_batch_1.bin … data_batch_5.bin found")
    parts = [read_cifar_bin(os.path.join(d, n)) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
