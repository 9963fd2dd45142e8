"""Data files the tests write: IDX files as MNIST's are laid out."""

from __future__ import annotations

import gzip
import struct


def write_idx(path, array, code=0x08, compress=False):
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)
