"""A network's passes step by step, residual blocks opened: what the pictures (plots.py) and the page (serve)
draw of a model.

Every leaf layer (one without children) is a step, in the order its forward ran.  A Sequential inside the
model (a ResNet's stage, `layer1`) is only a chain of steps.  A block — a module with children whose
forward is not a chain, such as nn.BasicBlock — adds two steps of its own (nn/containers.py explains both):

    fork  its input x, which feeds the residual branch f and the shortcut g;  ∂x = ∂x|_f + ∂x|_g
    join  s = f(x) + g(x), the input of the block's last layer;               ∂f(x) = ∂g(x) = ∂s

The forward pass is the model's own (`nn.call_hook` records each call); the backward pass is the model's
own `backward` (each module's `backward` is watched while it runs), so nothing here re-derives a rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import nn
from .nn.module import call_hook


@dataclass
class Step:
    """One step of a pass.  kind: "layer", "fork" or "join"; path: the module's dotted name ("layer1.0.conv1",
    or the block's "layer1.0" for its fork and join); block: the enclosing block's path; branch: "residual" or
    "shortcut" for a block's layers before its join.  parts: for a join, [f(x), g(x)]; grad_parts after
    `backward`: for a fork, [∂x|_f, ∂x|_g]."""

    kind: str
    path: str
    module: nn.Module
    input: np.ndarray
    output: np.ndarray
    block: str | None = None
    branch: str | None = None
    parts: list[np.ndarray] = field(default_factory=list)
    grad_output: np.ndarray | None = None
    grad_input: np.ndarray | None = None
    grad_parts: list[np.ndarray] = field(default_factory=list)

    @property
    def name(self) -> str:
        """'Conv2d', or 'fork' / 'join' for a block's two steps."""
        return type(self.module).__name__ if self.kind == "layer" else self.kind


def is_block(m: nn.Module) -> bool:
    """A module with children whose forward is not a chain (a residual block): its steps get a fork and a join."""
    return bool(m._modules) and not isinstance(m, nn.Sequential)


def forward(model: nn.Module, x: np.ndarray) -> tuple[list[Step], np.ndarray]:
    """The model's forward pass on x, as steps (in the order they ran), and its output."""
    paths = {id(m): p for p, m in model.named_modules()}
    steps: list[Step] = []
    blocks: list[str] = []

    def hook(m: nn.Module, args: tuple, kwargs: dict):
        if not m._modules:  # a leaf layer
            out = m.forward(*args, **kwargs)
            steps.append(Step("layer", paths[id(m)], m, args[0], out, blocks[-1] if blocks else None))
            return out
        if not is_block(m):
            return m.forward(*args, **kwargs)
        path = paths[id(m)]
        first = len(steps)
        steps.append(Step("fork", path, m, args[0], args[0], path))
        blocks.append(path)
        try:
            out = m.forward(*args, **kwargs)
        finally:
            blocks.pop()
        inside = steps[first + 1:]
        shortcut = [s for s in inside[:-1] if s.path.startswith(path + ".downsample")]
        residual = [s for s in inside[:-1] if s not in shortcut]
        for s in shortcut:
            s.branch = "shortcut"
        for s in residual:
            s.branch = "residual"
        last = steps[-1]  # the block's last layer, whose input is the sum of the branches
        parts = [residual[-1].output if residual else args[0], shortcut[-1].output if shortcut else args[0]]
        steps.insert(len(steps) - 1, Step("join", path, m, last.input, last.input, path, parts=parts))
        return out

    with call_hook(hook):
        out = model(x)
    return steps, out


def backward(model: nn.Module, steps: list[Step], dout: np.ndarray) -> np.ndarray:
    """The model's own backward pass from dout = ∂L/∂(output), right after `forward` made `steps`: fills in
    every step's gradients and accumulates the parameters' into .grad (zero them before and after as
    needed).  Returns ∂L/∂x."""
    seen: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    watched = [m for m in model.modules() if m is not model]

    def watch(m: nn.Module):
        own = m.backward

        def backward(d, input_grad: bool = True):
            r = own(d, input_grad=input_grad)
            seen[id(m)] = (d.copy(), None if r is None else r.copy())  # copies: a caller may add into r
            return r
        return backward

    for m in watched:
        object.__setattr__(m, "backward", watch(m))
    try:
        dx = model.backward(dout, input_grad=True)
    finally:
        for m in watched:
            object.__delattr__(m, "backward")
    for k, s in enumerate(steps):
        if s.kind == "layer":
            s.grad_output, s.grad_input = seen[id(s.module)]
        elif s.kind == "join":  # ∂s, the gradient the block's last layer sends back, handed to both branches
            s.grad_output = s.grad_input = seen[id(steps[k + 1].module)][1]
            s.grad_parts = [s.grad_output, s.grad_output]
    for k, s in enumerate(steps):
        if s.kind == "fork":  # ∂x: the sum of what came back through each branch (the identity passes ∂s)
            s.grad_output = s.grad_input = seen[id(s.module)][1]
            inside = [t for t in steps[k + 1:] if t.block == s.path]
            join = next(t for t in inside if t.kind == "join")
            s.grad_parts = [next((t.grad_input for t in inside if t.branch == b), join.grad_output)
                            for b in ("residual", "shortcut")]
    return dx
