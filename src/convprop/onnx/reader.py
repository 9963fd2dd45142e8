"""Reading nodes: the graph's tensors by name (Reader), and each operator's importer into an nn layer."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import nn
from .errors import OnnxError, one_line
from .tensors import FLOATS, Budget, tensor
from .tensors import INTS as INT_DTYPES

# Every attribute an importer reads, by name, with its ONNX type (AttributeProto.AttributeType): a value
# of another type (a graph where an int belongs, ints where one int belongs, …) is refused before use.
INT, FLOAT, STRING, TENSOR, INTS = 2, 1, 3, 4, 7
ATTRIBUTE_TYPES = {
    "auto_pad": STRING, "dilations": INTS, "group": INT, "kernel_shape": INTS, "pads": INTS, "strides": INTS,
    "output_padding": INTS, "output_shape": INTS, "ceil_mode": INT, "count_include_pad": INT, "storage_order": INT,
    "alpha": FLOAT, "beta": FLOAT, "transA": INT, "transB": INT, "epsilon": FLOAT, "momentum": FLOAT,
    "training_mode": INT, "spatial": INT, "axis": INT, "allowzero": INT, "ratio": FLOAT, "seed": INT, "is_test": INT,
    "axes": INTS, "keepdims": INT, "noop_with_empty_axes": INT, "value": TENSOR, "value_ints": INTS, "to": INT,
    "saturate": INT,
}
MAX_INTS = 64  # an INTS attribute's length (Constant's value_ints: counted in the tensor budget instead)


def _declared(t) -> tuple[int, int]:
    """(elements, bytes per element) an initializer's dims and data type declare; (0, 0) where they are
    invalid (refused when it is read)."""
    dtype = {**FLOATS, **INT_DTYPES}.get(t.data_type)
    if dtype is None or len(t.dims) > 8 or min(t.dims, default=0) < 0:
        return 0, 0
    return math.prod(t.dims), np.dtype(dtype).itemsize


def _skeleton(onnx, proto):
    """The model for shape inference: its nodes and types, its initializers' names, types and dims, but the
    values only of small integer ones (the shapes a Reshape takes) — not a second copy of the weights."""
    m = onnx.ModelProto(ir_version=proto.ir_version)
    m.opset_import.extend(proto.opset_import)
    g, src = m.graph, proto.graph
    for field in ("node", "input", "output", "value_info"):
        getattr(g, field).extend(getattr(src, field))
    for t in src.initializer:
        if (t.data_type in INT_DTYPES and len(t.dims) <= 8 and min(t.dims, default=0) >= 0 and math.prod(t.dims) <= 1024
                and not t.external_data):
            g.initializer.append(t)
        else:
            g.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
    return m


class Reader:
    """The graph's tensors by name: constants (initializers, Constant nodes) and data (the rest)."""

    def __init__(self, onnx, proto, path: str, budget: Budget):
        self.onnx, self.path, self.budget = onnx, path, budget
        self.graph = proto.graph
        self.raw_consts = {}
        for t in self.graph.initializer:
            if t.name in self.raw_consts:
                raise OnnxError(f"{path}: initializer {t.name[:100]!r} appears twice")
            self.raw_consts[t.name] = t
        declared = 0
        for t in self.graph.initializer:
            n, itemsize = _declared(t)
            if n > budget.max_elements:
                raise OnnxError(f"{path}: tensor {t.name[:100]!r} declares shape {list(t.dims)} ({n:,} elements), "
                                f"over the limit of {budget.max_elements:,}")
            declared += n * itemsize
        if declared > budget.total:  # before any is read (each is also counted as it is converted)
            raise OnnxError(f"{path}: its {len(self.raw_consts):,} initializers declare {declared:,} bytes in all, "
                            f"over the limit of {budget.total:,}")
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, list] = {}
        self.consumers: dict[str, int] = {}  # how many nodes (and the graph output) read each tensor
        try:
            inferred = onnx.shape_inference.infer_shapes(_skeleton(onnx, proto), strict_mode=False).graph
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
            self.consts[name] = tensor(self.raw_consts[name], self.where(node), self.budget,
                                       os.path.dirname(os.path.abspath(self.path)))
        return self.consts[name]

    def optional_const(self, node, index: int, what: str) -> np.ndarray | None:
        return self.const(node, index, what) if index < len(node.input) and node.input[index] else None

    def where(self, node) -> str:
        return f"{self.path}: node {node.name or '(unnamed)'!r} ({node.op_type})"

    def attrs(self, node, allowed: dict[str, Any]) -> dict[str, Any]:
        """The node's attributes over `allowed`'s defaults; any other attribute, one given twice, one of
        another type than ONNX gives it (ATTRIBUTE_TYPES), a float that is not finite, a list of more than
        MAX_INTS or text that is not UTF-8 is refused, naming the node and the attribute."""
        out, seen = dict(allowed), set()
        names = self.onnx.AttributeProto.AttributeType
        for a in node.attribute:
            if a.name not in allowed:
                raise OnnxError(f"{self.where(node)}: attribute {a.name[:100]!r} is not supported")
            if a.name in seen:
                raise OnnxError(f"{self.where(node)}: attribute {a.name!r} is given twice")
            seen.add(a.name)
            want = ATTRIBUTE_TYPES[a.name]
            if a.type != want:
                got = names.Name(a.type) if a.type in names.values() else str(a.type)
                raise OnnxError(f"{self.where(node)}: attribute {a.name!r}: expected {names.Name(want)}, got {got}")
            if want == INT:
                value = int(a.i)
            elif want == FLOAT:
                value = float(a.f)
                if not math.isfinite(value):
                    raise OnnxError(f"{self.where(node)}: attribute {a.name!r} = {value}: expected a finite number")
            elif want == STRING:
                try:
                    value = a.s.decode()
                except UnicodeDecodeError:
                    raise OnnxError(f"{self.where(node)}: attribute {a.name!r}: not UTF-8 text") from None
            elif want == INTS:
                if a.name == "value_ints":
                    self.budget.take(8 * len(a.ints), self.where(node), f"attribute {a.name!r}")
                elif len(a.ints) > MAX_INTS:
                    raise OnnxError(f"{self.where(node)}: attribute {a.name!r} has {len(a.ints):,} values; "
                                    f"expected at most {MAX_INTS}")
                value = [int(v) for v in a.ints]
            else:
                value = a.t
            out[a.name] = value
        return out

    def refuse(self, node, attr: str, value, why: str = "") -> OnnxError:
        return OnnxError(f"{self.where(node)}: attribute {attr!r} = {value!r} is not supported"
                         + (f" ({why})" if why else ""))


def to_float(r: Reader, node, a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype.kind != "f":
        raise OnnxError(f"{r.where(node)}: {what} has dtype {a.dtype}; expected float32 or float64")
    return a


def spatial(r: Reader, node, at: dict, key: str, default: list[int]) -> tuple[int, int]:
    v = at[key] if at[key] is not None else default
    v = list(v)
    if len(v) != 2:
        raise r.refuse(node, key, v, "only 2-D (N, C, H, W) operators are imported")
    if key == "strides" or key == "dilations":
        if min(v) < 1:
            raise r.refuse(node, key, v)
    return int(v[0]), int(v[1])


def _conv_pads(r: Reader, node, at: dict, kernel, dilation, stride) -> tuple[int, int]:
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
    return pads2(r, node, at["pads"])


def pads2(r: Reader, node, pads) -> tuple[int, int]:
    """ONNX's 2-D pads [top, left, bottom, right] as convprop's symmetric (top, left)."""
    pads = list(pads or [0, 0, 0, 0])
    if len(pads) != 4 or min(pads) < 0:
        raise r.refuse(node, "pads", pads)
    if pads[:2] != pads[2:]:
        raise r.refuse(node, "pads", pads, "convprop pads symmetrically: [top, left] must equal [bottom, right]")
    return int(pads[0]), int(pads[1])


def load_weights(m: nn.Module, **arrays) -> nn.Module:
    for name, a in arrays.items():
        if a is not None:
            getattr(m, name).data[...] = a
    return m


def _import_conv(r: Reader, node) -> nn.Module:
    transposed = node.op_type == "ConvTranspose"
    allowed = dict(auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None)
    if transposed:
        allowed.update(output_padding=None, output_shape=None)
    at = r.attrs(node, allowed)
    w = to_float(r, node, r.const(node, 1, "weight"), "the weight")
    if w.ndim == 3 and not transposed:
        return _import_conv1d(r, node, at, w)
    if w.ndim != 4:
        raise OnnxError(f"{r.where(node)}: weight of shape {w.shape}; only 2-D convolutions (4-D weights) "
                        "are imported")
    b = r.optional_const(node, 2, "bias")
    kernel = w.shape[2:]
    if at["kernel_shape"] is not None and tuple(at["kernel_shape"]) != kernel:
        raise r.refuse(node, "kernel_shape", at["kernel_shape"], f"the weight's kernel is {kernel}")
    stride, dilation = spatial(r, node, at, "strides", [1, 1]), spatial(r, node, at, "dilations", [1, 1])
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
                                   spatial(r, node, at, "output_padding", [0, 0]), groups, b is not None,
                                   dilation, dtype=w.dtype)
        else:
            m = nn.Conv2d(w.shape[1] * groups, w.shape[0], kernel, stride, padding, dilation, groups,
                          b is not None, dtype=w.dtype)
    except (TypeError, ValueError) as e:
        raise OnnxError(f"{r.where(node)}: {one_line(e)}") from None
    if b is not None and b.shape != (m.out_channels,):
        raise OnnxError(f"{r.where(node)}: bias of shape {b.shape}; expected ({m.out_channels},)")
    return load_weights(m, weight=w, bias=b)


def ints1(r: Reader, node, at: dict, key: str, default: list[int]) -> int:
    v = list(at[key] if at[key] is not None else default)
    if len(v) != (2 if key == "pads" else 1) or min(v) < (0 if key == "pads" else 1) or \
            (key == "pads" and v[0] != v[1]):
        raise r.refuse(node, key, v, "expected a 1-D operator's value (pads symmetric)")
    return int(v[0])


def _import_conv1d(r: Reader, node, at: dict, w: np.ndarray) -> nn.Module:
    """A Conv over (N, C, L): convprop's Conv1d."""
    if at.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise r.refuse(node, "auto_pad", at["auto_pad"])
    if at["kernel_shape"] is not None and tuple(at["kernel_shape"]) != w.shape[2:]:
        raise r.refuse(node, "kernel_shape", at["kernel_shape"], f"the weight's kernel is {w.shape[2:]}")
    b = r.optional_const(node, 2, "bias")
    pad = 0 if at.get("auto_pad") == "VALID" else ints1(r, node, at, "pads", [0, 0])
    try:
        m = nn.Conv1d(w.shape[1] * int(at["group"]), w.shape[0], w.shape[2], ints1(r, node, at, "strides", [1]), pad,
                      ints1(r, node, at, "dilations", [1]), int(at["group"]), b is not None, dtype=w.dtype)
    except (TypeError, ValueError) as e:
        raise OnnxError(f"{r.where(node)}: {one_line(e)}") from None
    return load_weights(m, weight=w, bias=b)


def _import_pool(r: Reader, node) -> nn.Module:
    avg = node.op_type == "AveragePool"
    allowed = dict(auto_pad="NOTSET", ceil_mode=0, kernel_shape=None, pads=None, strides=None, dilations=None)
    allowed.update(count_include_pad=0) if avg else allowed.update(storage_order=0)
    at = r.attrs(node, allowed)
    indices = len(node.output) > 1 and bool(r.consumers.get(node.output[1]))
    if at["kernel_shape"] is None:
        raise OnnxError(f"{r.where(node)}: attribute 'kernel_shape' is missing")
    if len(at["kernel_shape"]) == 1:  # (N, C, L)
        if at["auto_pad"] not in ("NOTSET", "VALID") or (not avg and at["storage_order"]):
            raise r.refuse(node, "auto_pad", at["auto_pad"])
        k = ints1(r, node, at, "kernel_shape", [1])
        pad = 0 if at["auto_pad"] == "VALID" else ints1(r, node, at, "pads", [0, 0])
        stride, ceil = ints1(r, node, at, "strides", [1]), bool(at["ceil_mode"])
        if pad > k // 2:
            raise r.refuse(node, "pads", at["pads"], "torch and convprop pool with at most half the kernel")
        if avg:
            if ints1(r, node, at, "dilations", [1]) != 1:
                raise r.refuse(node, "dilations", at["dilations"], "AvgPool1d has no dilation")
            return nn.AvgPool1d(k, stride, pad, ceil_mode=ceil, count_include_pad=bool(at["count_include_pad"]))
        return nn.MaxPool1d(k, stride, pad, ints1(r, node, at, "dilations", [1]), return_indices=indices,
                            ceil_mode=ceil)
    kernel = spatial(r, node, at, "kernel_shape", [1, 1])
    stride, dilation = spatial(r, node, at, "strides", [1, 1]), spatial(r, node, at, "dilations", [1, 1])
    if avg and dilation != (1, 1):
        raise r.refuse(node, "dilations", list(dilation), "AvgPool2d has no dilation")
    if at["storage_order" if not avg else "ceil_mode"] not in (0, 1) or (not avg and at["storage_order"]):
        raise r.refuse(node, "storage_order", at.get("storage_order"))
    if at["auto_pad"] != "NOTSET" and at["auto_pad"] != "VALID":
        raise r.refuse(node, "auto_pad", at["auto_pad"])
    pads = (0, 0) if at["auto_pad"] == "VALID" else pads2(r, node, at["pads"])
    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        raise r.refuse(node, "pads", at["pads"], f"torch and convprop pool with at most half the kernel {list(kernel)}")
    ceil = bool(at["ceil_mode"])
    try:
        if avg:
            return nn.AvgPool2d(kernel, stride, pads, ceil_mode=ceil, count_include_pad=bool(at["count_include_pad"]))
        return nn.MaxPool2d(kernel, stride, pads, dilation, return_indices=indices, ceil_mode=ceil)
    except (TypeError, ValueError) as e:
        raise OnnxError(f"{r.where(node)}: {one_line(e)}") from None


def _import_gemm(r: Reader, node) -> nn.Module:
    at = r.attrs(node, dict(alpha=1.0, beta=1.0, transA=0, transB=0))
    if at["transA"]:
        raise r.refuse(node, "transA", at["transA"], "the data input must be (N, features)")
    w = to_float(r, node, r.const(node, 1, "B (weight)"), "the weight")
    if w.ndim != 2:
        raise OnnxError(f"{r.where(node)}: weight of shape {w.shape}; expected 2-D")
    w = (w if at["transB"] else w.T) * w.dtype.type(at["alpha"])  # Linear's (out, in)
    c = r.optional_const(node, 2, "C (bias)")
    if c is not None:
        if c.size not in (1, w.shape[0]) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            raise OnnxError(f"{r.where(node)}: bias C of shape {c.shape}; expected ({w.shape[0]},)")
        c = np.broadcast_to(c.reshape(-1), (w.shape[0],)) * w.dtype.type(at["beta"])
    return load_weights(nn.Linear(w.shape[1], w.shape[0], bias=c is not None, dtype=w.dtype), weight=w, bias=c)


def _import_batchnorm(r: Reader, node) -> nn.Module:
    at = r.attrs(node, dict(epsilon=1e-5, momentum=0.9, training_mode=0, spatial=1))
    if at["training_mode"]:
        raise r.refuse(node, "training_mode", at["training_mode"], "inference BatchNormalization only")
    if at["spatial"] != 1:
        raise r.refuse(node, "spatial", at["spatial"])
    if any(o for o in node.output[1:]):
        raise OnnxError(f"{r.where(node)}: the running-statistics outputs are not supported")
    scale, bias, mean, var = (to_float(r, node, r.const(node, i, what), what)
                              for i, what in enumerate(("scale", "B", "mean", "var"), 1))
    c = scale.shape[0] if scale.ndim == 1 else -1
    if any(a.shape != (c,) for a in (scale, bias, mean, var)):
        raise OnnxError(f"{r.where(node)}: scale, B, mean and var must be 1-D of one length, got "
                        f"{[a.shape for a in (scale, bias, mean, var)]}")
    rank = len(r.shapes.get(node.input[0]) or [None] * 4)
    cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    m = cls(c, eps=float(at["epsilon"]), momentum=1.0 - float(at["momentum"]), dtype=scale.dtype)
    m.running_mean[...], m.running_var[...] = mean, var
    return load_weights(m, weight=scale, bias=bias)


def _import_flatten(r: Reader, node) -> nn.Module:
    at = r.attrs(node, dict(axis=1))
    rank = len(r.shapes.get(node.input[0]) or [])
    if at["axis"] != 1 and not (rank and at["axis"] == 1 - rank):
        raise r.refuse(node, "axis", at["axis"], "only axis=1, flattening all but the batch dimension")
    return nn.Flatten()


def _import_reshape(r: Reader, node) -> nn.Module:
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


def _import_dropout(r: Reader, node) -> nn.Module | None:
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
    def make(r: Reader, node) -> nn.Module:
        at = r.attrs(node, defaults)
        return cls(**{"negative_slope": float(at["alpha"])} if "alpha" in at else {})
    return make


def _import_global_pool(r: Reader, node) -> nn.Module:
    r.attrs(node, {})
    return nn.AdaptiveAvgPool2d(1)


def _import_global_max_pool(r: Reader, node) -> nn.Module:
    r.attrs(node, {})
    return nn.AdaptiveMaxPool2d(1)


def _import_softmax(r: Reader, node) -> nn.Module:
    """Softmax / LogSoftmax along one axis (opset ≥ 13; before, along all axes from `axis` on)."""
    at = r.attrs(node, dict(axis=-1))
    rank = len(r.shapes.get(node.input[0]) or [])
    if r.opset < 13 and not (rank and int(at["axis"]) % rank == rank - 1):
        raise r.refuse(node, "axis", at["axis"], "before opset 13 it flattens the axes from axis on")
    return (nn.LogSoftmax if node.op_type == "LogSoftmax" else nn.Softmax)(dim=int(at["axis"]))


def _import_reduce_mean(r: Reader, node) -> nn.Module:
    """The mean over H and W, keeping them (torch.onnx.export's AdaptiveAvgPool2d(1)): global pooling."""
    at = r.attrs(node, dict(axes=None, keepdims=1, noop_with_empty_axes=0))
    axes = at["axes"] if at["axes"] is not None else r.optional_const(node, 1, "axes")
    rank = len(r.shapes.get(node.input[0]) or [None] * 4)
    axes = sorted(int(a) % rank for a in np.asarray(axes if axes is not None else []).reshape(-1))
    if rank != 4 or axes != [2, 3] or not at["keepdims"]:
        raise OnnxError(f"{r.where(node)}: only the mean over H and W with keepdims=1 (global average pooling) "
                        f"is supported, got axes {axes} of a {rank}-D input, keepdims={at['keepdims']}")
    return nn.AdaptiveAvgPool2d(1)


def import_normalize(r: Reader, node, data: str) -> nn.Normalize:
    """Mul, Sub, Add or Div of the data by a constant of one value or one per channel (shape (1, C, 1, 1),
    (C, 1, 1), …): an nn.Normalize doing just that step — Mul c as scale c, Sub c as mean c, Add c as
    mean −c (the same IEEE results), Div c as std c (a multiplication by 1/c: the same up to rounding)."""
    r.attrs(node, {})
    k = list(node.input).index(data)
    if k != 0 and node.op_type in ("Sub", "Div"):
        raise OnnxError(f"{r.where(node)}: only data {'−' if node.op_type == 'Sub' else '÷'} constant is supported")
    c = to_float(r, node, r.const(node, 1 - k, "the constant"), "the constant")
    rank = len(r.shapes.get(data) or [])
    if c.size > 1:
        dims = [i for i, n in enumerate(c.shape) if n != 1]
        if not rank or c.ndim > rank or len(dims) != 1 or rank - c.ndim + dims[0] != 1:
            raise OnnxError(f"{r.where(node)}: a constant of shape {list(c.shape)}; expected one value or one per "
                            "channel (shape (1, C, 1, 1))")
    values = dict(Mul={"scale": c}, Div={"std": c}, Sub={"mean": c}, Add={"mean": -c})[node.op_type]
    args = {"mean": 0.0, "std": 1.0, "scale": 1.0, **{key: v.reshape(-1) for key, v in values.items()}}
    try:
        return nn.Normalize(**args, dtype=c.dtype)
    except ValueError as e:
        raise OnnxError(f"{r.where(node)}: {one_line(e)}") from None


def _std_of_reciprocal(c: np.ndarray) -> np.ndarray | None:
    """s with 1/s, rounded to c's dtype, equal to c entry by entry (so that Normalize's ·(1/std) is a Mul
    by c exactly), or None where no such s is found next to 1/c."""
    one = c.dtype.type(1)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        s = (1.0 / c.astype(np.float64)).astype(c.dtype)
        for _ in range(4):
            got = one / s
            if (got == c).all():
                return s if np.isfinite(s).all() and (s != 0).all() else None
            s = np.where(got == c, s, np.nextafter(s, np.where(got > c, np.inf, -np.inf).astype(c.dtype)))
    return None


def fuse_normalize(first: nn.Normalize, then: nn.Normalize) -> nn.Normalize | None:
    """first then `then` (one step: a Mul, Sub/Add or Div) as one Normalize where that is the same
    arithmetic, (x·scale − mean)·(1/std) in that order (x·1, x − 0 and x·1 are exact): a Sub after a Mul,
    a Mul after a Mul or Sub as the 1/std step (convprop's export), a Div after a Mul or Sub.  Else None."""
    order = ("scale", "mean", "std")
    a, b = ({k: bool((getattr(m, k) == v).all()) for k, v in zip(order, (1, 0, 1))} for m in (first, then))
    steps = [k for k in order if not b[k]]
    if len(steps) != 1:
        return None
    mean, std, scale = first.mean, first.std, first.scale
    if steps[0] == "scale":  # x·c after the first: Normalize's ·(1/std) step, if some std gives exactly c
        std = _std_of_reciprocal(then.scale) if a["std"] else None
    elif steps[0] == "mean" and a["mean"] and a["std"]:
        mean = then.mean
    elif steps[0] == "std" and a["std"]:
        std = then.std
    else:
        return None
    if std is None:
        return None
    try:
        return nn.Normalize(mean, std, scale, dtype=first.mean.dtype)
    except ValueError:  # per-channel lengths that differ
        return None


IMPORTERS: dict[str, Callable] = {
    "Conv": _import_conv, "ConvTranspose": _import_conv, "MaxPool": _import_pool, "AveragePool": _import_pool,
    "GlobalAveragePool": _import_global_pool, "ReduceMean": _import_reduce_mean, "Gemm": _import_gemm,
    "BatchNormalization": _import_batchnorm,
    "Flatten": _import_flatten, "Reshape": _import_reshape, "Dropout": _import_dropout,
    "Relu": _simple(nn.ReLU), "Sigmoid": _simple(nn.Sigmoid), "Tanh": _simple(nn.Tanh),
    "LeakyRelu": _simple(nn.LeakyReLU, alpha=0.01), "GlobalMaxPool": _import_global_max_pool,
    "Softmax": _import_softmax, "LogSoftmax": _import_softmax,
}
# handled in the walk itself: Identity, Constant, Add (a join, a bias after MatMul, or by a constant), MatMul,
# MaxUnpool, Cast (of the input), Mul, Sub, Div (by constants)
WALKED = ["Add", "MatMul", "Identity", "Constant", "MaxUnpool", "Cast", "Mul", "Sub", "Div"]
