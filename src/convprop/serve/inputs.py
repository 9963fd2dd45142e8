"""What a request may carry, checked: its JSON body (at most MAX_BODY bytes), the digit in it (an image
of at most MAX_IMAGE_PIXELS pixels, or 28×28 pixel values), and the other arguments of the endpoints.
Anything wrong is an InputError with a one-line message, which the app answers with HTTP 4xx.
"""

from __future__ import annotations

import base64
import binascii
import io
import json

import numpy as np

from .._extras import install
from .arrays import FORMATS

SIZE = 28  # the models see 28×28 MNIST digits
MAX_BODY = 2 * 1024 * 1024
MAX_IMAGE_PIXELS = 4_000_000


class InputError(ValueError):
    """A request the server cannot use: a one-line message, answered with HTTP `status` (400 unless set)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def json_body(request) -> dict:
    """The request's JSON object, read up to MAX_BODY bytes (413 beyond, 400 if it is not JSON)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise InputError(f"body: expected at most {MAX_BODY:,} bytes, got {length}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise InputError(f"body: expected at most {MAX_BODY:,} bytes, got more", 413)
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"body: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(body, dict):
        raise InputError(f"body: expected a JSON object, got {type(body).__name__}")
    return body


def output_format(body: dict) -> str:
    """The body's "format" of the arrays in the answer (default "list")."""
    fmt = body.get("format", "list")
    if fmt not in FORMATS:
        raise InputError(f"format: expected one of {', '.join(map(repr, FORMATS))}, got {fmt!r}")
    return fmt


def target_class(value, classes: int) -> int | None:
    """The body's "class" of the backward pass: None (the predicted one) or an int in 0..classes-1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < classes):
        raise InputError(f"class: expected an integer class in 0..{classes - 1}, got {value!r}")
    return value


def training_options(body: dict) -> tuple[float, bool]:
    """The body's "lr" in (0, 1] (default 0.001) and "reset" (default false) of /api/train/start."""
    lr = body.get("lr", 1e-3)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 1:
        raise InputError(f"lr: expected a number in (0, 1], got {lr!r}")
    reset = body.get("reset", False)
    if not isinstance(reset, bool):
        raise InputError(f"reset: expected true or false, got {reset!r}")
    return float(lr), reset


# --------------------------------------------------------------------------- the digit
def digit_from_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes → a 28×28 uint8 digit, prepared as `convprop predict` prepares an image file."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError(f"image: decoding images needs Pillow ({install('serve')})") from None
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"image: not a PNG or JPEG that can be decoded ({type(e).__name__})") from None
    if w * h > MAX_IMAGE_PIXELS or min(w, h) < 1:
        raise InputError(f"image: expected at most {MAX_IMAGE_PIXELS:,} pixels, got {w}×{h}; send a smaller one")
    from ..data.images import read_digit

    try:
        return read_digit(data, name="image")[0]  # from the bytes: no file, no name of the client's
    except (ValueError, OSError) as e:
        raise InputError(str(e)) from None


def digit_from_pixels(pixels) -> np.ndarray:
    """A 28×28 nested list of numbers in [0, 255] (white ink on black, as MNIST) → uint8."""
    try:
        a = np.asarray(pixels, dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(f"pixels: expected a {SIZE}×{SIZE} array of numbers, got a ragged or non-numeric value") \
            from None
    if a.shape != (SIZE, SIZE):
        raise InputError(f"pixels: expected shape ({SIZE}, {SIZE}), got {a.shape}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise InputError("pixels: expected finite values in [0, 255]")
    return np.round(a).astype(np.uint8)


def digit(body: dict) -> np.ndarray:
    """The digit of a JSON request: {"image": base64 PNG/JPEG (a data: URL is fine)} or {"pixels": 28×28}."""
    if ("image" in body) == ("pixels" in body):
        raise InputError('body: expected exactly one of "image" (base64 PNG/JPEG) or "pixels" (28×28 numbers)')
    if "pixels" in body:
        return digit_from_pixels(body["pixels"])
    text = body["image"]
    if not isinstance(text, str):
        raise InputError(f"image: expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("image: not valid base64") from None
    return digit_from_image(data)
