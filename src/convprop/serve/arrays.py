"""Arrays for the browser: nested lists, or PNG tiles in one of three colour maps (no Pillow needed).

Every encoded array carries its shape.  A PNG lays a tensor out as tiles with 1-pixel transparent
gaps: (C, H, W) as C maps in rows of up to 8; (O, I, kh, kw) kernels as I rows of O; (M, N) as
itself; (N,) as a 1×N strip.  The colours: "signed" is blue (−) / white (0) / red (+), scaled by
the largest |value| of the whole tensor, so maps of one layer compare; "gray" is black (min) to
white (max); "hot" is black → red → yellow → white from 0 to the maximum (magnitudes).
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

FORMATS = ("list", "png")
PER_ROW = 8


def png_bytes(rgba: np.ndarray) -> bytes:
    """(H, W, 4) uint8 → a PNG file (8-bit RGBA, no filter, zlib level 6)."""
    h, w = rgba.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), rgba.reshape(h, 4 * w)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def tile(a: np.ndarray) -> np.ndarray:
    """The 2-D picture of a tensor, NaN in the gaps between tiles (see the module docstring)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        return a[None, :]
    if a.ndim == 2:
        return a
    if a.ndim == 3:
        c, h, w = a.shape
        cols = min(c, PER_ROW)
        rows = -(-c // cols)
        grid = np.full((rows, cols, h, w), np.nan)
        grid.reshape(rows * cols, h, w)[:c] = a
    elif a.ndim == 4:
        grid = a.transpose(1, 0, 2, 3)  # (I, O, kh, kw): one row per input channel
    else:
        raise ValueError(f"array: expected 1 to 4 dimensions, got shape {a.shape}")
    rows, cols, h, w = grid.shape
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = grid[r, c]
    return out


def colour(t: np.ndarray, cmap: str) -> tuple[np.ndarray, float, float]:
    """A 2-D array with NaN gaps → (H, W, 4) uint8 RGBA, and the values of the colour map's two ends."""
    gap = np.isnan(t)
    v = np.where(gap, 0.0, t)
    rgba = np.zeros(t.shape + (4,), np.uint8)
    if cmap == "signed":
        m = float(np.abs(v).max()) or 1.0
        u = np.clip(v / m, -1, 1)
        pos, neg = np.clip(u, 0, 1), np.clip(-u, 0, 1)
        rgba[..., 0] = 255 * (1 - neg)
        rgba[..., 1] = 255 * (1 - pos - neg)
        rgba[..., 2] = 255 * (1 - pos)
        lo, hi = -m, m
    elif cmap == "gray":
        lo, hi = float(v[~gap].min(initial=0.0)), float(v[~gap].max(initial=0.0))
        u = (v - lo) / ((hi - lo) or 1.0)
        rgba[..., :3] = (255 * u)[..., None]
    elif cmap == "hot":
        lo, hi = 0.0, float(v.max()) or 1.0
        u = np.clip(v / hi, 0, 1) * 3
        for k in range(3):
            rgba[..., k] = 255 * np.clip(u - k, 0, 1)
    else:
        raise ValueError(f"cmap: expected 'signed', 'gray' or 'hot', got {cmap!r}")
    rgba[..., 3] = np.where(gap, 0, 255)
    return rgba, lo, hi


def encode(a: np.ndarray, fmt: str, cmap: str | None = None) -> dict:
    """{"shape", "data": nested list} or {"shape", "png": base64, "size": [height, width] of the picture, "cmap",
    "min", "max"} (the values at the colour map's two ends).
    cmap None picks "signed" for arrays with negative values, else "gray"."""
    a = np.asarray(a)
    if fmt == "list":
        return {"shape": list(a.shape), "data": a.tolist()}
    cmap = cmap or ("signed" if a.size and a.min() < 0 else "gray")
    rgba, lo, hi = colour(tile(a), cmap)
    return {"shape": list(a.shape), "png": base64.b64encode(png_bytes(rgba)).decode("ascii"), "cmap": cmap,
            "min": lo, "max": hi, "size": list(rgba.shape[:2])}
