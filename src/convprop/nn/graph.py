"""Add and Graph: layers wired as a directed acyclic graph (forks and joins), with the backward walk over it.

ONNX import (convprop.onnx.load) gives a Graph for files whose layers fork and join; one can also be
built by hand from (output name, module, input names) steps.
"""

from __future__ import annotations

import numpy as np

from .module import Module, check_input


class Add(Module):
    """The join of two branches: y = a + b.  Backward hands dout to both (∂y/∂a = ∂y/∂b = I)."""

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.shape != b.shape:
            raise ValueError(f"Add: expected two inputs of one shape, got {a.shape} and {b.shape}")
        return a + b

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> tuple[np.ndarray, np.ndarray]:
        return dout, dout


class Graph(Module):
    """Layers wired as a directed acyclic graph, as an ONNX file stores them: step k computes the
    tensor named `outputs[k]` by applying child module k to the tensors named `inputs[k]` (a tuple
    of names where the module returns several, as MaxPool2d(return_indices=True) returns (out, indices)).

    backward walks the steps in reverse.  Where a tensor fed several steps (a fork), the gradients
    that come back from each are added; an Add (a join) hands its gradient to both of its inputs.
    """

    def __init__(self, steps: list[tuple[str | tuple[str, ...], Module, list[str]]], input: str, output: str):
        super().__init__()
        self.input, self.output = input, output
        self.outputs, self.inputs = [s[0] for s in steps], [list(s[2]) for s in steps]
        for k, (_, module, _) in enumerate(steps):
            setattr(self, str(k), module)

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_input(x)
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

