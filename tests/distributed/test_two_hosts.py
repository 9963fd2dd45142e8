"""Two hosts for real (tests/support/twohosts.py: network namespaces, a veth link, sshd): `convprop
train` on 2 hosts × 1 rank trains as 1 host × 2 ranks, bit for bit, its traffic crossing the link;
a rank killed on host2, host2's whole process tree killed, the link cut mid-epoch, host2's sshd
refusing, and host2's Hydra proxy killed each end the whole run within 30 s with one line naming the
host or rank and a non-zero exit, leaving the last checkpoint whole: resumed on one host, it ends as
the run that had no fault.  The harness leaves no namespace, process or file (checked)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
from mpi_faults import (
    CONVPROP,
    RUN,
    assert_same_training,
    checkpoint,
    end_of,
    gone,
    mpi_files,
    proxies_among,
    resume_on_one_host,
    wait_for_epoch,
    wait_for_ranks,
)
from twohosts import TwoHosts, unavailable

REASON = unavailable()
pytestmark = pytest.mark.skipif(REASON is not None and not os.environ.get("CI"), reason=REASON or "")
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
ALLREDUCE_BYTES = 61_706 * 4  # LeNet-5's gradients, float32: what each rank sends the other every step
TIMEOUT_ENV = {"CONVPROP_MPI_TIMEOUT": "5"}  # a collective waits at most 5 s (the link-down test)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run on one host, 2 ranks, no fault."""
    out = tmp_path_factory.mktemp("reference") / "run"
    r = subprocess.run([*CONVPROP, "train", "--workers", "2", "--out", str(out), *RUN], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def hosts(tmp_path):
    with TwoHosts(tmp_path) as h:
        yield h
    assert not h.leftovers()  # no namespace, process or file of the harness


def test_two_hosts_one_rank_each_train_as_one_host_two_ranks(hosts, reference, tmp_path):
    out = tmp_path / "two-hosts"
    sent = hosts.link_bytes()
    r = hosts.run(MPIEXEC, "-n", "2", *CONVPROP, "train", "--out", str(out), *RUN, timeout=300)
    sent = hosts.link_bytes() - sent
    assert r.returncode == 0, r.stderr
    assert "; 2 MPI ranks" in r.stdout and r.stdout.count("epoch   3/3") == 1
    assert_same_training(out, reference)  # bit for bit, as the 1-host 2-rank run
    # the gradients crossed the link, both ways, every step (3 epochs of 20): no shared memory between hosts
    assert sent >= 2 * 60 * ALLREDUCE_BYTES, sent


def test_mpich_talks_tcp_over_the_link_between_the_hosts(hosts):
    """MPICH's own account (its UCX network module's transport choice): between host1 and host2 only
    TCP on the veth link, no shared memory (sysv, posix, cma) and no other interface."""
    code = "from mpi4py import MPI; import numpy as np; MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, np.ones(9))"
    r = hosts.run(MPIEXEC, "-n", "2", sys.executable, "-c", code, env={"UCX_LOG_LEVEL": "info"})
    assert r.returncode == 0, r.stderr
    chosen = re.findall(r"\[(host\d):\d+ *:\d+\].*inter-node cfg#\d+ (.*)", r.stdout + r.stderr)
    assert sorted(h for h, _ in chosen) == ["host1", "host2"], r.stderr
    for _, transports in chosen:
        assert set(re.findall(r"\(([^)]*)\)", transports)) == {f"tcp/{hosts.device}"}, transports


def start(hosts, out, env=TIMEOUT_ENV):
    proc = hosts.popen(*CONVPROP, "train", "--workers", "2", "--out", str(out), *RUN, env=env)
    wait_for_epoch(proc, out)
    ranks = wait_for_ranks(lambda: hosts.pids(1) + hosts.pids(2), 2)
    assert ranks[0] in hosts.pids(1) and ranks[1] in hosts.pids(2), ranks  # one rank on each host
    return proc, ranks


def test_a_rank_killed_on_host2(hosts, reference, tmp_path):
    out = tmp_path / "run"
    proc, ranks = start(hosts, out)
    os.kill(ranks[1], signal.SIGKILL)
    lines, _, took = end_of(proc)
    assert took < 30 and proc.returncode != 0
    assert len(lines) == 1, lines
    assert re.fullmatch(rf"convprop: error: rank 1 of 2 \(pid {ranks[1]} on host2\) ended abnormally: .*; "
                        r"every rank was stopped", lines[0]), lines
    resume_on_one_host(out, reference)


def test_host2_dies_with_its_proxy(hosts, reference, tmp_path):
    out = tmp_path / "run"
    proc, ranks = start(hosts, out)
    gone = [p for p in hosts.pids(2) if p != hosts.sshd_pid()]  # the ssh session, Hydra's proxy, the rank
    assert len(proxies_among(gone)) == 1 and ranks[1] in gone
    for pid in gone:
        os.kill(pid, signal.SIGKILL)
    lines, _, took = end_of(proc)
    assert took < 30 and proc.returncode != 0
    assert lines == ["convprop: error: lost the connection to host2 (Connection to host2 closed by remote host); "
                     "every rank was stopped"], lines
    resume_on_one_host(out, reference)


def test_the_link_fails_mid_epoch(hosts, reference, tmp_path):
    """With the default timeouts: training's collectives wait 20 s, so a partition ends the run within 30 s."""
    out = tmp_path / "run"
    proc, ranks = start(hosts, out, env={})
    hosts.link(False)  # a partition: no error, no reset, only silence
    lines, _, took = end_of(proc)
    assert took < 30 and proc.returncode != 0
    assert len(lines) == 1, lines  # rank 0's collective timed out (20 s); rank 1's line cannot cross the link
    assert lines[0].startswith("convprop: rank 0 of 2: no reply from the other ranks for 20 s in "), lines
    assert "host2" in lines[0]
    resume_on_one_host(out, reference)


def test_host2_refuses_the_connection(hosts, tmp_path):
    os.kill(hosts.sshd_pid(), signal.SIGKILL)  # nothing listens on host2's port 22 any more
    proc = hosts.popen(*CONVPROP, "train", "--workers", "2", "--out", str(tmp_path / "run"), *RUN, env=TIMEOUT_ENV)
    lines, _, took = end_of(proc)
    assert took < 30 and proc.returncode != 0
    assert lines == ["convprop: error: could not reach host2 (ssh: connect to host host2 port 22: Connection "
                     "refused); every rank was stopped"], lines
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_the_proxy_on_host2_is_killed(hosts, reference, tmp_path):
    """The launcher dies (as a node agent does): the rank it ran notices within a second and stops, and
    the run ends with one line, leaving no MPI file behind."""
    out = tmp_path / "run"
    proc, ranks = start(hosts, out)
    [proxy] = proxies_among(hosts.pids(2))
    files = mpi_files(hosts.pids(1) + hosts.pids(2))
    before = checkpoint(out / "checkpoint.npz")["meta"]["epoch"]  # (an idle machine may be epochs further by now)
    os.kill(proxy, signal.SIGKILL)
    lines, _, took = end_of(proc)
    assert took < 30 and proc.returncode != 0
    assert len(lines) == 1, lines
    assert re.fullmatch(r"convprop: error: the MPI proxy \(hydra_pmi_proxy, pid \d+\) of rank 1 on host2 ended: .*",
                        lines[0]), lines
    assert not gone(ranks.values())  # both ranks ended, without training on
    assert checkpoint(out / "checkpoint.npz")["meta"]["epoch"] <= before + 1  # at most the epoch under way
    assert not [f for f in files if os.path.exists(f)]
    resume_on_one_host(out, reference)


def test_the_harness_leaves_nothing_when_a_test_fails(tmp_path):
    import time

    with pytest.raises(RuntimeError, match="a failing test"):
        with TwoHosts(tmp_path) as h:
            proc = h.popen(MPIEXEC, "-n", "2", sys.executable, "-c", "import time; time.sleep(120)")
            ranks = wait_for_ranks(lambda: h.pids(1) + h.pids(2), 2)
            assert len(h.pids(2)) >= 3  # sshd, its session, Hydra's proxy, the rank
            made = [f"/run/netns/{h.namespace(1)}", f"/etc/netns/{h.namespace(2)}", h.dir]
            assert all(os.path.exists(p) for p in made)
            raise RuntimeError("a failing test")
    assert not h.leftovers()
    assert not any(os.path.exists(p) for p in made)
    time.sleep(0.1)
    assert proc.poll() is not None and not gone(ranks.values(), timeout=0)
