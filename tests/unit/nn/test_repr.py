"""Layers print as torch's do: the pooling layers show the stride a None stride stands for (the kernel size)."""

from __future__ import annotations

import pytest
from helpers import torch

from convprop import nn

LAYERS = [("MaxPool2d", (2,), {}), ("MaxPool2d", (3, 2, 1), {"ceil_mode": True}), ("MaxPool2d", ((2, 3),), {}),
          ("AvgPool2d", (2,), {}), ("AvgPool2d", ((2, 3),), {}), ("AvgPool2d", (3, 1, 1), {}),
          ("MaxPool1d", (2,), {}), ("AvgPool1d", (3,), {}), ("AvgPool1d", (3, 2), {}),
          ("MaxUnpool2d", (2,), {}), ("MaxUnpool2d", (3, 2, 1), {}), ("MaxUnpool1d", (2,), {})]


@pytest.mark.parametrize("name, args, kw", LAYERS)
def test_pooling_layers_print_as_torchs(name, args, kw):
    assert repr(getattr(nn, name)(*args, **kw)) == repr(getattr(torch.nn, name)(*args, **kw))
    assert "None" not in repr(getattr(nn, name)(*args, **kw))
