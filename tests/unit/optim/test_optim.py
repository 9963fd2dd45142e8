"""Optimizers and schedulers against torch.optim: same init, same batches, same weights after 10 steps."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, torch
from twins import batch, to_torch_state, torch_twin

from convprop import models, nn, optim

OPTIMIZERS = [  # (name, kwargs) — torch.optim and convprop.optim take the same
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=5e-4)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=5e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2)),
    ("Adam", dict(lr=5e-3, amsgrad=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
]

SCHEDULERS = [  # (name, kwargs, optimizer)
    ("StepLR", dict(step_size=3, gamma=0.5), ("SGD", dict(lr=0.1, momentum=0.9))),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=1e-3), ("Adam", dict(lr=1e-2))),
    ("OneCycleLR", dict(max_lr=0.02, total_steps=10), ("Adam", dict(lr=1e-3))),
    ("OneCycleLR", dict(max_lr=0.1, total_steps=12, pct_start=0.4, anneal_strategy="linear"),
     ("SGD", dict(lr=0.1, momentum=0.9))),
    ("OneCycleLR", dict(max_lr=0.01, epochs=2, steps_per_epoch=6, three_phase=True), ("AdamW", dict(lr=1e-3))),
]


def run_both(opt_name, opt_kw, sched=None, steps=10, model=None):
    ours = (model or models.lenet5()).to(np.float64).train()
    theirs = torch_twin(ours).double().train()
    theirs.load_state_dict(to_torch_state(ours.state_dict()))
    o_ours = getattr(optim, opt_name)(ours.parameters(), **opt_kw)
    o_theirs = getattr(torch.optim, opt_name)(theirs.parameters(), **opt_kw)
    s_ours = s_theirs = None
    if sched:
        s_ours = getattr(optim, sched[0])(o_ours, **sched[1])
        s_theirs = getattr(torch.optim.lr_scheduler, sched[0])(o_theirs, **sched[1])
    loss_fn = nn.CrossEntropyLoss()
    for step in range(steps):
        x, y = batch(8, seed=100 + step)
        o_ours.zero_grad()
        _, dlogits = loss_fn(ours(x), y)
        ours.backward(dlogits, input_grad=False)
        o_ours.step()
        o_theirs.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y)).backward()
        o_theirs.step()
        if sched:
            s_ours.step()
            s_theirs.step()
            assert abs(s_ours.get_last_lr()[0] - s_theirs.get_last_lr()[0]) <= 1e-12
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.data, tparams[name], np.float64, f"{opt_name} {name} after {steps} steps")
    return ours, o_ours, s_ours


@pytest.mark.parametrize("name, kw", OPTIMIZERS)
def test_optimizer_matches_torch_after_10_steps(name, kw):
    run_both(name, kw)


@pytest.mark.parametrize("name, kw", [("SGD", dict(lr=0)), ("Adam", dict(lr=0)), ("SGD", dict(lr=0.01, momentum=1.0)),
                                      ("SGD", dict(lr=0.01, momentum=1.5)),
                                      ("SGD", dict(lr=0.01, momentum=0.5, dampening=-1.0))])
def test_edge_arguments_torch_accepts_are_accepted_and_step_the_same(name, kw):
    run_both(name, kw, steps=3)


@pytest.mark.parametrize("name, kw, opt", SCHEDULERS)
def test_scheduler_matches_torch(name, kw, opt):
    steps = kw.get("total_steps") or kw.get("epochs", 0) * kw.get("steps_per_epoch", 0) or 10
    run_both(*opt, sched=(name, kw), steps=steps)


def test_optimizer_state_dict_round_trip_continues_identically():
    ours, opt, sched = run_both("Adam", dict(lr=1e-2), ("OneCycleLR", dict(max_lr=0.02, total_steps=20)), steps=5)
    copy = models.lenet5().to(np.float64)
    copy.load_state_dict(ours.state_dict())
    opt2 = optim.Adam(copy.parameters(), lr=1e-2)
    sched2 = optim.OneCycleLR(opt2, max_lr=0.02, total_steps=20)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    loss_fn = nn.CrossEntropyLoss()
    for m, o, s in ((ours, opt, sched), (copy, opt2, sched2)):
        for step in range(3):
            x, y = batch(8, seed=200 + step)
            o.zero_grad()
            m.backward(loss_fn(m(x), y)[1], input_grad=False)
            o.step()
            s.step()
    for (k, a), (_, b) in zip(ours.state_dict().items(), copy.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=k)


@pytest.mark.parametrize("kw, words", [
    (dict(lr=-1.0), "lr: expected a finite number >= 0"),
    (dict(lr=float("inf")), "lr"),
    (dict(lr=0.1, momentum=-0.1), "momentum"),
    (dict(lr=0.1, nesterov=True), "nesterov"),
])
def test_bad_optimizer_arguments(kw, words):
    with pytest.raises(ValueError) as info:
        optim.SGD(models.lenet5().parameters(), **kw)
    assert words in str(info.value)


def test_overfits_one_small_batch_to_near_zero_loss():
    import convprop.random as R

    R.manual_seed(0)
    net = models.lenet5()
    x, y = batch(16, seed=5)
    x = x.astype(np.float32)
    opt = optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss, dlogits = loss_fn(net(x), y)
        first = first if first is not None else loss
        net.backward(dlogits, input_grad=False)
        opt.step()
    assert first > 2.0 and loss < 0.01, (first, loss)
    assert (net(x).argmax(1) == y).all()
