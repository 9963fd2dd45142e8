"""Watching and breaking `convprop train` under MPI for the fault tests (tests/distributed): the ranks'
processes, the files MPI keeps while a run goes on, and a run resumed after a fault."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

CONVPROP = [sys.executable, "-m", "convprop"]
# 20 steps an epoch; the faults strike in epoch 2 of 3
RUN = ["--train-size", "1000", "--test-size", "200", "--batch-size", "50", "--epochs", "3", "--no-progress"]
TIMING = ("seconds", "images_per_s")  # the only metrics that differ between two runs of one training


def environ(pid: int) -> dict[bytes, bytes]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        found += children
        todo += children
    return found


def ranks_among(pids) -> dict[int, int]:
    """{rank: pid} of the MPI ranks (not Hydra's proxies) among pids."""
    found = {}
    for pid in pids:
        try:
            env, cmd = environ(pid), cmdline(pid)
        except OSError:
            continue
        if b"PMI_RANK" in env and os.path.basename(cmd.split()[0]).startswith("python"):
            found[int(env[b"PMI_RANK"])] = pid
    return found


def proxies_among(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if os.path.basename(cmdline(pid).split()[0]) == "hydra_pmi_proxy":
                out.append(pid)
        except OSError:
            pass
    return out


OWN = tuple(os.path.realpath(p) + os.sep for p in {sys.prefix, str(pathlib.Path(__file__).resolve().parents[2])})


def mpi_files(pids) -> set[str]:
    """The files in /dev/shm and /tmp that these processes hold open (MPICH's shared memory, Hydra's
    topology file) and the --workers launcher's directory: what an aborted run could leave behind."""
    found = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            env = environ(pid)
        except OSError:
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:  # (memory-mapped files: MPICH's shared memory)
                paths = [line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6]
        except OSError:
            paths = []
        for fd in fds:
            try:
                paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
        for path in paths:  # (not the program's own files: a checkout or venv may itself lie under /tmp)
            if path.startswith(("/dev/shm/", "/tmp/")) and not path.endswith("(deleted)") and "pytest-" not in path \
                    and not path.startswith(OWN):
                found.add(path)
        if b"CONVPROP_RANKS_FILE" in env:
            found.add(os.path.dirname(env[b"CONVPROP_RANKS_FILE"].decode()))
    return found


def checkpoint(path) -> dict:
    from convprop import checkpoint as ckpt

    return ckpt.load(str(path))


def wait_for_epoch(proc: subprocess.Popen, out, epoch: int = 1, timeout: float = 120) -> None:
    """Until the run's checkpoint holds `epoch` (the fault then strikes in the next epoch)."""
    path, deadline = os.path.join(out, "checkpoint.npz"), time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path):
            try:
                if checkpoint(path)["meta"]["epoch"] >= epoch:
                    return
            except Exception:  # (being replaced right now)
                pass
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint of epoch {epoch} in {out}: {proc.poll()}")


def gone(pids, timeout: float = 10) -> list[int]:
    """Those of pids still running (as anything but a zombie) after waiting up to timeout s for them to end."""
    deadline = time.time() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                        alive.append(pid)
            except OSError:
                pass
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.05)


def wait_for_ranks(pids_of, k: int, timeout: float = 60) -> dict[int, int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ranks = ranks_among(pids_of())
        if len(ranks) == k:
            return ranks
        time.sleep(0.05)
    raise AssertionError(f"not {k} ranks running: {ranks_among(pids_of())}")


def end_of(proc: subprocess.Popen, limit: float = 30) -> tuple[list[str], str, float]:
    """Wait for a faulted run to end: (its non-empty stderr lines, its stdout, seconds it took)."""
    t = time.time()
    try:
        out, err = proc.communicate(timeout=limit + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running {limit + 30} s after the fault:\n{out}\n{err}") from None
    return [line for line in err.splitlines() if line.strip()], out, time.time() - t


def metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.json")) as f:
        epochs = json.load(f)["epochs"]
    return [{k: v for k, v in e.items() if k not in TIMING} for e in epochs]


def assert_same_training(run_dir, ref_dir) -> None:
    """Bit for bit the same weights and optimizer state, and the same metrics (but the timings)."""
    a, b = checkpoint(os.path.join(run_dir, "checkpoint.npz")), checkpoint(os.path.join(ref_dir, "checkpoint.npz"))
    assert a["meta"]["epoch"] == b["meta"]["epoch"]
    assert a["meta"]["scheduler"] == b["meta"]["scheduler"] and a["meta"]["optimizer"] == b["meta"]["optimizer"]
    for part in ("model", "optim"):
        flat_a, flat_b = _flat(a[part]), _flat(b[part])
        assert flat_a.keys() == flat_b.keys(), part
        for key in flat_b:
            np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=f"{part}: {key}")
    assert metrics(run_dir) == metrics(ref_dir)


def _flat(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}/{k}"))
        return out
    if isinstance(tree, (list, tuple)):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flat(v, f"{prefix}[{i}]"))
        return out
    return {prefix: np.asarray(tree)}


def resume_on_one_host(run_dir, ref_dir, workers: int = 2) -> None:
    """`convprop train --resume` of a faulted run's checkpoint, on this machine alone, ends as the
    run that had no fault (ref_dir): the same training, bit for bit."""
    meta = checkpoint(os.path.join(run_dir, "checkpoint.npz"))["meta"]
    assert 1 <= meta["epoch"] < 3, meta["epoch"]  # the last good checkpoint: whole, before the end
    r = subprocess.run([*CONVPROP, "train", "--workers", str(workers), "--resume",
                        os.path.join(run_dir, "checkpoint.npz"), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming lenet5 from epoch {meta['epoch']} of 3" in r.stdout
    assert_same_training(run_dir, ref_dir)
