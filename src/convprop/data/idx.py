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
MAX_BYTES = 2**31  # far above any real IDX file (MNIST's largest: 47 MB); a header claiming more is refused
# Deflate cannot compress better than about 1032:1, so a gzip file of n bytes holds at most this many
# bytes of data: a header claiming more is a lie, found before anything is allocated.
_DEFLATE_RATIO, _CHUNK = 1032, 1 << 20


class IDXError(ValueError):
    """A file that is not a valid IDX file (the message names the file and what is wrong)."""


def _read_exactly(f, buffer: memoryview, path: str) -> int:
    """Fill buffer from f in chunks of at most 1 MiB; returns the number of bytes read (short at EOF)."""
    done = 0
    while done < len(buffer):
        try:
            n = f.readinto(buffer[done:done + _CHUNK])
        except (OSError, EOFError, zlib.error) as e:
            raise IDXError(f"{path}: truncated or corrupt gzip data ({e})") from None
        if not n:
            break
        done += n
    return done


def read_idx(path: str, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """The array stored in an IDX file (.gz or raw), with its own dtype and shape.

    Memory stays bounded whatever the file holds: the header is read first; the size it declares is
    checked against max_bytes and against what the file can hold (its size when raw, ~1032× it when
    gzipped) before the one array is allocated; gzip data is decompressed straight into that array,
    1 MiB at a time, and a file with more data than its header declares is refused without reading it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise IDXError(f"{path}: expected an IDX file, got a directory")
    disk = os.path.getsize(path)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if not compressed and path.endswith(".gz"):
            raise IDXError(f"{path}: expected gzip data (the name ends in .gz), got bytes {raw.read(4)!r}")
        f = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        head = bytearray(4)
        got = _read_exactly(f, memoryview(head), path)
        if got < 4:
            raise IDXError(f"{path}: truncated: {got} bytes, expected at least a 4-byte header")
        if head[0] != 0 or head[1] != 0 or head[2] not in _TYPES:
            raise IDXError(f"{path}: wrong magic number {bytes(head).hex()}, expected 0000 + a type code "
                           f"({', '.join(f'{t:02x}' for t in _TYPES)}) + the number of dimensions")
        ndim = head[3]
        if not 1 <= ndim <= 32:  # NumPy's arrays have at most 64; no IDX file has more than a few
            raise IDXError(f"{path}: expected 1 to 32 dimensions, got {ndim}")
        sizes = bytearray(4 * ndim)
        got = _read_exactly(f, memoryview(sizes), path)
        if got < len(sizes):
            raise IDXError(f"{path}: truncated header: {4 + got} bytes, expected {4 + len(sizes)} for {ndim} "
                           "dimensions")
        shape = tuple(int(v) for v in np.frombuffer(bytes(sizes), ">u4"))
        dtype = np.dtype(_TYPES[head[2]])
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        header = 4 + 4 * ndim
        if nbytes > max_bytes:
            raise IDXError(f"{path}: header claims shape {shape} ({nbytes:,} bytes), more than any IDX file holds "
                           f"(limit {max_bytes:,})")
        if not compressed and disk - header != nbytes:
            raise IDXError(f"{path}: expected {nbytes} data bytes for shape {shape}, got {disk - header}"
                           f"{' (truncated)' if disk - header < nbytes else ''}")
        if compressed and nbytes > _DEFLATE_RATIO * disk:
            raise IDXError(f"{path}: header claims shape {shape} ({nbytes:,} bytes), more than {disk:,} bytes of "
                           "gzip can hold (truncated or corrupt)")
        try:
            out = np.empty(shape, dtype)
        except MemoryError:
            raise IDXError(f"{path}: shape {shape} needs {nbytes:,} bytes of memory, more than is free") from None
        except ValueError as e:  # e.g. (0, 2**29, 2**29, 2**29): no bytes, but sizes NumPy cannot index
            raise IDXError(f"{path}: shape {shape} is not one NumPy can make ({e})") from None
        got = _read_exactly(f, memoryview(out.reshape(-1).view(np.uint8)), path)
        if got < nbytes:
            raise IDXError(f"{path}: expected {nbytes} data bytes for shape {shape}, got {got} (truncated)")
        if compressed and _read_exactly(f, memoryview(bytearray(1)), path):
            raise IDXError(f"{path}: more data than the {nbytes} bytes its header declares for shape {shape}")
    if not dtype.isnative:  # big-endian on disk: swapped in place, not copied
        out = out.byteswap(inplace=True).view(dtype.newbyteorder())
    return out


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


def bundled_sample_dir() -> str:
    """The MNIST sample shipped inside the package (5,000 training images, the 10,000 test images)."""
    from importlib.resources import files

    return str(files(__package__) / "mnist-sample")


def load_mnist(root: str | None = None, train: bool = True, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the training or test split under root
    (the bundled sample when root is None)."""
    if root is None:
        root = bundled_sample_dir()
    images_path, labels_path = find_mnist(root, "train" if train else "t10k")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise IDXError(f"{images_path}: expected 3 dimensions (count, rows, cols), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise IDXError(f"{images_path}: expected uint8 pixels, got {images.dtype}")
    if min(images.shape[1:]) < 1:
        raise IDXError(f"{images_path}: expected images of at least 1×1 pixels, got "
                       f"{images.shape[1]}×{images.shape[2]}")
    if labels.ndim != 1:
        raise IDXError(f"{labels_path}: expected 1 dimension (count), got shape {labels.shape}")
    if len(images) != len(labels):
        raise IDXError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    bad = ~np.isfinite(labels) | (labels != np.round(labels)) if labels.dtype.kind == "f" else None
    if bad is not None and bad.any():
        raise IDXError(f"{labels_path}: labels must be whole numbers, got {labels[bad][0]}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise IDXError(f"{labels_path}: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return images, labels.astype(np.int64)
