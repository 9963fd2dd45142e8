"""Layers print as torch's do: the pooling layers show the stride a None stride stands for (the kernel size)."""

from __future__ import annotations

import pytest
from helpers import torch

from convprop import nn

LAYERS = [("MaxPool2d", (2,), {}), ("MaxPool2d", (3, 2, 1), {"ceil_mode": True}), ("MaxPool2d", ((2, 3),), {}),
          ("AvgPool2d", (2,), {}), ("AvgPool2d", ((2, 3),), {}), ("AvgPool2d", (3, 1, 1), {}),
          ("MaxPool1d", (2,), {}), ("AvgPool1d", (3,), {}), ("AvgPool1d", (3, 2), {}),
          ("MaxUnpool2d", (2,), {}), ("MaxUnpool2d", (3, 2, 1), {}), ("MaxUnpool1d", (2,), {}),
          ("BatchNorm2d", (3,), {}), ("BatchNorm1d", (4,), {"affine": False, "bias": False, "momentum": None}),
          ("BatchNorm2d", (3,), {"bias": False, "track_running_stats": False})]


@pytest.mark.parametrize("name, args, kw", LAYERS)
def test_pooling_and_normalisation_layers_print_as_torchs(name, args, kw):
    assert repr(getattr(nn, name)(*args, **kw)) == repr(getattr(torch.nn, name)(*args, **kw))
    assert "stride=None" not in repr(getattr(nn, name)(*args, **kw))


def test_every_layer_takes_torchs_arguments():
    """Each layer's constructor takes every argument torch's does (by name, in torch's order), but for device
    and dtype-as-a-torch-type and torch's deprecated size_average/reduce; and ConvTranspose2d's padding_mode."""
    import inspect

    skip = {"device", "dtype", "size_average", "reduce", "args", "kwargs"}
    for name in nn.__all__:
        ours, theirs = getattr(nn, name), getattr(torch.nn, name, None)
        if theirs is None or not inspect.isclass(ours) or name in ("Module", "Parameter", "Sequential"):
            continue
        want = [p for p in list(inspect.signature(theirs.__init__).parameters)[1:]
                if p not in skip]
        have = list(inspect.signature(ours.__init__).parameters)[1:]
        assert [p for p in have if p in want] == want, f"{name}: torch takes {want}, convprop {have}"
    nn.ConvTranspose2d(2, 3, 3, padding_mode="zeros")
    with pytest.raises(ValueError, match="padding_mode"):
        nn.ConvTranspose2d(2, 3, 3, padding_mode="reflect")


def test_batch_norm_without_bias_matches_torch():
    """torch 2.13's BatchNorm(bias=False): γ without β, the same state_dict keys, forward and gradients."""
    import numpy as np
    from helpers import assert_close

    ours = nn.BatchNorm2d(3, bias=False).to(np.float64)
    theirs = torch.nn.BatchNorm2d(3, bias=False).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2))
    xt = torch.tensor(x, requires_grad=True)
    ref = theirs(xt)
    assert_close(ours(x), ref, np.float64, "out")
    ref.backward(torch.ones_like(ref) * 0.5 + xt.detach())
    dx = ours.backward(np.full(x.shape, 0.5) + x)
    assert_close(dx, xt.grad, np.float64, "dx")
    assert_close(ours.weight.grad, theirs.weight.grad, np.float64, "dγ")
