"""Module.summary and Module.summarize: a model's summary, as torchinfo and Keras print one: every layer
called in a forward pass (nested containers indented), its output shape, parameters and multiply-adds;
totals and sizes at the bottom.

Shapes are not derived: the model runs once, in eval mode under no_grad, on a zero batch of the given
shape, and nn.call_hook records every Module call (so a residual block's branches appear as called).
Multiply-adds are counted as torchinfo counts them: a convolution's parameters (weight and bias) once
per output position, N·H_out·W_out; any other layer's parameters once per sample, N.  Sizes in MB are
10⁶ bytes, as torchinfo's: the input; the outputs of the layers with parameters, twice (forward values
and their gradients); the parameters.  (This module imports nothing of nn: Module imports it.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LayerRow", "Summary", "Recorder", "checked_shape", "tally"]


@dataclass
class LayerRow:
    """One Module call: its depth (0: the model), name (its state_dict prefix), type, output shape(s),
    own parameters, multiply-adds and whether it has children."""

    depth: int
    name: str
    kind: str
    output_shape: list = field(default_factory=list)
    params: int = 0
    mult_adds: int = 0
    container: bool = False
    output_bytes: int = 0


@dataclass
class Summary:
    rows: list[LayerRow]
    input_shape: tuple[int, ...]
    total_params: int
    trainable_params: int
    mult_adds: int
    input_bytes: int
    activation_bytes: int
    param_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.activation_bytes + self.param_bytes

    def __str__(self) -> str:
        labels = [_label(r) for r in self.rows]
        width = max(40, *(len(s) + 2 for s in labels))
        shapes = [_shape_text(r.output_shape) for r in self.rows]
        cols = (("Output shape", max(22, *(len(t) + 2 for t in shapes))), ("Param #", 14), ("Mult-adds", 16))
        line = "=" * (width + sum(w for _, w in cols))
        out = [line, "Layer (type)".ljust(width) + "".join(t.rjust(w) if t != "Output shape" else t.ljust(w)
                                                            for t, w in cols), line]
        for r, label, shape in zip(self.rows, labels, shapes):
            params = f"{r.params:,}" if r.params else "--"
            macs = f"{r.mult_adds:,}" if r.mult_adds else "--"
            out.append(label.ljust(width) + shape.ljust(cols[0][1]) + params.rjust(cols[1][1]) + macs.rjust(cols[2][1]))
        mb = 1e6
        out += [line, f"Total params: {self.total_params:,}", f"Trainable params: {self.trainable_params:,}",
                f"Non-trainable params: {self.total_params - self.trainable_params:,}",
                f"Total mult-adds (M): {self.mult_adds / 1e6:.2f}", line,
                f"Input size (MB): {self.input_bytes / mb:.2f}",
                f"Forward/backward pass size (MB): {self.activation_bytes / mb:.2f}",
                f"Params size (MB): {self.param_bytes / mb:.2f}",
                f"Estimated total size (MB): {self.total_bytes / mb:.2f}", line]
        return "\n".join(out)


def _shape_text(shape: list) -> str:
    if not shape:
        return "--"
    return ", ".join(map(str, shape)) if isinstance(shape[0], list) else str(shape)


def _label(r: LayerRow) -> str:
    text = r.kind if r.depth == 0 else f"{r.name.rsplit('.', 1)[-1]} ({r.kind})"
    if r.depth == 0:
        return text
    return ("│    " * (r.depth - 1) + "└─" if r.depth > 1 else "├─") + text


def _mult_adds(m, shape: tuple[int, ...]) -> int:
    """torchinfo's count: weight and bias, times N·(output positions) for a convolution, else times N."""
    own = sum(p.data.size for name, p in m._parameters.items() if p is not None and name in ("weight", "bias"))
    if not own or not shape:
        return 0
    per = shape[0] * math.prod(shape[2:]) if "Conv" in type(m).__name__ else shape[0]
    return own * per


def _shapes(out) -> list:
    if isinstance(out, np.ndarray):
        return [list(out.shape)]
    if isinstance(out, (tuple, list)):
        return [s for o in out for s in _shapes(o)]
    return []


class Recorder:
    """The call hook: a row per Module call, in call order, at the depth of the calls around it."""

    def __init__(self, names: dict[int, str]) -> None:
        self.names, self.rows, self.depth = names, [], 0

    def __call__(self, module, args: tuple, kwargs: dict):
        row = LayerRow(self.depth, self.names.get(id(module), ""), type(module).__name__,
                       container=bool(module._modules))
        row.params = sum(p.data.size for p in module._parameters.values() if p is not None)
        self.rows.append(row)
        self.depth += 1
        try:
            out = module.forward(*args, **kwargs)
        finally:
            self.depth -= 1
        shapes = _shapes(out)
        row.output_shape = shapes[0] if len(shapes) == 1 else shapes
        first = tuple(shapes[0]) if shapes else ()
        row.mult_adds = _mult_adds(module, first)
        row.output_bytes = sum(int(o.nbytes) for o in (out if isinstance(out, (tuple, list)) else (out,))
                               if isinstance(o, np.ndarray))
        return out


def checked_shape(input_shape) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) < 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
                                 for s in shape):
        raise ValueError(f"input_shape: expected (N, C, H, W) or (N, features) of positive ints, got {input_shape!r}")
    return shape


def tally(model, rows: list[LayerRow], x: np.ndarray) -> Summary:
    """The Summary of model (an nn.Module) from the rows its forward pass on x recorded."""
    params = [p.data for p in model.parameters()]
    n = sum(p.size for p in params)  # every convprop Parameter is trained (there is no requires_grad)
    leaves = [r for r in rows if not r.container]
    return Summary(rows, tuple(x.shape), n, n, sum(r.mult_adds for r in rows), int(x.nbytes),
                   2 * sum(r.output_bytes for r in leaves if r.params), sum(int(p.nbytes) for p in params))
