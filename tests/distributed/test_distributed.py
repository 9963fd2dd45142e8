"""Data parallelism on MPI (convprop.distributed): K ranks under mpiexec train exactly as one process
on the whole batches; the loader's shards; SyncBatchNorm's sums.  MPI tests start mpiexec from the
test environment's bin/ (the mpi extra puts it there; the test extra includes it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from runner import README, ROOT  # noqa: E402

from convprop import models, nn
from convprop.data import DataLoader
from convprop.functional import batch_norm, batch_norm_backward

SUPPORT = str(ROOT / "tests" / "support")
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


def mpirun(k: int, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    assert os.path.exists(MPIEXEC), f"{MPIEXEC}: no mpiexec (pip install '.[mpi]')"
    return subprocess.run([MPIEXEC, "-n", str(k), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("k", [2, 3])
def test_k_ranks_equal_one_process_on_the_whole_batch(k, tmp_path):
    out = tmp_path / "eq.json"
    r = mpirun(k, sys.executable, os.path.join(SUPPORT, "mpi_equivalence.py"), str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["world"] == k
    assert set(result["cases"]) == {"lenet5-sgd-momentum", "lenet5-adam", "vgg_small-sgd-momentum",
                                    "lenet5-adam-DistributedOptimizer"}
    for case, c in result["cases"].items():
        assert c["steps"] == c["ref_steps"] == 5, case  # the 5th batch is the uneven one
        assert c["max_rel"] <= 1e-10, case  # every parameter (and BatchNorm's running statistics)
        assert c["same_on_every_rank"], case  # bitwise
        if "train_loss" not in c:
            continue
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


def test_the_readme_mpi_loop_runs_under_mpiexec(tmp_path):
    import re

    readme = open(README).read()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "distributed.init()" in b)
    script = tmp_path / "loop.py"
    script.write_text(code.replace("range(3)", "range(1)"))
    r = mpirun(2, sys.executable, str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("0 ") and r.stdout.count("\n") == 1  # rank 0 alone printed


# --------------------------------------------------------------------------- the command on K ranks
CONVPROP = [sys.executable, "-m", "convprop"]
RUN = ["--train-size", "1500", "--test-size", "300", "--batch-size", "50", "--no-progress"]


def ckpt_state(path):
    from convprop import checkpoint

    c = checkpoint.load(str(path))
    return c["meta"], c["model"]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """`mpiexec -n 2 convprop train --epochs 2` and the same run in one process."""
    out = tmp_path_factory.mktemp("runs")
    r2 = mpirun(2, *CONVPROP, "train", "--epochs", "2", "--out", str(out / "two"), *RUN)
    r1 = subprocess.run([*CONVPROP, "train", "--workers", "1", "--epochs", "2", "--out", str(out / "one"), *RUN],
                        capture_output=True, text=True, timeout=300)
    return out, r2, r1


def test_mpiexec_two_ranks_train_end_to_end_as_one_process(two_rank_run):
    out, r2, r1 = two_rank_run
    assert r2.returncode == 0 and r1.returncode == 0, r2.stderr + r1.stderr
    assert "; 2 MPI ranks" in r2.stdout and r2.stdout.count("training lenet5") == 1  # rank 0 alone prints
    assert r2.stdout.count("epoch   2/2") == 1 and "Traceback" not in r2.stderr
    one, two = (json.loads((out / d / "metrics.json").read_text()) for d in ("one", "two"))
    for a, b in zip(one["epochs"], two["epochs"]):  # float32: the sums are added in another order
        for key in ("train_loss", "val_loss"):  # (float64 agrees to 1e-10: the first test)
            assert b[key] == pytest.approx(a[key], rel=5e-3), key
        assert abs(b["val_acc"] - a["val_acc"]) <= 3 / 300
    (_, w1), (meta2, w2) = ckpt_state(out / "one" / "checkpoint.npz"), ckpt_state(out / "two" / "checkpoint.npz")
    assert meta2["epoch"] == 2 and "workers" not in meta2["args"]
    for k in w1:  # (float32 Adam: a near-zero gradient's rounding can flip a weight's step; compare norms)
        assert np.linalg.norm(w2[k] - w1[k]) <= 1e-2 * np.linalg.norm(w1[k]), k
    assert sorted(os.listdir(out / "two")) == sorted(os.listdir(out / "one"))  # rank 0 wrote everything, once


def rank_pids(root_pid: int) -> dict[int, int]:
    """{rank: pid} of the MPI ranks among root_pid's descendants (read from their environment)."""
    found, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(c) for c in f.read().split()]
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if b"PMI_RANK" in env and b"mpiexec" not in open(f"/proc/{pid}/cmdline", "rb").read():
            found[int(env[b"PMI_RANK"])] = pid
    return found


def start_and_wait_for_epoch(out, extra_env=None, epochs=3):
    import time

    proc = subprocess.Popen([*CONVPROP, "train", "--workers", "2", "--epochs", str(epochs), "--out", str(out), *RUN],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(extra_env or {})})
    ckpt, deadline = out / "checkpoint.npz", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                if ckpt_state(ckpt)[0]["epoch"] >= 1:
                    break
            except Exception:  # (being replaced right now)
                pass
        time.sleep(0.02)
    return proc, rank_pids(proc.pid)


def test_a_rank_killed_mid_epoch_ends_the_run_with_one_line_and_resume_on_1_and_3_ranks(two_rank_run, tmp_path):
    import signal
    import time

    out = tmp_path / "killed"
    proc, ranks = start_and_wait_for_epoch(out)
    assert sorted(ranks) == [0, 1], ranks
    from mpi_faults import descendants, mpi_files

    files = mpi_files(descendants(proc.pid))  # what MPI keeps in /dev/shm and /tmp while the run goes on
    os.kill(ranks[1], signal.SIGKILL)  # mid-epoch 2
    t = time.time()
    stdout, stderr = proc.communicate(timeout=30)
    assert time.time() - t < 30 and proc.returncode != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == [f"convprop: error: rank 1 of 2 (pid {ranks[1]} on {socket.gethostname()}) ended abnormally: "
                     "Killed (signal 9); every rank was stopped"], stderr
    assert "BAD TERMINATION" not in stdout
    assert not [f for f in files if os.path.exists(f)]  # an aborted run leaves none of it
    meta, _ = ckpt_state(out / "checkpoint.npz")  # the last good checkpoint is whole
    assert 1 <= meta["epoch"] < 3
    # resume it on 1 rank and on 3: both finish the run (3 epochs)
    import shutil

    shutil.copytree(out, tmp_path / "three")
    r1 = subprocess.run([*CONVPROP, "train", "--workers", "1", "--resume", str(out / "checkpoint.npz"),
                         "--no-progress"], capture_output=True, text=True, timeout=300)
    r3 = mpirun(3, *CONVPROP, "train", "--resume", str(tmp_path / "three" / "checkpoint.npz"), "--no-progress")
    for r in (r1, r3):
        assert r.returncode == 0, r.stderr
        assert f"resuming lenet5 from epoch {meta['epoch']} of 3" in r.stdout
    (m1, w1), (m3, w3) = ckpt_state(out / "checkpoint.npz"), ckpt_state(tmp_path / "three" / "checkpoint.npz")
    assert m1["epoch"] == m3["epoch"] == 3 and "; 3 MPI ranks" in r3.stdout
    for k in w1:  # the same run on 1 and on 3 ranks, up to float32 rounding
        assert np.linalg.norm(w3[k] - w1[k]) <= 1e-2 * np.linalg.norm(w1[k]), k
    h1, h3 = m1["history"], m3["history"]
    assert [h["epoch"] for h in h1] == [h["epoch"] for h in h3] == [1, 2, 3]
    assert h1[:meta["epoch"]] == h3[:meta["epoch"]]  # the epochs before the kill, as the checkpoint holds them


def test_a_stopped_rank_ends_the_run_after_the_timeout_with_one_line(tmp_path):
    import signal
    import time

    proc, ranks = start_and_wait_for_epoch(tmp_path / "stopped", {"CONVPROP_MPI_TIMEOUT": "3"})
    os.kill(ranks[1], signal.SIGSTOP)
    try:
        t = time.time()
        stdout, stderr = proc.communicate(timeout=30)
        assert time.time() - t < 30 and proc.returncode != 0
    finally:
        try:
            os.kill(ranks[1], signal.SIGKILL)
        except ProcessLookupError:
            pass
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("convprop: rank 0 of 2: no reply from the other ranks for 3 s"), stderr
    assert f"rank 1 (pid {ranks[1]}) is stopped" in lines[0]


ERROR_SCRIPT = r"""
import numpy as np
from convprop import distributed, models, nn, optim
from convprop.data import DataLoader
rank, world = distributed.init()
model = models.lenet5()
calls = []
def loss_fn(logits, y):
    calls.append(1)
    if rank == 1 and len(calls) == 3:
        raise ValueError("a fault in rank 1's third step")
    return nn.CrossEntropyLoss()(logits, y)
x = np.zeros((40, 28, 28), np.uint8)
distributed.fit(model, loss_fn, optim.SGD(model.parameters(), lr=0.1), DataLoader(x, np.zeros(40), 8,
    num_replicas=world, rank=rank), 1, progress=False, log=None)
print("not reached")
"""


def test_an_exception_on_one_rank_stops_every_rank_with_one_line():
    import time

    t = time.time()
    r = mpirun(2, sys.executable, "-c", ERROR_SCRIPT, timeout=60)
    assert time.time() - t < 30 and r.returncode != 0 and "not reached" not in r.stdout
    assert r.stderr.strip() == "convprop: rank 1 of 2: ValueError: a fault in rank 1's third step"


def test_errors_every_rank_makes_are_said_once(tmp_path):
    for args, code, text in [(["--epochs", "0"], 2, "argument --epochs: expected an integer from 1 to 100,000, got 0"),
                             (["--data", str(tmp_path / "nowhere")], 2, "no such directory"),
                             (["--epochs", "1", "--lr", "1e30", "--optimizer", "sgd", "--out", str(tmp_path / "d"),
                               *RUN], 1, "training diverged")]:
        r = mpirun(2, *CONVPROP, "train", *args)
        assert r.returncode == code, r.stderr
        lines = [line for line in r.stderr.splitlines() if line.startswith("convprop")]  # (and NumPy's warnings)
        assert len(lines) == 1 and text in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_workers_under_mpiexec_must_agree():
    r = mpirun(2, *CONVPROP, "train", "--workers", "3")
    assert r.returncode == 2
    assert r.stderr.strip() == ("convprop: error: --workers: this run was started by mpiexec with 2 ranks, "
                                "got --workers 3 (give one or the other)")
