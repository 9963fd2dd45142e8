"""Seeded random configurations and the switches that force every route of the kernels — shared by
the torch tests (test_functional.py) and the torch-free reference tests (test_reference.py)."""

from __future__ import annotations

import numpy as np


def layout(a, channels_last: bool):
    """The same (N, C, H, W) values, stored channels-last (N, H, W, C) in memory when asked (other
    ndims unchanged)."""
    if a is None or a.ndim != 4 or not channels_last:
        return a
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def random_dtype(rng):
    return np.float32 if rng.random() < 0.2 else np.float64


def random_conv(seed, transposed=False):
    rng = np.random.default_rng(seed)
    g = int(rng.choice([1, 1, 2, 3]))
    cin, cout = g * int(rng.integers(1, 4)), g * int(rng.integers(1, 4))
    kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
    stride = tuple(int(v) for v in rng.integers(1, 4, size=2))
    dilation = tuple(int(v) for v in rng.integers(1, 4, size=2))
    padding = tuple(int(v) for v in rng.integers(0, 3, size=2))
    n = int(rng.integers(1, 4))
    if transposed:
        h, w = (int(v) for v in rng.integers(1, 7, size=2))
        wshape = (cin, cout // g, kh, kw)
        # output_padding must be smaller than stride or dilation
        op = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
        hw_out = [(s - 1) * st - 2 * p + d * (k - 1) + o + 1
                  for s, st, p, d, k, o in zip((h, w), stride, padding, dilation, (kh, kw), op)]
        if min(hw_out) < 1:
            padding = (0, 0)
        extra = {"output_padding": op}
    else:
        h = int(rng.integers(dilation[0] * (kh - 1) + 1, 12)) if rng.random() < 0.8 else \
            max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
        w = int(rng.integers(dilation[1] * (kw - 1) + 1, 12))
        wshape = (cout, cin // g, kh, kw)
        extra = {}
    dtype = random_dtype(rng)
    x = rng.standard_normal((n, cin, h, w))
    wt = rng.standard_normal(wshape)
    b = rng.standard_normal(cout) if rng.random() < 0.7 else None
    return [x, wt, b], dict(stride=stride, padding=padding, dilation=dilation, groups=g, **extra), dtype


def tie_free(rng, shape):
    """Distinct values: max pooling's argmax is unique, so its gradient is well defined."""
    return rng.permutation(np.prod(shape)).reshape(shape) / np.prod(shape) - 0.5


def random_pool(seed, kind):
    rng = np.random.default_rng(seed)
    k = tuple(int(v) for v in rng.integers(1, 5, size=2))
    stride = None if rng.random() < 0.25 else tuple(int(v) for v in rng.integers(1, 4, size=2))
    padding = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    dilation = tuple(int(v) for v in rng.integers(1, 3, size=2)) if kind == "max" else (1, 1)
    h, w = (int(dilation[a] * (k[a] - 1) + 1 + rng.integers(0, 8)) for a in range(2))
    x = tie_free(rng, (int(rng.integers(1, 4)), int(rng.integers(1, 4)), h, w))
    kw = dict(stride=stride, padding=padding, ceil_mode=bool(rng.random() < 0.5))
    if kind == "max":
        kw["dilation"] = dilation
    else:
        kw["count_include_pad"] = bool(rng.random() < 0.5)
    return x, k, kw, random_dtype(rng)


def small_tiles_and_blocks(seed, monkeypatch):
    """Seeds 0 mod 4: tiles of one output row of one sample.
    Seeds 1 mod 4: the batch split over 3 threads however small the work (_schedule).
    Seeds 2 and 3 mod 4: im2col by rows and by columns whatever the channels (_schedule.by_columns)."""
    from convprop.functional import _schedule

    if seed % 4 == 0:
        monkeypatch.setattr(_schedule, "TILE_BYTES", 1)
    if seed % 4 == 1:
        monkeypatch.setattr(_schedule, "_count", 3)
        monkeypatch.setattr(_schedule, "MIN_WORK_PER_THREAD", 1)
    if seed % 4 in (2, 3):
        monkeypatch.setattr(_schedule, "by_columns", lambda kw, cg, cols=seed % 4 == 3: cols)


def routes_taken(monkeypatch) -> list[str]:
    """The ∂A routes (conv._data_grad_route) taken from now on, in order."""
    from convprop.functional import conv

    taken, route = [], conv._data_grad_route
    monkeypatch.setattr(conv, "_data_grad_route", lambda *a: taken.append(route(*a)) or taken[-1])
    return taken


def random_same_conv(seed):
    """'Same'-padded stride-1 convolutions with as many input as output channels: the shapes whose
    backward-data takes the full-correlation route ("same" in conv._data_grad)."""
    rng = np.random.default_rng(10_000 + seed)
    g = int(rng.choice([1, 2]))
    c = g * int(rng.integers(1, 5))
    k, d = int(rng.choice([1, 3, 5])), int(rng.choice([1, 2]))
    h, w = (int(v) for v in rng.integers(d * (k - 1) + 1, 10, size=2))
    x, wt = rng.standard_normal((int(rng.integers(1, 4)), c, h, w)), rng.standard_normal((c, c // g, k, k))
    b = rng.standard_normal(c) if rng.random() < 0.5 else None
    return [x, wt, b], dict(padding=d * (k - 1) // 2, dilation=d, groups=g), random_dtype(rng)


def random_batch_inner_conv(seed):
    """Convolutions of few input channels (3–15) under a kernel of ≥ 64 values, more outputs than inputs
    and a stride that does not divide the kernel (or 1): the shapes whose backward-data takes the
    batch-inner route (conv._batch_inner_route), any padding and dilation."""
    rng = np.random.default_rng(30_000 + seed)
    cin = int(rng.integers(3, 16))
    k = -(-64 // cin)  # kh·kw ≥ 64 / cin
    kh = int(rng.integers(max(1, -(-k // 5)), 6))
    kw = max(-(-k // kh), int(rng.integers(1, 6)))
    s = int(rng.choice([1, 1, 2, 3]))
    stride = (s, s) if s == 1 or kh % s or kw % s else (s, s + 1)
    d, p = int(rng.choice([1, 1, 2])), tuple(int(v) for v in rng.integers(0, 3, size=2))
    h, w = (int(rng.integers(d * (kk - 1) + 1, d * (kk - 1) + 9)) for kk in (kh, kw))
    x = rng.standard_normal((int(rng.integers(1, 6)), cin, h, w))
    wt = rng.standard_normal((cin * int(rng.integers(2, 4)), cin, kh, kw))
    b = rng.standard_normal(wt.shape[0]) if rng.random() < 0.5 else None
    return [x, wt, b], dict(stride=stride, padding=p, dilation=d), random_dtype(rng)


def random_planes_conv(seed):
    """Convolutions of an image's 1–3 channels (groups 1) at any kernel, stride, padding and dilation, the
    stride not dividing the kernel: the shapes whose backward-data takes the planes route
    (conv._planes_route), from one sample to a few dozen."""
    rng = np.random.default_rng(40_000 + seed)
    cin, (kh, kw) = int(rng.integers(1, 4)), (int(v) for v in rng.integers(1, 6, size=2))
    s = tuple(int(v) for v in rng.integers(1, 4, size=2))
    if all(k % st == 0 for k, st in zip((kh, kw), s)) and s != (1, 1):  # the sub-pixel route's shapes
        s = (s[0], s[1] + 1) if kw % (s[1] + 1) else (s[0] + 1, s[1])
    d, p = tuple(int(v) for v in rng.integers(1, 3, size=2)), tuple(int(v) for v in rng.integers(0, 3, size=2))
    h, w = (int(rng.integers(dd * (kk - 1) + 1, dd * (kk - 1) + 12)) for dd, kk in zip(d, (kh, kw)))
    x = rng.standard_normal((int(rng.choice([1, 2, 7, 33])), cin, h, w))
    wt = rng.standard_normal((int(rng.integers(2 * cin + 1, 2 * cin + 6)), cin, kh, kw))  # not the same route
    b = rng.standard_normal(wt.shape[0]) if rng.random() < 0.5 else None
    return [x, wt, b], dict(stride=s, padding=p, dilation=d), random_dtype(rng)


def random_subpixel(seed):
    """Transposed convolutions whose stride divides the kernel (the usual ×2 upsampling, k4 s2):
    the sub-pixel route (conv._subpixel_route)."""
    rng = np.random.default_rng(20_000 + seed)
    g, s = int(rng.choice([1, 2])), tuple(int(v) for v in rng.integers(1, 4, size=2))
    if s == (1, 1):
        s = (2, 2)
    k = tuple(si * int(rng.integers(1, 3)) for si in s)
    p = tuple(int(rng.integers(0, kk)) for kk in k)
    op = tuple(int(rng.integers(0, si)) for si in s)
    n, cin, cout = int(rng.integers(1, 4)), g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
    h, w = (int(v) for v in rng.integers(max(p) + 1, 7, size=2))
    arrays = [rng.standard_normal((n, cin, h, w)), rng.standard_normal((cin, cout // g) + k),
              rng.standard_normal(cout) if seed % 3 else None]
    return arrays, dict(stride=s, padding=p, output_padding=op, groups=g), random_dtype(rng)
