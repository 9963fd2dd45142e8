"""The launcher dies: Hydra's per-node proxy (hydra_pmi_proxy, the parent of a node's ranks) killed, as
when a cluster's node agent dies.  Every rank notices it has lost its parent and stops within 30 s,
`convprop train --workers N` ends with one line, and no file MPI held in /dev/shm or /tmp is left.
(The same on two hosts: test_two_hosts.py.)"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

from mpi_faults import (
    CONVPROP,
    RUN,
    checkpoint,
    descendants,
    end_of,
    gone,
    mpi_files,
    proxies_among,
    wait_for_epoch,
    wait_for_ranks,
)

MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


def start(argv, out):
    # (4,000 images: an epoch takes seconds, so ranks that went on as orphans would be seen training)
    proc = subprocess.Popen([*argv, "--out", str(out), *RUN, "--train-size", "4000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_epoch(proc, out)
    ranks = wait_for_ranks(lambda: descendants(proc.pid), 2)
    [proxy] = proxies_among(descendants(proc.pid))
    # MPICH's shared memory and Hydra's topology file (/dev/shm/mpich_shm_*, /tmp/hydra_hwloc_xmlfile_*: their
    # owners delete them when they end in order) and the --workers launcher's directory, if still there
    files = mpi_files([proxy, *ranks.values()])
    return proc, ranks, proxy, files


def test_workers_end_with_one_line_when_the_proxy_is_killed(tmp_path):
    proc, ranks, proxy, files = start([*CONVPROP, "train", "--workers", "2"], tmp_path / "run")
    os.kill(proxy, signal.SIGKILL)
    lines, _, took = end_of(proc)
    assert took < 30 and proc.returncode != 0
    assert not gone(ranks.values())  # the orphaned ranks stopped by themselves,
    assert checkpoint(tmp_path / "run" / "checkpoint.npz")["meta"]["epoch"] < 3  # without training on
    assert len(lines) == 1, lines
    host = re.escape(socket.gethostname())
    assert re.fullmatch(rf"convprop: error: the MPI proxy \(hydra_pmi_proxy, pid {proxy}\) of ranks 0 and 1 on "
                        rf"{host} ended: .*", lines[0]), lines
    assert not [f for f in files if os.path.exists(f)]  # no /dev/shm or /tmp file of the run is left


def test_mpiexec_by_hand_ends_when_the_proxy_is_killed(tmp_path):
    proc, ranks, proxy, files = start([MPIEXEC, "-n", "2", *CONVPROP, "train"], tmp_path / "run")
    os.kill(proxy, signal.SIGKILL)
    _, _, took = end_of(proc)  # (what it says is Hydra's: the ranks' stderr went to the proxy)
    assert took < 30 and proc.returncode != 0
    assert not gone(ranks.values())
    assert checkpoint(tmp_path / "run" / "checkpoint.npz")["meta"]["epoch"] < 3
    assert not [f for f in files if os.path.exists(f)]
