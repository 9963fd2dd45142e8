"""Every user error names its argument and says what was expected and what was given."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import convprop.functional as F
from convprop.data import DataLoader

x = np.zeros((2, 4, 8, 8), np.float32)
w = np.zeros((6, 4, 3, 3), np.float32)
out, conv_cache = F.conv2d(x, w)
_, pool_cache = F.max_pool2d(x, 2)
_, avg_cache = F.avg_pool2d(x, 2)
_, relu_cache = F.relu(x)
_, lin_cache = F.linear(np.zeros((2, 5), np.float32), np.zeros((3, 5), np.float32))

CASES = [  # (call, exception, words the message must contain)
    (lambda: F.conv2d(x.astype(np.int64), w), TypeError, ["x", "floating", "int64"]),
    (lambda: F.conv2d(x.tolist(), w), TypeError, ["x", "NumPy array", "list"]),
    (lambda: F.conv2d(x[0, 0], w), ValueError, ["x", "4 dimensions", "C, H, W unbatched", "got 2"]),
    (lambda: F.conv2d(x, w[:, :3]), ValueError, ["w", "w.shape[1] == 4", "(6, 3, 3, 3)"]),
    (lambda: F.conv2d(x, w.astype(np.float64)), TypeError, ["w", "float32", "float64"]),
    (lambda: F.conv2d(x, w[:, :2], groups=3), ValueError, ["groups", "4 channels", "3"]),
    (lambda: F.conv2d(x, w[:5, :2], groups=2), ValueError, ["groups", "5 output channels"]),
    (lambda: F.conv2d(x, w, stride=0), ValueError, ["stride", ">= 1", "(0, 0)"]),
    (lambda: F.conv2d(x, w, dilation=(1, 0)), ValueError, ["dilation", ">= 1"]),
    (lambda: F.conv2d(x, w, padding=-1), ValueError, ["padding", ">= 0"]),
    (lambda: F.conv2d(x, w, stride=1.5), TypeError, ["stride", "int", "1.5"]),
    (lambda: F.conv2d(x, w, np.zeros(5, np.float32)), ValueError, ["b", "(6,)", "(5,)"]),
    (lambda: F.conv2d(x[:, :, :2], w), ValueError, ["x (height)", "output would be 0", ">= 1"]),
    (lambda: F.conv2d_backward(out[:, :3], conv_cache), ValueError, ["dout", str(out.shape), "(2, 3, 6, 6)"]),
    (lambda: F.conv2d_backward(out, pool_cache), TypeError, ["cache", "conv2d", "MaxPool2dCache"]),
    (lambda: F.conv_transpose2d(x, w), ValueError, ["w", "w.shape[0] == 4"]),
    (lambda: F.conv_transpose2d(x, w[:4], stride=2, output_padding=2), ValueError, ["output_padding"]),
    (lambda: F.conv_transpose2d_backward(out, conv_cache), TypeError, ["cache", "conv_transpose2d"]),
    (lambda: F.max_pool2d(x, 0), ValueError, ["kernel_size", ">= 1"]),
    (lambda: F.max_pool2d(x, 2, padding=2), ValueError, ["padding", "half the kernel", "(2, 2)"]),
    (lambda: F.max_pool2d(x, 2, stride=0), ValueError, ["stride", ">= 1"]),
    (lambda: F.max_pool2d(x, 9), ValueError, ["x (height)", ">= 1"]),
    (lambda: F.max_pool2d(x.astype(np.uint8), 2), TypeError, ["x", "floating", "uint8"]),
    (lambda: F.max_pool2d_backward(np.zeros((2, 4, 3, 3), np.float32), pool_cache), ValueError,
     ["dout", "(2, 4, 4, 4)", "(2, 4, 3, 3)"]),
    (lambda: F.max_pool2d_backward(np.zeros((2, 4, 4, 4), np.float32), avg_cache), TypeError,
     ["cache", "max_pool2d", "AvgPool2dCache"]),
    (lambda: F.avg_pool2d(x, 3, padding=2), ValueError, ["padding", "half"]),
    (lambda: F.avg_pool2d_backward(np.zeros((2, 4, 4, 4), np.float32), pool_cache), TypeError,
     ["cache", "avg_pool2d"]),
    (lambda: F.max_unpool2d(x, np.zeros(x.shape, np.float32), 2), TypeError, ["indices", "integer"]),
    (lambda: F.max_unpool2d(x, np.full(x.shape, 999), 2), ValueError, ["indices", "[0, 256)"]),
    (lambda: F.max_unpool2d(x[0], np.zeros((4, 8, 7), np.int64), 2), ValueError, ["indices", "(4, 8, 8)", "(4, 8, 7)"]),
    (lambda: F.max_pool2d(x, 2, return_indices="yes"), TypeError, ["return_indices", "True or False", "'yes'"]),
    (lambda: F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True)[0], 2, output_size=(6, 8)), ValueError,
     ["output_size", "H strictly between 6 and 10", "got 6"]),
    (lambda: F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True)[0], 2, output_size=(8, 9, 8)), ValueError,
     ["output_size", "(H, W) or (N, C, H, W)", "(8, 9, 8)"]),
    (lambda: F.max_unpool1d(*F.max_pool1d(x[0], 2, return_indices=True)[0], 2, output_size=(4, 5)), ValueError,
     ["output_size", "(L,) or (N, C, L)", "(4, 5)"]),
    (lambda: F.max_unpool1d(*F.max_pool1d(x[0], 2, return_indices=True)[0], 2, output_size=(10,)), ValueError,
     ["output_size", "L strictly between 6 and 10", "got 10"]),
    (lambda: F.max_unpool1d(x[0, :, :4], np.zeros((4, 8, 3), np.int64), 2), ValueError,
     ["indices", "(4, 4, 8)", "(4, 8, 3)"]),
    (lambda: F.max_unpool1d(x[0, :, :4], np.full((4, 4, 8), 16), 2), ValueError,
     ["indices", "[0, 16)", "an output of length 16", "[16, 16]"]),
    (lambda: F.max_pool1d_backward(np.zeros((4, 8, 3), np.float32), F.max_pool1d(x[0], 2)[1]), ValueError,
     ["dout", "(4, 8, 4)", "(4, 8, 3)"]),
    (lambda: F.conv1d_backward(np.zeros((6, 5), np.float32), F.conv1d(x[0, :, 0], w[:, :, 0])[1]), ValueError,
     ["dout", "(6, 6)", "(6, 5)"]),
    (lambda: F.linear(np.zeros((2, 5), np.float32), np.zeros((3, 4), np.float32)), ValueError,
     ["w", "in_features == 5", "(3, 4)"]),
    (lambda: F.linear_backward(np.zeros((2, 4), np.float32), lin_cache), ValueError, ["dout", "(2, 3)"]),
    (lambda: F.relu(np.arange(3)), TypeError, ["x", "floating"]),
    (lambda: F.relu_backward(x, conv_cache), TypeError, ["cache", "relu"]),
    (lambda: F.sigmoid_backward(x, relu_cache), TypeError, ["cache", "sigmoid", "relu"]),
    (lambda: F.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0])), TypeError, ["targets", "integer"]),
    (lambda: F.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])), ValueError, ["targets", "[0, 3)"]),
    (lambda: F.softmax_cross_entropy(np.zeros((2, 3)), np.array([0])), ValueError, ["targets", "(2,)", "(1,)"]),
    (lambda: F.conv2d(x, w[:0]), ValueError, ["w", "at least 1 output channel", "(0, 4, 3, 3)"]),
    (lambda: F.conv2d(x[:, :0], w[:, :0]), ValueError, ["x", "at least 1 channel"]),
    (lambda: F.conv2d(x, w, padding=10**9), ValueError, ["padding", "more than this machine's memory"]),
    (lambda: F.conv2d(x, w, stride=10**18), ValueError, ["stride", "<= 2**31 - 1", str(10**18)]),
    (lambda: F.max_pool2d(x, 2, stride=10**18), ValueError, ["stride", "<= 2**31 - 1"]),
    (lambda: F.avg_pool2d(x, 3, padding=1, stride=(1, 10**18)), ValueError, ["stride", "<= 2**31 - 1"]),
    (lambda: DataLoader(np.zeros((2, 28, 28), np.uint8), np.zeros(2), seed=-1), ValueError,
     ["seed", "non-negative", "-1"]),
    (lambda: DataLoader(np.zeros((2, 28, 28), np.uint8), np.array([0.0, np.nan])), ValueError,
     ["labels", "whole numbers", "nan"]),
]


def test_an_empty_batch_goes_through_lenet5_as_through_torch():
    from convprop import models

    assert models.lenet5()(np.zeros((0, 1, 28, 28), np.float32)).shape == (0, 10)


@pytest.mark.parametrize("call, exc, words", CASES)
def test_bad_input_raises_a_clear_error(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize("module, call, exc, extra", [
    ("onnx", lambda tmp: __import__("convprop.onnx").onnx.load(str(tmp / "m.onnx")), ImportError, "onnx"),
    ("safetensors.numpy", lambda tmp: __import__("convprop").save_weights({}, str(tmp / "w.safetensors")),
     ImportError, "safetensors"),
    ("matplotlib", lambda tmp: __import__("convprop.plots").plots.confusion(np.eye(2), str(tmp / "c.png")),
     ValueError, "train"),
    ("PIL.Image", lambda tmp: __import__("convprop.data.images").data.images.load_digit(str(tmp / "d.png")),
     ImportError, "train"),
])
def test_a_missing_extra_says_in_one_line_how_to_install_it(monkeypatch, tmp_path, module, call, exc, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(exc) as info:
        call(tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"pip install '.[{extra}]' in convprop's checkout" in message
    assert "convprop[" not in message  # convprop is not on PyPI: only the checkout's install works


def test_no_message_or_doc_says_to_install_convprop_from_pypi():
    """convprop is installed from its checkout (it is not on PyPI): every install hint says pip install '.[extra]'."""
    import pathlib

    from runner import DOCS, README, ROOT

    texts = [README, *DOCS.glob("*.md"), *(ROOT / "src").rglob("*.py")]
    offenders = [str(p) for p in texts if "convprop[" in pathlib.Path(p).read_text(encoding="utf-8")]
    assert not offenders, offenders
