"""convprop's own threads (functional/_schedule.py): same numbers as torch on any thread count,
reproducible for a given count, errors from any thread surface, a clear message for bad counts."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import check_op
from twins import batch, compare_network

import convprop
import convprop.functional as F
from convprop import models
from convprop.functional import _schedule as _threads
from convprop.random import manual_seed


@pytest.fixture
def threads(monkeypatch):
    """Split every batch, however small its work, over the given number of threads."""
    monkeypatch.setattr(_threads, "MIN_WORK_PER_THREAD", 1)

    def use(n):
        monkeypatch.setattr(_threads, "_count", n)  # even where OpenBLAS's per-thread setting is missing
        monkeypatch.setattr(_threads, "_pool", None)  # a pool of n − 1 workers on first use

    yield use
    if _threads._pool is not None:
        _threads._pool.shutdown()


@pytest.mark.parametrize("n", [2, 3])
def test_networks_match_torch_with_their_batch_split_over_threads(threads, n):
    threads(n)
    seen = set()
    run = _threads.run
    _threads.run = lambda fn, blocks: run(lambda b: seen.add(threading.get_ident()) or fn(b), blocks)
    try:
        compare_network(models.lenet5(), *batch(7))
        compare_network(models.vgg_small(width=4), *batch(5, seed=2))
    finally:
        _threads.run = run
    assert len(seen) == n  # the work really ran on n threads


def test_results_are_reproducible_for_a_thread_count(threads):
    threads(3)
    x, y = batch(9, seed=4)

    def grads():
        manual_seed(0)
        net = models.lenet5(dtype=np.float32)
        net.backward(np.ones_like(net(x.astype(np.float32))))
        return [p.grad.copy() for p in net.parameters()]

    for a, b in zip(grads(), grads()):
        np.testing.assert_array_equal(a, b)


def test_parts_cover_the_batch_in_contiguous_blocks(threads):
    threads(3)
    for n in (0, 1, 2, 3, 10, 257):
        blocks = _threads.parts(n, 1 << 30)
        assert len(blocks) == max(1, min(3, n))
        assert [b.start for b in blocks] == [0] + [b.stop for b in blocks[:-1]] and blocks[-1].stop == n
    _threads.MIN_WORK_PER_THREAD = 1000
    assert len(_threads.parts(100, 1999)) == 1  # too little work to share
    assert len(_threads.parts(100, 999, 8 * 2000)) == 2  # flops count too


def test_an_error_on_any_thread_surfaces_after_every_block_finished(threads):
    threads(3)
    finished = []

    def work(block):
        if block.start == 2:
            raise ValueError("block 2 failed")
        finished.append(block.start)

    with pytest.raises(ValueError, match="block 2 failed"):
        _threads.run(work, [slice(0, 1), slice(1, 2), slice(2, 3)])
    assert sorted(finished) == [0, 1]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_names_the_argument(bad):
    with pytest.raises(ValueError, match=r"n: expected a positive int, got"):
        convprop.set_num_threads(bad)


def test_set_num_threads_changes_the_count():
    before = convprop.get_num_threads()
    try:
        convprop.set_num_threads(1)
        assert convprop.get_num_threads() == 1
        assert len(_threads.parts(1000, 1 << 30)) == 1
    finally:
        convprop.set_num_threads(before)


def test_cli_threads_flag(capsys):
    from convprop.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--threads", "0", "explain", "linear"])
    assert e.value.code == 2 and "--threads" in capsys.readouterr().err
    before = convprop.get_num_threads()
    try:
        assert main(["--threads", "1", "explain", "linear"]) == 0
        assert convprop.get_num_threads() == 1
    finally:
        convprop.set_num_threads(before)


@pytest.mark.skipif(not _threads._blas, reason="needs a BLAS that threadpoolctl can set")
@pytest.mark.parametrize("n", [1, 2])
def test_convprop_runs_the_blas_on_one_thread_from_its_first_kernel(n, threads, monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    with threadpool_limits(2, user_api="blas"):  # restores the caller's setting at the end
        monkeypatch.setattr(_threads, "_blas_pinned", False)  # as in a fresh process
        threads(n)
        assert blas_threads() == {2}  # setting the thread count alone changes nothing outside convprop
        F.relu(np.ones((4, 4)))  # any kernel
        assert blas_threads() == {1}  # n threads are n cores: convprop's, never the BLAS's beside them
        threadpool_limits(2, user_api="blas")  # code of the user's own may take them back
        F.relu(np.ones((4, 4)))
        assert blas_threads() == {2}  # convprop does not set them again


def test_without_a_settable_blas_convprop_stays_on_one_thread(monkeypatch):
    """macOS's Accelerate, or no threadpoolctl: convprop cannot keep the BLAS off its cores, so it uses one."""
    before = convprop.get_num_threads()
    monkeypatch.setattr(_threads, "_blas", False)
    try:
        convprop.set_num_threads(2)
        assert convprop.get_num_threads() == 1
    finally:
        monkeypatch.setattr(_threads, "_blas", True)
        convprop.set_num_threads(before)


def test_both_runs_two_kernels_at_once_only_where_the_batch_does_not_split(threads):
    threads(2)
    _threads.MIN_WORK_PER_THREAD = 100
    ident = []

    def task(v):
        ident.append(threading.get_ident())
        return v

    assert _threads.both(lambda: task(1), lambda: task(2), 1, 150, 0) == (1, 2)
    assert len(set(ident)) == 2  # a batch of 1 cannot split; the two kernels went to two threads
    ident.clear()
    assert _threads.both(lambda: task(1), lambda: task(2), 8, 400, 0) == (1, 2)
    assert len(set(ident)) == 1  # the batch splits inside each kernel instead
    rng = np.random.default_rng(3)
    check_op("conv2d", [rng.standard_normal((1, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3)), None], padding=1)
