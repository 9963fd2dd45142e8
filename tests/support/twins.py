"""torch twins of convprop networks: the same layers in torch.nn, weights moved across, and one helper that
compares a whole network's forward, loss and every gradient with torch's (float64)."""

from __future__ import annotations

import numpy as np
from helpers import assert_close, torch

from convprop import nn

tnn = torch.nn


class FixedMask(tnn.Module):
    """torch's stand-in for one of our Dropout calls: the very mask convprop drew."""

    def __init__(self):
        super().__init__()
        self.mask = None

    def forward(self, x):
        return x if self.mask is None else x * torch.tensor(self.mask)


def torch_twin(model: nn.Sequential) -> tnn.Sequential:
    """The same architecture in torch.nn, layer for layer (so state_dict keys coincide)."""
    layers = []
    for m in model:
        name = type(m).__name__
        if name in ("Conv2d", "ConvTranspose2d"):
            kw = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups,
                      bias=m.bias is not None)
            if name == "ConvTranspose2d":
                kw["output_padding"] = m.output_padding
            layers.append(getattr(tnn, name)(m.in_channels, m.out_channels, m.kernel_size, **kw))
        elif name == "Linear":
            layers.append(tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None))
        elif name in ("BatchNorm1d", "BatchNorm2d"):
            layers.append(getattr(tnn, name)(m.num_features, eps=m.eps, momentum=m.momentum))
        elif name == "MaxPool2d":
            layers.append(tnn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode))
        elif name == "AvgPool2d":
            layers.append(tnn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad))
        elif name == "AdaptiveAvgPool2d":
            layers.append(tnn.AdaptiveAvgPool2d(m.output_size))
        elif name == "Dropout":
            layers.append(FixedMask())
        elif name == "LeakyReLU":
            layers.append(tnn.LeakyReLU(m.negative_slope))
        else:
            layers.append(getattr(tnn, name)())
    return tnn.Sequential(*layers)


def to_torch_state(sd):
    return {k: torch.tensor(np.asarray(v)) for k, v in sd.items()}


def compare_network(ours: nn.Sequential, x: np.ndarray, y: np.ndarray, train: bool = True, steps: int = 2,
                    label_smoothing: float = 0.0):
    """Load our weights into torch's twin; forward, loss and every gradient must agree (float64)."""
    ours.to(np.float64).train(train)
    theirs = torch_twin(ours).double().train(train)
    theirs.load_state_dict(to_torch_state(ours.state_dict()))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    for _ in range(steps):  # twice: BatchNorm's running statistics must also stay equal
        ours.zero_grad()
        theirs.zero_grad()
        logits = ours(x)
        for k, m in enumerate(ours):
            if isinstance(m, nn.Dropout):
                theirs[k].mask = None if m._cache.mask is None else m._cache.mask
        xt = torch.tensor(x, requires_grad=True)
        ref = theirs(xt)
        assert_close(logits, ref, np.float64, "logits")
        loss, dlogits = loss_fn(logits, y)
        ref_loss = tnn.functional.cross_entropy(ref, torch.tensor(y), label_smoothing=label_smoothing)
        assert abs(loss - ref_loss.item()) <= 1e-7 * max(1.0, abs(ref_loss.item()))
        ref_loss.backward()
        dx = ours.backward(dlogits, input_grad=True)
        assert_close(dx, xt.grad, np.float64, "input gradient")
        tparams = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            assert_close(p.grad, tparams[name].grad, np.float64, f"grad of {name}")
        tstate = theirs.state_dict()
        for name, v in ours.state_dict().items():
            assert_close(np.asarray(v, dtype=np.float64), tstate[name].double(), np.float64, f"state {name}")


def batch(n=8, c=1, hw=28, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, c, hw, hw)), rng.integers(0, classes, size=n)
