"""OnnxError, the onnx package (an optional extra) and what every part of import and export shares."""

from __future__ import annotations

from .._extras import require


class OnnxError(ValueError):
    """An ONNX file or model convprop cannot read or write; the message is one line."""


def onnx_module():
    """The onnx package, or an ImportError saying how to install it."""
    return require("onnx", "onnx", "ONNX export and import need the onnx package")


LAYOUT = {1: "(N, C, L)", 2: "(N, C, H, W)"}  # a d-D layer's batched input


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__
