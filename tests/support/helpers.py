"""One helper compares our forward and every gradient with torch's; each case is one line."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
TF = torch.nn.functional

from cases import layout  # noqa: E402,F401

import convprop.functional as F  # noqa: E402
from convprop.gradcheck import numeric_gradient as numeric_grads  # noqa: E402,F401

torch.set_num_threads(1)

# float64: 1e-7 relative to the largest reference value; float32: float32 round-off over sums.
RTOL = {np.float64: 1e-7, np.float32: 2e-5}


def assert_close(ours, ref, dtype, what=""):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours is not None, f"{what}: missing"
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != torch {ref.shape}"
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype} != {np.dtype(dtype)}"
    scale = max(float(np.abs(ref).max(initial=0.0)), 1.0)
    err = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max(initial=0.0)) / scale
    assert err <= RTOL[dtype], f"{what}: relative error {err:.3g} > {RTOL[dtype]:g}"


def check_op(name, arrays, *args, dtype=np.float64, seed=0, torch_name=None, torch_fn=None, grads_of=None, **kw):
    """F.<name>(*arrays, *args, **kw) and F.<name>_backward against torch.nn.functional.<name>:
    the output, and the gradient of every array input (None inputs must get None gradients);
    NumPy arrays among args (indices) go to torch as tensors, without gradients.
    grads_of: the indices of the arrays the backward returns gradients for (default: all);
    torch_fn(*leaves, *args, cache=cache, **kw): the reference where torch's own would differ (dropout's
    random mask: the same mask applied in torch).
    return_indices=True: the forward's (out, indices) against torch's pair, the indices exactly;
    the gradient is out's.
    Odd seeds store inputs and dout channels-last in memory: every op must accept either layout."""
    bl = seed % 2 == 1
    arrays = [None if a is None else np.asarray(a) if np.asarray(a).dtype.kind in "iub"
              else layout(np.asarray(a, dtype=dtype), bl) for a in arrays]
    kw = {k: np.asarray(v, dtype=dtype) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    result, cache = getattr(F, name)(*arrays, *args, **kw)
    out = result
    grads_of = range(len(arrays)) if grads_of is None else grads_of
    # integer arrays (class indices) are inputs without a gradient, as are NumPy keyword arguments (weights)
    leaves = [None if a is None else torch.tensor(a, requires_grad=i in grads_of and a.dtype.kind == "f")
              for i, a in enumerate(arrays)]
    targs = [torch.tensor(a) if isinstance(a, np.ndarray) else a for a in args]  # e.g. max_unpool2d's indices
    if torch_fn is None:
        tkw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        fn = getattr(TF, torch_name or name, None) or getattr(torch, torch_name or name)  # e.g. torch.flatten
        ref = fn(*leaves, *targs, **tkw)
    else:
        ref = torch_fn(*leaves, *targs, cache=cache, **kw)
    if isinstance(ref, tuple):  # return_indices: torch's (out, indices)
        assert isinstance(result, tuple) and len(result) == 2, f"{name}: expected (out, indices), got {type(result)}"
        (out, indices), (ref, ref_indices) = result, ref
        assert indices.dtype == np.int64, f"{name} indices: dtype {indices.dtype} != int64"
        np.testing.assert_array_equal(indices, ref_indices.numpy(), err_msg=f"{name} indices")
    assert_close(out, ref, dtype, f"{name} forward")
    dout = layout(np.random.default_rng(seed).standard_normal(ref.shape).astype(dtype), bl)
    ref.backward(torch.tensor(dout))
    grads = getattr(F, name + "_backward")(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert len(grads) == len(grads_of)
    for k, g, leaf in zip(grads_of, grads, [leaves[i] for i in grads_of]):
        if leaf is None or not leaf.requires_grad:
            assert g is None, f"{name}: gradient {k} should be None"
        else:
            assert_close(g, leaf.grad, dtype, f"{name} gradient {k}")
    return result, cache
