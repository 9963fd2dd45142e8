"""Data parallelism on MPI (convprop.distributed): K ranks under mpiexec train exactly as one process
on the whole batches; the loader's shards; SyncBatchNorm's sums.  MPI tests start mpiexec from the
test environment's bin/ (pip install 'convprop[mpi]' puts it there; the test extra includes it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from convprop import models, nn
from convprop.data import DataLoader
from convprop.functional import batch_norm, batch_norm_backward

HERE = os.path.dirname(os.path.abspath(__file__))
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


def mpirun(k: int, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    assert os.path.exists(MPIEXEC), f"{MPIEXEC}: no mpiexec (pip install 'convprop[mpi]')"
    return subprocess.run([MPIEXEC, "-n", str(k), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("k", [2, 3])
def test_k_ranks_equal_one_process_on_the_whole_batch(k, tmp_path):
    out = tmp_path / "eq.json"
    r = mpirun(k, sys.executable, os.path.join(HERE, "mpi_equivalence.py"), str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["world"] == k
    assert set(result["cases"]) == {"lenet5-sgd-momentum", "lenet5-adam", "vgg_small-sgd-momentum"}
    for case, c in result["cases"].items():
        assert c["steps"] == c["ref_steps"] == 5, case  # the 5th batch is the uneven one
        assert c["max_rel"] <= 1e-10, case  # every parameter (and BatchNorm's running statistics)
        assert c["same_on_every_rank"], case  # bitwise
        for ours, ref in (c["train_loss"], c["train_acc"], *zip(*c["test"])):
            assert ours == pytest.approx(ref, rel=1e-12), case
    assert result["cases"]["vgg_small-sgd-momentum"]["buffers"] == 12  # 4 BatchNorms' statistics compared


@pytest.mark.parametrize("n, batch, k", [(37, 8, 2), (55, 12, 3), (50, 12, 3), (26, 12, 3), (7, 4, 4)])
def test_shards_of_every_rank_make_up_one_process_batches(n, batch, k):
    rng = np.random.default_rng(n)
    images, labels = rng.integers(0, 256, (n, 9, 9), dtype=np.uint8), np.arange(n)
    whole = list(DataLoader(images, labels, batch, shuffle=True, seed=5, max_shift=2))
    ranks = [list(DataLoader(images, labels, batch, shuffle=True, seed=5, max_shift=2, num_replicas=k, rank=r))
             for r in range(k)]
    # the remainder rule: a last batch with fewer samples than ranks is dropped
    expected = len(whole) - (n % batch not in range(k, batch))
    assert all(len(shards) == expected for shards in ranks)
    for j in range(expected):
        x = np.concatenate([ranks[r][j][0] for r in range(k)])
        y = np.concatenate([ranks[r][j][1] for r in range(k)])
        np.testing.assert_array_equal(x, whole[j][0])  # the same images with the same shifts
        np.testing.assert_array_equal(y, whole[j][1])
        sizes = [len(ranks[r][j][1]) for r in range(k)]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_loader_rejects_bad_replicas():
    x, y = np.zeros((4, 2, 2), np.uint8), np.zeros(4)
    with pytest.raises(ValueError, match=r"num_replicas: expected a positive int, got 0"):
        DataLoader(x, y, 2, num_replicas=0)
    with pytest.raises(ValueError, match=r"rank: expected an int in \[0, 1\] \(num_replicas=2\), got 2"):
        DataLoader(x, y, 2, num_replicas=2, rank=2)


def test_sync_batch_norm_over_shards_is_batch_norm_of_the_whole_batch():
    """SyncBatchNorm's formulas in one process: two shards of a batch, each given the sums over both
    shards where the Allreduce would give them, match batch_norm on the whole batch."""
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((7, 3, 4, 5)) * 2 + 1, rng.standard_normal((7, 3, 4, 5))
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = np.zeros(3), np.ones(3)
    out, cache = batch_norm(x, rm, rv, gamma, beta, training=True)
    dx, dgamma, dbeta = batch_norm_backward(dy, cache)
    parts = [slice(0, 3), slice(3, 7)]
    # the forward's per-channel sums (m, Σx, Σx²) and the backward's (γ⊙Σ∂y, γ⊙Σ∂y⊙x̂), over both shards
    forward_sums = sum(np.stack([np.full(3, x[p].size / 3), x[p].sum((0, 2, 3)), (x[p] ** 2).sum((0, 2, 3))])
                       for p in parts)
    xhat = (x - x.mean((0, 2, 3), keepdims=True)) / np.sqrt(x.var((0, 2, 3), keepdims=True) + 1e-5)
    backward_sums = np.stack([gamma * dy.sum((0, 2, 3)), gamma * (dy * xhat).sum((0, 2, 3))])
    calls = []

    def allreduce(a):
        calls.append(a.shape)
        return forward_sums if len(calls) % 2 else backward_sums

    for p in parts:
        stats = np.zeros(3), np.ones(3)
        out_p, cache_p = batch_norm(x[p], *stats, gamma, beta, training=True, allreduce=allreduce)
        np.testing.assert_allclose(out_p, out[p], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats[0], rm, rtol=1e-12)  # every shard: the whole batch's running statistics
        np.testing.assert_allclose(stats[1], rv, rtol=1e-12)
        dx_p, dgamma_p, dbeta_p = batch_norm_backward(dy[p], cache_p)
        np.testing.assert_allclose(dx_p, dx[p], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dbeta_p, dy[p].sum((0, 2, 3)), rtol=1e-12)  # ∂γ, ∂β: this shard's part
    assert calls == [(3, 3), (2, 3)] * 2  # one Allreduce in each forward and one in each backward
    assert dgamma is not None and dbeta is not None


def test_sync_batch_norm_is_off_in_a_job_of_one():
    from convprop import distributed

    model = distributed.sync_batch_norm(models.vgg_small())
    assert all(getattr(m, "allreduce", None) is None for m in model if isinstance(m, nn.BatchNorm2d))
