"""Forks and joins: modules whose forward is Python code over submodules, with a backward written beside it.

docs/math.md derives backprop for a chain, where each layer's ∂ flows to the one before it.  A network
with a skip connection is not a chain: the input x *forks* into two branches, and the branches
*join* in a sum.  Backprop through the two (llm.c's residual_forward/residual_backward):

    join   s = f(x) + g(x)   ->  ∂f(x) = ∂s  and  ∂g(x) = ∂s     (a sum hands its ∂ to both branches)
    fork   x feeds f and g   ->  ∂x = ∂x|_f + ∂x|_g              (the chain rule adds the branches' ∂)

The pattern for any such model (torch's nn.Module.forward style, plus an explicit backward):

  1. forward(x): any Python code over submodules (and functional ops).  Each submodule keeps the
     cache of its *last* call, so call every submodule at most once per forward; where torch code
     reuses one parameter-free module (`self.relu` twice), make two (`relu1`, `relu2`): the
     parameters and state_dict keys are the same.
  2. backward(dout, input_grad=True): call the submodules' backward in the reverse order of their
     forward calls, each with the ∂ of its output.  At a join hand the same ∂ to every branch; at a
     fork add the branches' ∂.  Return ∂x, or None when input_grad is False (the ∂ of parameters
     is accumulated into their .grad by the submodules, never returned).
  3. Check it: `convprop.gradcheck.gradcheck(model.to(np.float64), x)` compares ∂x and the gradient
     of every parameter with central differences and names the first one that disagrees.

BasicBlock below is that pattern for the residual block of He et al. (2016).
"""

from __future__ import annotations

import numpy as np

from .layers import BatchNorm2d, Conv2d, ReLU
from .module import Module, Sequential

__all__ = ["BasicBlock"]


class BasicBlock(Module):
    """y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)): He et al. (2016)'s residual block.

    x (N, inplanes, H, W) -> y (N, planes, ⌈H/stride⌉, ⌈W/stride⌉).  conv1 is 3×3 with `stride`,
    conv2 3×3.  The shortcut is the identity when shapes agree, else `downsample` — torchvision's
    name and layout: Sequential(Conv2d(inplanes, planes, 1, stride, bias=False), BatchNorm2d(planes)),
    the "projection" shortcut (option B of the paper), built here when stride ≠ 1 or the widths
    differ.  state_dict keys as torchvision's BasicBlock: conv1.weight, bn1.*, conv2.weight, bn2.*,
    downsample.0.weight, downsample.1.*.  (torchvision calls one `relu` twice; relu1 and relu2 here.)
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Module | None | str = "auto",
                 dtype=None) -> None:
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 3, stride, 1, bias=False, dtype=dtype)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False, dtype=dtype)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        if isinstance(downsample, str):
            if downsample != "auto":
                raise ValueError(f"downsample: expected a Module, None or 'auto', got {downsample!r}")
            downsample = (Sequential(Conv2d(inplanes, planes, 1, stride, bias=False, dtype=dtype),
                                     BatchNorm2d(planes, dtype=dtype))
                          if stride != 1 or inplanes != planes else None)
        self.downsample = downsample
        self.relu2 = ReLU()
        self.stride = stride

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = self.relu1(self.bn1(self.conv1(x)))  # the residual branch f(x) …
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)  # … and the shortcut g(x)
        return self.relu2(out + identity)  # join: s = f(x) + g(x), then y = relu(s)

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        ds = self.relu2.backward(dout)  # ∂s = ∂y ⊙ relu'(s)
        # join: the sum hands ∂s to both branches unchanged
        d = self.bn1.backward(self.relu1.backward(self.conv2.backward(self.bn2.backward(ds))))
        dx = self.conv1.backward(d, input_grad=input_grad)  # ∂x through f
        dx_short = ds if self.downsample is None else self.downsample.backward(ds, input_grad=input_grad)
        if not input_grad:
            return None
        dx += dx_short  # fork: x fed both branches, so their ∂x add
        return dx

    def extra_repr(self) -> str:
        return f"stride={self.stride}"
