"""ONNX export and import of convprop models, built on the `onnx` package (pip install 'convprop[onnx]').

    convprop.onnx.export(model, "lenet5.onnx", input_shape=(1, 1, 28, 28))   # batch dimension dynamic
    model = convprop.onnx.load("lenet5.onnx")                                # an nn model, with its weights

Export writes each layer as the ONNX operator torch.onnx.export writes for it (Conv, ConvTranspose,
MaxPool, AveragePool, GlobalAveragePool, Gemm, Flatten, Relu, LeakyRelu, Sigmoid, Tanh,
BatchNormalization, Add for a residual join; MaxPool's Indices into MaxUnpool for MaxPool2d /
AdaptiveMaxPool2d / MaxPool1d(return_indices=True) and MaxUnpool2d / MaxUnpool1d), in eval mode:
Dropout is the identity, BatchNorm uses its running statistics.  Import reads graphs of those
operators (also MatMul + Add, Reshape to (N, −1), Identity, Dropout and Constant; the Slice, Sub,
Add and Shape torch.onnx.export writes around MaxPool's Indices) into an nn.Sequential, or into a
`Graph` where the graph forks and joins, ready to evaluate, fine-tune with convprop's backward and
export again.

Files are untrusted: import parses the protobuf only (no external data files, no custom operator
domains), checks every tensor's declared shape against the bytes it carries and against a size limit
before converting it, and fails with one `OnnxError` line naming the node, operator and attribute.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from . import nn
from ._files import checked_size
from .functional.pool import unpool_default, unpool_extent

__all__ = ["export", "load", "OnnxError", "Graph", "DEFAULT_OPSET", "MAX_FILE_BYTES", "MAX_TENSOR_ELEMENTS"]

DEFAULT_OPSET = 17
MIN_OPSET = 13
MAX_FILE_BYTES = 512 * 2**20  # an ONNX file larger than this is refused before it is read
MAX_TENSOR_ELEMENTS = 64 * 2**20  # per tensor (256 MB of float32), checked before converting


class OnnxError(ValueError):
    """An ONNX file or model convprop cannot read or write; the message is one line."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export and import need the onnx package: pip install 'convprop[onnx]'") from None
    return onnx


# =========================================================================== export
class _Builder:
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


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, (int, np.integer)) else [int(v[0]), int(v[1])]


def _conv(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    _batched(m, xa, label, 2)
    k = list(m.kernel_size)
    inputs = [x, b.const(f"{label}.weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(b.const(f"{label}.bias", m.bias.data))
    attrs = dict(kernel_shape=k, strides=_pair(m.stride), dilations=_pair(m.dilation), group=int(m.groups),
                 pads=_pads(m.padding, tuple(k), tuple(_pair(m.dilation))))
    if isinstance(m, nn.ConvTranspose2d):
        return b.node("ConvTranspose", inputs, label, output_padding=_pair(m.output_padding), **attrs)
    return b.node("Conv", inputs, label, **attrs)


def _batched(m, xa: np.ndarray, label: str, d: int) -> None:
    """ONNX's operators need a batch axis: a d-D layer's input must be (N, C, *d spatial) — not unbatched."""
    if xa.ndim != d + 2:
        raise OnnxError(f"{label} ({type(m).__name__}): export needs batched {_LAYOUT[d]} inputs (ONNX has no "
                        f"unbatched form), got a {xa.ndim}-D input")


_LAYOUT = {1: "(N, C, L)", 2: "(N, C, H, W)"}


def _pool_attrs(m, dilation) -> dict:
    k = _pair(m.kernel_size)
    p = _pair(m.padding)
    attrs = dict(kernel_shape=k, strides=k if m.stride is None else _pair(m.stride), pads=[p[0], p[1], p[0], p[1]])
    if m.ceil_mode:  # as torch's: a last window that would start in the padding is dropped
        attrs["ceil_mode"] = 1
    if dilation is not None:
        attrs["dilations"] = _pair(dilation)
    return attrs


def _maxpool(b: _Builder, m, x: str, xa: np.ndarray, label: str, **attrs) -> str | tuple[str, str]:
    """MaxPool; with return_indices its second output Indices, which count over the whole (N, C, H, W)
    tensor where torch's and convprop's count within each (H, W) plane: they may only feed a
    MaxUnpool (see _unpool), which reads them the same way."""
    if not attrs:
        _batched(m, xa, label, 2)
        attrs = _pool_attrs(m, m.dilation)
    if getattr(m, "return_indices", False):
        return tuple(b.nodes_n("MaxPool", [x], [label, f"{label}.indices"], **attrs))
    return b.node("MaxPool", [x], label, **attrs)


def _avgpool(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    if getattr(m, "divisor_override", None) is not None:
        raise OnnxError(f"{label} (AvgPool2d): divisor_override has no ONNX AveragePool equivalent")
    _batched(m, xa, label, 2)
    return b.node("AveragePool", [x], label, count_include_pad=int(bool(m.count_include_pad)),
                  **_pool_attrs(m, None))


def _adaptive_pool(b: _Builder, m, x: str, xa: np.ndarray, label: str, pool: str) -> str | tuple[str, str]:
    """AdaptiveAvgPool2d / AdaptiveMaxPool2d as Global{pool}Pool, or as {pool}Pool with kernel = stride = the
    input over the output size (only where that divides evenly; with return_indices always, since
    GlobalMaxPool has no Indices)."""
    _batched(m, xa, label, 2)
    (h, w), (oh, ow) = xa.shape[-2:], _pair(m.output_size)
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


def _adaptive_avgpool(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    return _adaptive_pool(b, m, x, xa, label, "Average")


def _linear(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    w = b.const(f"{label}.weight", m.weight.data)
    if xa.ndim == 2:
        inputs = [x, w] + ([b.const(f"{label}.bias", m.bias.data)] if m.bias is not None else [])
        return b.node("Gemm", inputs, label, transB=1)  # Z = A Wᵀ + B
    out = b.node("MatMul", [x, b.const(f"{label}.weightT", m.weight.data.T)], f"{label}.matmul")
    return out if m.bias is None else b.node("Add", [out, b.const(f"{label}.bias", m.bias.data)], label)


def _flatten(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    start, end = m.start_dim % xa.ndim, m.end_dim % xa.ndim
    if start == 1 and end == xa.ndim - 1:
        return b.node("Flatten", [x], label, axis=1)
    shape = list(xa.shape[:start]) + [-1] + list(xa.shape[end + 1:])
    if start > 0:
        shape[0] = 0  # copy the (dynamic) batch dimension
    return b.node("Reshape", [x, b.const(f"{label}.shape", np.array(shape, np.int64))], label)


def _batchnorm(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
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
    def emit(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
        return b.node(op, [x], label, **{k: f(m) for k, f in attrs_of.items()})
    return emit


def _identity(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    return x  # Dropout in eval mode


def _one(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _conv1d(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    _batched(m, xa, label, 1)
    k, d = _one(m.kernel_size), _one(m.dilation)
    top, _, bottom, _ = _pads(m.padding if isinstance(m.padding, str) else _one(m.padding), (k, 1), (d, 1))
    inputs = [x, b.const(f"{label}.weight", m.weight.data)]
    if m.bias is not None:
        inputs.append(b.const(f"{label}.bias", m.bias.data))
    return b.node("Conv", inputs, label, kernel_shape=[k], strides=[_one(m.stride)], dilations=[d],
                  group=int(m.groups), pads=[top, bottom])


def _pool1d(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
    avg = not hasattr(m, "dilation")
    _batched(m, xa, label, 1)
    if getattr(m, "divisor_override", None) is not None:
        raise OnnxError(f"{label} ({type(m).__name__}): divisor_override cannot be exported")
    k, p = _one(m.kernel_size), _one(m.padding)
    attrs = dict(kernel_shape=[k], strides=[k if m.stride is None else _one(m.stride)], pads=[p, p])
    if m.ceil_mode:
        attrs["ceil_mode"] = 1
    if avg:
        return b.node("AveragePool", [x], label, count_include_pad=int(bool(m.count_include_pad)), **attrs)
    return _maxpool(b, m, x, xa, label, dilations=[_one(m.dilation)], **attrs)  # with return_indices, (Y, Indices)


def _adaptive_maxpool(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str | tuple[str, str]:
    return _adaptive_pool(b, m, x, xa, label, "Max")


def _softmax(op: str) -> Callable:
    def emit(b: _Builder, m, x: str, xa: np.ndarray, label: str) -> str:
        return b.node(op, [x], label, axis=int(m.dim))
    return emit


EXPORTERS: dict[type, Callable] = {
    nn.Conv2d: _conv, nn.ConvTranspose2d: _conv, nn.MaxPool2d: _maxpool, nn.AvgPool2d: _avgpool,
    nn.AdaptiveAvgPool2d: _adaptive_avgpool, nn.Linear: _linear, nn.Flatten: _flatten,
    nn.BatchNorm1d: _batchnorm, nn.BatchNorm2d: _batchnorm, nn.Dropout: _identity,
    nn.ReLU: _activation("Relu"), nn.Sigmoid: _activation("Sigmoid"), nn.Tanh: _activation("Tanh"),
    nn.LeakyReLU: _activation("LeakyRelu", alpha=lambda m: float(m.negative_slope)),
}
for _name, _fn in (("Conv1d", _conv1d), ("MaxPool1d", _pool1d), ("AvgPool1d", _pool1d),
                  ("AdaptiveMaxPool2d", _adaptive_maxpool), ("Softmax", _softmax("Softmax")),
                  ("LogSoftmax", _softmax("LogSoftmax"))):
    if hasattr(nn, _name):  # layers of newer convprop versions
        EXPORTERS[getattr(nn, _name)] = _fn


class _Traced(np.ndarray):
    """The example input's value at some point of the forward pass, with the name of the ONNX tensor
    that holds it.  Only a layer's output or a sum of two traced values is traced: anything else
    computed from one (a reshape, a product, …) has no name, and a layer given it is refused."""

    onnx_name: str | None = None
    pooled: tuple[str, tuple[int, ...], str] | None = None  # MaxPool's Indices: its input's (name, shape), its type

    def __array_finalize__(self, obj) -> None:
        self.onnx_name = self.pooled = None  # views and results of other operations are not the named tensor

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [i.view(np.ndarray) if isinstance(i, _Traced) else i for i in inputs]
        out = getattr(ufunc, method)(*plain, **kwargs)
        names = [getattr(i, "onnx_name", None) for i in inputs]
        if ufunc is np.add and method == "__call__" and len(inputs) == 2 and all(names) and not kwargs \
                and inputs[0].shape == inputs[1].shape and _tracer.builder is not None \
                and inputs[0].dtype.kind == inputs[1].dtype.kind == "f":
            return _trace(out, _tracer.builder.node("Add", names, f"{_tracer.label}.add"))  # a join
        return out


def _trace(value: np.ndarray, name: str, pooled: tuple[str, tuple[int, ...], str] | None = None) -> _Traced:
    t = np.asarray(value).view(_Traced)
    t.onnx_name, t.pooled = name, pooled
    return t


def _indices_only_unpool(pool: str) -> str:
    """Why a `pool`'s indices go nowhere but into a MaxUnpool of its kind."""
    d = 1 if pool.endswith("1d") else 2
    return (f"ONNX's MaxPool counts them over the whole {_LAYOUT[d]} tensor, torch and convprop within each "
            f"{'(L) row' if d == 1 else '(H, W) plane'}, so they are exported only as the indices of a MaxUnpool{d}d")


def _size(shape) -> str:
    return "×".join(map(str, shape))


def _unpool(b: _Builder, m, label: str, x, indices, out: np.ndarray) -> str:
    """MaxUnpool2d / MaxUnpool1d as ONNX MaxUnpool, its indices MaxPool's own Indices (whole-tensor flat),
    its output_shape the shape of the pool's input — the one shape at which whole-tensor and per-plane
    indices name the same cells, so the unpooled output must have the pooled input's H × W."""
    name = type(m).__name__
    d = 1 if isinstance(m, getattr(nn, "MaxUnpool1d", ())) else 2
    pools = "MaxPool1d" if d == 1 else "MaxPool2d or AdaptiveMaxPool2d"
    if getattr(x, "onnx_name", None) is None or getattr(x, "pooled", None) is not None:
        raise OnnxError(f"{label} ({name}): its input x is computed by code other than layers and sums of "
                        "their outputs, which cannot be exported")
    if getattr(indices, "pooled", None) is None:
        raise OnnxError(f"{label} ({name}): indices must be those a {pools}(return_indices=True) of this "
                        "model returned, unchanged")
    source, shape, pool = indices.pooled
    if len(shape) != d + 2 or out.ndim != d + 2:  # the pool's input is batched (see _batched)
        raise OnnxError(f"{label} ({name}): its indices are a {pool}'s of a {len(shape) - 2}-D input {shape}, its "
                        f"output {out.shape}; a {name} unpools the indices of a {pools} only, to its input's shape")
    if out.shape[2:] != shape[2:]:
        raise OnnxError(f"{label} ({name}): output {_size(out.shape[2:])} differs from its "
                        f"pooled input {_size(shape[2:])}; ONNX's whole-tensor indices match torch's "
                        "per-plane ones only at the pooled input's size (pass output_size=x.shape)")
    k, p = (_pair(m.kernel_size), _pair(m.padding)) if d == 2 else ([_one(m.kernel_size)], [_one(m.padding)])
    s = k if m.stride is None else _pair(m.stride) if d == 2 else [_one(m.stride)]
    least = [unpool_default(*a) for a in zip(x.shape[2:], k, s, p)]
    if any(o < lo for o, lo in zip(out.shape[2:], least)):
        raise OnnxError(f"{label} ({name}): its pooled input {_size(shape[2:])} is smaller than the default "
                        f"output {_size(least)} ((in − 1)·stride − 2·padding + kernel), and ONNX's MaxUnpool "
                        "needs an output_shape of at least that size")
    return b.node("MaxUnpool", [x.onnx_name, indices.onnx_name, b.node("Shape", [source], f"{label}.shape")], label,
                  kernel_shape=k, strides=s, pads=p + p)


class _Tracer:
    """While export runs the forward pass: every Module call writes its layer's nodes."""

    builder: _Builder | None = None
    label = ""
    names: dict[int, str] = {}


_tracer = _Tracer()
_original_call = nn.Module.__call__


_UNPOOLS = [n for n in ("MaxUnpool2d", "MaxUnpool1d") if hasattr(nn, n)]  # exported by _traced_call itself


def _exporter(m: nn.Module) -> Callable | None:
    return next((EXPORTERS[c] for c in type(m).__mro__ if c in EXPORTERS), None)


def _traced_call(self: nn.Module, *args, **kwargs):
    b, label = _tracer.builder, _tracer.names.get(id(self), "") or type(self).__name__
    if b is None:
        return _original_call(self, *args, **kwargs)
    if isinstance(self, nn.MaxUnpool2d):  # (x, indices, output_size=None), positional or by keyword
        def plain(a):
            return a.view(np.ndarray) if isinstance(a, _Traced) else a
        out = _original_call(self, *map(plain, args), **{k: plain(v) for k, v in kwargs.items()})
        x, indices = list(inspect.signature(self.forward).bind(*args, **kwargs).arguments.values())[:2]
        return _trace(out, _unpool(b, self, label, x, indices, out))
    emit = _exporter(self)
    if emit is None:  # a container: its forward calls its submodules (and adds branches)
        if not self._modules or isinstance(self, nn.Module) and type(self).forward is nn.Module.forward:
            raise OnnxError(f"{label} ({type(self).__name__}): no ONNX export for this layer (exported: "
                            f"{', '.join(sorted([*(c.__name__ for c in EXPORTERS), *_UNPOOLS]))}, and modules "
                            "whose forward calls those and adds their outputs)")
        outer, _tracer.label = _tracer.label, label
        try:
            return _original_call(self, *args, **kwargs)
        finally:
            _tracer.label = outer
    inputs = [a for a in args if isinstance(a, np.ndarray)]
    pooled = next((a.pooled for a in [*inputs, *kwargs.values()] if getattr(a, "pooled", None) is not None), None)
    if pooled is not None:
        raise OnnxError(f"{label} ({type(self).__name__}): its input is the indices of a {pooled[2]}; "
                        + _indices_only_unpool(pooled[2]))
    if kwargs or len(inputs) != len(args) or not inputs or any(getattr(a, "onnx_name", None) is None for a in inputs):
        raise OnnxError(f"{label} ({type(self).__name__}): its input is computed by code other than layers and "
                        "sums of their outputs, which cannot be exported")
    names = [a.onnx_name for a in inputs]
    plain = [a.view(np.ndarray) for a in inputs]
    name = emit(b, self, names if isinstance(self, Add) else names[0], plain[0], label)
    if isinstance(name, tuple):  # MaxPool's (Y, Indices)
        out, idx = _original_call(self, *plain)
        return _trace(out, name[0]), _trace(idx, name[1], pooled=(names[0], plain[0].shape, type(self).__name__))
    return _trace(_original_call(self, *plain), name)


def export(model: nn.Module, path: str, input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET) -> str:
    """Write `model` as an ONNX file for inputs of `input_shape` (N, C, H, W) or (N, features).

    The batch dimension N is dynamic (named "batch"); the rest are fixed.  The graph is the model in
    eval mode (Dropout the identity, BatchNorm with running statistics), in the parameters' dtype;
    checked with onnx.checker before it is written.  Returns path.
    """
    onnx = _onnx()
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset: expected an int from {MIN_OPSET} to {newest}, got {opset!r}")
    shape = tuple(input_shape)
    if len(shape) < 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shape):
        raise ValueError(f"input_shape: expected (N, C, H, W) or (N, features) of positive ints, got {input_shape!r}")
    dtype = model.dtype
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    was_training = [m.training for m in model.modules()]
    model.eval()
    b = _Builder(onnx, dtype)
    _tracer.builder, _tracer.names, _tracer.label = b, {id(m): n for n, m in model.named_modules()}, ""
    nn.Module.__call__ = _traced_call
    try:
        y = model(_trace(np.zeros((1, *shape[1:]), dtype), "input"))
    finally:
        nn.Module.__call__ = _original_call
        _tracer.builder, _tracer.names = None, {}
        for m, mode in zip(model.modules(), was_training):
            object.__setattr__(m, "training", mode)
    out = getattr(y, "onnx_name", None)
    pooled = next((v.pooled for v in (y if isinstance(y, tuple) else (y,)) if getattr(v, "pooled", None)), None)
    if pooled is not None:
        raise OnnxError(f"model ({type(model).__name__}): it returns the indices of a {pooled[2]}; "
                        + _indices_only_unpool(pooled[2]))
    if out is None:
        raise OnnxError(f"model ({type(model).__name__}): its output is computed by code other than layers and sums "
                        "of their outputs, which cannot be exported")
    ya = y.view(np.ndarray)
    if out == "input":
        out = b.node("Identity", ["input"], "identity")
    for node in b.nodes:  # the last tensor is the graph's "output"
        node.input[:] = ["output" if n == out else n for n in node.input]
        node.output[:] = ["output" if n == out else n for n in node.output]
    graph = onnx.helper.make_graph(
        b.nodes, "convprop", [onnx.helper.make_tensor_value_info("input", elem, ["batch", *shape[1:]])],
        [onnx.helper.make_tensor_value_info("output", elem, ["batch", *ya.shape[1:]])], b.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="convprop")
    proto.ir_version = min(proto.ir_version, _IR_FOR_OPSET.get(opset, proto.ir_version))
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return path


# the IR version each opset first shipped with (so older runtimes accept the file)
_IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


# =========================================================================== a graph of layers
class Add(nn.Module):
    """The join of two branches: y = a + b.  Backward hands dout to both (∂y/∂a = ∂y/∂b = I)."""

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.shape != b.shape:
            raise ValueError(f"Add: expected two inputs of one shape, got {a.shape} and {b.shape}")
        return a + b

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> tuple[np.ndarray, np.ndarray]:
        return dout, dout


class Graph(nn.Module):
    """Layers wired as a directed acyclic graph, as an ONNX file stores them: step k computes the
    tensor named `outputs[k]` by applying child module k to the tensors named `inputs[k]` (a tuple
    of names where the module returns several, as MaxPool2d(return_indices=True) returns (out, indices)).

    backward walks the steps in reverse.  Where a tensor fed several steps (a fork), the gradients
    that come back from each are added; an Add (a join) hands its gradient to both of its inputs.
    """

    def __init__(self, steps: list[tuple[str | tuple[str, ...], nn.Module, list[str]]], input: str, output: str):
        super().__init__()
        self.input, self.output = input, output
        self.outputs, self.inputs = [s[0] for s in steps], [list(s[2]) for s in steps]
        for k, (_, module, _) in enumerate(steps):
            setattr(self, str(k), module)

    def forward(self, x: np.ndarray) -> np.ndarray:
        nn.module.check_input(x)
        values = {self.input: x}
        for out, ins, m in zip(self.outputs, self.inputs, self.children()):
            y = m(*[values[i] for i in ins])
            values.update(zip(out, y) if isinstance(out, tuple) else ((out, y),))
        return values[self.output]

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        grads = {self.output: dout}
        for out, ins, m in reversed(list(zip(self.outputs, self.inputs, self.children()))):
            g = grads.pop(out[0] if isinstance(out, tuple) else out, None)  # indices have no gradient
            if g is None:  # a tensor the output does not depend on
                continue
            back = m.backward(g)  # a MaxUnpool's: for x alone, none for its indices
            for name, gi in zip(ins, back if isinstance(m, Add) else (back,)):
                grads[name] = gi if name not in grads else grads[name] + gi  # a fork adds its branches
        return grads.get(self.input) if input_grad else None


EXPORTERS[Add] = lambda b, m, names, xa, label: b.node("Add", names, label)


class _MaxUnpoolTo(nn.MaxUnpool2d):
    """MaxUnpool2d to a fixed output (H, W) — ONNX MaxUnpool's output_shape — or, with None, the default."""

    def __init__(self, kernel_size, stride=None, padding=0, output_size: tuple[int, int] | None = None) -> None:
        super().__init__(kernel_size, stride, padding)
        self.output_size = output_size

    def forward(self, x: np.ndarray, indices: np.ndarray, output_size=None) -> np.ndarray:
        return super().forward(x, indices, self.output_size if output_size is None else output_size)


class _MaxUnpool1dTo(_MaxUnpoolTo, nn.MaxUnpool1d):
    """MaxUnpool1d to a fixed output (L,), or with None the default."""


# =========================================================================== import
_FLOATS = {1: np.float32, 11: np.float64}  # TensorProto.FLOAT, DOUBLE
_INTS = {7: np.int64, 6: np.int32}  # TensorProto.INT64, INT32 (shapes)
_TYPED_FIELD = {1: "float_data", 11: "double_data", 7: "int64_data", 6: "int32_data"}


def _type_name(code: int) -> str:
    try:
        return _onnx().TensorProto.DataType.Name(code)
    except ValueError:
        return str(code)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def _external(t, where: str, directory: str | None, nbytes: int) -> bytes:
    """The bytes of a tensor stored beside the model (torch.onnx.export's external data): a file of
    the model's directory named without any path, its offset and length checked against its size."""
    info = {e.key: e.value for e in t.external_data}
    name = info.get("location", "")
    if directory is None or not name or os.path.basename(name) != name or name in (".", ".."):
        raise OnnxError(f"{where}: tensor {t.name!r} names external data {name!r}; only a file beside the "
                        "model, named without a path, is read")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
    except ValueError:
        raise OnnxError(f"{where}: tensor {t.name!r} has a malformed external data offset or length") from None
    file = os.path.join(directory, name)
    size = os.path.getsize(file) if os.path.isfile(file) else -1
    if length != nbytes or offset < 0 or offset + length > size:
        raise OnnxError(f"{where}: tensor {t.name!r} needs {nbytes:,} bytes at offset {offset:,} of {name!r} "
                        f"({'missing' if size < 0 else f'{size:,} bytes'}; length {length:,})")
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _tensor(t, where: str, limit: int, directory: str | None = None) -> np.ndarray:
    """A TensorProto as an array, its declared shape checked against its bytes and `limit` first."""
    dtypes = {**_FLOATS, **_INTS}
    if t.data_type not in dtypes:
        raise OnnxError(f"{where}: tensor {t.name!r} has data type {_type_name(t.data_type)} "
                        "(supported: float32, float64, and int64/int32 for shapes)")
    if t.HasField("segment"):
        raise OnnxError(f"{where}: tensor {t.name!r} is segmented; not supported")
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims) or len(dims) > 8:
        raise OnnxError(f"{where}: tensor {t.name!r} declares an invalid shape {dims}")
    n = math.prod(dims)
    if n > limit:
        raise OnnxError(f"{where}: tensor {t.name!r} declares shape {dims} ({n:,} elements), over the limit "
                        f"of {limit:,}")
    dtype = np.dtype(dtypes[t.data_type]).newbyteorder("<")
    if t.data_location == 1 or len(t.external_data):
        a = np.frombuffer(_external(t, where, directory, n * dtype.itemsize), dtype)
    elif t.raw_data:
        if len(t.raw_data) != n * dtype.itemsize:
            raise OnnxError(f"{where}: tensor {t.name!r} declares shape {dims} ({n * dtype.itemsize:,} bytes) "
                            f"but holds {len(t.raw_data):,} bytes")
        a = np.frombuffer(t.raw_data, dtype)
    else:
        field = getattr(t, _TYPED_FIELD[t.data_type])
        if len(field) != n:
            raise OnnxError(f"{where}: tensor {t.name!r} declares shape {dims} ({n:,} values) "
                            f"but holds {len(field):,}")
        a = np.asarray(field, dtype)
    return a.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


class _Reader:
    """The graph's tensors by name: constants (initializers, Constant nodes) and data (the rest)."""

    def __init__(self, onnx, proto, path: str, limit: int):
        self.onnx, self.path, self.limit = onnx, path, limit
        self.graph = proto.graph
        self.raw_consts = {t.name: t for t in self.graph.initializer}
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, list] = {}
        self.consumers: dict[str, int] = {}  # how many nodes (and the graph output) read each tensor
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False).graph
            infos = list(inferred.value_info) + list(inferred.input) + list(inferred.output)
        except Exception:
            infos = list(self.graph.input) + list(self.graph.output)
        for vi in infos:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in vi.type.tensor_type.shape.dim]

    def is_const(self, name: str) -> bool:
        return name in self.consts or name in self.raw_consts

    def const(self, node, index: int, what: str) -> np.ndarray:
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            raise OnnxError(f"{self.where(node)}: input {index} ({what}) is missing")
        if name not in self.consts:
            if name not in self.raw_consts:
                raise OnnxError(f"{self.where(node)}: input {index} ({what}) {name!r} must be a constant "
                                "(an initializer), not computed in the graph")
            self.consts[name] = _tensor(self.raw_consts[name], self.where(node), self.limit,
                                        os.path.dirname(os.path.abspath(self.path)))
        return self.consts[name]

    def optional_const(self, node, index: int, what: str) -> np.ndarray | None:
        return self.const(node, index, what) if index < len(node.input) and node.input[index] else None

    def where(self, node) -> str:
        return f"{self.path}: node {node.name or '(unnamed)'!r} ({node.op_type})"

    def attrs(self, node, allowed: dict[str, Any]) -> dict[str, Any]:
        """The node's attributes over `allowed`'s defaults; any other attribute is refused."""
        out = dict(allowed)
        for a in node.attribute:
            if a.name not in allowed:
                raise OnnxError(f"{self.where(node)}: attribute {a.name!r} is not supported")
            value = self.onnx.helper.get_attribute_value(a)
            out[a.name] = value.decode() if isinstance(value, bytes) else value
        return out

    def refuse(self, node, attr: str, value, why: str = "") -> OnnxError:
        return OnnxError(f"{self.where(node)}: attribute {attr!r} = {value!r} is not supported"
                         + (f" ({why})" if why else ""))


def _float(r: _Reader, node, a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype.kind != "f":
        raise OnnxError(f"{r.where(node)}: {what} has dtype {a.dtype}; expected float32 or float64")
    return a


def _spatial(r: _Reader, node, at: dict, key: str, default: list[int]) -> tuple[int, int]:
    v = at[key] if at[key] is not None else default
    v = list(v)
    if len(v) != 2:
        raise r.refuse(node, key, v, "only 2-D (N, C, H, W) operators are imported")
    if key == "strides" or key == "dilations":
        if min(v) < 1:
            raise r.refuse(node, key, v)
    return int(v[0]), int(v[1])


def _conv_pads(r: _Reader, node, at: dict, kernel, dilation, stride) -> tuple[int, int]:
    auto = at.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return 0, 0
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        if stride != (1, 1) or any(t % 2 for t in total):
            raise r.refuse(node, "auto_pad", auto, "'SAME' padding is imported only where it is symmetric")
        return total[0] // 2, total[1] // 2
    if auto != "NOTSET":
        raise r.refuse(node, "auto_pad", auto)
    return _pads2(r, node, at["pads"])


def _pads2(r: _Reader, node, pads) -> tuple[int, int]:
    """ONNX's 2-D pads [top, left, bottom, right] as convprop's symmetric (top, left)."""
    pads = list(pads or [0, 0, 0, 0])
    if len(pads) != 4 or min(pads) < 0:
        raise r.refuse(node, "pads", pads)
    if pads[:2] != pads[2:]:
        raise r.refuse(node, "pads", pads, "convprop pads symmetrically: [top, left] must equal [bottom, right]")
    return int(pads[0]), int(pads[1])


def _load_weights(m: nn.Module, **arrays) -> nn.Module:
    for name, a in arrays.items():
        if a is not None:
            getattr(m, name).data[...] = a
    return m


def _import_conv(r: _Reader, node) -> nn.Module:
    transposed = node.op_type == "ConvTranspose"
    allowed = dict(auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None)
    if transposed:
        allowed.update(output_padding=None, output_shape=None)
    at = r.attrs(node, allowed)
    w = _float(r, node, r.const(node, 1, "weight"), "the weight")
    if w.ndim == 3 and not transposed and hasattr(nn, "Conv1d"):
        return _import_conv1d(r, node, at, w)
    if w.ndim != 4:
        raise OnnxError(f"{r.where(node)}: weight of shape {w.shape}; only 2-D convolutions (4-D weights) "
                        "are imported")
    b = r.optional_const(node, 2, "bias")
    kernel = w.shape[2:]
    if at["kernel_shape"] is not None and tuple(at["kernel_shape"]) != kernel:
        raise r.refuse(node, "kernel_shape", at["kernel_shape"], f"the weight's kernel is {kernel}")
    stride, dilation = _spatial(r, node, at, "strides", [1, 1]), _spatial(r, node, at, "dilations", [1, 1])
    groups = int(at["group"])
    if groups < 1 or (w.shape[0] % groups if not transposed else w.shape[0] % groups):
        raise r.refuse(node, "group", groups, f"does not divide the weight's shape {w.shape}")
    if transposed and at["output_shape"] is not None:
        raise r.refuse(node, "output_shape", at["output_shape"], "give pads and output_padding instead")
    if transposed and at.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise r.refuse(node, "auto_pad", at["auto_pad"])
    padding = _conv_pads(r, node, at, kernel, dilation, stride)
    try:
        if transposed:
            m = nn.ConvTranspose2d(w.shape[0], w.shape[1] * groups, kernel, stride, padding,
                                   _spatial(r, node, at, "output_padding", [0, 0]), groups, b is not None,
                                   dilation, dtype=w.dtype)
        else:
            m = nn.Conv2d(w.shape[1] * groups, w.shape[0], kernel, stride, padding, dilation, groups,
                          b is not None, dtype=w.dtype)
    except (TypeError, ValueError) as e:
        raise OnnxError(f"{r.where(node)}: {_one_line(e)}") from None
    if b is not None and b.shape != (m.out_channels,):
        raise OnnxError(f"{r.where(node)}: bias of shape {b.shape}; expected ({m.out_channels},)")
    return _load_weights(m, weight=w, bias=b)


def _ints1(r: _Reader, node, at: dict, key: str, default: list[int]) -> int:
    v = list(at[key] if at[key] is not None else default)
    if len(v) != (2 if key == "pads" else 1) or min(v) < (0 if key == "pads" else 1) or \
            (key == "pads" and v[0] != v[1]):
        raise r.refuse(node, key, v, "expected a 1-D operator's value (pads symmetric)")
    return int(v[0])


def _import_conv1d(r: _Reader, node, at: dict, w: np.ndarray) -> nn.Module:
    """A Conv over (N, C, L): convprop's Conv1d."""
    if at.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise r.refuse(node, "auto_pad", at["auto_pad"])
    if at["kernel_shape"] is not None and tuple(at["kernel_shape"]) != w.shape[2:]:
        raise r.refuse(node, "kernel_shape", at["kernel_shape"], f"the weight's kernel is {w.shape[2:]}")
    b = r.optional_const(node, 2, "bias")
    pad = 0 if at.get("auto_pad") == "VALID" else _ints1(r, node, at, "pads", [0, 0])
    try:
        m = nn.Conv1d(w.shape[1] * int(at["group"]), w.shape[0], w.shape[2], _ints1(r, node, at, "strides", [1]), pad,
                      _ints1(r, node, at, "dilations", [1]), int(at["group"]), b is not None, dtype=w.dtype)
    except (TypeError, ValueError) as e:
        raise OnnxError(f"{r.where(node)}: {_one_line(e)}") from None
    return _load_weights(m, weight=w, bias=b)


def _import_pool(r: _Reader, node) -> nn.Module:
    avg = node.op_type == "AveragePool"
    allowed = dict(auto_pad="NOTSET", ceil_mode=0, kernel_shape=None, pads=None, strides=None, dilations=None)
    allowed.update(count_include_pad=0) if avg else allowed.update(storage_order=0)
    at = r.attrs(node, allowed)
    indices = len(node.output) > 1 and bool(r.consumers.get(node.output[1]))
    if at["kernel_shape"] is None:
        raise OnnxError(f"{r.where(node)}: attribute 'kernel_shape' is missing")
    if len(at["kernel_shape"]) == 1 and hasattr(nn, "MaxPool1d"):  # (N, C, L)
        if at["auto_pad"] not in ("NOTSET", "VALID") or (not avg and at["storage_order"]):
            raise r.refuse(node, "auto_pad", at["auto_pad"])
        k = _ints1(r, node, at, "kernel_shape", [1])
        pad = 0 if at["auto_pad"] == "VALID" else _ints1(r, node, at, "pads", [0, 0])
        stride, ceil = _ints1(r, node, at, "strides", [1]), bool(at["ceil_mode"])
        if pad > k // 2:
            raise r.refuse(node, "pads", at["pads"], "torch and convprop pool with at most half the kernel")
        if avg:
            if _ints1(r, node, at, "dilations", [1]) != 1:
                raise r.refuse(node, "dilations", at["dilations"], "AvgPool1d has no dilation")
            return nn.AvgPool1d(k, stride, pad, ceil_mode=ceil, count_include_pad=bool(at["count_include_pad"]))
        return nn.MaxPool1d(k, stride, pad, _ints1(r, node, at, "dilations", [1]), return_indices=indices,
                            ceil_mode=ceil)
    kernel = _spatial(r, node, at, "kernel_shape", [1, 1])
    stride, dilation = _spatial(r, node, at, "strides", [1, 1]), _spatial(r, node, at, "dilations", [1, 1])
    if avg and dilation != (1, 1):
        raise r.refuse(node, "dilations", list(dilation), "AvgPool2d has no dilation")
    if at["storage_order" if not avg else "ceil_mode"] not in (0, 1) or (not avg and at["storage_order"]):
        raise r.refuse(node, "storage_order", at.get("storage_order"))
    if at["auto_pad"] != "NOTSET" and at["auto_pad"] != "VALID":
        raise r.refuse(node, "auto_pad", at["auto_pad"])
    pads = (0, 0) if at["auto_pad"] == "VALID" else _pads2(r, node, at["pads"])
    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        raise r.refuse(node, "pads", at["pads"], f"torch and convprop pool with at most half the kernel {list(kernel)}")
    ceil = bool(at["ceil_mode"])
    try:
        if avg:
            return nn.AvgPool2d(kernel, stride, pads, ceil_mode=ceil, count_include_pad=bool(at["count_include_pad"]))
        return nn.MaxPool2d(kernel, stride, pads, dilation, return_indices=indices, ceil_mode=ceil)
    except (TypeError, ValueError) as e:
        raise OnnxError(f"{r.where(node)}: {_one_line(e)}") from None


def _import_gemm(r: _Reader, node) -> nn.Module:
    at = r.attrs(node, dict(alpha=1.0, beta=1.0, transA=0, transB=0))
    if at["transA"]:
        raise r.refuse(node, "transA", at["transA"], "the data input must be (N, features)")
    w = _float(r, node, r.const(node, 1, "B (weight)"), "the weight")
    if w.ndim != 2:
        raise OnnxError(f"{r.where(node)}: weight of shape {w.shape}; expected 2-D")
    w = (w if at["transB"] else w.T) * w.dtype.type(at["alpha"])  # Linear's (out, in)
    c = r.optional_const(node, 2, "C (bias)")
    if c is not None:
        if c.size not in (1, w.shape[0]) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            raise OnnxError(f"{r.where(node)}: bias C of shape {c.shape}; expected ({w.shape[0]},)")
        c = np.broadcast_to(c.reshape(-1), (w.shape[0],)) * w.dtype.type(at["beta"])
    return _load_weights(nn.Linear(w.shape[1], w.shape[0], bias=c is not None, dtype=w.dtype), weight=w, bias=c)


def _import_batchnorm(r: _Reader, node) -> nn.Module:
    at = r.attrs(node, dict(epsilon=1e-5, momentum=0.9, training_mode=0, spatial=1))
    if at["training_mode"]:
        raise r.refuse(node, "training_mode", at["training_mode"], "inference BatchNormalization only")
    if at["spatial"] != 1:
        raise r.refuse(node, "spatial", at["spatial"])
    if any(o for o in node.output[1:]):
        raise OnnxError(f"{r.where(node)}: the running-statistics outputs are not supported")
    scale, bias, mean, var = (_float(r, node, r.const(node, i, what), what)
                              for i, what in enumerate(("scale", "B", "mean", "var"), 1))
    c = scale.shape[0] if scale.ndim == 1 else -1
    if any(a.shape != (c,) for a in (scale, bias, mean, var)):
        raise OnnxError(f"{r.where(node)}: scale, B, mean and var must be 1-D of one length, got "
                        f"{[a.shape for a in (scale, bias, mean, var)]}")
    rank = len(r.shapes.get(node.input[0]) or [None] * 4)
    cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    m = cls(c, eps=float(at["epsilon"]), momentum=1.0 - float(at["momentum"]), dtype=scale.dtype)
    m.running_mean[...], m.running_var[...] = mean, var
    return _load_weights(m, weight=scale, bias=bias)


def _import_flatten(r: _Reader, node) -> nn.Module:
    at = r.attrs(node, dict(axis=1))
    rank = len(r.shapes.get(node.input[0]) or [])
    if at["axis"] != 1 and not (rank and at["axis"] == 1 - rank):
        raise r.refuse(node, "axis", at["axis"], "only axis=1, flattening all but the batch dimension")
    return nn.Flatten()


def _import_reshape(r: _Reader, node) -> nn.Module:
    """Reshape by a constant shape that merges adjacent dimensions other than the batch: a Flatten."""
    at = r.attrs(node, dict(allowzero=0))
    shape = [int(s) for s in r.const(node, 1, "shape").reshape(-1)]
    dims = r.shapes.get(node.input[0])
    if not (at["allowzero"] and 0 in shape) and shape.count(-1) <= 1:  # allowzero: a 0 means size 0
        if shape in ([0, -1], [-1, -1]) or dims is None or None in dims[1:]:
            if shape == [0, -1] or (shape[:1] == [-1] and len(shape) == 2 and dims and None not in dims[1:]
                                    and shape[1] in (-1, math.prod(dims[1:]))):
                return nn.Flatten()
        else:
            target = [dims[i] if s == 0 and i < len(dims) else s for i, s in enumerate(shape)]
            for start in range(1, len(dims)):
                for end in range(start, len(dims)):
                    merged = dims[:start] + [math.prod(dims[start:end + 1])] + dims[end + 1:]
                    if len(merged) == len(target) and all(t in (c, -1) or (c is None and t == 0)
                                                          for t, c in zip(target, merged)):
                        return nn.Flatten(start, end)
    raise OnnxError(f"{r.where(node)}: shape {shape} is not supported (only a reshape that merges adjacent "
                    "dimensions after the batch, a Flatten)")


def _import_dropout(r: _Reader, node) -> nn.Module | None:
    at = r.attrs(node, dict(ratio=0.5, seed=0, is_test=0))
    ratio = r.optional_const(node, 1, "ratio")
    p = float(ratio.reshape(-1)[0]) if ratio is not None and ratio.size else float(at["ratio"])
    training = r.optional_const(node, 2, "training_mode")
    if training is not None and training.size and bool(training.reshape(-1)[0]):
        raise OnnxError(f"{r.where(node)}: training_mode=True is not supported (inference graphs only)")
    if any(o for o in node.output[1:]):
        raise OnnxError(f"{r.where(node)}: output 'mask' is not supported")
    if not 0.0 <= p < 1.0:
        raise r.refuse(node, "ratio", p)
    return nn.Dropout(p)


def _simple(cls, **defaults) -> Callable:
    def make(r: _Reader, node) -> nn.Module:
        at = r.attrs(node, defaults)
        return cls(**{"negative_slope": float(at["alpha"])} if "alpha" in at else {})
    return make


def _import_global_pool(r: _Reader, node) -> nn.Module:
    r.attrs(node, {})
    return nn.AdaptiveAvgPool2d(1)


def _import_global_max_pool(r: _Reader, node) -> nn.Module:
    r.attrs(node, {})
    return nn.AdaptiveMaxPool2d(1)


def _import_softmax(r: _Reader, node) -> nn.Module:
    """Softmax / LogSoftmax along one axis (opset ≥ 13; before, along all axes from `axis` on)."""
    at = r.attrs(node, dict(axis=-1))
    rank = len(r.shapes.get(node.input[0]) or [])
    if r.opset < 13 and not (rank and int(at["axis"]) % rank == rank - 1):
        raise r.refuse(node, "axis", at["axis"], "before opset 13 it flattens the axes from axis on")
    return (nn.LogSoftmax if node.op_type == "LogSoftmax" else nn.Softmax)(dim=int(at["axis"]))


def _import_reduce_mean(r: _Reader, node) -> nn.Module:
    """The mean over H and W, keeping them (torch.onnx.export's AdaptiveAvgPool2d(1)): global pooling."""
    at = r.attrs(node, dict(axes=None, keepdims=1, noop_with_empty_axes=0))
    axes = at["axes"] if at["axes"] is not None else r.optional_const(node, 1, "axes")
    rank = len(r.shapes.get(node.input[0]) or [None] * 4)
    axes = sorted(int(a) % rank for a in np.asarray(axes if axes is not None else []).reshape(-1))
    if rank != 4 or axes != [2, 3] or not at["keepdims"]:
        raise OnnxError(f"{r.where(node)}: only the mean over H and W with keepdims=1 (global average pooling) "
                        f"is supported, got axes {axes} of a {rank}-D input, keepdims={at['keepdims']}")
    return nn.AdaptiveAvgPool2d(1)


IMPORTERS: dict[str, Callable] = {
    "Conv": _import_conv, "ConvTranspose": _import_conv, "MaxPool": _import_pool, "AveragePool": _import_pool,
    "GlobalAveragePool": _import_global_pool, "ReduceMean": _import_reduce_mean, "Gemm": _import_gemm,
    "BatchNormalization": _import_batchnorm,
    "Flatten": _import_flatten, "Reshape": _import_reshape, "Dropout": _import_dropout,
    "Relu": _simple(nn.ReLU), "Sigmoid": _simple(nn.Sigmoid), "Tanh": _simple(nn.Tanh),
    "LeakyRelu": _simple(nn.LeakyReLU, alpha=0.01),
}
for _op, _fn, _needs in (("GlobalMaxPool", _import_global_max_pool, "AdaptiveMaxPool2d"),
                         ("Softmax", _import_softmax, "Softmax"), ("LogSoftmax", _import_softmax, "LogSoftmax")):
    if hasattr(nn, _needs):  # layers of newer convprop versions
        IMPORTERS[_op] = _fn
# handled in the walk itself: Identity, Constant, Add (a join, or a bias after MatMul), MatMul, MaxUnpool
_WALKED = ["Add", "MatMul", "Identity", "Constant", "MaxUnpool"]


def load(path: str, max_bytes: int = MAX_FILE_BYTES, max_tensor_elements: int = MAX_TENSOR_ELEMENTS) -> nn.Module:
    """An ONNX file as a convprop model with its weights: an nn.Sequential for a chain of layers, a
    Graph where it forks and joins.  Raises OnnxError (one line: node, operator, attribute) for
    what convprop cannot represent or for a damaged or hostile file; never reads another file."""
    onnx = _onnx()
    checked_size(path, "an ONNX file", OnnxError, max_bytes)
    with open(path, "rb") as f:
        data = f.read()  # its size is checked above (read(n) would allocate n bytes first)
    try:
        proto = onnx.ModelProto.FromString(data)
    except Exception as e:  # protobuf's DecodeError, or a recursion limit
        raise OnnxError(f"{path}: not an ONNX model ({_one_line(e)})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise OnnxError(f"{path}: not an ONNX model (no graph nodes)")
    for op in proto.opset_import:
        if op.domain not in ("", "ai.onnx"):
            raise OnnxError(f"{path}: operator set {op.domain!r} is not supported (standard ONNX operators only)")
    try:
        return _build(onnx, proto, path, max_tensor_elements)
    except OnnxError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
        raise OnnxError(f"{path}: cannot import ({_one_line(e)})") from None


def _build(onnx, proto, path: str, limit: int) -> nn.Module:
    r = _Reader(onnx, proto, path, limit)
    g = proto.graph
    data_inputs = [i.name for i in g.input if i.name not in r.raw_consts]
    if len(data_inputs) != 1 or len(g.output) != 1:
        raise OnnxError(f"{path}: expected one data input and one output, got inputs {data_inputs[:5]} and "
                        f"{len(g.output)} outputs (weights must be initializers)")
    elem = g.input[[i.name for i in g.input].index(data_inputs[0])].type.tensor_type.elem_type
    if elem not in _FLOATS:
        raise OnnxError(f"{path}: input {data_inputs[0]!r} has element type {_type_name(elem)}; "
                        "expected float32 or float64")
    consumers: dict[str, int] = {g.output[0].name: 1}
    for node in g.node:
        for i in node.input:
            consumers[i] = consumers.get(i, 0) + 1
    r.consumers = consumers
    kinds: dict[str, tuple[str, str]] = {}  # index tensors and shapes: name -> (kind, the pool's input)
    alias = {data_inputs[0]: data_inputs[0]}  # tensor name -> the step output that holds it
    steps: list[tuple[str, nn.Module, list[str]]] = []
    fused: set[int] = set()
    nodes = list(g.node)
    for k, node in enumerate(nodes):
        if k in fused:
            continue
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise OnnxError(f"{r.where(node)}: operator domain {node.domain!r} is not supported")
        if op == "Constant":
            at = r.attrs(node, dict(value=None, value_ints=None))
            if at["value"] is None and at["value_ints"] is None:
                raise OnnxError(f"{r.where(node)}: only the 'value' and 'value_ints' attributes are supported")
            r.consts[node.output[0]] = (_tensor(at["value"], r.where(node), limit) if at["value"] is not None
                                        else np.array(at["value_ints"], np.int64))
            continue
        data = [i for i in node.input if i and not r.is_const(i)]
        if op == "Identity" and not data:  # a constant under another name (torch's shared weights)
            r.attrs(node, {})
            r.consts[node.output[0]] = r.const(node, 0, "input")
            continue
        for i in data:
            if i not in alias:
                raise OnnxError(f"{r.where(node)}: input {i!r} is not computed before this node "
                                "(the graph is not topologically sorted or names a missing tensor)")
        ins = [alias[i] for i in data]
        if op == "Identity":
            r.attrs(node, {})
            alias[node.output[0]] = ins[0]
            kinds.update({node.output[0]: kinds[data[0]]} if data[0] in kinds else {})
            continue
        if op == "MaxUnpool" or any(i in kinds for i in data) or (op == "Shape" and _feeds_unpool_shape(node, nodes)):
            step = _import_indices(r, node, data, ins, kinds)
            if isinstance(step, tuple):
                steps.append(step)
                alias[node.output[0]] = node.output[0]
            else:
                alias[node.output[0]] = step  # the same convprop tensor under another ONNX name
            continue
        if op == "Add" and len(data) == 2:
            r.attrs(node, {})
            m = Add()
        elif op == "MatMul":
            m, k2 = _import_matmul(r, node, nodes, k, consumers)
            if k2 is not None:
                fused.add(k2)
                node = nodes[k2]
        elif op in IMPORTERS:
            if len(data) != 1:
                raise OnnxError(f"{r.where(node)}: expected one data input, got {len(data)}")
            m = IMPORTERS[op](r, node)
            if getattr(m, "return_indices", False):  # MaxPool's (Y, Indices): see _import_indices
                kinds[node.output[1]] = ("iota" if _is_iota(node) else "whole", ins[0])
                alias[node.output[1]] = node.output[1]
                if _is_iota(node) and not r.consumers.get(node.output[0]):
                    continue  # only its indices are used (for the plane offsets): no step
                outs = (node.output[0], node.output[1])
        else:
            raise OnnxError(f"{r.where(node)}: operator {op!r} is not supported (supported: "
                            f"{', '.join(sorted([*IMPORTERS, *_WALKED]))})")
        steps.append((outs if getattr(m, "return_indices", False) else node.output[0], m, ins))
        alias[node.output[0]] = node.output[0]
    out = g.output[0].name
    if out not in alias:
        raise OnnxError(f"{path}: the graph output {out!r} is not computed by any node")
    if out in kinds:
        raise OnnxError(f"{path}: the graph output {out!r} is MaxPool's Indices (or a shape); convprop imports "
                        "Indices only as the indices of a MaxUnpool")
    dtypes = {m.dtype for _, m, _ in steps if any(True for _ in m.parameters())}
    if len(dtypes) > 1:
        raise OnnxError(f"{path}: the weights mix dtypes {sorted(d.name for d in dtypes)}")
    model = _assemble(steps, data_inputs[0], alias[out])
    if dtypes and dtypes.pop() != _FLOATS[elem]:
        model.to(_FLOATS[elem])
    return model


def _import_matmul(r: _Reader, node, nodes, k: int, consumers) -> tuple[nn.Module, int | None]:
    """MatMul by a constant (in, out) matrix is Linear without bias; a following Add of a constant
    (out,) vector is its bias (torch's Linear on inputs of more than two dimensions)."""
    r.attrs(node, {})
    if r.is_const(node.input[0]) or not r.is_const(node.input[1]):
        raise OnnxError(f"{r.where(node)}: only data × constant weight is supported")
    w = _float(r, node, r.const(node, 1, "weight"), "the weight")
    if w.ndim != 2:
        raise OnnxError(f"{r.where(node)}: weight of shape {w.shape}; expected 2-D")
    nxt = next((j for j in range(k + 1, len(nodes)) if node.output[0] in nodes[j].input), None)
    bias, fused = None, None
    if nxt is not None and consumers.get(node.output[0]) == 1 and nodes[nxt].op_type == "Add":
        other = [i for i in nodes[nxt].input if i != node.output[0]]
        if len(other) == 1 and r.is_const(other[0]):
            b = r.const(nodes[nxt], list(nodes[nxt].input).index(other[0]), "bias")
            if b.shape == (w.shape[1],):
                bias, fused = b.astype(w.dtype), nxt
    m = nn.Linear(w.shape[0], w.shape[1], bias=bias is not None, dtype=w.dtype)
    return _load_weights(m, weight=w.T, bias=bias), fused


def _assemble(steps, input: str, output: str) -> nn.Module:
    """A Sequential where each step takes the previous one's output, else a Graph."""
    chain, prev = True, input
    for out, m, ins in steps:
        if isinstance(m, Add) or ins != [prev] or not isinstance(out, str):
            chain = False
            break
        prev = out
    if chain and prev == output:
        return nn.Sequential(*[m for _, m, _ in steps])
    used = _needed(steps, output)
    return Graph([s for s in steps if any(o in used for o in _names(s[0]))], input, output)


def _names(out: str | tuple[str, ...]) -> tuple[str, ...]:
    return out if isinstance(out, tuple) else (out,)


def _needed(steps, output: str) -> set[str]:
    need, producers = {output}, {o: ins for out, _, ins in steps for o in _names(out)}
    stack = [output]
    while stack:
        for i in producers.get(stack.pop(), []):
            if i not in need:
                need.add(i)
                stack.append(i)
    return need


# --------------------------------------------------------------------------- MaxPool's Indices
def _is_iota(node) -> bool:
    """A MaxPool of kernel 1, stride 1, no padding: its Indices number every element of its input
    (torch's exporter takes the first of each plane as the plane's offset)."""
    at = {a.name: list(a.ints) for a in node.attribute}
    k = at.get("kernel_shape", [])
    return bool(k) and set(k) == {1} and set(at.get("strides", [1])) == {1} and not any(at.get("pads", [0]))


def _feeds_unpool_shape(node, nodes) -> bool:
    """Whether a Shape node's output is only ever a MaxUnpool's output_shape (its third input)."""
    readers = [(n, i) for n in nodes for i, name in enumerate(n.input) if name == node.output[0]]
    return bool(readers) and all(n.op_type == "MaxUnpool" and i == 2 for n, i in readers)


def _import_indices(r: _Reader, node, data: list[str], ins: list[str], kinds: dict) -> tuple | str:
    """The nodes around MaxPool's Indices: a step (MaxUnpool), or the convprop tensor the node's output
    names under another ONNX name (kinds records what the ONNX tensor holds).

    ONNX's Indices count over the whole (N, C, H, W) input, torch's and convprop's within each (H, W)
    plane; convprop holds only the latter and tracks which form each ONNX tensor would hold:
      whole  = MaxPool's Indices;   iota = the Indices of a MaxPool of kernel 1 (every element's own);
      offsets = Slice(iota)[…, :1, :1], each plane's first index;   plane = Sub(whole, offsets);
      Add(plane, offsets) = whole again (torch's exporter writes the Sub, a MaxUnpool needs the whole);
      shape = Shape(t), for MaxUnpool's output_shape.
    A MaxUnpool takes whole indices and gives the pooled input's H × W — where the two forms agree."""
    op, where, out = node.op_type, r.where(node), node.output[0]
    kind = [kinds.get(i, ("data", a))[0] for i, a in zip(data, ins)]
    src = [kinds.get(i, ("data", a))[1] for i, a in zip(data, ins)]
    if op == "Shape" and len(data) == 1 and kind == ["data"]:
        r.attrs(node, {})
        kinds[out] = ("shape", data[0])  # its ONNX name: the static shape is looked up by it
        return ins[0]
    if op == "Slice" and kind[:1] == ["iota"] and len(data) == 1:
        r.attrs(node, {})
        starts, ends = (r.const(node, i, what).reshape(-1).tolist() for i, what in ((1, "starts"), (2, "ends")))
        axes = r.optional_const(node, 3, "axes")
        steps = r.optional_const(node, 4, "steps")
        rank = len(r.shapes.get(src[0]) or [None] * 4)
        axes = [a % rank for a in (range(len(starts)) if axes is None else axes.reshape(-1).tolist())]
        if sorted(zip(axes, starts, ends)) == [(a, 0, 1) for a in range(2, rank)] and \
                (steps is None or set(steps.flat) == {1}):
            kinds[out] = ("offsets", src[0])
            return ins[0]
    if op in ("Sub", "Add") and len(data) == 2 and src[0] == src[1]:
        r.attrs(node, {})
        if op == "Sub" and kind == ["whole", "offsets"]:
            kinds[out] = ("plane", src[0])  # convprop's own indices
            return ins[0]
        if op == "Add" and sorted(kind) == ["offsets", "plane"]:
            kinds[out] = ("whole", src[0])
            return ins[kind.index("plane")]
    if op == "MaxUnpool" and len(data) in (2, 3) and kind[:2] == ["data", "whole"] and kind[2:] in ([], ["shape"]):
        at = r.attrs(node, dict(kernel_shape=None, pads=None, strides=None))
        d = len(at["kernel_shape"] or [])
        if d == 1:  # (N, C, L)
            kernel, stride = (_ints1(r, node, at, "kernel_shape", [1]),), (_ints1(r, node, at, "strides", [1]),)
            pads = (_ints1(r, node, at, "pads", [0, 0]),)
        elif d == 2:
            kernel = _spatial(r, node, at, "kernel_shape", [1, 1])
            stride = _spatial(r, node, at, "strides", [1, 1])  # ONNX's default, unlike torch's (the kernel)
            pads = _pads2(r, node, at["pads"])
        else:
            raise r.refuse(node, "kernel_shape", at["kernel_shape"], "1-D and 2-D MaxUnpool are imported")
        x, pooled, given = r.shapes.get(data[0]) or [], r.shapes.get(src[1]) or [], None
        if len(x) != d + 2 or None in x[2:]:
            raise OnnxError(f"{where}: its input's shape {x or 'unknown'} must be a known {_LAYOUT[d]}")
        if len(node.input) > 2 and node.input[2]:
            given = r.shapes.get(src[2]) if kind[2:] == ["shape"] else \
                [int(v) for v in r.const(node, 2, "output_shape").reshape(-1)]
            if not given or len(given) != d + 2 or None in given[2:] or \
                    any(g is not None and n is not None and g != n for g, n in zip(given[:2], x[:2])):
                raise OnnxError(f"{where}: output_shape {given} must be {d + 2} sizes, N and C those of its input "
                                f"{x}")
        try:  # ONNX's default (in − 1)·stride − pads + kernel, as torch's; output_shape within torch's bounds
            size = tuple(unpool_extent(x[2 + i], kernel[i], stride[i], pads[i], None if given is None else given[2 + i],
                                       "L" if d == 1 else "HW"[i]) for i in range(d))
        except ValueError as e:
            raise OnnxError(f"{where}: {_one_line(e).replace('ValueError: output_size', 'output_shape')}") from None
        if len(pooled) != d + 2 or None in pooled[2:] or size != tuple(pooled[2:]):
            raise OnnxError(f"{where}: output size {size} must be its indices' MaxPool input's "
                            f"{tuple(pooled[2:]) or 'unknown'} (only there do ONNX's whole-tensor indices equal "
                            "convprop's per-plane ones)")
        size = size if given is not None else None
        m = _MaxUnpoolTo(kernel, stride, pads, size) if d == 2 else _MaxUnpool1dTo(kernel[0], stride[0], pads[0], size)
        return out, m, ins[:2]
    raise OnnxError(f"{where}: MaxPool's Indices are imported only as the indices of a MaxUnpool (and in torch's "
                    f"Sub/Add of each plane's offset); got inputs {list(zip(data, kind))}")
