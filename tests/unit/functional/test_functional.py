"""convprop.functional against torch.nn.functional: forward and every gradient.

Each family runs >= 200 seeded random configurations (float64 within 1e-7 relative, some in
float32), plus float64 central-difference checks over a hand-picked sweep.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import (
    random_conv,
    random_dtype,
    random_pool,
    random_same_conv,
    random_subpixel,
    routes_taken,
    small_tiles_and_blocks,
    tie_free,
)
from helpers import TF, F, assert_close, check_op, layout, numeric_grads, torch

N_RANDOM = 220
SEEDS = range(N_RANDOM)


# --------------------------------------------------------------------------- random configurations
@pytest.mark.parametrize("seed", SEEDS)
def test_conv2d_random(seed, monkeypatch):
    small_tiles_and_blocks(seed, monkeypatch)
    arrays, kw, dtype = random_conv(seed)
    check_op("conv2d", arrays, dtype=dtype, seed=seed, **kw)


@pytest.mark.parametrize("seed", range(80))
def test_conv2d_same_padding_random(seed, monkeypatch):
    routes = routes_taken(monkeypatch)
    arrays, kw, dtype = random_same_conv(seed)
    check_op("conv2d", arrays, dtype=dtype, seed=seed, **kw)
    assert routes == ["same"]  # backward-data as a correlation with the flipped kernel
    check_op("conv_transpose2d", arrays, dtype=dtype, seed=seed, **kw)


@pytest.mark.parametrize("seed", range(60))
def test_conv_transpose2d_subpixel_random(seed, monkeypatch):
    """Strides that divide the kernel (the usual ×2 upsampling, k4 s2): the sub-pixel route."""
    taken = routes_taken(monkeypatch)
    arrays, kw, dtype = random_subpixel(seed)
    check_op("conv_transpose2d", arrays, dtype=dtype, seed=seed, **kw)
    assert taken == ["subpixel"]


@pytest.mark.parametrize("seed", SEEDS)
def test_conv_transpose2d_random(seed, monkeypatch):
    small_tiles_and_blocks(seed, monkeypatch)
    arrays, kw, dtype = random_conv(seed, transposed=True)
    check_op("conv_transpose2d", arrays, dtype=dtype, seed=seed, **kw)


@pytest.mark.parametrize("seed", SEEDS)
def test_max_pool2d_random(seed, monkeypatch):
    small_tiles_and_blocks(seed, monkeypatch)
    x, k, kw, dtype = random_pool(seed, "max")
    _, cache = check_op("max_pool2d", [x], k, dtype=dtype, seed=seed, **kw)
    _, idx = TF.max_pool2d(torch.tensor(x), k, **kw, return_indices=True)
    np.testing.assert_array_equal(cache.indices, idx.numpy())


@pytest.mark.parametrize("seed", SEEDS)
def test_avg_pool2d_random(seed, monkeypatch):
    small_tiles_and_blocks(seed, monkeypatch)
    x, k, kw, dtype = random_pool(seed, "avg")
    check_op("avg_pool2d", [x], k, dtype=dtype, seed=seed, **kw)


@pytest.mark.parametrize("seed", SEEDS)
def test_max_unpool2d_random(seed):
    rng = np.random.default_rng(seed)
    x, k, kw, dtype = random_pool(seed, "max")
    kw = dict(stride=kw["stride"], padding=kw["padding"])  # unpool has no dilation / ceil_mode
    x = x.astype(dtype)
    pooled, cache = F.max_pool2d(x, k, **kw)
    size = x.shape[2:] if rng.random() < 0.5 else None
    if size is None:  # torch's default size may be too small for these indices: then name one
        st = k if kw["stride"] is None else kw["stride"]
        default = [(o - 1) * st[a] - 2 * kw["padding"][a] + k[a] for a, o in enumerate(pooled.shape[2:])]
        if cache.indices.max() >= default[0] * default[1]:
            size = x.shape[2:]
    check_op("max_unpool2d", [pooled], cache.indices, k, dtype=dtype, seed=seed, output_size=size, **kw)


@pytest.mark.parametrize("seed", SEEDS)
def test_linear_random(seed, monkeypatch):
    small_tiles_and_blocks(seed, monkeypatch)
    rng = np.random.default_rng(seed)
    lead = tuple(int(v) for v in rng.integers(1, 5, size=int(rng.integers(1, 4))))
    fin, fout = (int(v) for v in rng.integers(1, 20, size=2))
    b = rng.standard_normal(fout) if rng.random() < 0.7 else None
    arrays = [rng.standard_normal(lead + (fin,)), rng.standard_normal((fout, fin)), b]
    check_op("linear", arrays, dtype=random_dtype(rng), seed=seed)


ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh"]


@pytest.mark.parametrize("seed", SEEDS)
def test_activations_random(seed, monkeypatch):
    small_tiles_and_blocks(seed, monkeypatch)
    rng = np.random.default_rng(seed)
    name = ACTIVATIONS[seed % 4]
    shape = tuple(int(v) for v in rng.integers(1, 6, size=int(rng.integers(1, 5))))
    x = rng.standard_normal(shape) * float(rng.choice([1, 10]))
    x[np.abs(x) < 1e-3] = 0.5  # relu's kink: no finite difference straddles it
    # slopes in [0, 1), above 1 and negative: leaky_relu takes the larger or the smaller of Z and slope·Z
    kw = {"negative_slope": float(rng.choice([rng.uniform(0, 1), rng.uniform(1, 3), -rng.uniform(0, 1)]))
          } if name == "leaky_relu" else {}
    check_op(name, [x], dtype=random_dtype(rng), seed=seed, **kw)


@pytest.mark.parametrize("seed", SEEDS)
def test_softmax_cross_entropy_random(seed):
    rng = np.random.default_rng(seed)
    dtype = random_dtype(rng)
    n, k = int(rng.integers(1, 9)), int(rng.integers(2, 12))
    logits = (rng.standard_normal((n, k)) * float(rng.choice([1, 30]))).astype(dtype)
    targets = rng.integers(0, k, size=n)
    eps = float(rng.choice([0.0, 0.1, rng.uniform(0, 1)]))
    loss, dlogits = F.softmax_cross_entropy(logits, targets, label_smoothing=eps)
    lt = torch.tensor(logits, requires_grad=True)
    ref = TF.cross_entropy(lt, torch.tensor(targets), label_smoothing=eps)
    ref.backward()
    assert abs(loss - ref.item()) <= RTOL_LOSS[dtype] * max(1.0, abs(ref.item()))
    assert_close(dlogits, lt.grad, dtype, "dlogits")


RTOL_LOSS = {np.float64: 1e-7, np.float32: 1e-5}


# --------------------------------------------------------------------------- central differences
def _gradcheck(fwd, bwd, arrays, seed=0):
    """Analytic gradients of Σ fwd(arrays) ⊙ dout equal central differences (float64)."""
    rng = np.random.default_rng(seed)
    out, cache = fwd(*arrays)
    dout = rng.standard_normal(out.shape)
    ours = bwd(dout, cache)
    ours = ours if isinstance(ours, tuple) else (ours,)
    numeric = numeric_grads(lambda *a: fwd(*a)[0], arrays, dout)
    for k, (a, n) in enumerate(zip(ours, numeric)):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-7, err_msg=f"gradient {k}")


CONV_SWEEP = [  # (N, Cin, Cout, H, W, kh, kw, stride, padding, dilation, groups)
    (2, 1, 2, 5, 5, 3, 3, 1, 0, 1, 1),
    (1, 2, 3, 6, 7, 2, 3, 2, 1, 1, 1),
    (2, 2, 2, 7, 6, 3, 2, 3, 2, 1, 1),
    (1, 4, 2, 6, 6, 3, 3, 1, 1, 2, 2),
    (1, 3, 3, 5, 8, 1, 4, (2, 1), (0, 2), (1, 2), 3),
    (2, 2, 4, 4, 4, 4, 4, 1, 2, 1, 2),
]


@pytest.mark.parametrize("cfg", CONV_SWEEP)
def test_conv2d_gradcheck(cfg):
    n, ci, co, h, w, kh, kw, s, p, d, g = cfg
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal((n, ci, h, w)), rng.standard_normal((co, ci // g, kh, kw)),
              rng.standard_normal(co)]
    _gradcheck(lambda x, k, b: F.conv2d(x, k, b, stride=s, padding=p, dilation=d, groups=g),
               F.conv2d_backward, arrays)


@pytest.mark.parametrize("cfg", CONV_SWEEP)
def test_conv_transpose2d_gradcheck(cfg):
    n, ci, co, h, w, kh, kw, s, p, d, g = cfg
    rng = np.random.default_rng(2)
    op = 1 if max(np.atleast_1d(s)) > 1 else 0
    op = tuple(min(op, max(a, b) - 1) for a, b in zip(np.broadcast_to(s, 2), np.broadcast_to(d, 2)))
    arrays = [rng.standard_normal((n, ci, h, w)), rng.standard_normal((ci, co // g, kh, kw)),
              rng.standard_normal(co)]
    _gradcheck(lambda x, k, b: F.conv_transpose2d(x, k, b, stride=s, padding=p, output_padding=op,
                                                  dilation=d, groups=g),
               F.conv_transpose2d_backward, arrays)


POOL_SWEEP = [  # (kernel, stride, padding, ceil_mode, extra)
    (2, None, 0, False, {}),
    (3, 2, 1, False, {}),  # overlapping windows
    (3, 2, 1, True, {}),
    ((2, 3), (1, 2), (1, 0), True, {}),
    (3, 1, 1, False, {}),
]


@pytest.mark.parametrize("cfg", POOL_SWEEP)
@pytest.mark.parametrize("dilation", [1, 2])
def test_max_pool2d_gradcheck(cfg, dilation):
    k, s, p, ceil, _ = cfg
    x = tie_free(np.random.default_rng(3), (2, 2, 7, 8))
    _gradcheck(lambda a: F.max_pool2d(a, k, stride=s, padding=p, dilation=dilation, ceil_mode=ceil),
               F.max_pool2d_backward, [x])


@pytest.mark.parametrize("cfg", POOL_SWEEP)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_gradcheck(cfg, count_include_pad):
    k, s, p, ceil, _ = cfg
    x = np.random.default_rng(4).standard_normal((2, 2, 7, 8))
    _gradcheck(lambda a: F.avg_pool2d(a, k, stride=s, padding=p, ceil_mode=ceil,
                                      count_include_pad=count_include_pad),
               F.avg_pool2d_backward, [x])


def test_linear_gradcheck():
    rng = np.random.default_rng(5)
    _gradcheck(F.linear, F.linear_backward, [rng.standard_normal((3, 2, 5)), rng.standard_normal((4, 5)),
                                            rng.standard_normal(4)])


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_gradcheck(name):
    x = np.random.default_rng(6).standard_normal((3, 4, 5))
    _gradcheck(getattr(F, name), getattr(F, name + "_backward"), [x])


def test_softmax_cross_entropy_gradcheck():
    rng = np.random.default_rng(7)
    logits, y = rng.standard_normal((4, 5)), rng.integers(0, 5, size=4)
    _, dlogits = F.softmax_cross_entropy(logits, y, label_smoothing=0.1)
    numeric = numeric_grads(lambda z: np.array(F.softmax_cross_entropy(z, y, label_smoothing=0.1)[0]),
                            [logits], np.array(1.0))
    np.testing.assert_allclose(dlogits, numeric[0], rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- ties, dtypes, conventions
def test_max_pool2d_ties_go_to_the_first_index_as_torch():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1:3, 1:3] = 1.0  # a plateau spanning several overlapping windows
    for kw in [dict(stride=1), dict(stride=2), dict(stride=1, padding=1)]:
        out, cache = F.max_pool2d(x, 3 if "padding" in kw else 2, **kw)
        ref, idx = TF.max_pool2d(torch.tensor(x), 3 if "padding" in kw else 2, **kw, return_indices=True)
        np.testing.assert_array_equal(cache.indices, idx.numpy())
        check_op("max_pool2d", [x], 3 if "padding" in kw else 2, **kw)


def test_float32_stays_float32_and_float64_works():
    rng = np.random.default_rng(8)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
        w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
        out, cache = F.conv2d(x, w, np.zeros(4, dtype))
        assert out.dtype == dtype
        assert all(g.dtype == dtype for g in F.conv2d_backward(out, cache))
        for op in ("max_pool2d", "avg_pool2d"):
            o, c = getattr(F, op)(x, 2)
            assert o.dtype == dtype and getattr(F, op + "_backward")(o, c).dtype == dtype


def test_conv2d_backward_data_is_full_correlation_with_flipped_kernel_not_double_flip():
    """The convention of docs/math.md, on numbers: for stride 1, ∂A = full cross-correlation of ∂Z
    with the flipped kernel (= transposed convolution with K).  Flipping *and* transposing is wrong."""
    rng = np.random.default_rng(9)
    x, k = rng.standard_normal((1, 1, 5, 5)), rng.standard_normal((1, 1, 3, 3))
    out, cache = F.conv2d(x, k)
    dz = rng.standard_normal(out.shape)
    dx, _, _ = F.conv2d_backward(dz, cache)
    flipped = k[:, :, ::-1, ::-1].copy()
    full_corr, _ = F.conv2d(dz, flipped, padding=2)  # full cross-correlation with flipped K
    np.testing.assert_allclose(dx, full_corr, rtol=1e-12)
    transposed, _ = F.conv_transpose2d(dz, k)  # transposed convolution with K itself
    np.testing.assert_allclose(dx, transposed, rtol=1e-12)
    double_flip, _ = F.conv_transpose2d(dz, flipped)  # the seed read literally: flip + transpose
    assert np.abs(double_flip - dx).max() > 1e-3


def test_first_layer_can_skip_the_input_gradient():
    rng = np.random.default_rng(10)
    out, cache = F.conv2d(rng.standard_normal((2, 1, 6, 6)), rng.standard_normal((3, 1, 3, 3)))
    dx, dw, db = F.conv2d_backward(np.ones_like(out), cache, input_grad=False)
    assert dx is None and dw.shape == (3, 1, 3, 3) and db is None


@pytest.mark.parametrize("n, h, k, s, p, g", [(20, 12, 3, 1, 0, 1), (32, 14, 5, 1, 0, 2), (17, 9, 3, 2, 1, 1),
                                              (24, 28, 5, 1, 2, 1), (16, 10, 4, 2, 1, 2)])
def test_conv_at_training_batch_sizes_both_layouts(n, h, k, s, p, g):
    """Training batch sizes, NCHW inputs (seed 0) and channels-last ones (seed 1, in check_op)."""
    rng = np.random.default_rng(n)
    x, w, b = rng.standard_normal((n, 2 * g, h, h)), rng.standard_normal((4, 2, k, k)), rng.standard_normal(4)
    check_op("conv2d", [x, w, b], stride=s, padding=p, groups=g)
    check_op("conv2d", [x, w, b], dtype=np.float32, stride=s, padding=p, groups=g, seed=1)
    check_op("conv_transpose2d", [x, rng.standard_normal((2 * g, 3, k, k)), None], stride=s, padding=p, groups=g)
    check_op("conv_transpose2d", [x, rng.standard_normal((2 * g, 3, k, k)), None], stride=s, padding=p, groups=g,
             seed=1)
    check_op("max_pool2d", [tie_free(rng, (n, 3, h, h))], 2)
    check_op("max_pool2d", [tie_free(rng, (n, 3, h, h))], 2, seed=1)


@pytest.mark.parametrize("c, g, h, w, k, s, p, d, cout, wide", [
    (1, 1, 28, 28, 5, 1, 2, 1, 6, True),             # LeNet-5's conv1
    (3, 1, 11, 13, 3, 1, 1, 1, 4, True),             # RGB, a non-square input
    (2, 2, 9, 10, (3, 2), (2, 1), (0, 1), (1, 2), 4, True),  # groups, rows strided, columns dilated
    (1, 1, 7, 6, (1, 4), 1, 0, 1, 15, True),         # one kernel row; 15 outputs
    (1, 1, 8, 8, (3, 1), 1, 1, 1, 4, False),         # one kernel column: no columns to wrap
    (3, 1, 12, 12, 3, (1, 2), 1, 1, 4, False),       # columns strided: not wide
    (8, 1, 10, 10, 3, 1, 1, 1, 4, False),            # 24-value kernel rows: copied by rows
    (3, 1, 10, 10, 3, 1, 1, 1, 16, False),           # 16 outputs (a CIFAR net's 3→16): copying Z out costs more
])
def test_wide_rows_of_first_layers_equal_torch(c, g, h, w, k, s, p, d, cout, wide):
    """Few channels and few outputs at column stride 1: the patches span the padded width
    (`windows(wrap=True)`) and the extra columns are computed and dropped — forward, ∂A and ∂K still
    equal torch's, both layouts."""
    rng = np.random.default_rng(c * h + w)
    kh, kw = (k, k) if isinstance(k, int) else k
    x, wt, b = rng.standard_normal((5, c, h, w)), rng.standard_normal((cout, c // g, kh, kw)), rng.standard_normal(cout)
    for seed, dtype in ((0, np.float64), (1, np.float32)):
        check_op("conv2d", [x, wt, b], dtype=dtype, seed=seed, stride=s, padding=p, dilation=d, groups=g)
    out, cache = F.conv2d(x, wt, b, stride=s, padding=p, dilation=d, groups=g)
    assert (cache.windows.shape[2] > out.shape[3]) == wide, cache.windows.shape


@pytest.mark.parametrize("n, c, h, k, s, p, tile_bytes", [
    (32, 3, 12, 3, 1, 1, 3 * 9 * 12 * 8 * 12),   # whole samples, a few a tile ('same' route)
    (20, 16, 9, 3, 2, 0, 1),                     # one output row of one sample a tile; scatter
    (3, 2, 20, 4, 2, 1, 2 * 16 * 10 * 4),        # rows of one sample (sub-pixel route)
    (6, 2, 17, 5, 1, 2, 2 * 25 * 17 * 17 * 4 * 2),  # whole samples, one or two a tile
])
def test_conv_in_cache_sized_tiles_equals_torch(n, c, h, k, s, p, tile_bytes, monkeypatch):
    """im2col, the GEMMs and col2im run a tile of output positions at a time (_schedule.TILE_BYTES):
    shrunk so that every core runs several tiles, the results still equal torch's."""
    from convprop.functional import _schedule

    monkeypatch.setattr(_schedule, "TILE_BYTES", tile_bytes)
    monkeypatch.setattr(_schedule, "_count", 1)  # one block of the batch: its tiles alone
    counts = []
    tiles = _schedule.tiles
    monkeypatch.setattr(_schedule, "tiles", lambda *a: counts.append(len(t := tiles(*a))) or t)
    rng = np.random.default_rng(n)
    x, w, b = rng.standard_normal((n, c, h, h)), rng.standard_normal((c, c, k, k)), rng.standard_normal(c)
    check_op("conv2d", [x, w, b], stride=s, padding=p)
    check_op("conv2d", [x, w, b], dtype=np.float32, stride=s, padding=p, seed=1)
    check_op("conv_transpose2d", [x, w, None], stride=s, padding=p)
    assert len(counts) == 8 and min(counts) > 1, counts  # 3 tile loops per conv2d, 2 per conv_transpose2d


def test_patches_by_columns_run_in_smaller_tiles_equal_torch(monkeypatch):
    """A first layer's patches, copied by columns (_schedule.by_columns) for a GEMM of few outputs, are
    tiled COLUMNS_TILE_SHARE times finer (kept in L2): LeNet-5's conv1 at batch 16, in float64, is
    2.9 MB of patches over its wide rows (32 columns of the padded width for 28 outputs), one tile by
    TILE_BYTES alone, several here; the results still equal torch's.  With 16 outputs the tiles stay
    TILE_BYTES."""
    from convprop.functional import _schedule

    monkeypatch.setattr(_schedule, "_count", 1)  # one block of the batch: its tiles alone
    counts = []
    tiles = _schedule.tiles
    monkeypatch.setattr(_schedule, "tiles", lambda *a: counts.append(len(t := tiles(*a))) or t)
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((16, 1, 28, 28)), rng.standard_normal((6, 1, 5, 5)), rng.standard_normal(6)
    check_op("conv2d", [x, w, b], padding=2)
    assert sorted(counts) == [1, 8, 8], counts  # Z and ∂K by columns in 8 tiles; ∂A's scatter by TILE_BYTES in 1
    assert F.conv2d(x, w, b, padding=2)[1].windows.shape[1:3] == (28, 32)  # the wide rows
    counts.clear()
    check_op("conv2d", [x[:, :, :10, :10], w, None], padding=2)  # small: one tile
    assert max(counts) == 1, counts
    counts.clear()
    check_op("conv2d", [x, rng.standard_normal((16, 1, 5, 5)), None], padding=2)  # 16 outputs: 2 MiB tiles
    assert counts[0] == 1 and counts[-1] == 1, counts  # Z and ∂K (∂A between them)


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [(2, 2, 0, False), (3, 1, 1, False), (3, 2, 1, True)])
def test_max_pool_in_tiles_equals_torch(kernel, stride, padding, ceil_mode, monkeypatch):
    """max_pool2d gathers its windows' offsets a tile at a time into scratch: with tiles shrunk to
    rows of one sample, the outputs, torch's indices and the gradients still equal torch's, NaN
    winners included."""
    from convprop.functional import _schedule

    monkeypatch.setattr(_schedule, "TILE_BYTES", 1)
    counts = []
    tiles = _schedule.tiles
    monkeypatch.setattr(_schedule, "tiles", lambda *a: counts.append(len(t := tiles(*a))) or t)
    rng = np.random.default_rng(kernel)
    x = tie_free(rng, (3, 6, 11, 11))
    for seed in (0, 1):
        check_op("max_pool2d", [x], kernel, stride, padding, ceil_mode=ceil_mode, seed=seed)
        check_op("max_pool2d", [x], kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True, seed=seed)
    assert counts and min(counts) > 1, counts
    x[0, 1, 2, 3] = x[2, 5, 4, 4] = np.nan
    out, cache = F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)
    expected = torch.nn.functional.max_pool2d(torch.tensor(x), kernel, stride, padding, ceil_mode=ceil_mode)
    np.testing.assert_array_equal(out, expected.numpy())


@pytest.mark.parametrize("seed", [0, 1])
def test_an_empty_batch_goes_through_every_op(seed):
    """torch accepts a batch of 0 images; so do we, forward and backward, in either memory layout."""
    rng = np.random.default_rng(seed)
    x = np.zeros((0, 3, 8, 8))
    check_op("conv2d", [x, rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)], seed=seed, padding=1)
    check_op("conv2d", [x, rng.standard_normal((4, 3, 3, 3)), None], seed=seed, stride=2)
    check_op("conv_transpose2d", [x, rng.standard_normal((3, 2, 4, 4)), None], seed=seed, stride=2, padding=1)
    check_op("conv_transpose2d", [x, rng.standard_normal((3, 2, 3, 3)), None], seed=seed, stride=2)
    check_op("max_pool2d", [x], 2, seed=seed)
    check_op("avg_pool2d", [x], 3, seed=seed, stride=2, padding=1)
    check_op("linear", [np.zeros((0, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)], seed=seed)
    check_op("relu", [x], seed=seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_max_pool2d_nan_wins_as_in_torch(seed):
    """A window holding NaN pools to NaN and its gradient goes where torch sends it (torch takes
    `val > max || isnan(val)`: the last NaN of the window); ties among numbers go to the first."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((3, 2, 7, 7)), 1)  # rounding makes ties
    x[rng.random(x.shape) < 0.15] = np.nan
    for k, kw in ((2, {}), (3, dict(stride=2, padding=1)), (3, dict(stride=1, dilation=2))):
        out, cache = F.max_pool2d(layout(x, seed % 2 == 1), k, **kw)
        ref, idx = TF.max_pool2d(torch.tensor(x), k, **kw, return_indices=True)
        np.testing.assert_array_equal(out, ref.numpy())  # NaN where torch has NaN
        np.testing.assert_array_equal(cache.indices, idx.numpy())
        dout = rng.standard_normal(out.shape)
        xt = torch.tensor(x, requires_grad=True)
        TF.max_pool2d(xt, k, **kw).backward(torch.tensor(dout))
        np.testing.assert_allclose(F.max_pool2d_backward(dout, cache), xt.grad.numpy(), rtol=1e-12)


# --------------------------------------------------------------------------- normalisation, through check_op
@pytest.mark.parametrize("seed", range(8))
def test_batch_norm_random(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 5))
    shape = (int(rng.integers(2, 5)), c) + ((int(rng.integers(1, 5)), int(rng.integers(1, 5))) if seed % 2 else ())
    gamma, beta = rng.standard_normal(c) if seed % 4 < 2 else None, rng.standard_normal(c)
    check_op("batch_norm", [rng.standard_normal(shape) * 3 + 1, None, None, gamma, beta], dtype=random_dtype(rng),
             seed=seed, grads_of=(0, 3, 4), training=True)  # (x, running_mean, running_var, weight, bias)
    mean, var = rng.standard_normal(c), rng.random(c) + 0.5
    check_op("batch_norm", [rng.standard_normal(shape), mean, var, gamma, beta], seed=seed, grads_of=(0, 3, 4),
             training=False)


@pytest.mark.parametrize("seed", range(8))
def test_dropout_random(seed):
    """torch draws its own mask: the reference applies ours, checking the 1/(1 − p) scale and the backward."""
    rng = np.random.default_rng(seed)
    p = float(rng.choice([0.0, 0.2, 0.5, 0.9]))
    x = rng.standard_normal(tuple(int(v) for v in rng.integers(1, 6, size=int(rng.integers(1, 5)))))
    _, cache = check_op("dropout", [x], p, dtype=random_dtype(rng), seed=seed,
                        torch_fn=lambda x, p, cache: x if cache.mask is None else x * torch.tensor(cache.mask))
    assert cache.mask is None or np.isin(cache.mask, [0, cache.mask.dtype.type(1 / (1 - p))]).all()
    check_op("dropout", [x], p, False, seed=seed)  # eval: the identity, as torch


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_and_pooling_put_their_outputs_in_channels_last_memory(channels_last):
    """torch's channels_last: (N, C, H, W) shapes, (N, H, W, C) memory.  Conv and its gradients land
    channels-last whatever the input's layout; pooling, BatchNorm and ReLU keep their input's (so after a
    conv, channels-last); a Flatten reads the values in NCHW order (torch's, what a Linear's weights
    expect)."""
    from convprop.functional._windows import is_channels_last

    rng = np.random.default_rng(0)
    x = layout(rng.standard_normal((2, 3, 6, 6)), channels_last)
    z, cz = F.conv2d(x, rng.standard_normal((4, 3, 3, 3)), None, padding=1)
    p, cp = F.max_pool2d(z, 2)
    a, ca = F.avg_pool2d(p, 2, padding=1)
    t, ct = F.conv_transpose2d(a, rng.standard_normal((4, 2, 2, 2)), None, stride=2)
    r, _ = F.relu(t)
    bn, _ = F.batch_norm(t, None, None, training=True)
    assert all(is_channels_last(v) for v in (z, p, a, t, r, bn))
    assert is_channels_last(F.conv2d_backward(np.ones(z.shape), cz)[0])
    assert is_channels_last(F.max_pool2d_backward(np.ones(p.shape), cp))
    assert is_channels_last(F.avg_pool2d_backward(np.ones(a.shape), ca))
    assert is_channels_last(F.conv_transpose2d_backward(np.ones(t.shape), ct)[0])
    flat, _ = F.flatten(z, 1)
    np.testing.assert_array_equal(flat, np.ascontiguousarray(z).reshape(2, -1))
    for pool in (F.max_pool2d, F.avg_pool2d):  # on an input's own layout: NCHW stays NCHW, no copy first
        out, cache = pool(x, 2)
        assert is_channels_last(out) == channels_last
        assert is_channels_last(getattr(F, pool.__name__ + "_backward")(np.ones(out.shape), cache)) == channels_last


@pytest.mark.parametrize("c", [1, 3, 8, 9, 20])
@pytest.mark.parametrize("kind", ["nchw", "channels-last", "strided"])
def test_nhwc_copies_any_layout_in_channel_blocks(c, kind):
    """_windows.nhwc: the contiguous (N, H, W, C) array behind any (N, C, H, W) array — a view when it
    lies so already, else a copy made CONVERT_CHANNELS channels at a time — equal to NumPy's."""
    from convprop.functional._windows import nhwc

    rng = np.random.default_rng(c)
    x = {"nchw": rng.standard_normal((3, c, 5, 7)), "channels-last": layout(rng.standard_normal((3, c, 5, 7)), True),
         "strided": rng.standard_normal((3, 2 * c, 5, 9)).astype(np.float32)[:, ::2, :, 1:8]}[kind]
    got = nhwc(x)
    assert got.flags.c_contiguous and got.dtype == x.dtype
    np.testing.assert_array_equal(got, x.transpose(0, 2, 3, 1))
    assert np.shares_memory(got, x) == (kind == "channels-last" or kind == "nchw" and c == 1)
