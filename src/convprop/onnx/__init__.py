"""ONNX export and import of convprop models, built on the `onnx` package (the onnx extra).

    convprop.onnx.export(model, "lenet5.onnx", input_shape=(1, 1, 28, 28))   # batch dimension dynamic
    model = convprop.onnx.load("lenet5.onnx")                                # an nn model, with its weights

A deployable export takes raw pixels and normalises them itself: an nn.Normalize first in the model
(convprop.deploy.with_normalization), `input_dtype="uint8"` for bytes in, and `metadata` (the
keys of convprop.deploy) for what the file wants; import reads such a graph back (Cast, then Mul, Sub,
Div, Add by constants) into a model whose first layer is that nn.Normalize.

Export writes each layer as the ONNX operator torch.onnx.export writes for it (Conv, ConvTranspose,
MaxPool, AveragePool, GlobalAveragePool, Gemm, Flatten, Relu, LeakyRelu, Sigmoid, Tanh,
BatchNormalization, Add for a residual join; MaxPool's Indices into MaxUnpool for MaxPool2d /
AdaptiveMaxPool2d / MaxPool1d(return_indices=True) and MaxUnpool2d / MaxUnpool1d), in eval mode:
Dropout is the identity, BatchNorm uses its running statistics.  Import reads graphs of those
operators (also MatMul + Add, Reshape to (N, −1), Identity, Dropout and Constant; the Slice, Sub,
Add and Shape torch.onnx.export writes around MaxPool's Indices) into an nn.Sequential, or into an
`nn.Graph` where the graph forks and joins, ready to evaluate, fine-tune with convprop's backward and
export again.

Files are untrusted: import parses the protobuf only (no custom operator domains), reads external data
only from regular files of the model's own directory (links resolved first), checks every tensor's
declared shape against the bytes it carries and the bytes of all tensors together against a limit
before converting it, checks every attribute's type before using it, and fails with one `OnnxError`
line naming the node, operator and attribute.

Layout: errors (OnnxError, the onnx extra), rules (each layer's export as ONNX nodes), trace (the
forward pass that calls the rules, through nn.call_hook), exporter (export), tensors (TensorProtos as
arrays, external data, size limits), reader (each operator's import as a layer), indices (MaxPool's
Indices into MaxUnpool, both ways), loader (load: the walk over the nodes, Sequential or nn.Graph).
"""

from .errors import OnnxError
from .exporter import DEFAULT_OPSET, MIN_OPSET, export, metadata
from .loader import load
from .tensors import MAX_FILE_BYTES, MAX_NODES, MAX_TENSOR_BYTES, MAX_TENSOR_ELEMENTS

__all__ = ["export", "load", "metadata", "OnnxError", "DEFAULT_OPSET", "MIN_OPSET", "MAX_FILE_BYTES",
           "MAX_TENSOR_ELEMENTS", "MAX_TENSOR_BYTES", "MAX_NODES"]
