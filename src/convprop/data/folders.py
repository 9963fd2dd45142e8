"""Folders of images, one folder per class (torchvision's ImageFolder layout), as training data.

    DIR/cat/001.jpg, DIR/cat/…, DIR/dog/…      one folder per class: the folder names, sorted, are the classes
    DIR/train/<class>/…, DIR/val/<class>/…      or already split (DIR/test/<class>/… too, or instead of val)

Every image — PNG, JPEG, BMP, GIF, WebP, TIFF, any size, grey or colour — is decoded within the pixel
limit of data/images.py, converted to the channels asked for (grey "L", or "RGB"; transparency drawn
over white) and resized to the size asked for (bilinear, the whole image, its aspect not kept).  A file
that cannot be read is skipped with one warning naming it; the dataset counts them (`skipped`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from . import images as _images
from .datasets import ArrayDataset

__all__ = ["ImageFolder", "find_image_folder", "read_image", "DEFAULT_VAL_SPLIT", "channel_stats"]

DEFAULT_VAL_SPLIT = 0.1
MAX_CLASSES = 10_000
GREY_TOLERANCE = 24  # channels this close everywhere: a grey image (lossy formats shift grey by a few levels)


def _escaped(path: str) -> str:
    """A file name as it can be printed on one line (control characters and bad bytes escaped)."""
    return ascii(path)[1:-1] if not path.isprintable() else path


def read_image(source: str | bytes, size: tuple[int, int], channels: int = 3, *, name: str | None = None,
               max_pixels: int = _images.MAX_PIXELS) -> np.ndarray:
    """One image (a file, or its bytes) as uint8 (channels, H, W) at size (H, W): decoded by the one bounded
    decoder (images.open_image: the pixel limit checked from the header, a big image reduced as it decodes,
    transparency drawn over white), in grey (1) or RGB (3), resized bilinearly.  Raises images.ImageError
    (one line naming the file, or `name`) for what it cannot read."""
    Image = _images._pillow()
    h, w = size
    try:
        a = _images.open_image(source, name=name, mode="L" if channels == 1 else "RGB", max_side=4 * max(h, w),
                               max_pixels=max_pixels)
    except FileNotFoundError as e:
        raise _images.ImageError(str(e)) from None
    a = np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR, reducing_gap=2.0), dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def _classes(root: str) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _files(folder: str) -> list[str]:
    found = []
    for d, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        found += [os.path.join(d, n) for n in sorted(names)
                  if n.lower().endswith(_images.IMAGE_EXTENSIONS) and not n.startswith(".")]
    return found


def find_image_folder(root: str) -> dict[str, str] | None:
    """The layout under root: {'train': dir} (one folder per class, a validation set to be split off),
    {'train': …, 'val': …, 'test': …} (each present one) where root/train holds class folders, or None
    when root holds no class folders with images."""
    if not os.path.isdir(root):
        return None
    train = os.path.join(root, "train")
    if os.path.isdir(train) and _classes(train):
        return {k: os.path.join(root, k) for k in ("train", "val", "test") if os.path.isdir(os.path.join(root, k))}
    if any(_files(os.path.join(root, c)) for c in _classes(root)):
        return {"train": root}
    return None


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 (N, C, H, W) images on the 0–1 scale."""
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = np.maximum(x.std(axis=(0, 2, 3)), 1e-3)  # (one flat colour: no division by zero)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


class ImageFolder(ArrayDataset):
    """The images under root, one folder per class (folder names sorted = classes), as uint8
    (N, C, H, W) `images` and int64 `targets`, read once (as torchvision's ImageFolder, decoded up front).

    size (H, W) or an int: what every image is resized to (default 28×28 for grey, 32×32 for colour);
    channels: 1 or 3, or None to choose from the images (3 if any is in colour, else 1); classes: the
    class names to use (a validation or test folder must use the training folder's); warn(message):
    called once per unreadable file, which is skipped (`skipped` lists them).  mean/std default to
    the images' own (channel_stats)."""

    def __init__(self, root: str, size: int | tuple[int, int] | None = None, channels: int | None = None,
                 classes: list[str] | None = None, warn: Callable[[str], None] | None = None,
                 mean=None, std=None) -> None:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{_escaped(root)}: no such directory (expected one folder per class)")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels: expected 1, 3 or None, got {channels!r}")
        found = _classes(root)
        if not found:
            raise ValueError(f"{_escaped(root)}: no class folders (expected one folder of images per class)")
        if len(found) > MAX_CLASSES:
            raise ValueError(f"{_escaped(root)}: {len(found):,} class folders, more than {MAX_CLASSES:,}")
        names = list(classes) if classes is not None else found
        unknown = [c for c in found if c not in names]
        if unknown:
            raise ValueError(f"{_escaped(os.path.join(root, unknown[0]))}: a class the training data does not have "
                             f"(its classes: {', '.join(names[:10])}{', …' if len(names) > 10 else ''})")
        self.root = root
        self.samples = [(p, names.index(c)) for c in found for p in _files(os.path.join(root, c))]
        if not self.samples:
            raise ValueError(f"{_escaped(root)}: no image files ({', '.join(_images.IMAGE_EXTENSIONS)}) in its class "
                             "folders")
        if isinstance(size, (int, np.integer)):
            size = (int(size), int(size))
        self.skipped: list[str] = []
        read = []
        probe = 3 if channels is None else channels
        for path, label in self.samples:
            try:
                img = read_image(path, size or ((32, 32) if probe == 3 else (28, 28)), probe)
            except _images.ImageError as e:
                self.skipped.append(path)
                if warn is not None:
                    warn(f"{e}; skipped")
                continue
            read.append((img, label))
        if not read:
            raise ValueError(f"{_escaped(root)}: none of its {len(self.samples)} image files could be read")
        x = np.stack([img for img, _ in read])
        if channels is None:  # grey images all: one channel, at the grey size unless one was given
            # (grey saved as RGB JPEG or WebP comes back with its channels a few levels apart: not colour)
            spread = np.ptp(x.astype(np.int16), axis=1)
            colour = bool(spread.max(initial=0) > GREY_TOLERANCE)
            channels = 3 if colour else 1
            if not colour:
                x = x[:, :1]
                if size is None:  # (read again at 28×28: grey images take MNIST's size)
                    skipped = set(self.skipped)
                    x = np.stack([read_image(p, (28, 28), 1) for p, _ in self.samples if p not in skipped])
        self.channels = channels
        if mean is None or std is None:
            mean, std = channel_stats(x)
        super().__init__(x, np.array([label for _, label in read], np.int64), classes=names, mean=mean, std=std)
