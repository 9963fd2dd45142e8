"""Parameter, Module and Sequential: state, bookkeeping and the reverse walk of backprop.

A Module's forward(x) keeps what its backward needs (the functional cache); backward(dout)
returns ∂x and *accumulates* into every Parameter's .grad, as torch's autograd does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np


class Parameter:
    """A trainable array: `.data` (updated by optimizers) and `.grad` (None until a backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: np.ndarray):
        self.data = data
        self.grad: np.ndarray | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradient (torch's default), or keep the array and fill it with zeros."""
        if set_to_none or self.grad is None:
            self.grad = None
        else:
            self.grad.fill(0)

    def accumulate(self, g: np.ndarray) -> None:
        if self.grad is None:
            self.grad = g.copy() if np.shares_memory(g, self.data) else np.ascontiguousarray(g)
        else:
            self.grad += g

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: holds Parameters, buffers and child Modules, found by attribute assignment."""

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, Parameter) or (name in self._parameters and value is None):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def register_parameter(self, name: str, value: Parameter | None) -> None:
        """Add a parameter; None keeps the name (as torch's `bias=None`), out of parameters() and state."""
        self._parameters[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray | None) -> None:
        self._buffers[name] = value
        object.__setattr__(self, name, value)

    # ----------------------------------------------------------------- forward / backward
    def __call__(self, *args, **kwargs):
        hook = _call_hook.get()
        if hook is None:
            return self.forward(*args, **kwargs)
        return hook(self, args, kwargs)

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """∂L/∂x for dout = ∂L/∂out; adds this module's parameter gradients into their .grad.

        input_grad=False skips ∂x (returns None) where nothing needs it, e.g. for a first layer.
        """
        raise NotImplementedError(f"{type(self).__name__}.backward")

    # ----------------------------------------------------------------- traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        return (m for _, m in self.named_modules())

    def children(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for prefix, m in self.named_modules():
            for name, p in m._parameters.items():
                if p is not None:
                    yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self) -> Iterator[Parameter]:
        return (p for _, p in self.named_parameters())

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for prefix, m in self.named_modules():
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{prefix}.{name}" if prefix else name), b

    # ----------------------------------------------------------------- modes, grads, dtype
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            p.zero_grad(set_to_none)

    def to(self, dtype) -> Module:
        """Cast every floating parameter and buffer to dtype (integer buffers stay); returns self."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"dtype: expected a floating dtype (float32 or float64), got {dtype}")
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.data = p.data.astype(dtype)
                    p.grad = None if p.grad is None else p.grad.astype(dtype)
            for name, b in list(m._buffers.items()):
                if b is not None and b.dtype.kind == "f":
                    m.register_buffer(name, b.astype(dtype))
        return self

    @property
    def dtype(self) -> np.dtype:
        for p in self.parameters():
            return p.data.dtype
        return np.dtype(np.float32)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Parameters and buffers by torch's dotted names, in torch's order, with torch's layouts."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for prefix, m in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, p in m._parameters.items():
                if p is not None:
                    out[dot + name] = p.data
            for name, b in m._buffers.items():
                if b is not None:
                    out[dot + name] = b
        return out

    def load_state_dict(self, state_dict, strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays in by name (cast to each target's dtype).  Returns (missing, unexpected) keys;
        with strict=True either one, or any shape mismatch, raises a ValueError naming the key."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        other = [(k, own[k].shape, np.shape(state_dict[k])) for k in own if k in state_dict
                 and np.shape(state_dict[k]) != own[k].shape]
        if len(other) == 1 and not (strict and (missing or unexpected)):
            key, want, got = other[0]
            raise ValueError(f"state_dict[{key!r}]: expected shape {want}, got {got}")
        if other or (strict and (missing or unexpected)):
            raise ValueError(f"state_dict: does not fit this {type(self).__name__}: "
                             + _key_summary(missing if strict else [], unexpected if strict else [], other))
        for key, target in own.items():
            if key not in state_dict:
                continue
            value = np.asarray(state_dict[key])
            if not np.issubdtype(value.dtype, np.number):
                raise TypeError(f"state_dict[{key!r}]: expected a numeric array, got dtype {value.dtype}")
            target[...] = value
        return missing, unexpected

    # ----------------------------------------------------------------- printing
    def summary(self, input_shape: tuple[int, ...]) -> str:
        """torchinfo's table for a forward pass on zeros of input_shape (N, C, H, W): every layer (nested
        containers indented), its output shape, parameters and multiply-adds; totals and sizes in MB."""
        return str(self.summarize(input_shape))

    def summarize(self, input_shape: tuple[int, ...], dtype=None):
        """summary()'s numbers, a convprop.nn.summary.Summary (rows, totals, sizes): one forward pass on
        zeros of input_shape in the model's dtype (or dtype), in eval mode under no_grad, every Module call
        recorded through call_hook; train/eval modes are restored, BatchNorm's statistics untouched.
        ValueError (one line) for a shape the model does not take."""
        from .summary import Recorder, checked_shape, tally

        x = np.zeros(checked_shape(input_shape), self.dtype if dtype is None else dtype)
        recorder = Recorder({id(m): n for n, m in self.named_modules()})
        modes = [m.training for m in self.modules()]
        self.eval()
        try:
            with no_grad(), call_hook(recorder):
                self(x)
        except (ValueError, TypeError) as e:
            raise ValueError(f"input_shape {list(x.shape)}: the {type(self).__name__} does not take it ({e})") from None
        finally:
            for m, mode in zip(self.modules(), modes):
                object.__setattr__(m, "training", mode)
        return tally(self, recorder.rows, x)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


CallHook = Callable[[Module, tuple, dict], object]
_call_hook: ContextVar[CallHook | None] = ContextVar("convprop_call_hook", default=None)


@contextmanager
def call_hook(hook: CallHook) -> Iterator[None]:
    """Inside, every Module call `m(*args, **kwargs)` returns `hook(m, args, kwargs)` instead of
    `m.forward(*args, **kwargs)` (the hook calls forward itself, or not); calls its forward makes
    come back to the hook.  Per thread and asyncio task (a context variable), as torch's global
    forward hooks but scoped: other threads' calls are untouched, and it is undone on exit."""
    token = _call_hook.set(hook)
    try:
        yield
    finally:
        _call_hook.reset(token)


class Sequential(Module):
    """Layers applied in order; backward walks them in reverse — the chain rule of docs/math.md, layer by layer.

    Sequential(a, b, c) names them "0", "1", "2"; Sequential(OrderedDict(conv1=a, …)) by its keys,
    as torch (state_dict keys "conv1.weight", …)."""

    def __init__(self, *layers: Module):
        super().__init__()
        named = (list(layers[0].items()) if len(layers) == 1 and isinstance(layers[0], OrderedDict)
                 else [(str(i), layer) for i, layer in enumerate(layers)])
        for name, layer in named:
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{name!r}]: expected a Module, got {type(layer).__name__}")
            setattr(self, name, layer)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_input(x)
        for k, layer in enumerate(self):
            x = layer(x)
            if _anomaly.enabled:
                _anomaly.check(x, f"output of layer {k} ({type(layer).__name__})")
        return x

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """∂Z^{l} from ∂Z^{l+1}, last layer first; ∂x of the input only if input_grad."""
        layers = list(self)
        # without input_grad, layers before the first one with parameters need no backward at all
        first = next((k for k, m in enumerate(layers) if any(True for _ in m.parameters())), len(layers))
        for k in range(len(layers) - 1, -1, -1):
            if not input_grad and k < first:
                return None
            dout = layers[k].backward(dout, input_grad=input_grad or k > first)
            if _anomaly.enabled:
                for name, p in layers[k].named_parameters():
                    _anomaly.check(p.grad, f"gradient of {name} in layer {k} ({type(layers[k]).__name__})")
                if dout is not None:
                    _anomaly.check(dout, f"input gradient of layer {k} ({type(layers[k]).__name__})")
        return dout


def check_input(x) -> None:
    """A model input must be a floating array of finite values."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x: expected a NumPy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"x: expected a floating dtype (float32 or float64), got {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"x: expected finite values, got {int(np.isnan(x).sum())} NaN and "
                         f"{int(np.isinf(x).sum())} infinite")


class AnomalyError(FloatingPointError):
    """A layer produced a NaN or infinite output or gradient (with anomaly detection on)."""


class _Anomaly:
    """`detect_anomaly(True)`: check every layer's output and gradients; name the first non-finite."""

    enabled = False

    @staticmethod
    def check(a: np.ndarray, what: str) -> None:
        if a is not None and not np.isfinite(a).all():
            raise AnomalyError(f"{what} is not finite: {int(np.isnan(a).sum())} NaN, "
                               f"{int(np.isinf(a).sum())} infinite values")


_anomaly = _Anomaly()


def detect_anomaly(enabled: bool = True) -> None:
    """Turn on (or off) the finite-value check after every layer's forward and backward."""
    _Anomaly.enabled = bool(enabled)


def is_anomaly_enabled() -> bool:
    """Whether detect_anomaly is on (as torch.is_anomaly_enabled)."""
    return _Anomaly.enabled


class _Grad:
    enabled = True


@contextmanager
def no_grad() -> Iterator[None]:
    """Forwards inside keep no caches for a backward (as torch.no_grad): evaluation and prediction
    hold one layer's temporaries at a time instead of every layer's."""
    before, _Grad.enabled = _Grad.enabled, False
    try:
        yield
    finally:
        _Grad.enabled = before


def is_grad_enabled() -> bool:
    """False inside no_grad() (as torch.is_grad_enabled)."""
    return _Grad.enabled


def _key_summary(missing: list[str], unexpected: list[str], other: list[tuple], first: int = 3) -> str:
    """How many keys are missing, unexpected and of another shape, with the first few of each: one short line
    however large the models."""
    def some(items: list[str]) -> str:
        return ", ".join(items[:first]) + (", …" if len(items) > first else "")

    parts = [f"{len(missing)} missing ({some(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({some(unexpected)})" if unexpected else "",
             f"{len(other)} of another shape ({some([f'{k} {got} for {want}' for k, want, got in other])})"
             if other else ""]
    return "; ".join(p for p in parts if p)

