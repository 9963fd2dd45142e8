"""The IDX file format of MNIST and Fashion-MNIST (gzip-compressed or raw).

Header, big-endian: two zero bytes, a type code, the number of dimensions d, then d uint32 sizes;
then the data, row-major.  Every size is checked against the file before anything is allocated.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MAX_BYTES = 2**31  # far above any real IDX file; a header claiming more is corrupt


class IDXError(ValueError):
    """A file that is not a valid IDX file (the message names the file and what is wrong)."""


def _read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise IDXError(f"{path}: expected an IDX file, got a directory")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IDXError(f"{path}: truncated or corrupt gzip data ({e})") from None
    if path.endswith(".gz"):
        raise IDXError(f"{path}: expected gzip data (the name ends in .gz), got bytes {raw[:4]!r}")
    return raw


def read_idx(path: str) -> np.ndarray:
    """The array stored in an IDX file (.gz or raw), with its own dtype and shape."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXError(f"{path}: truncated: {len(data)} bytes, expected at least a 4-byte header")
    if data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise IDXError(f"{path}: wrong magic number {data[:4].hex()}, expected 0000 + a type code "
                       f"({', '.join(f'{t:02x}' for t in _TYPES)}) + the number of dimensions")
    ndim = data[3]
    if ndim < 1:
        raise IDXError(f"{path}: expected at least 1 dimension, got 0")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{path}: truncated header: {len(data)} bytes, expected {header} for {ndim} dimensions")
    shape = tuple(int(v) for v in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_TYPES[data[2]])
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > _MAX_BYTES:
        raise IDXError(f"{path}: header claims shape {shape} ({nbytes} bytes), more than any IDX file holds")
    if len(data) - header != nbytes:
        raise IDXError(f"{path}: expected {nbytes} data bytes for shape {shape}, got {len(data) - header}"
                       f"{' (truncated)' if len(data) - header < nbytes else ''}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


_LAYOUTS = ("", "raw", os.path.join("MNIST", "raw"), os.path.join("FashionMNIST", "raw"))


def find_mnist(root: str, split: str) -> tuple[str, str]:
    """The (images, labels) files of split 'train' or 't10k' under root, in the layouts people use:
    the files in root itself, root/raw, or torchvision's root/MNIST/raw and root/FashionMNIST/raw."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: no such directory (expected a directory of MNIST IDX files)")
    found = []
    for kind, dims in (("images", 3), ("labels", 1)):
        names = [f"{split}-{kind}-idx{dims}-ubyte", f"{split}-{kind}.idx{dims}-ubyte"]
        candidates = [os.path.join(root, sub, n + gz) for sub in _LAYOUTS for n in names for gz in ("", ".gz")]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            raise FileNotFoundError(f"{root}: no {split}-{kind}-idx{dims}-ubyte[.gz] found "
                                    f"(looked in {', '.join(repr(s or '.') for s in _LAYOUTS)})")
        found.append(path)
    return found[0], found[1]


def load_mnist(root: str | None = None, train: bool = True, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the training or test split under root
    (the bundled sample when root is None)."""
    if root is None:
        from . import bundled_sample_dir

        root = bundled_sample_dir()
    images_path, labels_path = find_mnist(root, "train" if train else "t10k")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise IDXError(f"{images_path}: expected 3 dimensions (count, rows, cols), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise IDXError(f"{images_path}: expected uint8 pixels, got {images.dtype}")
    if labels.ndim != 1:
        raise IDXError(f"{labels_path}: expected 1 dimension (count), got shape {labels.shape}")
    if len(images) != len(labels):
        raise IDXError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise IDXError(f"{labels_path}: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return images, labels.astype(np.int64)
