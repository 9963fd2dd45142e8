"""Every fast route of conv.py and pool.py held to functional/reference.py — the sums of docs/math.md
as plain loops, a second oracle that needs no torch.  The switches of cases.py force every route:
tiles of one output row (seeds 0 mod 4), the batch split over 3 threads (1 mod 4), channels-last
inputs (odd seeds), and the 'same' and sub-pixel routes of ∂A."""

from __future__ import annotations

import numpy as np
import pytest
from cases import (
    layout,
    random_batch_inner_conv,
    random_conv,
    random_planes_conv,
    random_pool,
    random_same_conv,
    random_subpixel,
    routes_taken,
    small_tiles_and_blocks,
)

import convprop.functional as F
from convprop.functional import reference as R

RTOL = {np.float64: 1e-10, np.float32: 2e-5}


def close(ours, ref, dtype, what):
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != reference {ref.shape}"
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype}"
    err = float(np.abs(ours - ref).max(initial=0.0)) / max(float(np.abs(ref).max(initial=0.0)), 1.0)
    assert err <= RTOL[dtype], f"{what}: relative error {err:.3g} > {RTOL[dtype]:g}"


def inputs(arrays, dtype, seed):
    return [None if a is None else layout(a.astype(dtype), seed % 2 == 1) for a in arrays]


def dout(shape, dtype, seed):
    return layout(np.random.default_rng(seed).standard_normal(shape).astype(dtype), seed % 2 == 1)


def check_conv2d(arrays, kw, dtype, seed):
    x, w, b = inputs(arrays, dtype, seed)
    geometry = _geometry(kw)
    out, cache = F.conv2d(x, w, b, **kw)
    close(out, R.conv2d(x, w, b, **geometry), dtype, "Z = K * A + B")
    dz = dout(out.shape, dtype, seed)
    dx, dw, db = F.conv2d_backward(dz, cache)
    rdx, rdw, rdb = R.conv2d_backward(dz, x, w, **geometry)
    close(dx, rdx, dtype, "∂A = K ⋆ᵀ ∂Z")
    close(dw, rdw, dtype, "∂K = Σ A_patch ⊙ ∂Z")
    if b is not None:
        close(db, rdb, dtype, "∂B = Σ ∂Z")


def check_conv_transpose2d(arrays, kw, dtype, seed):
    x, w, b = inputs(arrays, dtype, seed)
    geometry = _geometry(kw)
    out, cache = F.conv_transpose2d(x, w, b, **kw)
    ref = R.conv2d_backward(x, np.zeros(out.shape), w, **geometry)[0]  # Y = K ⋆ᵀ X: conv's ∂A, of X
    close(out, ref + (0 if b is None else b[:, None, None]), dtype, "Y = K ⋆ᵀ X + B")
    dy = dout(out.shape, dtype, seed)
    dx, dw, _ = F.conv_transpose2d_backward(dy, cache)
    h, wd = x.shape[2:]
    close(dx, R.conv2d(dy, w, **geometry)[:, :, :h, :wd], dtype, "∂X = K * ∂Y")
    close(dw, R.conv2d_backward(x, dy, w, **geometry)[1], dtype, "∂K = Σ ∂Y_patch ⊙ X")


@pytest.mark.parametrize("seed", range(48))
def test_conv2d_against_the_plain_sums(seed, monkeypatch):
    small_tiles_and_blocks(seed, monkeypatch)
    routes = routes_taken(monkeypatch)
    check_conv2d(*random_conv(seed), seed)
    assert len(routes) == 1


@pytest.mark.parametrize("seed", range(48))
def test_conv_transpose2d_against_the_plain_sums(seed, monkeypatch):
    small_tiles_and_blocks(seed, monkeypatch)
    check_conv_transpose2d(*random_conv(seed, transposed=True), seed)


# ∂A's routes, each on shapes that take it: (route, the shapes' generator, the check, how many seeds)
ROUTES = {"same": (random_same_conv, check_conv2d, 16), "subpixel": (random_subpixel, check_conv_transpose2d, 16),
          "batch-inner": (random_batch_inner_conv, check_conv2d, 24), "planes": (random_planes_conv, check_conv2d, 24)}


@pytest.mark.parametrize("route, seed", [(r, s) for r, (*_, seeds) in ROUTES.items() for s in range(seeds)])
def test_each_route_against_the_plain_sums(route, seed, monkeypatch):
    make, check, _ = ROUTES[route]
    small_tiles_and_blocks(seed, monkeypatch)
    routes = routes_taken(monkeypatch)
    check(*make(seed), seed)
    assert routes == [route]


def test_every_route_is_covered(monkeypatch):
    """The seeds above reach every route of ∂A (so none of them goes unchecked)."""
    routes = routes_taken(monkeypatch)
    for seed in range(48):
        arrays, kw, dtype = random_conv(seed)
        out, cache = F.conv2d(*inputs(arrays, dtype, seed), **kw)
        F.conv2d_backward(out, cache)
    assert {"scatter", "same"} <= set(routes)


@pytest.mark.parametrize("seed", range(48))
def test_max_pool2d_against_the_plain_sums(seed, monkeypatch):
    small_tiles_and_blocks(seed, monkeypatch)
    x, k, kw, dtype = random_pool(seed, "max")
    (x,) = inputs([x], dtype, seed)
    g = dict(stride=kw["stride"] or k, padding=kw["padding"], dilation=kw["dilation"], ceil_mode=kw["ceil_mode"])
    out, cache = F.max_pool2d(x, k, **kw)
    ref, argmax = R.max_pool2d(x, _pair(k), **{key: _pair(v) if key != "ceil_mode" else v for key, v in g.items()})
    close(out, ref, dtype, "Z = max of each window")
    np.testing.assert_array_equal(cache.indices, argmax[..., 0] * x.shape[3] + argmax[..., 1])
    dz = dout(out.shape, dtype, seed)
    close(F.max_pool2d_backward(dz, cache), R.max_pool2d_backward(dz, x.shape, argmax), dtype, "max-unpool")


@pytest.mark.parametrize("seed", range(48))
def test_avg_pool2d_against_the_plain_sums(seed, monkeypatch):
    small_tiles_and_blocks(seed, monkeypatch)
    x, k, kw, dtype = random_pool(seed, "avg")
    (x,) = inputs([x], dtype, seed)
    k, s, p = _pair(k), _pair(kw["stride"] or k), _pair(kw["padding"])
    out, cache = F.avg_pool2d(x, k, **kw)
    close(out, R.avg_pool2d(x, k, s, p, kw["ceil_mode"], kw["count_include_pad"]), dtype, "Z = Σ window / r")
    dz = dout(out.shape, dtype, seed)
    close(F.avg_pool2d_backward(dz, cache), R.avg_pool2d_backward(dz, x, k, s, p, kw["count_include_pad"]), dtype,
          "the even spread")


def _geometry(kw):
    return dict(stride=_pair(kw.get("stride", 1)), padding=_pair(kw.get("padding", 0)),
                dilation=_pair(kw.get("dilation", 1)), groups=kw.get("groups", 1))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def test_non_finite_values_one_policy():
    """functional propagates NaN and inf as IEEE arithmetic (as torch.nn.functional); the model's
    input is where they are refused — the policy convprop.functional's docstring and docs/math.md state."""
    from convprop import models, nn

    x = np.zeros((2, 1, 28, 28), np.float32)
    x[0, 0, 5, 5], x[1, 0, 9, 9] = np.nan, np.inf
    out, _ = F.conv2d(x, np.ones((1, 1, 3, 3), np.float32), padding=1)
    assert np.isnan(out[0, 0, 4:7, 4:7]).all() and np.isnan(out[0]).sum() == 9  # NaN reaches its 3×3 outputs
    assert np.isposinf(out[1, 0, 8:11, 8:11]).all() and np.isfinite(out[1]).sum() == 28 * 28 - 9
    assert np.isnan(F.relu(x)[0][0, 0, 5, 5]) and np.isnan(F.max_pool2d(x, 2)[0][0, 0, 2, 2])
    with pytest.raises(ValueError, match="expected finite values, got 1 NaN and 1 infinite"):
        models.lenet5()(x)
    doc = " ".join(F.__doc__.split())
    assert "NaN and ±inf propagate" in doc and "nn.detect_anomaly()" in doc and nn.detect_anomaly


def test_whole_models_train_the_same_on_the_loop_kernels(monkeypatch):
    """The reference switch: a few training steps of a small network (conv with stride, padding, groups
    and bias; BatchNorm; max and average pooling; a transposed convolution) on the fast engine and on
    reference.py's loops, from the same weights and data, reach the same losses and weights."""
    from convprop import nn, optim
    from convprop.random import manual_seed
    from convprop.train import train_step

    def run(reference: bool):
        manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2), nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False), nn.AvgPool2d(2, padding=1), nn.Flatten(),
            nn.Linear(6 * 3 * 3, 3)).to(np.float64)
        opt, loss_fn = optim.SGD(model.parameters(), lr=0.1, momentum=0.9), nn.CrossEntropyLoss()
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((3, 2, 8, 8)), rng.integers(0, 3, 3)
        with F.use_reference(reference):
            losses = [train_step(model, loss_fn, opt, x, y)[0] for _ in range(3)]
        return losses, [p.data.copy() for p in model.parameters()]

    ran = set()

    def counted(name, loops):
        return lambda *a, **k: ran.add(name) or loops(*a, **k)

    for name in ("conv2d", "conv2d_backward", "conv_transpose2d", "max_pool2d", "max_pool2d_backward",
                 "avg_pool2d", "avg_pool2d_backward"):
        monkeypatch.setattr(R, name, counted(name, getattr(R, name)))
    fast, fast_w = run(False)
    assert not ran  # the fast engine alone
    loops, loops_w = run(True)
    assert len(ran) == 7  # every loop twin ran
    assert not R.active()  # the with block turned it off again
    np.testing.assert_allclose(fast, loops, rtol=1e-9)
    assert fast[-1] != fast[0]  # it trained
    for a, b in zip(fast_w, loops_w):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_the_switch_is_on_from_the_call_until_turned_off():
    x = np.random.default_rng(1).standard_normal((1, 1, 4, 4))
    calls = []
    loops = R.conv2d
    try:
        R.conv2d = lambda *a: calls.append(1) or loops(*a)
        F.use_reference(True)
        F.conv2d(x, np.ones((1, 1, 3, 3)))
        F.use_reference(False)
        F.conv2d(x, np.ones((1, 1, 3, 3)))
    finally:
        R.conv2d = loops
        F.use_reference(False)
    assert calls == [1]
