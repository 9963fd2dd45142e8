"""Layers with torch's names, constructor arguments, parameter layouts and default initialisation.

Each layer owns its Parameters, calls one functional forward, keeps the cache, and in backward
calls the matching functional backward and accumulates the parameter gradients.  No maths here.
"""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from .. import random as _random
from ..functional import _checks as chk
from .module import Module, Parameter, _Grad

__all__ = ["Conv1d", "Conv2d", "ConvTranspose2d", "MaxPool1d", "MaxPool2d", "MaxUnpool2d", "AvgPool1d", "AvgPool2d",
           "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Linear",
           "Flatten", "Softmax", "LogSoftmax", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Dropout", "BatchNorm1d",
           "BatchNorm2d", "Normalize"]


def _dtype(dtype) -> np.dtype:
    """A parameter dtype: float32 unless a floating dtype is named (None means the default, as torch)."""
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype: expected a floating dtype (float32 or float64), got {dtype}")
    return dtype


def _uniform(shape: tuple[int, ...], bound: float, dtype) -> Parameter:
    return Parameter(_random.generator().uniform(-bound, bound, size=shape).astype(_dtype(dtype)))


class _Layer(Module):
    """A module around one functional op: checks the input, keeps the cache, and by default runs
    the op's backward `_backward_fn(dout, cache)` (layers without parameters)."""

    _backward_fn = None

    @property
    def _cache(self):
        """What forward kept for backward: the functional cache (None under no_grad())."""
        return self.__dict__.get("_saved")

    @_cache.setter
    def _cache(self, value) -> None:
        self.__dict__["_saved"] = value if _Grad.enabled else None

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        cache = self._take_cache()
        return type(self)._backward_fn(dout, cache) if input_grad else None

    def _input(self, x, size: int | None = None, axis: int = 1, ndim: int | None = None) -> np.ndarray:
        """x in the parameters' dtype, with `ndim` dimensions and `size` entries along `axis`."""
        if ndim is not None:
            chk.float_array(x, "x", ndim, "N, C, H, W" if ndim == 4 else "N, C, H, W or C, H, W")
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.dtype != self.dtype and self._parameters:
            raise TypeError(f"x: expected dtype {self.dtype} (this {type(self).__name__}'s parameters; cast x or "
                            f"call model.to({x.dtype.name})), got {x.dtype}")
        if size is not None and isinstance(x, np.ndarray) and x.ndim > max(axis, -axis - 1) \
                and x.shape[axis] != size:
            what = {-1: "features (last dimension)", 1: "channels (dimension 1)"}.get(axis, "channels")
            what = "channels (dimension 1, or 0 unbatched)" if axis == -3 else what
            raise ValueError(f"x: expected {size} {what} for {self!r}, got shape {x.shape}")
        return x

    def _data(self, name: str) -> np.ndarray | None:
        """The array of parameter `name`, or None where the layer was built without it."""
        p = self._parameters.get(name)
        return None if p is None else p.data

    def _take_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call forward first (no cached forward pass; "
                               "a forward under no_grad() keeps none)")
        cache, self._cache = self._cache, None
        return cache

    def _accumulate(self, **grads) -> None:
        for name, g in grads.items():
            p = self._parameters.get(name)
            if p is not None and g is not None:
                p.accumulate(g)


class _Affine(_Layer):
    """A layer with weight and bias whose functional backward returns (∂x, ∂weight, ∂bias)."""

    def _init_parameters(self, weight_shape: tuple[int, ...], out: int, fan_in: int, bias: bool, dtype) -> None:
        # torch: kaiming_uniform_(a=√5) = U(−1/√fan_in, 1/√fan_in) for the weight; the bias likewise
        bound = 1 / math.sqrt(fan_in)
        self.weight = _uniform(weight_shape, bound, dtype)
        self.register_parameter("bias", _uniform((out,), bound, dtype) if bias else None)

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        dx, dw, db = type(self)._backward_fn(dout, self._take_cache(), input_grad=input_grad)
        self._accumulate(weight=dw, bias=db)
        return dx


class _ConvNd(_Affine):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation, groups: int,
                 bias: bool, dtype, transposed: bool) -> None:
        super().__init__()
        kh, kw = chk.pair(kernel_size, "kernel_size", 1)
        groups = chk.positive_int(groups, "groups")
        for name, c in (("in_channels", in_channels), ("out_channels", out_channels)):
            if chk.positive_int(c, name) % groups:
                raise ValueError(f"{name}: expected a multiple of groups={groups}, got {c}")
        # torch's layouts; its fan_in is weight.size(1)·kh·kw for both
        shape = ((in_channels, out_channels // groups, kh, kw) if transposed
                 else (out_channels, in_channels // groups, kh, kw))
        self._init_parameters(shape, out_channels, shape[1] * kh * kw, bias, dtype)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class Conv2d(_ConvNd):
    """Z = K * A + B.  weight (out, in/groups, kh, kw), bias (out,)."""

    _backward_fn = staticmethod(F.conv2d_backward)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", dtype=None) -> None:
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode: only 'zeros' is implemented, got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, dtype,
                         transposed=False)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.conv2d(self._input(x, self.in_channels, axis=-3, ndim=(3, 4)), self.weight.data,
                                    self._data("bias"),
                                    stride=self.stride, padding=self.padding, dilation=self.dilation,
                                    groups=self.groups)
        return out


class ConvTranspose2d(_ConvNd):
    """Y = K ⋆ᵀ X + B.  weight (in, out/groups, kh, kw), bias (out,)."""

    _backward_fn = staticmethod(F.conv_transpose2d_backward)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", dtype=None) -> None:
        if padding_mode != "zeros":  # torch's transposed convolutions take only 'zeros' too
            raise ValueError(f"padding_mode: only 'zeros' is supported for ConvTranspose2d, got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, dtype,
                         transposed=True)
        self.output_padding = output_padding

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.conv_transpose2d(
            self._input(x, self.in_channels, axis=-3, ndim=(3, 4)), self.weight.data, self._data("bias"),
            stride=self.stride, padding=self.padding, output_padding=self.output_padding, dilation=self.dilation,
            groups=self.groups)
        return out


class Linear(_Affine):
    """Z = A Wᵀ + B.  weight (out, in), bias (out,)."""

    _backward_fn = staticmethod(F.linear_backward)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=None) -> None:
        super().__init__()
        chk.positive_int(in_features, "in_features")
        chk.positive_int(out_features, "out_features")
        self.in_features, self.out_features = in_features, out_features
        self._init_parameters((out_features, in_features), out_features, in_features, bias, dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.linear(self._input(x, self.in_features, -1), self.weight.data, self._data("bias"))
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _window_repr(self) -> str:
    """extra_repr of the pooling and unpooling layers: their window, as torch prints it (the stride a None
    stride stands for; MaxUnpool and the 1-D average pool as tuples, torch's _pair and _single)."""
    n = getattr(self, "_repr_tuple", 0)
    k, s, p = (_tuple(v, n) for v in (self.kernel_size, self.stride, self.padding))
    text = f"kernel_size={k}, stride={s}, padding={p}"
    if isinstance(self, MaxPool2d):
        text += f", dilation={self.dilation}, ceil_mode={self.ceil_mode}"
    return text


def _tuple(v, n: int):
    return v if not n or isinstance(v, tuple) else tuple(v) if isinstance(v, list) else (v,) * n


class MaxPool2d(_Layer):
    """Max pooling; with return_indices=True forward returns (out, indices) as torch."""

    _backward_fn = staticmethod(F.max_pool2d_backward)

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size, self.padding, self.dilation = kernel_size, padding, dilation
        self.stride = kernel_size if stride is None else stride  # as torch: None means the kernel size
        self.return_indices, self.ceil_mode = chk.flag(return_indices, "return_indices"), ceil_mode

    def forward(self, x: np.ndarray):
        out, self._cache = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                        self.return_indices)
        return out  # (out, indices) with return_indices

    extra_repr = _window_repr


class MaxUnpool2d(_Layer):
    """forward(x, indices, output_size=None): the partial inverse of MaxPool2d."""

    _backward_fn = staticmethod(F.max_unpool2d_backward)

    _repr_tuple = 2

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = kernel_size if stride is None else stride  # as torch: None means the kernel size

    def forward(self, x: np.ndarray, indices: np.ndarray, output_size=None) -> np.ndarray:
        out, self._cache = F.max_unpool2d(x, indices, self.kernel_size, stride=self.stride, padding=self.padding,
                                          output_size=output_size)
        return out

    extra_repr = _window_repr


class AvgPool2d(_Layer):
    _backward_fn = staticmethod(F.avg_pool2d_backward)

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        super().__init__()
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = kernel_size if stride is None else stride  # as torch: None means the kernel size
        self.ceil_mode, self.count_include_pad, self.divisor_override = ceil_mode, count_include_pad, divisor_override

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.avg_pool2d(x, self.kernel_size, stride=self.stride, padding=self.padding,
                                        ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad,
                                        divisor_override=self.divisor_override)
        return out

    extra_repr = _window_repr


class AdaptiveAvgPool2d(_Layer):
    """Average pooling to a fixed output size from any input size (torch's window bounds)."""

    _backward_fn = staticmethod(F.adaptive_avg_pool2d_backward)

    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.adaptive_avg_pool2d(x, self.output_size)
        return out

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(AdaptiveAvgPool2d):
    """Max pooling to a fixed output size; with return_indices=True forward returns (out, indices) as torch."""

    _backward_fn = staticmethod(F.adaptive_max_pool2d_backward)

    def __init__(self, output_size, return_indices: bool = False) -> None:
        super().__init__(output_size)
        self.return_indices = chk.flag(return_indices, "return_indices")

    def forward(self, x: np.ndarray):
        out, self._cache = F.adaptive_max_pool2d(x, self.output_size, self.return_indices)
        return out  # (out, indices) with return_indices


class Conv1d(_Affine):
    """Z = K * A + B along a sequence: the 2-D kernel on a height of 1.  weight (out, in/groups, k), bias (out,)."""

    _backward_fn = staticmethod(F.conv1d_backward)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", dtype=None) -> None:
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode: only 'zeros' is implemented, got {padding_mode!r}")
        k = kernel_size[0] if isinstance(kernel_size, (tuple, list)) and len(kernel_size) == 1 else kernel_size
        k = chk.positive_int(k, "kernel_size")
        groups = chk.positive_int(groups, "groups")
        for name, c in (("in_channels", in_channels), ("out_channels", out_channels)):
            if chk.positive_int(c, name) % groups:
                raise ValueError(f"{name}: expected a multiple of groups={groups}, got {c}")
        self._init_parameters((out_channels, in_channels // groups, k), out_channels, in_channels // groups * k, bias,
                              dtype)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (k,)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.conv1d(self._input(x, self.in_channels, axis=-2), self.weight.data, self._data("bias"),
                                    self.stride, self.padding, self.dilation, self.groups)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class MaxPool1d(MaxPool2d):
    """Max pooling along a sequence (N, C, L) or (C, L); return_indices as torch."""

    _backward_fn = staticmethod(F.max_pool1d_backward)

    def forward(self, x: np.ndarray):
        out, self._cache = F.max_pool1d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                        self.return_indices)
        return out  # (out, indices) with return_indices


class MaxUnpool1d(MaxUnpool2d):
    """forward(x, indices, output_size=None): the partial inverse of MaxPool1d, (N, C, L') or (C, L')."""

    _backward_fn = staticmethod(F.max_unpool1d_backward)
    _repr_tuple = 1

    def forward(self, x: np.ndarray, indices: np.ndarray, output_size=None) -> np.ndarray:
        out, self._cache = F.max_unpool1d(x, indices, self.kernel_size, stride=self.stride, padding=self.padding,
                                          output_size=output_size)
        return out


class AvgPool1d(AvgPool2d):
    """Average pooling along a sequence (N, C, L) or (C, L)."""

    _backward_fn = staticmethod(F.avg_pool1d_backward)
    _repr_tuple = 1

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.avg_pool1d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                        self.count_include_pad)
        return out


class Flatten(_Layer):
    """(N, C, H, W) -> (N, C·H·W) by default: dimensions start_dim … end_dim merged, as torch."""

    _backward_fn = staticmethod(F.flatten_backward)

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.flatten(x, self.start_dim, self.end_dim)
        return out


class Softmax(_Layer):
    _backward_fn = staticmethod(F.softmax_backward)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.softmax(x, self.dim)
        return out

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    _backward_fn = staticmethod(F.log_softmax_backward)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.log_softmax(x, self.dim)
        return out


class _Activation(_Layer):
    """An element-wise activation: F.<op> forward, F.<op>_backward backward."""

    op = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._backward_fn = staticmethod(getattr(F, cls.op + "_backward"))

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = getattr(F, self.op)(x, **self._kwargs())
        return out

    def _kwargs(self) -> dict:
        return {}


class ReLU(_Activation):
    op = "relu"

    def __init__(self, inplace: bool = False) -> None:  # inplace: accepted for torch code; never in place
        super().__init__()


class Sigmoid(_Activation):
    op = "sigmoid"


class Tanh(_Activation):
    op = "tanh"


class LeakyReLU(_Activation):
    op = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def _kwargs(self) -> dict:
        return {"negative_slope": self.negative_slope}


class Dropout(_Layer):
    """Inverted dropout in train mode, the identity in eval mode."""

    _backward_fn = staticmethod(F.dropout_backward)

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a dropout probability in [0, 1], got {p!r}")
        self.p = float(p)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out, self._cache = F.dropout(x, self.p, self.training)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _BatchNorm(_Layer):
    ndims: tuple[int, ...] = ()
    allreduce = None  # SyncBatchNorm when set: see F.batch_norm and convprop.distributed.sync_batch_norm

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype=None, bias: bool = True) -> None:
        super().__init__()
        dtype = _dtype(dtype)
        self.num_features = chk.positive_int(num_features, "num_features")
        self.eps, self.momentum = eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.register_parameter("weight", Parameter(np.ones(num_features, dtype)) if affine else None)
        # bias=False (torch 2.13): γ without β
        self.register_parameter("bias", Parameter(np.zeros(num_features, dtype)) if affine and bias else None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)

    def forward(self, x: np.ndarray) -> np.ndarray:
        chk.float_array(self._input(x), "x", self.ndims)
        if x.shape[1] != self.num_features:
            raise ValueError(f"x: expected {self.num_features} channels (dimension 1), got shape {x.shape}")
        batch_stats = self.training or self.running_mean is None
        momentum = self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked += 1
            if momentum is None:  # cumulative moving average, as torch
                momentum = 1.0 / float(self.num_batches_tracked)
        out, self._cache = F.batch_norm(
            x, self.running_mean, self.running_var,
            self._data("weight"), self._data("bias"),
            batch_stats, momentum, self.eps, self.allreduce)
        return out

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        dx, dgamma, dbeta = F.batch_norm_backward(dout, self._take_cache())
        self._accumulate(weight=dgamma, bias=dbeta)
        return dx if input_grad else None

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Normalises (N, C) or (N, C, L) per channel."""

    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Normalises (N, C, H, W) per channel."""

    ndims = (4,)


class Normalize(_Layer):
    """y = (x·scale − mean) / std per channel: a fixed input normalisation inside the model (no parameters).

    Normalize(MNIST_MEAN, MNIST_STD, scale=1/255) takes raw pixels 0–255 where the rest of the model
    was trained on normalised ones — exactly convprop.data.normalize's arithmetic, (x·scale − mean)
    times 1/std rounded to x's dtype.  mean, std and scale: a number or one per channel (dimension 1);
    mean and std are buffers (state_dict keys "mean", "std"), scale an attribute.  Exported to ONNX as
    Mul, Sub, Mul by (scale, mean, 1/std), and read back from them."""

    _backward_fn = staticmethod(F.normalize_backward)

    def __init__(self, mean, std, scale=1.0, dtype=None) -> None:
        super().__init__()
        dtype = _dtype(dtype)
        values = {}
        for name, v in (("mean", mean), ("std", std), ("scale", scale)):
            a = np.asarray(v, np.float64).reshape(-1)
            if a.size == 0 or not np.isfinite(a).all() or (name != "mean" and (a == 0).any()):
                raise ValueError(f"{name}: expected finite numbers{'' if name == 'mean' else ', none zero'} "
                                 f"(one, or one per channel), got {v!r}")
            values[name] = a.astype(dtype)
        sizes = {a.size for a in values.values()} - {1}
        if len(sizes) > 1:
            raise ValueError(f"mean, std, scale: expected one value or one per channel each, got lengths "
                             f"{[values[k].size for k in ('mean', 'std', 'scale')]}")
        self.register_buffer("mean", values["mean"])
        self.register_buffer("std", values["std"])
        self.scale = values["scale"]
        self.num_channels = sizes.pop() if sizes else None  # None: the same for any number of channels

    def forward(self, x: np.ndarray) -> np.ndarray:
        chk.float_array(x, "x", (2, 3, 4), "N, C, … with channels at dimension 1")
        if self.num_channels is not None and x.shape[1] != self.num_channels:
            raise ValueError(f"x: expected {self.num_channels} channels (dimension 1) for {self!r}, got shape "
                             f"{x.shape}")
        dt = x.dtype
        out, self._cache = F.normalize(x, self.mean.astype(dt, copy=False), self.std.astype(dt, copy=False),
                                       self.scale.astype(dt, copy=False))
        return out

    def extra_repr(self) -> str:
        def short(a: np.ndarray) -> str:
            text = ", ".join(f"{float(v):.6g}" for v in a)
            return text if a.size == 1 else f"[{text}]"
        return f"mean={short(self.mean)}, std={short(self.std)}, scale={short(self.scale)}"
