"""What a run trains, validates and tests on, and the input its model takes.

Every source gets a validation set: MNIST-style IDX files and CIFAR-10's batches keep their test split
for the end and hold `val_split` of the training images out (stratified per class, seeded); a folder
of class folders (data/folders.py) does the same, or uses DIR/val (and DIR/test) where the user split
it.  `input_spec` is what the checkpoint records of the model's input (see checkpoint.input_spec).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

import numpy as np

from ..data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST_MEAN,
    MNIST_STD,
    ImageFolder,
    find_cifar10,
    find_image_folder,
    find_mnist,
    load_images,
    stratified_split,
)
from ..data.images import ImageError, class_names
from ..errors import RunError


def _subset(images: np.ndarray, labels: np.ndarray, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n is None or n >= len(labels):
        return images, labels
    idx = np.sort(np.random.default_rng([seed, 1234]).permutation(len(labels))[:n])
    return images[idx], labels[idx]


def warn_to_stderr(message: str) -> None:
    print(f"convprop: warning: {message}", file=sys.stderr)


@dataclasses.dataclass
class RunData:
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray] | None
    input: dict  # checkpoint.input_spec's layout
    kind: str  # "mnist", "cifar" or "folder"
    skipped: int = 0  # unreadable image files left out


def is_image_folder(root: str | None) -> bool:
    """root holds class folders of images and neither IDX files nor CIFAR-10's batches."""
    if root is None or not os.path.isdir(root) or find_cifar10(root) is not None:
        return False
    try:
        find_mnist(root, "train")
        return False
    except FileNotFoundError:
        return find_image_folder(root) is not None


def builtin_spec(images: np.ndarray, data: str | None) -> dict:
    """The input of IDX (grey) or CIFAR-10 (colour) data: its size, its fixed normalisation, its classes."""
    colour = images.ndim == 4
    mean, std = (list(CIFAR10_MEAN), list(CIFAR10_STD)) if colour else ([MNIST_MEAN], [MNIST_STD])
    return {"size": [int(images.shape[-2]), int(images.shape[-1])], "channels": 3 if colour else 1,
            "mean": mean, "std": std, "range": [0, 255], "classes": class_names(data, 10),
            "prepare": "resize" if colour else "digit"}


def folder_spec(ds: ImageFolder) -> dict:
    return {"size": [int(ds.images.shape[2]), int(ds.images.shape[3])], "channels": int(ds.images.shape[1]),
            "mean": list(ds.mean), "std": list(ds.std), "range": [0, 255], "classes": list(ds.classes),
            "prepare": "resize"}


def _folder(path: str, warn: Callable[[str], None], spec: dict | None = None, size=None) -> ImageFolder:
    try:
        if spec is None:
            return ImageFolder(path, size=size, warn=warn)
        return ImageFolder(path, size=tuple(spec["size"]), channels=spec["channels"], classes=spec["classes"],
                           warn=warn, mean=spec["mean"], std=spec["std"])
    except (ValueError, FileNotFoundError, ImageError) as e:
        raise RunError(f"--data: {e}") from None


def load_run_data(data: str | None, model: str, val_split: float, seed: int, train_size: int | None = None,
                  test_size: int | None = None, spec: dict | None = None,
                  warn: Callable[[str], None] = warn_to_stderr) -> RunData:
    """The run's training, validation and test sets (uint8 images, int64 labels) and its input spec.
    spec: a resumed run's (its folder images are then read at the size, channels and classes it had)."""
    if data is not None and not os.path.isdir(data):
        raise RunError(f"--data {data}: no such directory")
    if is_image_folder(data):
        layout = find_image_folder(data)
        size = (28, 28) if model == "lenet5" else None  # (LeNet-5 takes 28×28; the others any size)
        train_ds = _folder(layout["train"], warn, spec, size)
        spec = folder_spec(train_ds) if spec is None else spec
        skipped = len(train_ds.skipped)
        x, y = train_ds.images, train_ds.targets
        val = test = None
        for part in ("val", "test"):
            if part in layout:
                ds = _folder(layout[part], warn, spec)
                skipped += len(ds.skipped)
                if part == "val":
                    val = (ds.images, ds.targets)
                else:
                    test = (ds.images, ds.targets)
        if val is None and val_split > 0:
            keep, held = stratified_split(y, val_split, seed)
            x, y, val = x[keep], y[keep], (x[held], y[held])
        if train_size is not None:
            x, y = _subset(x, y, train_size, seed)
        if test is not None:
            test = _subset(*test, test_size, seed)
        if skipped:
            warn(f"{skipped} unreadable image file{'s' * (skipped != 1)} skipped")
        return RunData((x, y), val if val is not None and len(val[1]) else None, test, spec, "folder", skipped)
    images, labels = load_images(data, train=True)  # MNIST-style IDX, or CIFAR-10's binary batches
    test_images, test_labels = load_images(data, train=False)
    val = None
    if val_split > 0:
        keep, held = stratified_split(labels, val_split, seed)
        images, labels, val = images[keep], labels[keep], (images[held], labels[held])
    train = _subset(images, labels, train_size, seed)
    test = _subset(test_images, test_labels, test_size, seed)
    kind = "cifar" if images.ndim == 4 else "mnist"
    return RunData(train, val if val is not None and len(val[1]) else None, test,
                   spec if spec is not None else builtin_spec(images, data), kind)


def evaluation_data(data: str | None, spec: dict,
                    warn: Callable[[str], None] = warn_to_stderr) -> tuple[np.ndarray, np.ndarray, str]:
    """(images, labels, what they are) to evaluate a checkpoint of input `spec` on: the test split of IDX
    or CIFAR data (the bundled sample's when data is None); of an image folder, its test/ (else val/)
    where it is split, else every image of its class folders — read as the checkpoint's input."""
    if data is not None and not os.path.isdir(data):
        raise RunError(f"--data {data}: no such directory")
    if is_image_folder(data):
        layout = find_image_folder(data)
        part = next((p for p in ("test", "val") if p in layout), "train")
        try:
            ds = ImageFolder(layout[part], size=tuple(spec["size"]), channels=spec["channels"],
                             classes=spec["classes"], warn=warn)
        except (ValueError, FileNotFoundError, ImageError) as e:
            raise RunError(f"--data: {e}") from None
        if ds.skipped:
            warn(f"{len(ds.skipped)} unreadable image file{'s' * (len(ds.skipped) != 1)} skipped")
        return ds.images, ds.targets, f"images in {layout[part]}"
    images, labels = load_images(data, train=False)
    if images.ndim == 3 and spec["channels"] != 1 or images.ndim == 4 and images.shape[1] != spec["channels"]:
        raise RunError(f"--data {data}: {1 if images.ndim == 3 else images.shape[1]}-channel images, but the model "
                       f"takes {spec['channels']} channels")
    return images, labels, "test images"
