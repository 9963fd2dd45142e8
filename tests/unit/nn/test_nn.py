"""Whole networks against torch through state_dict, in float64: logits, loss, every gradient."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, torch
from twins import batch, compare_network, to_torch_state, torch_twin

from convprop import models, nn

tnn = torch.nn


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_lenet5_matches_torch(pool, activation):
    compare_network(models.lenet5(pool=pool, activation=activation), *batch())


def test_net_with_conv_transpose_batchnorm_dropout_in_train_mode_matches_torch():
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(3), nn.Sigmoid(),
        nn.Dropout(0.3), nn.AvgPool2d(3, stride=2, padding=1), nn.Flatten(),
        nn.Linear(3 * 4 * 4, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 5),
    )
    x, y = batch(6, 2, 8, seed=1, classes=5)
    compare_network(net, x, y, train=True, label_smoothing=0.1)
    compare_network(net, x, y, train=False, steps=1)  # eval: running statistics, no dropout


def test_vgg_small_with_batchnorm_and_global_pool_matches_torch():
    compare_network(models.vgg_small(width=4), *batch(4, seed=2))


def test_torch_state_dict_loads_as_is_and_ours_loads_into_torch():
    ours = models.vgg_small(width=4)
    theirs = torch_twin(ours)
    sd = {k: v.numpy() for k, v in theirs.state_dict().items()}
    assert list(sd) == list(ours.state_dict())
    ours.load_state_dict(sd)  # torch -> convprop: its state_dict as it comes, arrays under the same keys
    for k, v in ours.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
        assert v.dtype == sd[k].dtype
    for p in ours.parameters():
        p.data += 1.0
    theirs.load_state_dict(to_torch_state(ours.state_dict()))  # convprop -> torch (strict)
    x = batch(2, seed=3)[0].astype(np.float32)
    ours.eval(), theirs.eval()
    assert_close(ours(x), theirs(torch.tensor(x)), np.float32, "logits after loading")


def test_load_state_dict_names_the_mismatched_key_and_shapes():
    ours = models.lenet5()
    sd = dict(ours.state_dict())
    sd["0.weight"] = np.zeros((6, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"0\.weight.*\(6, 1, 5, 5\).*\(6, 1, 3, 3\)"):
        ours.load_state_dict(sd)
    del sd["0.weight"]
    with pytest.raises(ValueError, match=r"1 missing \(0\.weight\)"):
        ours.load_state_dict(sd)
    missing, unexpected = ours.load_state_dict({**sd, "extra": np.zeros(1)}, strict=False)
    assert missing == ["0.weight"] and unexpected == ["extra"]


def test_default_initialisation_follows_torch():
    import convprop.random as R

    R.manual_seed(0)
    conv, lin, tconv = nn.Conv2d(6, 16, 5), nn.Linear(400, 120), nn.ConvTranspose2d(4, 8, 3, groups=2)
    for m, fan_in in ((conv, 150), (lin, 400), (tconv, 4 * 9)):
        bound = 1 / np.sqrt(fan_in)  # kaiming_uniform_(a=√5) and the bias rule
        for p in (m.weight.data, m.bias.data):
            assert p.dtype == np.float32 and np.abs(p).max() <= bound
        assert abs(m.weight.data.std() - bound / np.sqrt(3)) < 0.1 * bound
    R.manual_seed(0)
    again = nn.Conv2d(6, 16, 5)
    np.testing.assert_array_equal(again.weight.data, conv.weight.data)  # seeded


def test_first_layer_computes_no_input_gradient():
    net = models.lenet5()
    x, y = batch(4)
    x = x.astype(np.float32)
    _, dlogits = nn.CrossEntropyLoss()(net(x), y)
    calls = []
    first = net[0]
    original = first.backward
    first.backward = lambda d, input_grad=True: calls.append(input_grad) or original(d, input_grad)
    assert net.backward(dlogits, input_grad=False) is None
    assert calls == [False] and net[0].weight.grad is not None


def test_module_bookkeeping():
    net = models.lenet5()
    assert [k for k, _ in net.named_parameters()][:2] == ["0.weight", "0.bias"]
    assert sum(p.data.size for p in net.parameters()) == 61706
    x = batch(2)[0].astype(np.float32)
    net(x)
    net.backward(np.ones((2, 10), np.float32))
    assert all(p.grad is not None for p in net.parameters())
    first = net[0].weight.grad.copy()
    net(x)
    net.backward(np.ones((2, 10), np.float32))
    np.testing.assert_allclose(net[0].weight.grad, 2 * first, rtol=1e-5)  # grads accumulate, as torch
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    assert net.to(np.float64) is net and all(p.data.dtype == np.float64 for p in net.parameters())
    assert not net.eval().training and all(not m.training for m in net.modules())
    with pytest.raises(TypeError, match="x: expected dtype float64"):
        net(x)
    with pytest.raises(RuntimeError, match="call forward first"):
        nn.Linear(2, 2).backward(np.zeros((1, 2), np.float32))


@pytest.mark.parametrize("d, shape", [("2d", (2, 3, 6, 6)), ("1d", (2, 3, 8))])
def test_max_unpool_module_and_mse_loss_match_torch(d, shape):
    rng = np.random.default_rng(4)
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float64)
    pool, unpool = getattr(nn, f"MaxPool{d}")(2, return_indices=True), getattr(nn, f"MaxUnpool{d}")(2)
    out, idx = pool(x)
    up = unpool(out, idx)
    target = rng.standard_normal(up.shape)
    loss, dup = nn.MSELoss()(up, target)
    dx = pool.backward(unpool.backward(dup))
    xt = torch.tensor(x, requires_grad=True)
    o, i = getattr(tnn.functional, f"max_pool{d}")(xt, 2, return_indices=True)
    ref = tnn.functional.mse_loss(getattr(tnn.functional, f"max_unpool{d}")(o, i, 2), torch.tensor(target))
    ref.backward()
    assert abs(loss - ref.item()) < 1e-12
    assert_close(dx, xt.grad, np.float64, "dx through unpool")


def test_torch_style_constructors_and_zero_grad_set_to_none():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="zeros", dtype=None), nn.ReLU(inplace=True),
                        nn.Dropout(p=0.2, inplace=False), nn.Flatten(), nn.Linear(2 * 4 * 4, 3, dtype=None))
    assert net.dtype == np.float32
    x = np.ones((2, 1, 6, 6), np.float32)
    net.backward(net(x) * 0 + 1)
    net.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(1, 2, 3, padding_mode="reflect")


def test_call_hook_sees_every_module_call_in_its_own_thread_only_and_is_undone():
    import threading

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    net[0].weight.data[...] = net[2].weight.data[...] = 1  # the ReLU's input is positive: zeroing it shows
    x = np.ones((2, 3), np.float32)
    seen = []

    def hook(m, args, kwargs):
        seen.append(type(m).__name__)
        if isinstance(m, nn.ReLU):
            return m.forward(*args, **kwargs) * 0  # the hook decides what a call returns
        return m.forward(*args, **kwargs)

    other = []
    with nn.call_hook(hook):
        y = net(x)
        worker = threading.Thread(target=lambda: other.append(net(x)))  # a context of its own: no hook
        worker.start()
        worker.join()
    assert seen == ["Sequential", "Linear", "ReLU", "Linear"]  # nested calls come back to the hook
    assert_close(y, np.broadcast_to(net[2].bias.data, (2, 2)), np.float32, "ReLU zeroed by the hook")
    assert len(seen) == 4 and not np.allclose(other[0], y)  # the thread ran the plain forward
    def failing(m, args, kwargs):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError), nn.call_hook(failing):
        net(x)
    seen.clear()
    assert_close(net(x), other[0], np.float32, "no hook after an error")
    assert seen == []


def test_load_state_dict_of_another_model_summarises_the_keys_in_one_short_line():
    """Counts of missing, unexpected and reshaped keys with the first few of each, not every key of both models."""
    from convprop import models

    with pytest.raises(ValueError) as info:
        models.lenet5().load_state_dict(models.resnet8().state_dict())
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    assert "10 missing (0.weight, 0.bias, 3.weight, …)" in message and "56 unexpected (conv1.weight" in message
    state = models.lenet5().state_dict()
    state["11.weight"], state["11.bias"] = np.zeros((5, 84)), np.zeros(5)
    with pytest.raises(ValueError, match=r"2 of another shape \(11.weight \(5, 84\) for \(10, 84\), 11.bias"):
        models.lenet5().load_state_dict(state)
