"""Export rules: each layer as the ONNX nodes torch.onnx.export writes for it, into a Builder."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import nn
from .errors import LAYOUT, OnnxError


class Builder:
    """Nodes and initializers of the graph being written, with fresh names."""

    def __init__(self, onnx, dtype: np.dtype):
        self.onnx, self.dtype, self.nodes, self.initializers, self.count = onnx, dtype, [], [], 0
        self.used = {"input", "output"}

    def name(self, base: str) -> str:
        """base itself (a weight's name is its state_dict key, as torch.onnx.export writes it), else numbered."""
        self.count += 1
        if base and base not in self.used:
            self.used.add(base)
            return base
        return f"{base}_{self.count}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], label: str, **attrs) -> str:
        return self.nodes_n(op, inputs, [label], **attrs)[0]

    def nodes_n(self, op: str, inputs: list[str], labels: list[str], **attrs) -> list[str]:
        """A node with one output per label (MaxPool's Y and Indices)."""
        outs = [self.name(label) for label in labels]
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs


def _pads(padding, kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> list[int]:
    """ONNX pads [top, left, bottom, right] from torch's padding (an int, a pair, 'valid' or 'same')."""
    if padding == "valid":
        return [0, 0, 0, 0]
    if padding == "same":  # torch puts the odd pixel of an even kernel at the end
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return [total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2]
    ph, pw = (padding, padding) if isinstance(padding, (int, np.integer)) else tuple(padding)
    return [int(ph), int(pw), int(ph), int(pw)]


def pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, (int, np.integer)) else [int(v[0]), int(v[1])]


def _conv(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    _batched(m, xa, label, 2)
    k = list(m.kernel_size)
    inputs = [x, b.const(f"{label}.weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(b.const(f"{label}.bias", m.bias.data))
    attrs = dict(kernel_shape=k, strides=pair(m.stride), dilations=pair(m.dilation), group=int(m.groups),
                 pads=_pads(m.padding, tuple(k), tuple(pair(m.dilation))))
    if isinstance(m, nn.ConvTranspose2d):
        return b.node("ConvTranspose", inputs, label, output_padding=pair(m.output_padding), **attrs)
    return b.node("Conv", inputs, label, **attrs)


def _batched(m, xa: np.ndarray, label: str, d: int) -> None:
    """ONNX's operators need a batch axis: a d-D layer's input must be (N, C, *d spatial) — not unbatched."""
    if xa.ndim != d + 2:
        raise OnnxError(f"{label} ({type(m).__name__}): export needs batched {LAYOUT[d]} inputs (ONNX has no "
                        f"unbatched form), got a {xa.ndim}-D input")


def _pool_attrs(m, dilation) -> dict:
    k = pair(m.kernel_size)
    p = pair(m.padding)
    attrs = dict(kernel_shape=k, strides=k if m.stride is None else pair(m.stride), pads=[p[0], p[1], p[0], p[1]])
    if m.ceil_mode:  # as torch's: a last window that would start in the padding is dropped
        attrs["ceil_mode"] = 1
    if dilation is not None:
        attrs["dilations"] = pair(dilation)
    return attrs


def _maxpool(b: Builder, m, x: str, xa: np.ndarray, label: str, **attrs) -> str | tuple[str, str]:
    """MaxPool; with return_indices its second output Indices, which count over the whole (N, C, H, W)
    tensor where torch's and convprop's count within each (H, W) plane: they may only feed a
    MaxUnpool (see unpool), which reads them the same way."""
    if not attrs:
        _batched(m, xa, label, 2)
        attrs = _pool_attrs(m, m.dilation)
    if getattr(m, "return_indices", False):
        return tuple(b.nodes_n("MaxPool", [x], [label, f"{label}.indices"], **attrs))
    return b.node("MaxPool", [x], label, **attrs)


def _avgpool(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    if getattr(m, "divisor_override", None) is not None:
        raise OnnxError(f"{label} (AvgPool2d): divisor_override has no ONNX AveragePool equivalent")
    _batched(m, xa, label, 2)
    return b.node("AveragePool", [x], label, count_include_pad=int(bool(m.count_include_pad)),
                  **_pool_attrs(m, None))


def _adaptive_pool(b: Builder, m, x: str, xa: np.ndarray, label: str, pool: str) -> str | tuple[str, str]:
    """AdaptiveAvgPool2d / AdaptiveMaxPool2d as Global{pool}Pool, or as {pool}Pool with kernel = stride = the
    input over the output size (only where that divides evenly; with return_indices always, since
    GlobalMaxPool has no Indices)."""
    _batched(m, xa, label, 2)
    (h, w), (oh, ow) = xa.shape[-2:], pair(m.output_size)
    indices = getattr(m, "return_indices", False)
    if (oh, ow) == (1, 1) and not indices:
        return b.node(f"Global{pool}Pool", [x], label)
    if h % oh or w % ow:
        raise OnnxError(f"{label} ({type(m).__name__}): output size {oh}×{ow} does not divide the input "
                        f"{h}×{w}; only evenly dividing adaptive pooling is exported")
    k = [h // oh, w // ow]
    if indices:
        return _maxpool(b, m, x, xa, label, kernel_shape=k, strides=k)
    return b.node(f"{pool}Pool", [x], label, kernel_shape=k, strides=k)


def _adaptive_avgpool(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    return _adaptive_pool(b, m, x, xa, label, "Average")


def _linear(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    w = b.const(f"{label}.weight", m.weight.data)
    if xa.ndim == 2:
        inputs = [x, w] + ([b.const(f"{label}.bias", m.bias.data)] if m.bias is not None else [])
        return b.node("Gemm", inputs, label, transB=1)  # Z = A Wᵀ + B
    out = b.node("MatMul", [x, b.const(f"{label}.weightT", m.weight.data.T)], f"{label}.matmul")
    return out if m.bias is None else b.node("Add", [out, b.const(f"{label}.bias", m.bias.data)], label)


def _flatten(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    start, end = m.start_dim % xa.ndim, m.end_dim % xa.ndim
    if start == 1 and end == xa.ndim - 1:
        return b.node("Flatten", [x], label, axis=1)
    shape = list(xa.shape[:start]) + [-1] + list(xa.shape[end + 1:])
    if start > 0:
        shape[0] = 0  # copy the (dynamic) batch dimension
    return b.node("Reshape", [x, b.const(f"{label}.shape", np.array(shape, np.int64))], label)


def _batchnorm(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    if m.running_mean is None:
        raise OnnxError(f"{label} ({type(m).__name__}): track_running_stats=False normalises with batch "
                        "statistics even in eval mode; ONNX inference BatchNormalization needs running statistics")
    c, dt = m.num_features, m.running_mean.dtype
    scale = m.weight.data if m.weight is not None else np.ones(c, dt)
    bias = m.bias.data if m.bias is not None else np.zeros(c, dt)
    inputs = [x] + [b.const(f"{label}.{n}", a) for n, a in
                    (("weight", scale), ("bias", bias), ("running_mean", m.running_mean),
                     ("running_var", m.running_var))]
    return b.node("BatchNormalization", inputs, label, epsilon=float(m.eps),
                  momentum=1.0 - float(m.momentum if m.momentum is not None else 0.1))


def _activation(op: str, **attrs_of: Callable) -> Callable:
    def emit(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
        return b.node(op, [x], label, **{k: f(m) for k, f in attrs_of.items()})
    return emit


def _identity(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    return x  # Dropout in eval mode


def one(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _conv1d(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    _batched(m, xa, label, 1)
    k, d = one(m.kernel_size), one(m.dilation)
    top, _, bottom, _ = _pads(m.padding if isinstance(m.padding, str) else one(m.padding), (k, 1), (d, 1))
    inputs = [x, b.const(f"{label}.weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(b.const(f"{label}.bias", m.bias.data))
    return b.node("Conv", inputs, label, kernel_shape=[k], strides=[one(m.stride)], dilations=[d],
                  group=int(m.groups), pads=[top, bottom])


def _pool1d(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    avg = not hasattr(m, "dilation")
    _batched(m, xa, label, 1)
    if getattr(m, "divisor_override", None) is not None:
        raise OnnxError(f"{label} ({type(m).__name__}): divisor_override cannot be exported")
    k, p = one(m.kernel_size), one(m.padding)
    attrs = dict(kernel_shape=[k], strides=[k if m.stride is None else one(m.stride)], pads=[p, p])
    if m.ceil_mode:
        attrs["ceil_mode"] = 1
    if avg:
        return b.node("AveragePool", [x], label, count_include_pad=int(bool(m.count_include_pad)), **attrs)
    return _maxpool(b, m, x, xa, label, dilations=[one(m.dilation)], **attrs)  # with return_indices, (Y, Indices)


def _adaptive_maxpool(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str | tuple[str, str]:
    return _adaptive_pool(b, m, x, xa, label, "Max")


def _softmax(op: str) -> Callable:
    def emit(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
        return b.node(op, [x], label, axis=int(m.dim))
    return emit


def _normalize(b: Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    """(x·scale − mean)·(1/std) as Mul, Sub, Mul by per-channel constants (1, C, 1, …), 1/std rounded to
    the dtype as convprop rounds it: the same three IEEE operations, so ONNX Runtime gives the same bits;
    a neutral step (×1, −0) is left out."""
    shape = (1, -1) + (1,) * (xa.ndim - 2)
    dt = xa.dtype
    steps = (("Mul", "scale", np.asarray(m.scale, dt), 1), ("Sub", "mean", np.asarray(m.mean, dt), 0),
             ("Mul", "inv_std", np.reciprocal(np.asarray(m.std, dt)), 1))
    for op, key, value, neutral in steps:
        if (value != neutral).any():
            x = b.node(op, [x, b.const(f"{label}.{key}", value.reshape(shape))], f"{label}.{key}")
    return x


EXPORTERS: dict[type, Callable] = {
    nn.Conv2d: _conv, nn.ConvTranspose2d: _conv, nn.MaxPool2d: _maxpool, nn.AvgPool2d: _avgpool,
    nn.AdaptiveAvgPool2d: _adaptive_avgpool, nn.Linear: _linear, nn.Flatten: _flatten,
    nn.BatchNorm1d: _batchnorm, nn.BatchNorm2d: _batchnorm, nn.Dropout: _identity,
    nn.ReLU: _activation("Relu"), nn.Sigmoid: _activation("Sigmoid"), nn.Tanh: _activation("Tanh"),
    nn.LeakyReLU: _activation("LeakyRelu", alpha=lambda m: float(m.negative_slope)),
    nn.Conv1d: _conv1d, nn.MaxPool1d: _pool1d, nn.AvgPool1d: _pool1d, nn.AdaptiveMaxPool2d: _adaptive_maxpool,
    nn.Softmax: _softmax("Softmax"), nn.LogSoftmax: _softmax("LogSoftmax"), nn.Normalize: _normalize,
    nn.Add: lambda b, m, names, xa, label: b.node("Add", names, label),  # a join: its two inputs' names
}
