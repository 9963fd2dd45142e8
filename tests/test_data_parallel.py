"""DataParallel (convprop/parallel.py): a step over forked workers is train_step's step, up to
rounding; workers follow replaced parameters and bigger batches; their errors and deaths surface."""

from __future__ import annotations

import copy
import os
import signal

import numpy as np
import pytest

from convprop import models, nn, optim
from convprop.parallel import DataParallel, supports
from convprop.random import manual_seed
from convprop.train import Divergence, fit, train_step

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def setup(seed=0, opt=optim.SGD, **kw):
    manual_seed(seed)
    model = models.lenet5(dtype=np.float64)
    return model, nn.CrossEntropyLoss(), opt(model.parameters(), lr=0.05, **kw)


def data(n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)), rng.integers(0, 10, n)


def assert_same_model(a, b):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_allclose(pa.data, pb.data, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("opt, kw", [(optim.SGD, {"momentum": 0.9}), (optim.Adam, {})])
def test_steps_equal_train_step(workers, opt, kw):
    ref, ref_loss, ref_opt = setup(opt=opt, **kw)
    model, loss_fn, optimizer = setup(opt=opt, **kw)
    with DataParallel(model, loss_fn, optimizer, workers) as dp:
        for n, seed in [(12, 1), (7, 2), (3, 3), (2, 4)]:  # uneven shards; fewer samples than workers
            x, y = data(n, seed)
            loss, correct = dp(x, y)
            assert len(dp._pids) == workers - 1  # the shards did run in other processes
            ref_step = train_step(ref, ref_loss, ref_opt, x, y)
            assert loss == pytest.approx(ref_step[0], rel=1e-12) and correct == ref_step[1]
            assert_same_model(model, ref)
            for p, q in zip(model.parameters(), ref.parameters()):
                np.testing.assert_allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12)


def test_workers_follow_replaced_parameters_bigger_batches_and_eval_mode():
    ref, ref_loss, ref_opt = setup()
    model, loss_fn, optimizer = setup()
    manual_seed(1)
    other, another = models.lenet5(dtype=np.float64), models.lenet5(dtype=np.float64)
    with DataParallel(model, loss_fn, optimizer, 2) as dp:

        def both(n, seed):
            dp(*data(n, seed))
            train_step(ref, ref_loss, ref_opt, *data(n, seed))
            assert_same_model(model, ref)

        both(6, 1)
        for p, q in zip(model.parameters(), other.parameters()):
            p.data = q.data.copy()  # replaced, not written in place: the workers must start again
        ref.load_state_dict(other.state_dict())
        both(6, 2)
        model.load_state_dict(another.state_dict())  # written in place: the workers see it
        ref.load_state_dict(another.state_dict())
        both(6, 3)
        both(20, 4)  # a batch bigger than the shared input buffers
        model.eval(), ref.eval()  # the workers run in the parent's mode
        both(8, 5)


def test_a_workers_error_is_raised_in_the_parent_and_the_next_step_works():
    ref, ref_loss, ref_opt = setup()
    model, loss_fn, optimizer = setup()
    x, y = data(8, 1)
    bad = y.copy()
    bad[-1] = 10  # in the worker's shard
    with DataParallel(model, loss_fn, optimizer, 2) as dp:
        with pytest.raises(ValueError, match="targets") as e:
            dp(x, bad)
        with pytest.raises(ValueError) as e_ref:
            train_step(copy.deepcopy(ref), ref_loss, ref_opt, x, bad)
        assert str(e.value) == str(e_ref.value)  # the same message a single process gives
        assert_same_model(model, ref)  # no step was taken
        dp(x, y)
        train_step(ref, ref_loss, ref_opt, x, y)
        assert_same_model(model, ref)
        model[9].bias.data[0] = np.nan  # in place, so in every worker's model too
        with pytest.raises(Divergence):
            dp(x, y)


def test_a_worker_that_dies_is_reported_not_waited_for():
    model, loss_fn, optimizer = setup()
    dp = DataParallel(model, loss_fn, optimizer, 2)
    dp(*data(4, 1))
    os.kill(dp._pids[0], signal.SIGKILL)
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        dp(*data(4, 2))
    dp.close()


def test_models_with_buffers_and_bad_worker_counts_are_refused():
    model = models.vgg_small()
    assert "buffers" in supports(model) and supports(models.lenet5()) is None
    with pytest.raises(ValueError, match=r"workers=2: cannot train data-parallel: the model has buffers"):
        DataParallel(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), 2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers: expected a positive int"):
            DataParallel(models.lenet5(), nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), bad)
    DataParallel(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), 1)  # one process: any model


def test_fit_with_workers_equals_fit_in_one_process():
    from convprop.data import DataLoader

    x, y = data(40, 5)
    x = x.astype(np.float32)  # the DataLoader hands out float32
    runs = []
    for workers in (1, 2):
        model, loss_fn, optimizer = setup()
        model.to(np.float32)
        loader = DataLoader(x, y, 16, shuffle=True, seed=0)
        history = fit(model, loss_fn, optimizer, loader, 2, progress=False, log=None, workers=workers)
        runs.append((model, history))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):  # float32: rounding differs
        np.testing.assert_allclose(p.data, q.data, rtol=1e-4, atol=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5) and a["train_acc"] == b["train_acc"]


def test_dropout_in_workers_is_reproducible_and_each_workers_own():
    def run():
        manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
        model.to(np.float64)
        optimizer = optim.SGD(model.parameters(), lr=0.1)
        with DataParallel(model, nn.CrossEntropyLoss(), optimizer, 2) as dp:
            x, y = data(8, 1)
            for _ in range(3):
                dp(np.concatenate([x[:4], x[:4]]), np.concatenate([y[:4], y[:4]]))  # the same shard twice
        return model, dp._grads[1], model[1].weight.grad

    a, b = run(), run()
    assert_same_model(a[0], b[0])
    # both shards hold the same samples, so the gradients differ only through the dropout masks
    assert not np.allclose(a[1][0], a[2] * 2 - a[1][0])


def test_bad_inputs_get_train_steps_messages_and_anomaly_mode_reaches_the_workers():
    model, loss_fn, optimizer = setup()
    x, y = data(8, 1)
    with DataParallel(model, loss_fn, optimizer, 2) as dp:
        dp(x, y)  # the worker is running
        for bad_x, bad_y in [(x, y[:5]), (x.astype(np.float32), y), (x[0, 0, 0, 0], y)]:
            with pytest.raises((ValueError, TypeError)) as e:
                dp(bad_x, bad_y)
            with pytest.raises(type(e.value)) as e_ref:
                train_step(copy.deepcopy(model), loss_fn, optim.SGD(model.parameters(), lr=0.1), bad_x, bad_y)
            assert str(e.value) == str(e_ref.value)
        dp(x, y)  # workers (started again for the float64 inputs) run with anomaly detection off
        model[0].weight.data[...] = 1e300  # in place, so the worker's too
        huge = x.copy()
        huge[4:] *= 1e10  # only the worker's shard overflows (to inf in conv1's output)
        nn.detect_anomaly(True)  # turned on after the worker started
        try:
            with pytest.raises(nn.AnomalyError, match=r"output of layer 0 \(Conv2d\) is not finite"):
                dp(huge, y)
        finally:
            nn.detect_anomaly(False)
        assert nn.is_anomaly_enabled() is False
