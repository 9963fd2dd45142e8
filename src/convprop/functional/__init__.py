"""convprop.functional — stateless forward/backward pairs, the equations of docs/math.md one by one.

Every `op(...)` returns `(out, cache)`; every `op_backward(dout, cache)` returns the
vector-Jacobian product for `dout`, gradients in the order of the forward's inputs.  (The losses
return `(loss, ∂L/∂input)` at once: they end the chain.)

Non-finite values, one policy (docs/math.md, "NaN and infinity"): these kernels compute IEEE
arithmetic exactly as torch.nn.functional does — NaN and ±inf propagate, max pooling lets a NaN
win — and never scan their inputs (a pass per op would cost every step).  Checks happen where
values enter or leave a model: a model's input (`nn.Sequential`, so every convprop command) must be
finite; a non-finite loss stops training; `nn.detect_anomaly()` names the first layer whose
output or gradient is not finite.
"""

from .activations import (
    leaky_relu,
    leaky_relu_backward,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    tanh,
    tanh_backward,
)
from .adaptive import (
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    adaptive_max_pool2d,
    adaptive_max_pool2d_backward,
)
from .conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from .linear import linear, linear_backward
from .losses import (
    cross_entropy,
    cross_entropy_backward,
    log_softmax,
    log_softmax_backward,
    mse_loss,
    softmax,
    softmax_backward,
    softmax_cross_entropy,
)
from .normalization import batch_norm, batch_norm_backward, dropout, dropout_backward, normalize, normalize_backward
from .onedim import (
    avg_pool1d,
    avg_pool1d_backward,
    conv1d,
    conv1d_backward,
    max_pool1d,
    max_pool1d_backward,
    max_unpool1d,
    max_unpool1d_backward,
)
from .pool import (
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
    max_unpool2d,
    max_unpool2d_backward,
)
from .reference import use_reference
from .shape import flatten, flatten_backward

__all__ = [
    "conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
    "max_pool2d", "max_pool2d_backward", "max_unpool2d", "max_unpool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d", "adaptive_max_pool2d_backward",
    "conv1d", "conv1d_backward", "max_pool1d", "max_pool1d_backward", "max_unpool1d",
    "max_unpool1d_backward", "avg_pool1d", "avg_pool1d_backward",
    "linear", "linear_backward",
    "relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward",
    "tanh", "tanh_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward", "cross_entropy", "cross_entropy_backward",
    "softmax_cross_entropy", "mse_loss", "flatten", "flatten_backward",
    "batch_norm", "batch_norm_backward", "dropout", "dropout_backward", "normalize", "normalize_backward",
    "use_reference",
]
