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
# What a config may hold (a checkpoint's header is a stranger's JSON): each integer within bounds that
# keep any model small (LeNet-5 with 10,000 classes: 0.9 M parameters), each choice among the known.
CONFIG_INTS = {"num_classes": (1, 10_000), "in_channels": (1, 64), "width": (1, 256)}
CONFIG_CHOICES = {"pool": POOLS, "activation": ACTS}


def check_config(name: str, config: dict) -> None:
    """ValueError naming the first key of `config` that model `name` does not take, or whose value
    is out of bounds — before anything is allocated."""
    import inspect

    if name not in MODELS:
        raise ValueError(f"model: expected one of {sorted(MODELS)}, got {name!r}")
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a dict of {name}'s arguments, got {type(config).__name__}")
    takes = [k for k in inspect.signature(MODELS[name]).parameters if k != "dtype"]
    for key, value in config.items():
        if key not in takes:
            raise ValueError(f"config: {name} takes {', '.join(takes)}; got {key!r}")
        if key in CONFIG_INTS:
            lo, hi = CONFIG_INTS[key]
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"{key}: expected an integer from {lo} to {hi:,}, got {value!r}")
        elif key in CONFIG_CHOICES and (not isinstance(value, str) or value not in CONFIG_CHOICES[key]):
            raise ValueError(f"{key}: expected one of {sorted(CONFIG_CHOICES[key])}, got {value!r}")


def build(name: str, **config) -> nn.Sequential:
    """A model by name, from the config a checkpoint stores (checked first: check_config)."""
    check_config(name, config)
    return MODELS[name](**config)
