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


def export(model: nn.Module, path: str, input_shape: tuple[int, ...], opset: int = DEFAULT_OPSET) -> str:
    """Write `model` as an ONNX file for inputs of `input_shape` (N, C, H, W) or (N, features).

    The batch dimension N is dynamic (named "batch"); the rest are fixed.  The graph is the model in
    eval mode (Dropout the identity, BatchNorm with running statistics), in the parameters' dtype;
    checked with onnx.checker before it is written.  Returns path.
    """
    onnx = onnx_module()
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
    b = Builder(onnx, dtype)
    try:
        y = trace_model(model, b, np.zeros((1, *shape[1:]), dtype))
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
    if out == "input":
        out = b.node("Identity", ["input"], "identity")
    for node in b.nodes:  # the last tensor is the graph's "output"
        node.input[:] = ["output" if n == out else n for n in node.input]
        node.output[:] = ["output" if n == out else n for n in node.output]
    graph = onnx.helper.make_graph(
        b.nodes, "convprop", [onnx.helper.make_tensor_value_info("input", elem, ["batch", *shape[1:]])],
        [onnx.helper.make_tensor_value_info("output", elem, ["batch", *ya.shape[1:]])], b.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]  # the oldest IR version with it, so older runtimes accept the file
    proto = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="convprop",
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets, True))
    onnx.checker.check_model(proto, full_check=True)
    atomic_write(path, proto.SerializeToString())  # (a reader sees the old file or the new, never half)
    return path

