"""torch.nn.functional's surface beyond the seed's chain: softmax, log-softmax, every form of
cross-entropy, flatten, ReLU at NaN.  Each case one line through check_op (float64 against autograd)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import F, check_op, numeric_grads, torch

rng = np.random.default_rng(0)


def logits(*shape, scale=3.0, seed=0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def classes(shape, k, seed=1, ignore=None):
    y = np.random.default_rng(seed).integers(0, k, size=shape)
    if ignore is not None:
        y.ravel()[::3] = ignore
    return y


def probs(*shape, seed=2):
    p = np.random.default_rng(seed).random(shape)
    return p / p.sum(axis=1, keepdims=True)


W5 = np.array([0.5, 2.0, 1.0, 0.1, 3.0])


def pool_indices(shape, k, **kw):
    """The indices torch's max_pool2d hands to max_unpool2d, for distinct values of this shape."""
    x = np.random.default_rng(14).permutation(np.prod(shape)).reshape(shape).astype(np.float64)
    return torch.nn.functional.max_pool2d(torch.tensor(x), k, return_indices=True, **kw)[1].numpy()


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, dim", [((4, 5), 1), ((4, 5), -1), ((3, 4, 5), 0), ((2, 3, 4, 5), 1), ((6,), 0),
                                        ((2, 3, 4, 5), -2)])
def test_softmax_and_log_softmax(name, shape, dim):
    check_op(name, [logits(*shape, scale=10)], dim)
    check_op(name, [logits(*shape)], dim, dtype=np.float32, seed=1)


@pytest.mark.parametrize("kw", [
    {}, {"reduction": "sum"}, {"reduction": "none"}, {"weight": W5}, {"weight": W5, "reduction": "sum"},
    {"ignore_index": 2}, {"ignore_index": -100}, {"weight": W5, "ignore_index": 1}, {"label_smoothing": 0.2},
    {"label_smoothing": 0.3, "weight": W5}, {"label_smoothing": 0.3, "weight": W5, "ignore_index": 4},
    {"label_smoothing": 0.1, "ignore_index": 0, "reduction": "none"}, {"label_smoothing": 1.0, "reduction": "sum"},
])
@pytest.mark.parametrize("shape", [(7, 5), (3, 5, 4), (2, 5, 3, 4)])
def test_cross_entropy_class_indices(kw, shape):
    y = classes(shape[:1] + shape[2:], 5, ignore=kw.get("ignore_index"))
    check_op("cross_entropy", [logits(*shape), y], **kw)
    check_op("cross_entropy", [logits(*shape, seed=3), y], dtype=np.float32, seed=1, **kw)


@pytest.mark.parametrize("kw", [{}, {"reduction": "sum"}, {"reduction": "none"}, {"weight": W5},
                                {"label_smoothing": 0.25, "weight": W5, "reduction": "mean"},
                                {"label_smoothing": 0.1, "reduction": "none"}])
@pytest.mark.parametrize("shape", [(6, 5), (2, 5, 3, 2)])
def test_cross_entropy_probability_targets_and_their_gradient(kw, shape):
    check_op("cross_entropy", [logits(*shape), probs(*shape)], **kw)  # ∂target too, as torch


@pytest.mark.parametrize("kw", [{}, {"reduction": "none"}, {"weight": W5, "label_smoothing": 0.2}])
def test_cross_entropy_unbatched(kw):
    check_op("cross_entropy", [logits(5), np.array(3)], **kw)
    check_op("cross_entropy", [logits(5), probs(1, 5)[0]], **kw)


def test_cross_entropy_weighted_mean_divides_by_the_weights_of_the_targets():
    z, y = logits(4, 5), np.array([0, 1, 1, 4])
    loss, _ = F.cross_entropy(z, y, W5)
    per_row, _ = F.cross_entropy(z, y, reduction="none")
    assert np.isclose(loss, (W5[y] * per_row).sum() / W5[y].sum())


def test_cross_entropy_every_row_ignored_is_nan_as_torch():
    loss, _ = F.cross_entropy(logits(3, 4), np.full(3, -100))
    assert np.isnan(loss) and np.isnan(torch.nn.functional.cross_entropy(torch.zeros(3, 4),
                                                                       torch.full((3,), -100)).item())


def test_cross_entropy_central_differences():
    z, y = logits(3, 4, 2), classes((3, 2), 4)
    w = np.array([1.0, 0.5, 2.0, 1.5])
    _, cache = F.cross_entropy(z, y, w, label_smoothing=0.2, ignore_index=1)
    numeric = numeric_grads(lambda a: F.cross_entropy(a, y, w, label_smoothing=0.2, ignore_index=1)[0], [z],
                            np.array(1.0))
    np.testing.assert_allclose(F.cross_entropy_backward(1.0, cache)[0], numeric[0], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("start, end", [(0, -1), (1, -1), (1, 2), (2, 3), (-2, -1), (0, 0)])
def test_flatten(start, end):
    check_op("flatten", [logits(2, 3, 4, 5)], start, end)


def test_relu_passes_the_gradient_through_nan_as_torch():
    x = np.array([[-1.0, 0.0, np.nan, 2.0, -np.inf, np.inf]])
    out, cache = F.relu(x)
    dx = F.relu_backward(np.ones_like(x), cache)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.relu(xt)
    ref.backward(torch.ones_like(ref))
    np.testing.assert_array_equal(out, ref.detach().numpy())  # NaN where torch has NaN
    np.testing.assert_array_equal(dx, xt.grad.numpy())  # [0, 0, 1, 1, 0, 1]


@pytest.mark.parametrize("call, error, words", [
    (lambda: F.cross_entropy(logits(2, 3), np.array([0, 3])), ValueError, ["target", "[0, 3)", "ignore_index"]),
    (lambda: F.cross_entropy(logits(2, 3), np.array([0])), ValueError, ["target", "(2,)", "(1,)"]),
    (lambda: F.cross_entropy(logits(2, 3), np.array([0, 1]), reduction="avg"), ValueError, ["reduction", "'avg'"]),
    (lambda: F.cross_entropy(logits(2, 3), np.array([0, 1]), np.ones(4)), ValueError, ["weight", "(3,)", "(4,)"]),
    (lambda: F.cross_entropy(logits(2, 3), probs(2, 4)), ValueError, ["target", "(2, 3)", "(2, 4)"]),
    (lambda: F.cross_entropy(logits(2, 3), np.array(["a", "b"])), TypeError, ["target", "integer"]),
    (lambda: F.cross_entropy(logits(2, 3), np.array([0, 1]), label_smoothing=1.5), ValueError, ["label_smoothing"]),
    (lambda: F.softmax(logits(2, 3), 2), ValueError, ["dim", "[-2, 2)", "2"]),
    (lambda: F.flatten(logits(2, 3), 1, 0), ValueError, ["start_dim", "end_dim"]),
])
def test_errors_name_the_argument(call, error, words):
    with pytest.raises(error) as e:
        call()
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (5, 3, 4, 4), (64, 4, 6, 6)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batch_norm_against_torch(shape, training, affine, dtype):
    """F.batch_norm in both modes (a mean far from 0, where x − μ must not cancel), running statistics too."""
    from helpers import assert_close

    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 3 + 20).astype(dtype)
    c = shape[1]
    rm, rv = rng.standard_normal(c).astype(dtype) + 20, rng.random(c).astype(dtype) + 5
    w, b = (rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)) if affine else (None, None)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    out, cache = F.batch_norm(x, rm, rv, w, b, training, 0.2, 1e-3)
    leaves = [torch.tensor(a, requires_grad=True) if a is not None else None for a in (x, w, b)]
    ref = torch.nn.functional.batch_norm(leaves[0], trm, trv, leaves[1], leaves[2], training, 0.2, 1e-3)
    assert_close(out, ref, dtype, "forward")
    dout = rng.standard_normal(shape).astype(dtype)
    ref.backward(torch.tensor(dout))
    for k, (g, leaf) in enumerate(zip(F.batch_norm_backward(dout, cache), leaves)):
        assert (g is None) == (leaf is None), k
        if leaf is not None:
            assert_close(g, leaf.grad, dtype, f"gradient {k}")
    assert_close(rm, trm, dtype, "running_mean")
    assert_close(rv, trv, dtype, "running_var")


# --------------------------------------------------------------------------- adaptive pooling, 1-D ops
@pytest.mark.parametrize("shape, size", [((2, 3, 7, 9), (3, 4)), ((2, 3, 7, 9), 1), ((1, 2, 5, 5), 5),
                                         ((2, 2, 4, 6), (8, 3)), ((3, 5, 5), 2), ((2, 1, 10, 3), (None, 2)),
                                         ((1, 2, 13, 11), (6, 5))])
@pytest.mark.parametrize("op", ["adaptive_avg_pool2d", "adaptive_max_pool2d"])
def test_adaptive_pooling_any_sizes(op, shape, size):
    from cases import tie_free

    x = tie_free(np.random.default_rng(3), shape)
    check_op(op, [x], size)
    check_op(op, [x], size, dtype=np.float32, seed=1)
    if op == "adaptive_max_pool2d":  # (out, indices) as torch's
        check_op(op, [x], size, True)


@pytest.mark.parametrize("kw", [{}, {"stride": 2}, {"padding": 2, "dilation": 2}, {"groups": 2, "stride": 3},
                                {"padding": 1}])
@pytest.mark.parametrize("batched", [True, False])
def test_conv1d(kw, batched):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((3, 4, 11)), rng.standard_normal((6, 4 // kw.get("groups", 1), 3)), \
        rng.standard_normal(6)
    check_op("conv1d", [x if batched else x[0], w, b], **kw)
    check_op("conv1d", [x if batched else x[0], w, None], dtype=np.float32, seed=1, **kw)


@pytest.mark.parametrize("op, k, kw", [("max_pool1d", 2, {}), ("max_pool1d", 3, {"stride": 2, "padding": 1}),
                                       ("max_pool1d", 2, {"dilation": 2, "ceil_mode": True}),
                                       ("avg_pool1d", 3, {"stride": 2, "padding": 1, "count_include_pad": False}),
                                       ("avg_pool1d", 2, {"ceil_mode": True, "stride": 3})])
@pytest.mark.parametrize("batched", [True, False])
def test_pool1d(op, k, kw, batched):
    from cases import tie_free

    x = tie_free(np.random.default_rng(5), (2, 3, 10))
    check_op(op, [x if batched else x[0]], k, **kw)
    if op == "max_pool1d":  # (out, indices) as torch's
        check_op(op, [x if batched else x[0]], k, return_indices=True, **kw)


def test_sequence_and_adaptive_modules_match_torch():
    """A small sequence CNN (Conv1d, MaxPool1d, AvgPool1d) and adaptive pooling as modules, against torch.nn."""
    from helpers import assert_close

    from convprop import nn

    tnn = torch.nn
    ours = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(4, 4, 2, stride=2),
                         nn.AvgPool1d(2, stride=1), nn.Flatten(), nn.Linear(4 * 2, 5)).to(np.float64)
    theirs = tnn.Sequential(tnn.Conv1d(3, 4, 3, padding=1), tnn.ReLU(), tnn.MaxPool1d(2), tnn.Conv1d(4, 4, 2, stride=2),
                            tnn.AvgPool1d(2, stride=1), tnn.Flatten(), tnn.Linear(4 * 2, 5)).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(6).standard_normal((2, 3, 12))
    xt = torch.tensor(x, requires_grad=True)
    ref = theirs(xt)
    assert_close(ours(x), ref, np.float64, "logits")
    dout = np.random.default_rng(7).standard_normal(ref.shape)
    ref.backward(torch.tensor(dout))
    assert_close(ours.backward(dout), xt.grad, np.float64, "dx")
    for name, p in theirs.named_parameters():
        assert_close(dict(ours.named_parameters())[name].grad, p.grad, np.float64, name)
    for ours_pool, their_pool in ((nn.AdaptiveMaxPool2d((2, 3), return_indices=True),
                                   tnn.AdaptiveMaxPool2d((2, 3), return_indices=True)),
                                  (nn.AdaptiveAvgPool2d(3), tnn.AdaptiveAvgPool2d(3))):
        img = np.random.default_rng(8).permutation(2 * 7 * 5).reshape(1, 2, 7, 5).astype(np.float64)
        out, ref = ours_pool(img), their_pool(torch.tensor(img))
        for a, b in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-14)


# --------------------------------------------------------------------------- conv and pooling surface
@pytest.mark.parametrize("k, d, groups", [(2, 1, 1), (3, 1, 1), (4, 1, 2), (4, 2, 1), (3, 3, 1), ((2, 5), 1, 1),
                                          ((4, 1), (1, 3), 2), (1, 1, 1)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_same_and_valid_padding_as_torch(k, d, groups, padding):
    """'same' with an even d·(k − 1) pads one more row/column at the bottom/right, as torch."""
    rng = np.random.default_rng(9)
    kh, kw = (k, k) if isinstance(k, int) else k
    x, w = rng.standard_normal((2, 4, 9, 10)), rng.standard_normal((6, 4 // groups, kh, kw))
    out, _ = check_op("conv2d", [x, w, rng.standard_normal(6)], padding=padding, dilation=d, groups=groups)
    check_op("conv2d", [x, w, None], dtype=np.float32, seed=1, padding=padding, dilation=d, groups=groups)
    if padding == "same":
        assert out.shape[2:] == x.shape[2:]


@pytest.mark.parametrize("op, arrays, args, kw", [
    ("conv2d", [(3, 7, 8), (4, 3, 3, 3), (4,)], (), {"stride": 2, "padding": 1}),
    ("conv2d", [(4, 7, 8), (4, 2, 2, 3), None], (), {"padding": "same", "groups": 2}),
    ("conv_transpose2d", [(3, 5, 4), (3, 2, 4, 4), (2,)], (), {"stride": 2, "padding": 1}),
    ("max_pool2d", [(3, 7, 8)], (3,), {"stride": 2, "padding": 1, "ceil_mode": True}),
    ("max_pool2d", [(3, 7, 8)], (3,), {"stride": 2, "padding": 1, "return_indices": True}),
    ("max_unpool2d", [(3, 4, 4)], (pool_indices((3, 8, 8), 2), 2), {}),
    ("max_unpool2d", [(2, 4, 5)], (pool_indices((2, 7, 9), 3, stride=2, padding=1), 3),
     {"stride": 2, "padding": 1, "output_size": (8, 10)}),
    ("avg_pool2d", [(3, 7, 8)], (2,), {"count_include_pad": False, "padding": 1}),
    ("avg_pool2d", [(3, 7, 8)], (3,), {"divisor_override": 5, "stride": 2}),
])
def test_unbatched_conv_and_pooling(op, arrays, args, kw):
    from cases import tie_free

    rng = np.random.default_rng(10)
    arrays = [None if s is None else tie_free(rng, s) for s in arrays]
    _, cache = check_op(op, arrays, *args, **kw)
    check_op(op, arrays, *args, dtype=np.float32, seed=1, **kw)
    if op == "max_pool2d":
        _, ref = torch.nn.functional.max_pool2d(torch.tensor(arrays[0]), *args, **{**kw, "return_indices": True})
        np.testing.assert_array_equal(cache.indices, ref.numpy())


@pytest.mark.parametrize("d, shape, k, kw", [
    ("2d", (2, 3, 6, 7), 2, {}), ("2d", (3, 7, 8), 3, {"stride": 2, "padding": 1}),
    ("2d", (2, 2, 9, 9), (3, 2), {"stride": (2, 1), "padding": (1, 0)}), ("2d", (2, 5, 5), 2, {"stride": 1}),
    ("1d", (2, 3, 9), 2, {}), ("1d", (3, 10), 3, {"stride": 2, "padding": 1}), ("1d", (2, 2, 7), 2, {"stride": 1}),
    ("2d", (0, 3, 4, 4), 2, {}), ("1d", (0, 3, 8), 2, {}),  # an empty batch, as torch
])
def test_max_pool_return_indices_round_trip_through_max_unpool(d, shape, k, kw):
    """(out, indices) as torch's; max_unpool(max_pool(x)) and ∂x back through both against torch autograd,
    in 2-D ((N, C, H, W) or (C, H, W)) and 1-D ((N, C, L) or (C, L))."""
    from cases import tie_free
    from helpers import assert_close

    size = shape[-2:] if d == "2d" else shape[-1:]
    x = tie_free(np.random.default_rng(15), shape)
    (pooled, indices), pool_cache = check_op(f"max_pool{d}", [x], k, return_indices=1, **kw)  # truthy, as torch
    up, unpool_cache = check_op(f"max_unpool{d}", [pooled], indices, k, output_size=size, **kw)
    xt = torch.tensor(x, requires_grad=True)
    tf = torch.nn.functional
    ref = getattr(tf, f"max_unpool{d}")(*getattr(tf, f"max_pool{d}")(xt, k, return_indices=True, **kw), k,
                                         output_size=size, **kw)
    assert_close(up, ref, np.float64, f"max_unpool{d}(max_pool{d}(x))")
    dup = np.random.default_rng(16).standard_normal(up.shape)
    ref.backward(torch.tensor(dup))
    dx = getattr(F, f"max_pool{d}_backward")(getattr(F, f"max_unpool{d}_backward")(dup, unpool_cache), pool_cache)
    assert_close(dx, xt.grad, np.float64, "∂x through both")


@pytest.mark.parametrize("k, kw", [(2, {"divisor_override": 3}),
                                   (3, {"stride": 2, "padding": 1, "divisor_override": 2}),
                                   ((2, 3), {"ceil_mode": True, "divisor_override": 7})])
def test_avg_pool2d_divisor_override(k, kw):
    check_op("avg_pool2d", [np.random.default_rng(11).standard_normal((2, 3, 7, 8))], k, **kw)


def test_positional_arguments_in_torch_order():
    rng = np.random.default_rng(12)
    x, w, b = rng.standard_normal((2, 4, 8, 8)), rng.standard_normal((6, 2, 3, 3)), rng.standard_normal(6)
    check_op("conv2d", [x, w, b], 2, 1, 1, 2)  # stride, padding, dilation, groups
    w_t = rng.standard_normal((4, 3, 3, 3))
    check_op("conv_transpose2d", [x, w_t, None], 2, 1, 1, 2, 1)  # stride, padding, output_padding, groups, dilation
    check_op("max_pool2d", [x], 3, 2, 1, 1, True)  # kernel, stride, padding, dilation, ceil_mode
    check_op("max_pool2d", [x], 3, 2, 1, 1, True, True)  # …, ceil_mode, return_indices
    check_op("max_pool1d", [x[:, :, 0]], 3, 2, 1, 1, True, True)
    check_op("avg_pool2d", [x], 3, 2, 1, True, False, None)  # …, ceil_mode, count_include_pad, divisor_override
    check_op("conv1d", [x[:, :, 0], w[:, :, 0], b], 1, "same", 2, 2)


def test_padding_errors_name_the_argument():
    x, w = np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match="'same' is for stride 1"):
        F.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding: expected an int, a pair, 'same' or 'valid', got 'full'"):
        F.conv2d(x, w, padding="full")
    with pytest.raises(ValueError, match="divisor_override"):
        F.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match=r"dout: expected shape \(3, 3, 3\)"):
        F.conv2d_backward(np.zeros((1, 3, 3, 3)), F.conv2d(x[0], w)[1])


def test_modules_take_unbatched_images_and_string_padding():
    from helpers import assert_close

    from convprop import nn

    tnn = torch.nn
    ours = nn.Sequential(nn.Conv2d(2, 3, 4, padding="same"), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 2, 3),
                         nn.AvgPool2d(2, divisor_override=3), nn.AdaptiveAvgPool2d((1, 2))).to(np.float64)
    theirs = tnn.Sequential(tnn.Conv2d(2, 3, 4, padding="same"), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(3, 2, 3),
                            tnn.AvgPool2d(2, divisor_override=3), tnn.AdaptiveAvgPool2d((1, 2))).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(13).standard_normal((2, 12, 12))  # one image, no batch axis
    xt = torch.tensor(x, requires_grad=True)
    ref = theirs(xt)
    assert_close(ours(x), ref, np.float64, "out")
    ref.backward(torch.ones_like(ref))
    assert_close(ours.backward(np.ones(ref.shape)), xt.grad, np.float64, "dx")
