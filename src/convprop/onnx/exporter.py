"""export(): a convprop model as an ONNX file."""

from __future__ import annotations

import numpy as np

from .. import nn
from .._files import atomic_write
from .errors import OnnxError, onnx_module
from .indices import indices_only_unpool
from .rules import Builder
from .trace import trace_model

DEFAULT_OPSET = 17
MIN_OPSET = 13


def export(model: nn.Module, path: str, input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET, *,
           input_name: str = "input", input_dtype: str | None = None, input_doc: str = "",
           metadata: dict[str, str] | None = None) -> str:
    """Write `model` as an ONNX file for inputs of `input_shape` (N, C, H, W) or (N, features).

    The batch dimension N is dynamic (named "batch"); the rest are fixed.  The graph is the model in
    eval mode (Dropout the identity, BatchNorm with running statistics), in the parameters' dtype;
    checked with onnx.checker before it is written.  The graph's input is `input_name`, of the model's
    dtype or, with input_dtype="uint8", of bytes cast to it first (raw pixels: put an nn.Normalize
    first in the model); `input_doc` is its doc_string; `metadata` ({key: string}) becomes the
    model's metadata_props.  Returns path.
    """
    onnx = onnx_module()
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset: expected an int from {MIN_OPSET} to {newest}, got {opset!r}")
    shape = tuple(input_shape)
    if len(shape) < 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shape):
        raise ValueError(f"input_shape: expected (N, C, H, W) or (N, features) of positive ints, got {input_shape!r}")
    if not isinstance(input_name, str) or not input_name or input_name == "output":
        raise ValueError(f"input_name: expected a non-empty name other than 'output', got {input_name!r}")
    dtype = model.dtype
    if input_dtype not in (None, dtype.name, "uint8"):
        raise ValueError(f"input_dtype: expected None, {dtype.name!r} (the model's) or 'uint8', got {input_dtype!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in (metadata or {}).items()):
        raise ValueError("metadata: expected {key: value} of strings")
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    was_training = [m.training for m in model.modules()]
    model.eval()
    b = Builder(onnx, dtype)
    b.used.add(input_name)
    start = input_name
    if input_dtype == "uint8":  # bytes in, the model's floats from here on (exact: every byte is a float)
        start = b.node("Cast", [input_name], f"{input_name}.cast", to=elem)
    try:
        y = trace_model(model, b, np.zeros((1, *shape[1:]), dtype), start)
    finally:
        for m, mode in zip(model.modules(), was_training):
            object.__setattr__(m, "training", mode)
    out = getattr(y, "onnx_name", None)
    pooled = next((v.pooled for v in (y if isinstance(y, tuple) else (y,)) if getattr(v, "pooled", None)), None)
    if pooled is not None:
        raise OnnxError(f"model ({type(model).__name__}): it returns the indices of a {pooled[2]}; "
                        + indices_only_unpool(pooled[2]))
    if out is None:
        raise OnnxError(f"model ({type(model).__name__}): its output is computed by code other than layers and sums "
                        "of their outputs, which cannot be exported")
    ya = y.view(np.ndarray)
    if out == input_name:
        out = b.node("Identity", [input_name], "identity")
    for node in b.nodes:  # the last tensor is the graph's "output"
        node.input[:] = ["output" if n == out else n for n in node.input]
        node.output[:] = ["output" if n == out else n for n in node.output]
    in_elem = onnx.TensorProto.UINT8 if input_dtype == "uint8" else elem
    graph = onnx.helper.make_graph(
        b.nodes, "convprop", [onnx.helper.make_tensor_value_info(input_name, in_elem, ["batch", *shape[1:]],
                                                                 doc_string=input_doc)],
        [onnx.helper.make_tensor_value_info("output", elem, ["batch", *ya.shape[1:]])], b.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]  # the oldest IR version with it, so older runtimes accept the file
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="convprop",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets, True))
    if metadata:
        onnx.helper.set_model_props(proto, dict(metadata))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:  # (a graph we built wrong)
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise OnnxError(f"{path}: not written: the graph convprop built for {type(model).__name__} at opset {opset} "
                        f"fails onnx.checker ({first[:300]}); please report it with the model") from None
    atomic_write(path, proto.SerializeToString())  # (a reader sees the old file or the new, never half)
    return path


def metadata(path: str) -> dict[str, str]:
    """An ONNX file's metadata_props as {key: value} (convprop's exports: see convprop.deploy), read
    without its weights' checks; OnnxError (one line) for a file that is not an ONNX model."""
    from .loader import read_proto

    return {p.key: p.value for p in read_proto(path).metadata_props}
