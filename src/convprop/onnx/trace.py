"""Tracing: the model's forward pass on an example input, every Module call writing its layer's
nodes (through nn.call_hook, for this thread only), every traced value carrying its ONNX tensor's name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextvars import ContextVar

import numpy as np

from .. import nn
from .errors import OnnxError
from .indices import indices_only_unpool, unpool
from .rules import EXPORTERS, Builder


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
                and inputs[0].shape == inputs[1].shape and (tracer := _current.get()) is not None \
                and inputs[0].dtype.kind == inputs[1].dtype.kind == "f":
            return _trace(out, tracer.builder.node("Add", names, f"{tracer.label}.add"))  # a join
        return out


def _trace(value: np.ndarray, name: str, pooled: tuple[str, tuple[int, ...], str] | None = None) -> _Traced:
    t = np.asarray(value).view(_Traced)
    t.onnx_name, t.pooled = name, pooled
    return t


_current: ContextVar[_Tracer | None] = ContextVar("convprop_onnx_tracer", default=None)


def trace_model(model: nn.Module, builder: Builder, x: np.ndarray, name: str = "input"):
    """model(x) with every layer's nodes written into builder, x being ONNX tensor `name`; the output
    traced (its onnx_name set) where it is a layer's output or a sum of two.  Only this thread's (and
    task's) calls are traced."""
    tracer = _Tracer(builder, {id(m): n for n, m in model.named_modules()})
    token = _current.set(tracer)
    try:
        with nn.call_hook(tracer):
            return model(_trace(x, name))
    finally:
        _current.reset(token)


_UNPOOLS = ["MaxUnpool2d", "MaxUnpool1d"]  # exported by _Tracer itself


def _exporter(m: nn.Module) -> Callable | None:
    return next((EXPORTERS[c] for c in type(m).__mro__ if c in EXPORTERS), None)


class _Tracer:
    """The call hook while export runs the forward pass: every Module call writes its layer's nodes."""

    def __init__(self, builder: Builder, names: dict[int, str]) -> None:
        self.builder, self.names, self.label = builder, names, ""

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        b, label = self.builder, self.names.get(id(module), "") or type(module).__name__
        if isinstance(module, nn.MaxUnpool2d):  # (x, indices, output_size=None), positional or by keyword
            def plain(a):
                return a.view(np.ndarray) if isinstance(a, _Traced) else a
            out = module.forward(*map(plain, args), **{k: plain(v) for k, v in kwargs.items()})
            x, indices = list(inspect.signature(module.forward).bind(*args, **kwargs).arguments.values())[:2]
            return _trace(out, unpool(b, module, label, x, indices, out))
        emit = _exporter(module)
        if emit is None:  # a container: its forward calls its submodules (and adds branches)
            if not module._modules or type(module).forward is nn.Module.forward:
                raise OnnxError(f"{label} ({type(module).__name__}): no ONNX export for this layer (exported: "
                                f"{', '.join(sorted([*(c.__name__ for c in EXPORTERS), *_UNPOOLS]))}, and modules "
                                "whose forward calls those and adds their outputs)")
            outer, self.label = self.label, label
            try:
                return module.forward(*args, **kwargs)
            finally:
                self.label = outer
        inputs = [a for a in args if isinstance(a, np.ndarray)]
        pooled = next((a.pooled for a in [*inputs, *kwargs.values()] if getattr(a, "pooled", None) is not None), None)
        if pooled is not None:
            raise OnnxError(f"{label} ({type(module).__name__}): its input is the indices of a {pooled[2]}; "
                            + indices_only_unpool(pooled[2]))
        if kwargs or len(inputs) != len(args) or not inputs or \
                any(getattr(a, "onnx_name", None) is None for a in inputs):
            raise OnnxError(f"{label} ({type(module).__name__}): its input is computed by code other than layers "
                            "and sums of their outputs, which cannot be exported")
        names = [a.onnx_name for a in inputs]
        plain = [a.view(np.ndarray) for a in inputs]
        name = emit(b, module, names if isinstance(module, nn.Add) else names[0], plain[0], label)
        if isinstance(name, tuple):  # MaxPool's (Y, Indices)
            out, idx = module.forward(*plain)
            pooled = (names[0], plain[0].shape, type(module).__name__)
            return _trace(out, name[0]), _trace(idx, name[1], pooled=pooled)
        return _trace(module.forward(*plain), name)
