"""Image files: one bounded decoder, and a photographed digit prepared as an MNIST digit.

`open_image(path_or_bytes, mode="L"|"RGB", max_pixels=…, max_side=…)` is the one way convprop decodes an
image (`convprop predict`, `convprop serve`, image folders).  Files are untrusted and may be huge or
hostile: only PNG, JPEG, BMP, GIF, WebP, TIFF and PNM are opened; the size is read from the header and
an image over `max_pixels` is refused before it is decoded (convprop's limit, not Pillow's: Pillow's
DecompressionBomb warnings and errors never reach the user); only the first frame of an animation or
multi-page file is read; PNG text chunks are bounded (1 MiB each, 4 MiB in all); a truncated file is an
error, not a partial image; at most MAX_DECODES images are decoded at once in a process, so a server
handed many hostile images at the same moment holds at most that many decoded images.  Every failure is
an ImageError (a ValueError) of one line naming the file by `display_name`, which escapes control
characters so a file name cannot forge output lines.

`read_digit` prepares a photo as MNIST's digits were made: grayscale, white ink on black, the ink's
bounding box scaled into 20×20 and its centre of mass put at the centre of 28×28.  Before that the ink
must be found in a photo of paper, in a copy of at most WORK pixels a side:
- the paper under uneven light (gradients, vignetting, shadows, a table's edge) is the grey-level
  closing with a square wider than any stroke (the brightest level near by, its dark narrow things
  filled in); ink is how much darker than it a pixel is, relative to the white level near it (light
  ink: the opening, the same turned over);
- components are labelled at thresholds doubling from the paper's noise up; what touches the frame (a
  table, a shadow, a page edge) is dropped, and so are its pieces at higher thresholds unless they stand
  out of it (a digit on a shadow's edge); the digit is the component with the most ink, nearer the
  centre and stroke-like preferred, with the substantial pieces near it (broken strokes);
- dark or light ink is decided by the strokes: each side's best guess at a digit, and the side whose
  pixels differ from the paper around both is the ink (the other side's guess is the paper in the
  digit's loops and bays, which does not); never by the mean brightness;
- the digit's crop is taken again from the finer image, with its own paper estimate and Otsu's
  threshold, keeping what meets the coarse digit.
Warnings say when the prediction will mean little: no digit-like ink, a tiny or degenerate image, ink
only in the alpha channel.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings as _warnings
from typing import BinaryIO

import numpy as np

from .._extras import require

__all__ = ["open_image", "display_name", "read_digit", "load_digit", "prepare_digit", "ImageError", "MAX_PIXELS",
           "MAX_DECODES", "IMAGE_EXTENSIONS", "FASHION_MNIST_CLASSES", "class_names"]

MAX_PIXELS = 100_000_000  # 10000×10000: decoded, at most 400 MB (RGBA); a phone photo has 12 to 50 million
MAX_DECODES = 2  # images decoded at the same time in one process (the others wait)
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")  # what open_image opens; Pillow knows many more
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm")
MAX_TEXT_CHUNK, MAX_TEXT_MEMORY = 1 << 20, 4 << 20  # PNG text: per chunk (decompressed), per image
DETAIL = 2048  # read_digit reduces a photo to at most this many pixels a side as it decodes it
WORK = 512  # … and looks for the digit in a copy of at most this many pixels a side
MAX_HOLES = 6  # a digit has at most 2 loops; JPEG and noise may punch a few pinholes in its strokes
THIN = 0.15  # strokes: area / boundary pixels / size (about stroke width / 2 / size) below this; a disc: 0.25
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


class ImageError(ValueError):
    """An image file convprop cannot read (one line: the file and why)."""


def display_name(name) -> str:
    """A file name as printed in a message: control characters (newlines, escapes, …) and characters
    that could not be decoded are written as Python escapes, so a name is always one line."""
    text = os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else str(name)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def class_names(data_dir: str | None, num_classes: int, channels: int = 1) -> list[str]:
    """The classes' names for a checkpoint that does not record them: CIFAR-10's ten for a 3-channel model
    of ten classes; Fashion-MNIST's ten where the training data's directory says Fashion-MNIST (as
    torchvision's FashionMNIST/raw, or any path with 'fashion' in it); else the class numbers."""
    if channels == 3 and num_classes == len(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    if data_dir and "fashion" in str(data_dir).lower() and num_classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [str(c) for c in range(num_classes)]


# --------------------------------------------------------------------------- the decoder
_decodes = threading.BoundedSemaphore(MAX_DECODES)
_quiet_lock = threading.Lock()
_quiet = {"depth": 0, "saved": None}


@contextlib.contextmanager
def _pillow_quiet():
    """Pillow's warnings (decompression bombs, malformed metadata, …) silenced while any decode runs.
    catch_warnings is process-wide, so the decodes share one: the first in enters it, the last out leaves."""
    with _quiet_lock:
        if _quiet["depth"] == 0:
            _quiet["saved"] = _warnings.catch_warnings()
            _quiet["saved"].__enter__()
            _warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                _quiet["saved"].__exit__(None, None, None)


def _pillow():
    Image = require("PIL.Image", "train", "reading images needs Pillow")
    from PIL import PngImagePlugin

    PngImagePlugin.MAX_TEXT_CHUNK = min(PngImagePlugin.MAX_TEXT_CHUNK, MAX_TEXT_CHUNK)
    PngImagePlugin.MAX_TEXT_MEMORY = min(PngImagePlugin.MAX_TEXT_MEMORY, MAX_TEXT_MEMORY)
    return Image


def _identify(Image, fp):
    """The image's header, read by the plugin of its format (one of FORMATS): Image.open without its
    own pixel limit, which would warn or fail before convprop's limit could name the size."""
    Image.preinit()
    prefix = fp.read(16)
    for fmt in FORMATS:
        if fmt not in Image.OPEN:
            Image.init()
            if fmt not in Image.OPEN:  # a Pillow built without it (WebP)
                continue
        factory, accept = Image.OPEN[fmt]
        if accept is not None and accept(prefix) is not True:
            continue
        if fmt == "JPEG":  # the JPEG itself, not jpeg_factory's multi-picture (MPO) reading of it
            from PIL.JpegImagePlugin import JpegImageFile as factory
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, ValueError, OSError, EOFError) as e:
            text = " ".join(str(e).split())[:160] or type(e).__name__
            raise ImageError(f"not an image convprop can read (a damaged {fmt} file: {text})") from None
    raise ImageError("not an image convprop can read (it reads PNG, JPEG, BMP, GIF, WebP, TIFF and PNM)")


def open_image(source: str | os.PathLike | bytes | BinaryIO, *, name: str | None = None, mode: str = "L",
               max_pixels: int = MAX_PIXELS, max_side: int | None = None,
               warnings: list[str] | None = None) -> np.ndarray:
    """The first frame of an image file, its bytes or a binary file object, as uint8 (H, W) for mode "L"
    or (H, W, 3) for "RGB".  16-bit images are scaled (not clipped); transparency is drawn over white
    (over black where the opaque pixels are light: the ink is in the alpha channel, noted in `warnings`).
    max_side: reduce as it decodes (JPEG in the decoder itself) to at most this many pixels a side.

    Raises ImageError (one line naming the file) for what is not a readable image of FORMATS, is over
    max_pixels (checked from the header, before decoding), truncated or damaged; FileNotFoundError for a
    missing file."""
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode: expected 'L' or 'RGB', got {mode!r}")
    Image = _pillow()
    is_path = isinstance(source, (str, os.PathLike))
    label = display_name(name if name is not None else source if is_path else "image")
    if is_path:
        if not os.path.exists(source):
            raise FileNotFoundError(f"{label}: no such image file")
        if not os.path.isfile(source):
            raise ImageError(f"{label}: expected an image file, got a directory or device")
    notes = warnings if warnings is not None else []
    with _decodes, _pillow_quiet():
        try:
            with (open(source, "rb") if is_path else contextlib.nullcontext(
                    io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)) as fp:
                im = _identify(Image, fp)
                try:
                    return _decode(Image, im, label, mode, max_pixels, max_side, notes)
                finally:
                    im.close()
        except ImageError as e:
            raise ImageError(str(e) if str(e).startswith(label + ":") else f"{label}: {e}") from None
        except MemoryError:
            raise ImageError(f"{label}: not enough memory to decode it; resize it first") from None
        except Exception as e:  # whatever a damaged file makes Pillow raise
            if isinstance(e, Image.DecompressionBombError):
                raise ImageError(f"{label}: over the limit of {max_pixels:,} pixels; resize it first") from None
            text = " ".join(str(e).split())[:160] or type(e).__name__
            kind = "a truncated or damaged image" if "truncated" in text else "not an image convprop can read"
            raise ImageError(f"{label}: {kind} ({text})") from None


def _decode(Image, im, label: str, mode: str, max_pixels: int, max_side: int | None, notes: list[str]):
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(f"{label}: {w}×{h} = {w * h:,} pixels, over the limit of {max_pixels:,}; resize it first "
                         "(e.g. `convert in.png -resize 1000x1000 out.png`, or Pillow's Image.thumbnail((1000, 1000)))")
    if w < 1 or h < 1:
        raise ImageError(f"{label}: an image of {w}×{h} pixels has nothing in it")
    if max_side and im.format == "JPEG":
        im.draft(im.mode, (max_side, max_side))  # the decoder itself scales by 1/2, 1/4 or 1/8
    im.load()
    if max_side and max(im.size) > max_side:
        factor = max(im.size) // max_side
        if im.mode in ("P", "1"):
            im = im.convert("RGBA")
        if factor > 1:  # box-average early: what follows works on at most 2·max_side pixels a side
            im = im.reduce(factor)
        if max(im.size) > max_side:
            s = max_side / max(im.size)
            im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BOX)
    return _pixels(Image, im, mode, notes)


def _pixels(Image, im, mode: str, notes: list[str]) -> np.ndarray:
    """uint8 L or RGB from any mode."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16-bit or 32-bit grey: scaled to 0–255
        a = np.nan_to_num(np.asarray(im if im.mode == "F" else im.convert("I"), dtype=np.float64))
        if im.mode == "F":
            top = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        else:
            top = 65535.0 if a.max(initial=0) <= 65535 else float(a.max())
        g = np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)
        return g if mode == "L" else np.repeat(g[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        opaque = alpha > 127
        colour = np.asarray(rgba.convert("L"))
        if np.ptp(alpha) > 64 and np.ptp(colour[opaque] if opaque.any() else colour) < 16:
            light = (colour[opaque] if opaque.any() else colour).mean() > 127
            notes.append("the ink is only in the alpha channel (transparent background, one colour): read as drawn "
                         f"on {'black' if light else 'white'}")
        else:
            light = False
        under = Image.new("RGBA", rgba.size, (0, 0, 0, 255) if light else (255, 255, 255, 255))
        im = Image.alpha_composite(under, rgba)
    return np.asarray(im.convert(mode))


# --------------------------------------------------------------------------- a photo as an MNIST digit
def read_digit(source: str | os.PathLike | bytes | BinaryIO, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    """(28×28 uint8 MNIST digit, warnings) from an image file, its bytes or a binary file object.

    Warnings say when the prediction will mean little: no digit-like ink, a tiny or degenerate image,
    ink hidden in the alpha channel.  Raises ImageError (one line) for what open_image refuses."""
    notes: list[str] = []
    gray = open_image(source, name=name, mode="L", max_pixels=max_pixels, max_side=DETAIL, warnings=notes)
    return prepare_digit(gray, notes), notes


def load_digit(source: str | os.PathLike | bytes | BinaryIO) -> np.ndarray:
    """An image as a 28×28 uint8 MNIST digit (read_digit without the warnings)."""
    return read_digit(source)[0]


def prepare_digit(gray: np.ndarray, warnings: list[str] | None = None) -> np.ndarray:
    """A grayscale photo or drawing (H, W) uint8 → the 28×28 uint8 MNIST digit in it (see the module's
    docstring); what makes the result doubtful is appended to `warnings`."""
    notes = warnings if warnings is not None else []
    h, w = gray.shape
    if min(h, w) < 12 or max(h, w) > 10 * min(h, w):
        notes.append(f"a tiny or degenerate image ({w}×{h} pixels): the prediction means little")
    work = _resize(gray.astype(np.float32), WORK / max(h, w)) if max(h, w) > WORK else gray.astype(np.float32)
    found = _locate(work)
    if found is None:
        spread = float(np.percentile(work, 99.5) - np.percentile(work, 0.5))
        notes.append(f"blank or almost uniform (contrast {spread:.0f}/255): no digit-like ink found; the prediction "
                     "means little" if spread < 24 else "no digit-like ink found (nothing stroke-like apart from the "
                     "image's edges): the prediction means little")
        return np.zeros((28, 28), np.uint8)
    light, box, mask = found["light"], found["box"], found["mask"]
    ink = _refine(gray, work.shape, light, box, mask)
    return _as_mnist(ink)


# the working steps: images as float32 arrays, ink dark on lighter paper (a light-ink image is inverted first)
def _resize(a: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    h, w = a.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(a.astype(np.float32), "F").resize(size, Image.BOX if scale < 1 else
                                                                         Image.BILINEAR), dtype=np.float32)


def _extreme(a: np.ndarray, k: int, axis: int, op) -> np.ndarray:
    """Running max/min over a centred window of k along axis (edges mirrored), in log2(k) passes."""
    if k <= 1:
        return a
    lo = (k - 1) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (lo, k - 1 - lo)
    out = np.pad(a, pad, mode="symmetric")  # mirrored: a margin at the frame counts twice as wide
    n = a.shape[axis]
    span = 1
    while span * 2 <= k:  # out[i] = op over [i, i + 2·span)
        m = out.shape[axis] - span
        out = op(np.take(out, range(m), axis=axis), np.take(out, range(span, span + m), axis=axis))
        span *= 2
    return op(np.take(out, range(n), axis=axis), np.take(out, range(k - span, k - span + n), axis=axis))


def _box(a: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)² window (edges repeated), by cumulative sums."""
    if r < 1:
        return a
    p = np.pad(a, r, mode="edge").astype(np.float64)
    c = np.pad(p.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    n = 2 * r + 1
    s = c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]
    return (s / (n * n)).astype(np.float32)


def _closing(a: np.ndarray, k: int) -> np.ndarray:
    """Grey-level closing with a k×k square: what is darker than its surroundings and narrower than k
    (ink) filled in with them (the paper); smooth light, shadows and straight edges stay."""
    spread = _extreme(_extreme(a, k, 0, np.maximum), k, 1, np.maximum)
    return _extreme(_extreme(spread, k, 0, np.minimum), k, 1, np.minimum)


def _ink(a: np.ndarray, k: int, light: bool = False) -> np.ndarray:
    """How much darker (lighter, for light ink) than the paper around it each pixel is, relative to the
    white level near it, 0 … 1.  The paper is the grey-level closing (opening) with a k×k square: things
    narrower than k filled in with their surroundings; smooth light, shadows and straight edges stay.
    The white level is the brightest near by, but no less than half the image's bright level: the grain
    of a dark table is not ink."""
    k = max(1, int(k))
    first, then = (np.minimum, np.maximum) if light else (np.maximum, np.minimum)
    spread = _extreme(_extreme(a, k, 0, first), k, 1, first)
    paper = _extreme(_extreme(spread, k, 0, then), k, 1, then)
    bright = spread if not light else _extreme(_extreme(a, k, 0, np.maximum), k, 1, np.maximum)
    white = np.maximum(bright, max(16.0, 0.5 * float(np.percentile(a, 95))))
    return np.clip((a - paper if light else paper - a) / white, 0.0, 1.0)


def _otsu(v: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of v's histogram that maximises the between-class variance."""
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0) ** 2 / (w0 * (1 - w0))
    return float(edges[1:][np.nanargmax(np.where(np.isfinite(between), between, -1))])


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (8-neighbour) of a boolean mask: labels 0 … n−1, −1 off the mask.
    Runs of each row, joined where runs of neighbouring rows touch (union-find over the runs)."""
    h, w = mask.shape
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    row, start = np.nonzero(edges == 1)
    end = np.nonzero(edges == -1)[1]  # exclusive; runs in row-major order, as the mask's pixels are
    stride = w + 3
    start_key, end_key = row * stride + start, row * stride + end
    # the runs of row r − 1 that touch run i of row r (8-neighbour): a contiguous range of the sorted runs
    lo = np.searchsorted(end_key, (row - 1) * stride + start, "left")
    hi = np.searchsorted(start_key, (row - 1) * stride + end, "right")
    parent = list(range(len(row)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in np.nonzero(hi > lo)[0].tolist():
        for j in range(int(lo[i]), int(hi[i])):
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(len(row))], dtype=np.int64)
    _, run_label = np.unique(roots, return_inverse=True)
    out = np.full(h * w, -1, np.int64)
    out[mask.ravel()] = np.repeat(run_label.ravel(), end - start)
    return out.reshape(h, w), int(run_label.max()) + 1 if len(row) else 0


def _components(labels: np.ndarray, n: int, weight: np.ndarray) -> dict[str, np.ndarray]:
    """Per component: area, ink (the sum of weight), bounding box, boundary pixels."""
    on = labels >= 0
    ys, xs = np.nonzero(on)
    lab = labels[on]
    inner = np.zeros_like(on)
    inner[1:-1, 1:-1] = on[1:-1, 1:-1] & on[:-2, 1:-1] & on[2:, 1:-1] & on[1:-1, :-2] & on[1:-1, 2:]
    top, left = np.full(n, 1 << 30), np.full(n, 1 << 30)
    bottom, right = np.full(n, -1), np.full(n, -1)
    np.minimum.at(top, lab, ys)
    np.minimum.at(left, lab, xs)
    np.maximum.at(bottom, lab, ys)
    np.maximum.at(right, lab, xs)
    return {"area": np.bincount(lab, minlength=n), "ink": np.bincount(lab, weights=weight[on], minlength=n),
            "edge": np.bincount(lab, weights=(~inner[on]).astype(np.float64), minlength=n),
            "top": top, "left": left, "bottom": bottom, "right": right}


def _locate(work: np.ndarray):
    """{light, box, mask} of the digit in the working image: whether its ink is lighter than the paper,
    its box (top, left, bottom, right) and its pixels; None where nothing is digit-like.

    Found as light ink in a photo of dark ink is the paper in the digit's loops and bays (and the
    reverse): the ink is the side whose pixels differ from the paper around both, the median of their
    boxes widened a little: ink is the minority there, a loop's paper the majority."""
    h, w = work.shape
    k = max(3, round(0.2 * min(h, w)))  # wider than any stroke of a digit up to the whole frame
    smooth = _box(work, 1) if min(h, w) >= 48 else work
    found = [f for f in (_best_component(_ink(smooth, k, side), side) for side in (False, True)) if f]
    if len(found) < 2:
        return found[0] if found else None
    if found[0]["strict"] != found[1]["strict"]:  # what touches the frame loses, unless it holds the other:
        inner, outer = found if found[0]["strict"] else found[::-1]  # a digit cropped tight, and its loop
        (ti, li, bi, ri), (to, lo, bo, ro) = inner["box"], outer["box"]
        if not (ti >= to and li >= lo and bi <= bo and ri <= ro):
            return inner
    top, left = min(f["box"][0] for f in found), min(f["box"][1] for f in found)
    bottom, right = max(f["box"][2] for f in found), max(f["box"][3] for f in found)
    pad = 0.15 * (max(bottom - top, right - left) + 1) + 1
    around = smooth[max(0, int(top - pad)):int(bottom + pad) + 1, max(0, int(left - pad)):int(right + pad) + 1]
    paper = float(np.median(around))
    return max(found, key=lambda f: abs(float(np.median(smooth[f["mask"]])) - paper))


def _best_component(s: np.ndarray, light: bool):
    """The most digit-like ink in the map s: of the components at thresholds from the paper's noise up
    (doubling; a digit that touches a shadow's or a table's fringe at one comes apart from it at the
    next), the one with the most ink, nearer the centre preferred, stroke-like, not touching the frame
    (unless nothing else is there), with the substantial pieces near it (broken strokes)."""
    h, w = s.shape
    level = float(np.median(s))
    spread = 1.4826 * float(np.median(np.abs(s - level))) + 1e-3
    low, high = level + max(3 * spread, 0.04), level + max(6 * spread, 0.1)
    best = None
    t = low
    base = None
    while t < 0.9:
        labels, n = _label(s > t)
        if n == 0:
            break
        c = _components(labels, n, s)
        peak = np.zeros(n)
        np.maximum.at(peak, labels[labels >= 0], s[labels >= 0])
        bh, bw = c["bottom"] - c["top"] + 1, c["right"] - c["left"] + 1
        size = np.maximum(bh, bw)
        m = 1 if min(h, w) >= 64 else 0  # a drawing's strokes may come within a pixel of its edge
        touches = (c["top"] <= m) | (c["left"] <= m) | (c["bottom"] >= h - 1 - m) | (c["right"] >= w - 1 - m)
        if base is None:  # the lowest threshold: what touches the frame there is a table, a shadow, a page edge
            base = (labels, touches, c["ink"] / c["area"])
        else:  # a piece of it counts as not touching only if it stands out of it (a digit on a shadow's edge)
            first = np.zeros(n, np.int64)
            first[labels[labels >= 0]] = base[0][labels >= 0]
            touches |= base[1][first] & (c["ink"] / c["area"] < 2 * base[2][first])
        thickness = c["area"] / np.maximum(c["edge"], 1) / size  # about stroke width / 2 / size: thin ≪ blob
        cy, cx = (c["top"] + c["bottom"]) / 2, (c["left"] + c["right"]) / 2
        off = np.hypot((cy - h / 2) / h, (cx - w / 2) / w)  # 0 at the centre, 0.7 in a corner
        score = c["ink"] / (1 + 4 * off ** 2) * np.where(thickness < THIN, 1.0, 0.2)
        plausible = (peak > high) & (size >= max(4, 0.01 * min(h, w))) & ((bh < 0.95 * h) | (bw < 0.95 * w))
        for strict in (True, False):  # the frame's edges are a table or a shadow, unless nothing else is there
            ok = plausible & ~touches if strict else plausible & (c["area"] < 0.5 * h * w) & (thickness < THIN)
            if not ok.any() or (best is not None and best["strict"] and not strict):
                continue
            ranked = [int(i) for i in np.argsort(-np.where(ok, score, -1))[:5] if ok[i]]
            main = next((i for i in ranked if _holes(labels, i, c) <= MAX_HOLES), ranked[0])
            if _holes(labels, main, c) > MAX_HOLES:  # a grainy surface, not strokes
                score[main] *= 0.1
            box = [int(c["top"][main]), int(c["left"][main]), int(c["bottom"][main]), int(c["right"][main])]
            reach = 0.5 * (max(box[2] - box[0], box[3] - box[1]) + 1)
            near = ok & (c["area"] >= 0.05 * c["area"][main]) & (c["top"] >= box[0] - reach) & \
                (c["bottom"] <= box[2] + reach) & (c["left"] >= box[1] - reach) & (c["right"] <= box[3] + reach)
            near[main] = True
            keep = np.nonzero(near)[0]
            found = {"light": light, "strict": strict, "score": float(score[keep].sum()),
                     "contrast": float(c["ink"][keep].sum() / c["area"][keep].sum()),
                     "box": [int(c["top"][keep].min()), int(c["left"][keep].min()), int(c["bottom"][keep].max()),
                             int(c["right"][keep].max())],
                     "thin": float(c["area"][keep].sum() / max(c["edge"][keep].sum(), 1) / size[main])}
            if best is None or (strict and not best["strict"]) or found["score"] > best["score"]:
                best = {**found, "mask": np.isin(labels, keep)}
            break
        t *= 2
    return best


def _holes(labels: np.ndarray, i: int, c: dict) -> int:
    """How many holes component i has (of 2 pixels or more): a digit has at most two; a patch of paper
    grain or a table's texture that the threshold cut into lace has many."""
    top, left, bottom, right = c["top"][i], c["left"][i], c["bottom"][i], c["right"][i]
    inside = np.pad(labels[top:bottom + 1, left:right + 1] != i, 1, constant_values=True)
    holes, n = _label(inside)
    if n <= 1:
        return 0
    sizes = np.bincount(holes[holes >= 0], minlength=n)
    outside = holes[0, 0]
    return int(((sizes >= 2) & (np.arange(n) != outside)).sum())


def _refine(gray: np.ndarray, work_shape, light: bool, box, mask: np.ndarray) -> np.ndarray:
    """The digit's ink (float, 0 … 1) in a crop around `box`, from the finer image: its own paper
    estimate and Otsu threshold, keeping the components that meet the working image's digit."""
    h, w = gray.shape
    f = h / work_shape[0]  # working → gray coordinates
    top, left, bottom, right = box
    size = max(bottom - top, right - left) + 1
    pad = 0.25 * size + 2
    y0, x0 = max(0, int((top - pad) * f)), max(0, int((left - pad) * f))
    y1, x1 = min(h, int(np.ceil((bottom + 1 + pad) * f))), min(w, int(np.ceil((right + 1 + pad) * f)))
    crop = gray[y0:y1, x0:x1].astype(np.float32)
    scale = min(1.0, 256 / max(crop.shape))
    if scale < 1:
        crop = _resize(crop, scale)
    g = f * scale  # working → crop pixels
    if min(crop.shape) >= 48:
        crop = _box(crop, 1)
    s = _ink(crop, max(3, round(0.5 * size * g)), light)
    t = max(_otsu(s), 0.04)
    labels, n = _label(s > t)
    if n == 0:
        return s
    # the working image's digit in crop coordinates, widened by a few pixels
    ys, xs = np.nonzero(mask)
    cy = np.clip(((ys + 0.5) * f - y0) * scale, 0, crop.shape[0] - 1).astype(int)
    cx = np.clip(((xs + 0.5) * f - x0) * scale, 0, crop.shape[1] - 1).astype(int)
    seed = np.zeros(crop.shape, bool)
    seed[cy, cx] = True
    r = max(1, round(g))
    seed = _box(seed.astype(np.float32), r) > 0
    hits = np.unique(labels[seed & (labels >= 0)])
    keep = np.isin(labels, hits) if len(hits) else labels >= 0
    near = _box(keep.astype(np.float32), 1) > 0  # the strokes' soft edges
    kept = s[keep]
    top_level = float(np.percentile(kept, 90)) if kept.size else 1.0
    ink = np.clip((s - 0.5 * t) / max(top_level - 0.5 * t, 1e-3), 0.0, 1.0)
    return np.where(near, ink, 0.0)


def _as_mnist(ink: np.ndarray) -> np.ndarray:
    """Ink (H, W) 0 … 1 → MNIST: the ink's box in 20×20, centred by its mass in 28×28, white on black."""
    from PIL import Image

    if not (ink > 0.05).any():
        return np.zeros((28, 28), np.uint8)
    ys, xs = np.nonzero(ink > 0.05)
    g = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1] * 255.0
    h, w = g.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(g.astype(np.float32), "F").resize(size, Image.LANCZOS), dtype=np.float64)
    canvas = np.zeros((28, 28))
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = np.clip(small, 0, 255)
    if canvas.sum() > 0:  # shift the centre of mass to the centre, as MNIST was made
        cy, cx = (np.indices(canvas.shape) * canvas).reshape(2, -1).sum(1) / canvas.sum()
        dy, dx = int(round(14.0 - cy)), int(round(14.0 - cx))  # MNIST put the centre of mass at (14, 14)
        canvas = np.roll(canvas, (dy, dx), axis=(0, 1))
    return np.clip(canvas, 0, 255).round().astype(np.uint8)
