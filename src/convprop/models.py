"""Ready-made networks, built as nn.Sequential so their state_dict keys match torch's equivalents."""

from __future__ import annotations

import numpy as np

from . import nn

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU}


def lenet5(num_classes: int = 10, in_channels: int = 1, pool: str = "max", activation: str = "relu",
           dtype=np.float32) -> nn.Sequential:
    """LeNet-5 for 28×28 inputs: conv 6@5×5 (pad 2) → pool → conv 16@5×5 → pool → 120 → 84 → classes."""
    if pool not in POOLS:
        raise ValueError(f"pool: expected one of {sorted(POOLS)}, got {pool!r}")
    if activation not in ACTS:
        raise ValueError(f"activation: expected one of {sorted(ACTS)}, got {activation!r}")
    P, A = POOLS[pool], ACTS[activation]
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2, dtype=dtype), A(), P(2),  # (N, 6, 14, 14)
        nn.Conv2d(6, 16, 5, dtype=dtype), A(), P(2),  # (N, 16, 5, 5)
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120, dtype=dtype), A(),
        nn.Linear(120, 84, dtype=dtype), A(),
        nn.Linear(84, num_classes, dtype=dtype),
    )


def vgg_small(num_classes: int = 10, in_channels: int = 1, width: int = 16, dtype=np.float32) -> nn.Sequential:
    """A small VGG-style net with BatchNorm: [conv-BN-ReLU ×2, pool] ×2 → global average pool → linear."""
    w1, w2 = width, 2 * width

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False, dtype=dtype), nn.BatchNorm2d(cout, dtype=dtype),
                nn.ReLU()]

    return nn.Sequential(
        *block(in_channels, w1), *block(w1, w1), nn.MaxPool2d(2),  # 14×14
        *block(w1, w2), *block(w2, w2), nn.MaxPool2d(2),  # 7×7
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(w2, num_classes, dtype=dtype),
    )


MODELS = {"lenet5": lenet5, "vgg_small": vgg_small}


def build(name: str, **config) -> nn.Sequential:
    """A model by name, from the config a checkpoint stores."""
    if name not in MODELS:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**config)
