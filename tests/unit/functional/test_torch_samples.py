"""Where torch accepts an argument, convprop accepts it and answers the same; where torch refuses, convprop
refuses in one clear line (ValueError or TypeError, never a NumPy error).

Inputs: torch's own sample inputs (the OpInfo database of torch's test suite) for every convprop.functional
op that has a matching OpInfo, and generated edge cases: an empty batch through every op, an empty
dimension under softmax, edge arguments (a negative divisor_override, dropout's p = 1, one-element tuples).
Compared: every output (values, shape, dtype), and every gradient of a floating input through the
hand-written backward, against torch's autograd, float64."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import F, torch

pytest.importorskip("expecttest")  # torch's test-suite module below imports it
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

TF = torch.nn.functional
MAX_SAMPLES = 200  # per OpInfo: every sample of most ops, an even spread of the pools' thousand-odd

# convprop's op -> the torch inputs whose gradients its backward returns, in order, for a sample
WEIGHT_BIAS = {"conv2d": 0, "conv1d": 0, "conv_transpose2d": 0, "linear": 0, "batch_norm": 2}


def _grad_leaves(name: str, s) -> list:
    if name in WEIGHT_BIAS:
        at = WEIGHT_BIAS[name]
        w = s.args[at] if len(s.args) > at else s.kwargs.get("weight")
        b = s.args[at + 1] if len(s.args) > at + 1 else s.kwargs.get("bias")
        return [s.input, w, b]
    if name == "cross_entropy":
        return [s.input, s.args[0] if s.args[0].is_floating_point() else None]
    return [s.input]


def _np(v):
    if isinstance(v, torch.Tensor):
        return v.detach().numpy().copy()
    if isinstance(v, torch.dtype):
        return torch.empty((), dtype=v).numpy().dtype
    if isinstance(v, (list, tuple)) and any(isinstance(e, torch.Tensor) for e in v):
        return type(v)(_np(e) for e in v)
    return v


def _torch_call(op, s):
    """torch's result, or the exception it raised (then None for the result)."""
    try:
        return op(s.input, *s.args, **s.kwargs), None
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        return None, e


def _compare(name: str, torch_op, s, what: str) -> None:
    ref, refused = _torch_call(torch_op, s)
    args, kwargs = [_np(a) for a in s.args], {k: _np(v) for k, v in s.kwargs.items()}
    if refused is not None:
        with pytest.raises((ValueError, TypeError)) as e:
            getattr(F, name)(_np(s.input), *args, **kwargs)
        assert "\n" not in str(e.value).strip() and not str(e.value).startswith(("zero-size", "operands could not")), \
            f"{what}: torch refuses ({refused}); convprop's message is not one clear line: {e.value}"
        return
    try:
        result, cache = getattr(F, name)(_np(s.input), *args, **kwargs)
    except Exception as e:  # noqa: BLE001 — any refusal is the failure this test looks for
        raise AssertionError(f"{what}: torch returns {tuple(_first(ref).shape)}, convprop raises "
                             f"{type(e).__name__}: {e}") from None
    if name == "mse_loss":  # a loss: (value, ∂(Σ loss)/∂pred) at once
        result, grad = np.asarray(result), cache
        _same(result, ref, what)
        leaves = [t for t in (s.input, s.args[0] if s.args else s.kwargs.get("target")) if t.requires_grad]
        grads = torch.autograd.grad(ref.sum(), leaves, allow_unused=True, materialize_grads=True)
        _same(grad, grads[0], f"{what} ∂pred")
        return
    outs = result if isinstance(result, tuple) else (result,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for k, (o, r) in enumerate(zip(outs, refs)):
        _same(np.asarray(o), r, f"{what} output {k}")
    ref0 = refs[0]
    if not ref0.requires_grad:
        return
    dout = np.random.default_rng(0).standard_normal(tuple(ref0.shape)).astype(np.asarray(outs[0]).dtype)
    got = getattr(F, f"{name}_backward")(dout, cache)
    got = got if isinstance(got, tuple) else (got,)
    leaves = _grad_leaves(name, s)
    wanted = [(k, t) for k, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(ref0, [t for _, t in wanted], torch.tensor(dout), allow_unused=True,
                                materialize_grads=True)
    for (k, _), g in zip(wanted, grads):
        assert k < len(got) and got[k] is not None, f"{what}: no gradient {k}, torch has {tuple(g.shape)}"
        _same(got[k], g, f"{what} gradient {k}")


def _first(v):
    return v[0] if isinstance(v, tuple) else v


def _same(ours, ref, what: str) -> None:
    r = ref.detach().numpy()
    assert np.shape(ours) == r.shape, f"{what}: shape {np.shape(ours)} != torch {r.shape}"
    if r.dtype.kind == "f":
        assert ours.dtype == r.dtype, f"{what}: dtype {ours.dtype} != torch {r.dtype}"
        np.testing.assert_allclose(ours, r, rtol=1e-9, atol=1e-10, equal_nan=True, err_msg=what)
    else:
        np.testing.assert_array_equal(ours, r, err_msg=what)


def _opinfos():
    ours = [n for n in F.__all__ if not n.endswith("_backward") and n != "dropout"]
    cases = []
    for op in op_db:
        name = op.name.removeprefix("nn.functional.")
        if name in ours:
            cases.append(pytest.param(name, op, id=f"{name}-{op.variant_test_name or 'default'}"))
    return cases


OPINFOS = _opinfos()


def test_every_op_with_an_opinfo_is_swept():
    swept = {p.values[0] for p in OPINFOS}
    assert {"conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "softmax", "log_softmax", "cross_entropy",
            "linear", "batch_norm", "mse_loss", "max_unpool2d", "adaptive_max_pool2d"} <= swept, swept


@pytest.mark.parametrize("name, op", OPINFOS)
def test_torchs_sample_inputs(name, op):
    samples = list(op.sample_inputs("cpu", torch.float64, requires_grad=True))
    step = max(1, len(samples) // MAX_SAMPLES)
    for i, s in enumerate(samples[::step]):
        _compare(name, op.op, s, f"{op.name}[{op.variant_test_name}] sample {i * step}")


# --------------------------------------------------------------------------- generated edge cases
def _t(*shape, seed=0, grad=True):
    return torch.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=grad)


def _case(name, x, *args, torch_op=None, **kwargs):
    return pytest.param(name, SimpleNamespace(input=x, args=args, kwargs=kwargs), torch_op,
                        id=f"{name}-{tuple(x.shape)}-{len(args)}-{sorted(kwargs)}")


def _labels(*shape):
    return torch.zeros(shape, dtype=torch.int64)


EDGE = [
    # an empty batch through every op
    _case("conv2d", _t(0, 2, 5, 5), _t(3, 2, 3, 3, seed=1), _t(3, seed=2)),
    _case("conv2d", _t(0, 2, 5, 5), _t(3, 2, 3, 3, seed=1), None, padding="same"),
    _case("conv_transpose2d", _t(0, 2, 4, 4), _t(2, 3, 3, 3, seed=1), _t(3, seed=2), stride=2),
    _case("conv1d", _t(0, 2, 7), _t(3, 2, 3, seed=1), _t(3, seed=2)),
    _case("max_pool2d", _t(0, 2, 6, 6), 2),
    _case("max_pool2d", _t(0, 2, 6, 6), 3, 2, 1, return_indices=True),
    _case("avg_pool2d", _t(0, 2, 6, 6), 2),
    _case("max_pool1d", _t(0, 2, 6), 2),
    _case("avg_pool1d", _t(0, 2, 6), 2),
    _case("adaptive_avg_pool2d", _t(0, 2, 6, 6), 3),
    _case("adaptive_max_pool2d", _t(0, 2, 6, 6), 3),
    _case("linear", _t(0, 4), _t(3, 4, seed=1), _t(3, seed=2)),
    _case("linear", _t(2, 0, 4), _t(3, 4, seed=1), None),
    _case("linear", _t(2, 0), _t(3, 0, seed=1), _t(3, seed=2)),  # no input features: the bias alone
    _case("relu", _t(0, 3)), _case("sigmoid", _t(0, 3)), _case("tanh", _t(0, 3)),
    _case("leaky_relu", _t(0, 3), 0.2),
    _case("flatten", _t(0, 2, 3), 1),
    _case("batch_norm", _t(0, 3, 2, 2), torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
          training=False),
    _case("batch_norm", _t(0, 3), torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
          _t(3, seed=1), _t(3, seed=2), training=True),
    _case("batch_norm", _t(1, 3), torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
          training=True),  # one value per channel: torch refuses
    _case("cross_entropy", _t(0, 5), _labels(0)),
    _case("cross_entropy", _t(0, 5), _labels(0), reduction="sum"),
    _case("cross_entropy", _t(0, 5), _labels(0), reduction="none"),
    _case("cross_entropy", _t(2, 5, 0), _labels(2, 0), reduction="none"),
    _case("mse_loss", _t(0, 3), _t(0, 3, seed=1, grad=False)),
    # an empty dimension under softmax and log-softmax, and empty tensors along the other axes
    *(_case(n, _t(*shape), dim) for n, (shape, dim) in itertools.product(
        ["softmax", "log_softmax"], [((3, 0), 1), ((3, 0), 0), ((0,), 0), ((2, 0, 4), -1), ((2, 0, 4), 1)])),
    # edge arguments torch takes
    _case("avg_pool2d", _t(1, 2, 4, 4), 2, divisor_override=-2),
    _case("avg_pool2d", _t(1, 2, 5, 5), (3,), (1,), (1,)),  # one-element tuples: torch's pair of equal values
    _case("avg_pool2d", _t(1, 1, 4, 4), (2, 2), ()),  # an empty stride: the kernel size, as torch
    _case("max_pool2d", _t(1, 1, 4, 4), (2, 2), ()),
    _case("conv2d", _t(1, 2, 5, 5), _t(3, 2, 3, 3, seed=1), None, (2,), (1,)),
    _case("max_pool2d", _t(1, 2, 5, 5), (3,), (2,), (1,)),
    _case("softmax", _t(2, 3), 1, dtype=torch.float64),
    _case("log_softmax", _t(2, 3), 0, dtype=torch.float64),
    # edge arguments torch refuses
    _case("avg_pool2d", _t(1, 1, 4, 4), 2, divisor_override=0),
    _case("avg_pool2d", _t(1, 1, 4, 4), (2, 2, 2)),
]


@pytest.mark.parametrize("name, sample, torch_op", EDGE)
def test_edge_cases(name, sample, torch_op):
    _compare(name, torch_op or getattr(TF, name, None) or getattr(torch, name), sample, name)


@pytest.mark.parametrize("p", [0.0, 1.0])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 5), (0, 3), ()])
def test_dropout_at_the_ends_of_p_as_torch(p, training, shape):
    """p = 0 and p = 1 are deterministic in torch: the identity, and zeros in training (∂ zero too)."""
    _compare("dropout", TF.dropout, SimpleNamespace(input=_t(*shape), args=(), kwargs={"p": p, "training": training}),
             f"dropout(p={p}, training={training})")


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_dropout_probability_outside_0_1_is_refused_as_torch(p):
    with pytest.raises(ValueError, match="p: "):
        F.dropout(np.ones(3), p)
    with pytest.raises((ValueError, RuntimeError)):
        TF.dropout(torch.ones(3), p)


def test_an_empty_batch_through_modules_and_a_whole_model():
    from helpers import assert_close

    from convprop import models, nn

    ours = models.lenet5().to(np.float64).train()
    x = np.zeros((0, 1, 28, 28))
    out = ours(x)
    assert out.shape == (0, 10)
    loss, dlogits = nn.CrossEntropyLoss(reduction="sum")(out, np.zeros(0, np.int64))
    assert loss == 0.0 and dlogits.shape == (0, 10)
    dx = ours.backward(dlogits)
    assert dx.shape == x.shape
    for name, p in ours.named_parameters():
        assert_close(p.grad, np.zeros_like(p.data), np.float64, name)
    for layer in (nn.BatchNorm2d(3).to(np.float64), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Flatten(),
                  nn.Dropout(0.5), nn.ReLU(), nn.AdaptiveAvgPool2d(1)):
        y = layer(np.zeros((0, 3, 4, 4)))
        assert y.shape[0] == 0
        assert layer.backward(np.zeros(y.shape)).shape == (0, 3, 4, 4)


@pytest.mark.parametrize("name, kw", [("relu", {}), ("leaky_relu", {"negative_slope": 0.2}),
                                      ("leaky_relu", {"negative_slope": 1.5}), ("leaky_relu", {"negative_slope": 0.0}),
                                      ("dropout", {"p": 0.0}), ("dropout", {"p": 1.0})])
def test_inplace_as_torch(name, kw):
    """inplace=True writes the output over the input, as torch; the backward still gives torch's gradient."""
    leaf = _t(3, 4)
    ref = getattr(TF, name)(leaf * 1, inplace=True, **kw)
    x = leaf.detach().numpy().copy()
    out, cache = getattr(F, name)(x, inplace=True, **kw)
    assert np.shares_memory(out, x), f"{name}: not in place"
    _same(out, ref, f"{name} in place")
    dout = np.random.default_rng(1).standard_normal(x.shape)
    (grad,) = torch.autograd.grad(ref, [leaf], torch.tensor(dout))
    _same(getattr(F, f"{name}_backward")(dout, cache), grad, f"{name} in place: gradient")


def test_leaky_relu_in_place_refuses_a_negative_slope_as_torch():
    with pytest.raises(ValueError, match="negative_slope"):
        F.leaky_relu(np.ones(3), -0.1, inplace=True)
    with pytest.raises(RuntimeError):
        TF.leaky_relu(_t(3) * 1, -0.1, inplace=True).sum().backward()
