"""torch twins of convprop networks: the same layers in torch.nn, weights moved across, and one helper that
compares a whole network's forward, loss and every gradient with torch's (float64)."""

from __future__ import annotations

from collections import OrderedDict

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


class TorchBlock(tnn.Module):
    """torchvision's BasicBlock, written out (torchvision is not a dependency)."""

    def __init__(self, inplanes, planes, stride, downsample):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU()
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = tnn.Sequential(tnn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                         tnn.BatchNorm2d(planes)) if downsample else None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def torch_resnet(ours: nn.Sequential) -> tnn.Sequential:
    layers = OrderedDict()
    for name, m in ours._modules.items():
        if isinstance(m, nn.Sequential):
            layers[name] = tnn.Sequential(*[TorchBlock(b.conv1.in_channels, b.conv1.out_channels, b.stride,
                                                       b.downsample is not None) for b in m])
        elif isinstance(m, nn.Conv2d):
            layers[name] = tnn.Conv2d(m.in_channels, m.out_channels, 3, 1, 1, bias=False)
        elif isinstance(m, nn.BatchNorm2d):
            layers[name] = tnn.BatchNorm2d(m.num_features)
        elif isinstance(m, nn.Linear):
            layers[name] = tnn.Linear(m.in_features, m.out_features)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            layers[name] = tnn.AdaptiveAvgPool2d(1)
        else:
            layers[name] = getattr(tnn, type(m).__name__)()
    return tnn.Sequential(layers)


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
