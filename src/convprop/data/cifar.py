"""CIFAR-10, binary version (https://www.cs.toronto.edu/~kriz/cifar.html, cifar-10-binary.tar.gz).

data_batch_1.bin … data_batch_5.bin (training, 10,000 images each) and test_batch.bin: records of
1 label byte (0–9) then 3072 pixel bytes, the red, green and blue 32×32 planes row-major.

Bounded as the IDX reader is: every file must be a regular file whose size is a positive multiple of
the record size, and the files of a split together at most max_bytes, before the one pair of arrays
is allocated; the records are then read into them 1,024 at a time, each chunk's labels checked.
"""

from __future__ import annotations

import os
import stat

import numpy as np

from .idx import MAX_BYTES, IDXError

RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
_LAYOUTS = ("", "cifar-10-batches-bin")
_CHUNK = 1024  # records read at a time (3 MB)


class CIFARError(IDXError):
    """A file that is not in the CIFAR-10 binary format (the message names the file and what is wrong)."""


def find_cifar10(root: str) -> str | None:
    """The directory under root (itself or root/cifar-10-batches-bin) that has a test_batch.bin (of any
    kind: a directory or a broken link there is reported by the reader, not taken for MNIST), or None."""
    for sub in _LAYOUTS:
        d = os.path.join(root, sub)
        if os.path.lexists(os.path.join(d, TEST_FILES[0])):
            return d
    return None


def _records(path: str) -> int:
    """The number of records of a batch file, from its size; CIFARError in one line for anything that is
    not a regular file of a positive multiple of RECORD bytes."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CIFARError(f"{path}: no such file (a broken link?)") from None
    except OSError as e:
        raise CIFARError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, fifo or socket"
        raise CIFARError(f"{path}: expected a CIFAR-10 batch file, got {kind}")
    if st.st_size == 0 or st.st_size % RECORD:
        raise CIFARError(f"{path}: {st.st_size} bytes, expected a positive multiple of {RECORD} (1 label byte + "
                         "3072 pixel bytes per image)")
    return st.st_size // RECORD


def _read_into(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Fill images (n, 3, 32, 32) and labels (n,) from the n records of path, a chunk at a time."""
    buf = np.empty((min(_CHUNK, len(labels)), RECORD), np.uint8)
    try:  # without waiting, and checked again on the file opened: a name swapped for a fifo is no batch
        f = os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb")
    except OSError as e:
        raise CIFARError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode) or os.fstat(f.fileno()).st_size < len(labels) * RECORD:
            raise CIFARError(f"{path}: changed while being read (expected a CIFAR-10 batch file of "
                             f"{len(labels) * RECORD:,} bytes)")
        for start in range(0, len(labels), _CHUNK):
            k = min(_CHUNK, len(labels) - start)
            got = f.readinto(memoryview(buf[:k]).cast("B"))
            if got != k * RECORD:
                raise CIFARError(f"{path}: read {start * RECORD + got:,} bytes, expected {len(labels) * RECORD:,} "
                                 "(the file shrank while being read?)")
            chunk = buf[:k, 0]
            if chunk.max() > 9:
                i = int(np.argmax(chunk > 9))
                raise CIFARError(f"{path}: record {start + i} has label {int(chunk[i])}, expected 0 to 9 (not a "
                                 "CIFAR-10 batch file; CIFAR-100's records have 2 label bytes)")
            labels[start:start + k] = chunk
            images[start:start + k] = buf[:k, 1:].reshape(k, 3, 32, 32)


def _read_all(paths: list[str], max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    counts = [_records(p) for p in paths]
    total = sum(counts)
    if total * RECORD > max_bytes:
        raise CIFARError(f"{', '.join(map(os.path.basename, paths))} in {os.path.dirname(paths[0]) or '.'}: "
                         f"{total * RECORD:,} bytes, over the limit of {max_bytes:,}")
    try:
        images, labels = np.empty((total, 3, 32, 32), np.uint8), np.empty(total, np.int64)
    except MemoryError:
        raise CIFARError(f"{paths[0]}: {total:,} images need {total * (RECORD + 7):,} bytes of memory, more than "
                         "is free") from None
    at = 0
    for path, n in zip(paths, counts):
        _read_into(path, images[at:at + n], labels[at:at + n])
        at += n
    return images, labels


def read_cifar_bin(path: str, max_bytes: int = MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one binary batch file."""
    return _read_all([path], max_bytes)


def load_cifar10(root: str, train: bool = True, max_bytes: int = MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of the training or test split under root (root
    itself or root/cifar-10-batches-bin).  Training uses data_batch_1.bin … data_batch_k.bin, the first
    k of the five (a gap, such as batch 3 missing beside batch 4, is refused)."""
    d = find_cifar10(root)
    if d is None:
        looked = ", ".join(repr(s or ".") for s in _LAYOUTS)
        raise FileNotFoundError(f"{root}: no test_batch.bin found (looked in {looked})")
    if not train:
        return _read_all([os.path.join(d, TEST_FILES[0])], max_bytes)
    present = [os.path.lexists(os.path.join(d, n)) for n in TRAIN_FILES]
    if not present[0]:
        raise FileNotFoundError(f"{d}: no data_batch_1.bin … data_batch_5.bin found")
    k = present.index(False) if False in present else len(present)
    if any(present[k:]):
        later = TRAIN_FILES[k + present[k:].index(True)]
        raise CIFARError(f"{os.path.join(d, TRAIN_FILES[k])}: missing, while {later} is there (expected "
                         f"data_batch_1.bin to data_batch_k.bin, k ≤ 5, without gaps)")
    return _read_all([os.path.join(d, n) for n in TRAIN_FILES[:k]], max_bytes)
