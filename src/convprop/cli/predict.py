"""`convprop predict CKPT IMAGE|DIR …`: classify image files with a trained checkpoint."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from .. import checkpoint
from ..data import normalize
from ..data.folders import read_image
from ..data.images import IMAGE_EXTENSIONS, ImageError, display_name, read_digit
from ..train import predict
from ._options import CKPT_HELP, UsageError, run_paths

CHUNK = 256  # images read and classified at a time
LOW_P = 0.5  # a top probability under this is worth a warning


def add_parser(sub) -> None:
    r = sub.add_parser("predict", help="classify PNG/JPEG images of digits with a checkpoint",
                       description="Each image is converted as MNIST was made (grayscale, white ink on black, "
                                   "the ink scaled into 20×20 and centred) and classified. Photos of a digit on "
                                   "paper work: the paper's uneven light, a table's edge and the frame around "
                                   "the digit are left out. A warning goes to stderr (and into --json) for an "
                                   "image with no digit-like ink, a tiny or degenerate one, ink only in the "
                                   "alpha channel, or a top probability under 0.5. --show DIR writes the 28×28 "
                                   "image each file became, as the model saw it. For a model trained on a folder "
                                   "of images, each is read as its training images were (channels, size, "
                                   "normalisation, as the checkpoint records) and named by the folder's classes.")
    r.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    r.add_argument("images", metavar="IMAGE", nargs="+",
                   help="image files, or directories of them (PNG, JPEG, BMP, GIF, WebP, TIFF; any size)")
    r.add_argument("--top-k", type=int, default=3, metavar="K",
                   help="how many classes to list, at most the model's (default: 3)")
    r.add_argument("--json", action="store_true", help="print one JSON object per image, one per line")
    r.add_argument("--show", metavar="DIR", help="write the image each file became, as the model saw it, to DIR (PNG, "
                                                 "one per image: the 28×28 digit, or a folder model's C×H×W input)")


def image_paths(items: list[str]) -> list[str]:
    """Files as given; directories expanded to their image files, sorted by name."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, f)))
            if not found:
                raise FileNotFoundError(f"{display_name(item)}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                                        "this directory")
            paths += found
        else:
            paths.append(item)
    return paths


def _read(paths: list[str], debug: bool, spec: dict) -> list[tuple[str, tuple]]:
    """(path, (image, warnings)) of every readable image, read as the checkpoint's input says: MNIST's digit
    preparation (read_digit), or the whole image in its channels resized to its size, as its training images
    were (data/folders.py); each unreadable one skipped with a one-line warning (with --debug the first
    raises, traceback and all)."""
    read = []
    for path in paths:
        try:
            if spec["prepare"] == "digit":
                read.append((path, read_digit(path)))
            elif not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no such image file")
            else:
                read.append((path, (read_image(path, tuple(spec["size"]), spec["channels"]), [])))
        except (ImageError, OSError) as e:
            if debug:
                raise
            reason = " ".join(str(e).replace(display_name(path), "").lstrip(": ").split())
            print(f"convprop: warning: {display_name(path)}: skipped: {reason}", file=sys.stderr)
    return read


def run(args) -> int:
    if args.top_k < 1:
        raise ValueError(f"--top-k: expected a positive integer, got {args.top_k}")
    args.checkpoint = run_paths(args.checkpoint)[1]
    ckpt = checkpoint.load(args.checkpoint)
    model = checkpoint.restore_model(ckpt, args.checkpoint)
    spec = checkpoint.input_spec(ckpt["meta"])  # the size, channels, normalisation and class names it was trained on
    if spec["prepare"] == "digit" and spec["channels"] != 1:
        raise ValueError(f"{args.checkpoint}: the model takes {spec['channels']}-channel images; predict prepares "
                         "digits as MNIST's (1 channel, 28×28)")
    names = spec["classes"]
    if args.top_k > len(names):
        raise UsageError(f"--top-k: expected at most {len(names)} (the model's classes), got {args.top_k}")
    paths = image_paths(args.images)
    show = Show(args.show) if args.show else None
    readable = 0
    for start in range(0, len(paths), CHUNK):
        read = _read(paths[start:start + CHUNK], args.debug, spec)
        if not read:
            continue
        readable += len(read)
        x = normalize(np.stack([d for _, (d, _) in read]), spec["mean"], spec["std"], dtype=model.dtype)
        probs = predict(model, x)
        for (path, (digit, warnings)), p in zip(read, probs):
            top = np.argsort(-p, kind="stable")[:args.top_k]
            if p[top[0]] < LOW_P:
                warnings.append(f"low confidence (p = {p[top[0]]:.2f} for the top class): the image may not hold "
                                "a digit the model knows; --show DIR shows what it saw")
            for w in warnings:
                print(f"convprop: warning: {display_name(path)}: {w}", file=sys.stderr)
            if show is not None:
                show.write(path, digit)
            if args.json:
                print(json.dumps({"image": path, "class": int(top[0]), "name": names[top[0]],
                                  "p": round(float(p[top[0]]), 6),
                                  "top": [{"class": int(c), "name": names[c], "p": round(float(p[c]), 6)}
                                          for c in top], "warnings": warnings}))
                continue
            label = names[top[0]] if names[top[0]] == str(top[0]) else f"{names[top[0]]} (class {top[0]})"
            print(f"{display_name(path)}: {label}  (p = {p[top[0]]:.3f})")
            if args.top_k > 1:
                print("    " + "  ".join(f"{names[c]}: {p[c]:.3f}" for c in top))
    if readable < len(paths):
        sys.stdout.flush()
        skipped = len(paths) - readable
        raise UsageError(f"{skipped} of {len(paths)} images could not be read (skipped, each named above)")
    return 0


class Show:
    """--show DIR: what the model saw, as PNG files named after the images (NAME.png; NAME-2.png … where
    two images share a name): a 28×28 digit (H, W), or a folder model's uint8 (C, H, W) image, grey or RGB."""

    def __init__(self, folder: str) -> None:
        self.folder, self.used = folder, set()
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--show {display_name(folder)}: cannot make this directory ({e.strerror or e})") \
                from None

    def write(self, path: str, image: np.ndarray) -> None:
        from PIL import Image

        if image.ndim == 3:  # (C, H, W): one channel as grey, three as RGB
            image = image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))

        stem = display_name(os.path.splitext(os.path.basename(path))[0]) or "image"
        name, n = f"{stem}.png", 1
        while name in self.used:
            n += 1
            name = f"{stem}-{n}.png"
        self.used.add(name)
        try:
            Image.fromarray(image).save(os.path.join(self.folder, name))
        except OSError as e:
            raise ValueError(f"--show {display_name(self.folder)}: cannot write {name} ({e.strerror or e})") from None
