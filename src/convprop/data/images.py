"""Image files as MNIST digits for `convprop predict` (Pillow, the `train` extra).

MNIST's conventions: grayscale, white ink on black, the ink's bounding box scaled into 20×20 and
its centre of mass put at the centre of a 28×28 canvas.  Files are untrusted and may be huge: the
header is read first and an image over MAX_PIXELS is refused before it is decoded; a big image is
reduced right after decoding (JPEG while decoding), before any float copy is made.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np

from .._extras import require

__all__ = ["load_digit", "read_digit", "ImageError", "MAX_PIXELS", "IMAGE_EXTENSIONS", "FASHION_MNIST_CLASSES",
           "class_names"]

MAX_PIXELS = 100_000_000  # 10000×10000: decoded, at most 400 MB (RGBA); a phone photo has 12 million
WORK_SIZE = 512  # images are reduced to at most this many pixels a side before the float maths
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


class ImageError(ValueError):
    """An image file convprop cannot read (one line: the file and why)."""


def class_names(data_dir: str | None, num_classes: int) -> list[str]:
    """The classes' names: Fashion-MNIST's ten where the training data's directory says Fashion-MNIST
    (as torchvision's FashionMNIST/raw, or any path with 'fashion' in it), else the class numbers."""
    if data_dir and "fashion" in str(data_dir).lower() and num_classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(c) for c in range(num_classes)]


def _pillow():
    return require("PIL.Image", "train", "reading images needs Pillow")


def _gray(im, name: str, warnings: list[str]) -> np.ndarray:
    """Grayscale 0–255 as float64, from any mode: 16-bit scaled (not clipped), transparency drawn
    over white as a viewer shows it (with a warning where the ink is only in the alpha channel)."""
    Image = _pillow()
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG or TIFF: 0–65535
        a = np.asarray(im.convert("I"), dtype=np.float64)
        top = 65535.0 if a.max(initial=0) <= 65535 else float(a.max())
        return np.clip(a, 0, None) * (255.0 / top)
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        return np.clip(a * 255.0 if a.max(initial=0) <= 1.0 else a, 0, 255)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        color = np.asarray(rgba.convert("L"))
        if np.ptp(alpha) > 64 and np.ptp(color[alpha > 127] if (alpha > 127).any() else color) < 16:
            warnings.append("the ink is only in the alpha channel (transparent background, one colour): "
                            "read as drawn on white")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("L"), dtype=np.float64)
    return np.asarray(im.convert("L"), dtype=np.float64)


def read_digit(source: str | bytes | BinaryIO, name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """(28×28 uint8 MNIST digit, warnings) from an image file, its bytes or a binary file object.

    Warnings say when the prediction will mean little: a blank or almost uniform image, ink hidden
    in the alpha channel.  Raises ImageError (one line) for what is not a readable image or is
    over MAX_PIXELS, FileNotFoundError for a missing file."""
    Image = _pillow()
    name = name or (source if isinstance(source, str) else "image")
    if isinstance(source, str):
        if not os.path.exists(source):
            raise FileNotFoundError(f"{source}: no such image file")
        if not os.path.isfile(source):
            raise ImageError(f"{source}: expected an image file, got a directory or device")
    elif isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    warnings: list[str] = []
    try:
        with _open(Image, source) as im:  # reads the header only
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{name}: {w}×{h} = {w * h:,} pixels, over the limit of {MAX_PIXELS:,}; resize it "
                                 "first (e.g. `convert in.png -resize 1000x1000 out.png`, or Pillow's "
                                 "Image.thumbnail((1000, 1000)))")
            if w < 1 or h < 1:
                raise ImageError(f"{name}: an image of {w}×{h} pixels has nothing to classify")
            if im.format == "JPEG":
                im.draft(im.mode, (WORK_SIZE, WORK_SIZE))  # the decoder itself scales by 1/2, 1/4 or 1/8
            im.load()
            factor = max(im.size) // WORK_SIZE
            if factor > 1:  # box-average early: later steps work on ≤ 2·WORK_SIZE pixels a side
                im = im.reduce(factor) if im.mode not in ("P", "1") else im.convert("RGBA").reduce(factor)
            g = _gray(im, name, warnings)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as e:
        text = " ".join(str(e).split())[:160]
        raise ImageError(f"{name}: not an image Pillow can read ({text})") from None
    return _as_mnist(g, warnings), warnings


def _open(Image, source):
    """Image.open with our pixel limit instead of Pillow's (whose error names no size and no remedy)."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(source)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def load_digit(source: str | bytes | BinaryIO) -> np.ndarray:
    """An image as a 28×28 uint8 MNIST digit (read_digit without the warnings)."""
    return read_digit(source)[0]


def _as_mnist(g: np.ndarray, warnings: list[str]) -> np.ndarray:
    """Grayscale (H, W) 0–255 → white ink on black, the ink's box in 20×20, centred by its mass."""
    Image = _pillow()
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    if border.mean() > 127:  # dark ink on light paper: invert to MNIST's white on black
        g, border = 255 - g, 255 - border
    g = np.clip(g - np.median(border), 0, 255)  # the background to 0
    contrast = float(g.max())
    if contrast < 32:
        warnings.append(f"blank or almost uniform (ink {contrast:.0f}/255 above the background): "
                        "the prediction means little")
    ys, xs = np.nonzero(g > 0.2 * g.max()) if g.max() > 0 else (np.array([0]), np.array([0]))
    g = g[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = g.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(g.astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float64)
    canvas = np.zeros((28, 28))
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
    if canvas.sum() > 0:  # shift the centre of mass to the centre, as MNIST was made
        cy, cx = (np.indices(canvas.shape) * canvas).reshape(2, -1).sum(1) / canvas.sum()
        dy, dx = int(round(14.0 - cy)), int(round(14.0 - cx))  # MNIST put the centre of mass at (14, 14)
        canvas = np.roll(canvas, (dy, dx), axis=(0, 1))
    return np.clip(canvas, 0, 255).astype(np.uint8)
