"""Every option of every loss module reaches every path: nn.CrossEntropyLoss and nn.MSELoss against torch's
modules, each option alone and all combined (itertools.product), the loss and ∂loss/∂input, float64."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import torch

from convprop import nn

K = 5
WEIGHTS = {"none": None, "weights": np.array([0.5, 2.0, 1.0, 0.1, 3.0])}
# ignore: which ignore_index the module gets, and whether the targets hold it
IGNORES = {"no-ignored": (None, False), "default-ignored": (None, True), "ignore-2": (2, True),
           "ignore-2-absent": (2, False)}
SHAPES = {"unbatched": (K,), "2-D": (7, K), "3-D": (3, K, 4), "4-D": (2, K, 3, 2), "empty-batch": (0, K),
          "empty-positions": (2, K, 0)}
CE_CASES = list(itertools.product(WEIGHTS, IGNORES, ["mean", "sum", "none"], [0.0, 0.3], ["indices", "probabilities"],
                                  SHAPES))


def _targets(shape, kind, ignore_value, holds_ignored, seed):
    rng = np.random.default_rng(seed)
    if kind == "probabilities":
        p = rng.random(shape)
        return p / p.sum(axis=1 if len(shape) > 1 else 0, keepdims=True)
    rows = shape[:1] + shape[2:] if len(shape) > 1 else ()
    y = rng.integers(0, K, size=rows)
    if holds_ignored and y.size:
        y.ravel()[:: 2 if len(shape) > 1 else 1] = ignore_value
    return np.asarray(y, dtype=np.int64)


def _compare(ours, ours_grad, ref, x, what):
    ref_np = ref.detach().numpy()
    ours = np.asarray(ours)
    assert ours.shape == ref_np.shape, f"{what}: loss shape {ours.shape} != torch {ref_np.shape}"
    np.testing.assert_allclose(ours, ref_np, rtol=1e-10, atol=1e-12, equal_nan=True, err_msg=f"{what}: loss")
    if ref.numel():
        ref.sum().backward()
    expected = x.grad.numpy() if x.grad is not None else np.zeros(tuple(x.shape))
    assert ours_grad.shape == expected.shape, f"{what}: gradient shape {ours_grad.shape} != {expected.shape}"
    np.testing.assert_allclose(ours_grad, expected, rtol=1e-10, atol=1e-12, equal_nan=True,
                               err_msg=f"{what}: gradient")


@pytest.mark.parametrize("weight, ignore, reduction, smoothing, kind, shape", CE_CASES)
def test_cross_entropy_loss_module_every_option_and_combination(weight, ignore, reduction, smoothing, kind, shape):
    ignore_index, holds_ignored = IGNORES[ignore]
    kw = {"reduction": reduction, "label_smoothing": smoothing}
    if ignore_index is not None:
        kw["ignore_index"] = ignore_index
    ignore_value = -100 if ignore_index is None else ignore_index
    dims = SHAPES[shape]
    logits = np.random.default_rng(0).standard_normal(dims) * 3
    target = _targets(dims, kind, ignore_value, holds_ignored, seed=1)
    w = WEIGHTS[weight]
    x = torch.tensor(logits, requires_grad=True)
    try:
        ref = torch.nn.CrossEntropyLoss(None if w is None else torch.tensor(w), **kw)(x, torch.tensor(target))
    except RuntimeError as e:  # torch refuses (ignore_index with probabilities): so do we, in one clear line
        with pytest.raises(ValueError, match="ignore_index"):
            nn.CrossEntropyLoss(w, **kw)(logits, target)
        assert "ignore_index" in str(e)
        return
    loss, dlogits = nn.CrossEntropyLoss(w, **kw)(logits, target)
    if reduction != "none":
        assert isinstance(loss, float)
    _compare(loss, dlogits, ref, x, f"CrossEntropyLoss({weight}, {ignore}, {kw}, {kind}, {shape})")


@pytest.mark.parametrize("reduction, shape", list(itertools.product(["mean", "sum", "none"],
                                                                [(), (4,), (3, 2, 5), (0, 3)])))
def test_mse_loss_module_every_option(reduction, shape):
    pred, target = (np.random.default_rng(s).standard_normal(shape) for s in (0, 1))
    loss, dpred = nn.MSELoss(reduction=reduction)(pred, target)
    x = torch.tensor(pred, requires_grad=True)
    ref = torch.nn.MSELoss(reduction=reduction)(x, torch.tensor(target))
    _compare(loss, dpred, ref, x, f"MSELoss(reduction={reduction!r}) on {shape}")
