"""Folders of class folders of images, written by the tests: simple shapes (a disc, a square, a cross)
drawn at mixed sizes, in mixed modes (L, RGB, RGBA, P, I;16) and formats (PNG, JPEG, BMP, GIF, WebP),
with corrupt files among them when asked."""

from __future__ import annotations

import os

import numpy as np

SHAPES = ("cross", "disc", "square")  # sorted: the class order ImageFolder gives them


def shape(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A bright shape on a dark background, (size, size) uint8, jittered in place and size."""
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = 0.5 + rng.uniform(-0.08, 0.08, 2)
    r = rng.uniform(0.22, 0.32)
    if kind == "disc":
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    elif kind == "square":
        m = (abs(yy - cy) < r * 0.8) & (abs(xx - cx) < r * 0.8)
    else:
        m = ((abs(yy - cy) < r * 0.25) | (abs(xx - cx) < r * 0.25)) & (abs(yy - cy) < r) & (abs(xx - cx) < r)
    noise = rng.integers(0, 30, (size, size))
    return np.clip(m * 220 + noise, 0, 255).astype(np.uint8)


def save(a: np.ndarray, path: str, mode: str) -> None:
    from PIL import Image

    im = Image.fromarray(a)
    if mode == "RGB":
        im = Image.merge("RGB", (im, im, im))
    elif mode == "RGBA":
        im = Image.merge("RGBA", (im, im, im, Image.new("L", im.size, 255)))
    elif mode == "P":
        im = im.convert("P")
    elif mode == "I;16":
        im = Image.fromarray(a.astype(np.uint16) * 257)
    im.save(path)


MODES = [("L", ".png"), ("RGB", ".jpg"), ("RGBA", ".png"), ("P", ".gif"), ("L", ".bmp"), ("RGB", ".webp"),
         ("I;16", ".png"), ("L", ".jpeg")]


def write_folder(root, per_class: int = 12, seed: int = 0, corrupt: int = 0, colour: bool = False,
                 classes=SHAPES) -> list[str]:
    """root/<class>/… images of the shapes; `corrupt` broken files among them (their paths returned).
    colour: the shapes tinted by class (so that the folder reads as RGB)."""
    rng = np.random.default_rng(seed)
    bad = []
    for k, kind in enumerate(classes):
        d = os.path.join(str(root), kind)
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            size = int(rng.choice([20, 28, 37, 64, 90]))
            a = shape(kind, size, rng)
            mode, ext = MODES[i % len(MODES)]
            path = os.path.join(d, f"{i:03d}{ext}")
            if colour:
                from PIL import Image

                tint = np.array([[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0]])[k % 3]
                rgb = (a[..., None] * tint).astype(np.uint8)
                Image.fromarray(rgb).save(path if ext not in (".gif", ".bmp") else path[:-4] + ".png")
            else:
                save(a, path, mode)
        for j in range(corrupt):
            path = os.path.join(d, f"broken-{j}.png")
            with open(path, "wb") as f:
                f.write(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 40, dtype=np.uint8)))
            bad.append(path)
    return bad
