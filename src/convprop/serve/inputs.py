"""What a request may carry, checked: its JSON body (at most MAX_BODY bytes), the digit in it (an image
of at most MAX_IMAGE_PIXELS pixels, or 28×28 pixel values), and the other arguments of the endpoints.
Anything wrong is an InputError with a one-line message, which the app answers with HTTP 4xx.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import numpy as np

from .. import safe_json
from .._extras import install
from .arrays import FORMATS

SIZE = 28  # the models see 28×28 MNIST digits
MAX_BODY = 2 * 1024 * 1024
MAX_IMAGE_PIXELS = 4_000_000
BODY_SECONDS = 30.0  # a body must arrive whole within this (a client trickling it in holds no more than that)


class ClientGone(Exception):
    """The client closed the connection before its request was whole: nothing to answer, nothing to log."""


class InputError(ValueError):
    """A request the server cannot use: a one-line message, answered with HTTP `status` (400 unless set)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def json_body(request, fields: tuple[str, ...] = ()) -> dict:
    """The request's JSON object (an empty body: {}), with no keys but `fields`.

    Content-Type application/json or 415; at most MAX_BODY bytes, counted as they arrive and never
    more held (413); the whole body within BODY_SECONDS (408); parsed by the project's bounded JSON
    reader (nesting, duplicate keys: 400).  A client that goes away mid-body is a ClientGone."""
    from starlette.requests import ClientDisconnect

    from .guard import is_json

    if not is_json(request.headers.get("content-type")):
        raise InputError(f"Content-Type: expected application/json, got {request.headers.get('content-type')!r}",
                         415)
    length = request.headers.get("content-length")
    if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY):
        raise InputError(f"body: expected at most {MAX_BODY:,} bytes, got {length[:20]}", 413)
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            if len(body) + len(chunk) > MAX_BODY:
                raise InputError(f"body: expected at most {MAX_BODY:,} bytes, got more", 413)
            body.extend(chunk)

    try:
        await asyncio.wait_for(read(), BODY_SECONDS)
    except ClientDisconnect:
        raise ClientGone() from None
    except asyncio.TimeoutError:
        raise InputError(f"body: not all sent within {BODY_SECONDS} s", 408) from None
    try:
        value = safe_json.loads(bytes(body) or b"{}", "body", unique_keys=True)
    except ValueError as e:
        raise InputError(" ".join(str(e).split())[:300]) from None
    if not isinstance(value, dict):
        raise InputError(f"body: expected a JSON object, got {type(value).__name__}")
    check_fields(value, fields, "body")
    return value


def check_fields(given: dict, fields: tuple[str, ...], what: str) -> None:
    """InputError naming the first key of `given` that is not one of `fields`."""
    for key in given:
        if key not in fields:
            takes = f"takes {', '.join(map(repr, fields))}" if fields else "takes none"
            raise InputError(f"{what}: unknown field {key[:100]!r} ({takes})")


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
def digit_from_image(data: bytes, prepare: str = "digit") -> np.ndarray:
    """PNG/JPEG/… bytes → a 28×28 uint8 image, prepared as `convprop predict` prepares an image file for the
    model (checkpoint.input_spec's prepare: "digit", MNIST's digit preparation; "resize", the whole image in
    grey), by the one bounded decoder (data.images.open_image): at most MAX_IMAGE_PIXELS pixels, checked from
    the header before decoding; at most data.images.MAX_DECODES images decoded at once however many requests come."""
    from ..data.folders import read_image
    from ..data.images import ImageError, read_digit

    try:
        if prepare != "digit":
            return read_image(data, (SIZE, SIZE), 1, name="image", max_pixels=MAX_IMAGE_PIXELS)[0]
        return read_digit(data, name="image", max_pixels=MAX_IMAGE_PIXELS)[0]  # no file, no name of the client's
    except ImportError:
        raise InputError(f"image: decoding images needs Pillow ({install('serve')})") from None
    except ImageError as e:
        raise InputError(str(e)) from None
    except MemoryError:
        raise InputError("image: too big to decode in the memory this server has", 413) from None


def digit_from_pixels(pixels) -> np.ndarray:
    """A 28×28 nested list of numbers in [0, 255] (white ink on black, as MNIST) → uint8."""
    try:
        a = np.asarray(pixels, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):  # (an integer of 400 digits: OverflowError)
        raise InputError(f"pixels: expected a {SIZE}×{SIZE} array of numbers, got a ragged or non-numeric value") \
            from None
    if a.shape != (SIZE, SIZE):
        raise InputError(f"pixels: expected shape ({SIZE}, {SIZE}), got {a.shape}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise InputError("pixels: expected finite values in [0, 255]")
    return np.round(a).astype(np.uint8)


def digit(body: dict, prepare: str = "digit") -> np.ndarray:
    """The digit of a JSON request: {"image": base64 PNG/JPEG (a data: URL is fine), prepared as `prepare`
    says (digit_from_image)} or {"pixels": 28×28}."""
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
    return digit_from_image(data, prepare)
