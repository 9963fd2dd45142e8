"""The cost of a network link between two hosts, measured with docs/two-hosts.sh (two network namespaces
joined by a veth pair, one rank on each, MPICH over TCP) against two ranks on one host (shared memory):
an Allreduce's time by size (latency at 8 bytes, bandwidth at megabytes), and a LeNet-5 training step
(global batch 256, 128 images a rank, one thread a rank) on 2 hosts, on 1 host × 2 ranks and on 1 rank.
Needs root (network namespaces) and sshd.

    sudo python -m benchmarks.link [--rounds 3] [--steps 20] [--out FILE.json]

Medians over rounds; each round starts fresh mpiexec jobs for every configuration in turn.  Prints the
CPU model and the load average: on a shared machine the numbers move with the other load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from .distributed import WORKER, cpu_model

ALLREDUCE = r"""
import json, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
out = {}
for nbytes in (8, 1024, 65536, 246840, 1 << 20, 4 << 20):
    a = np.ones(nbytes // 4, np.float32)
    reps = int(min(1000, max(20, 2e7 // nbytes)))
    for _ in range(5):
        comm.Allreduce(MPI.IN_PLACE, a)
    times = []
    for _ in range(reps):
        comm.Barrier()
        t = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, a)
        times.append(time.perf_counter() - t)
    out[nbytes] = comm.allreduce(float(np.median(times)), op=MPI.MAX)
if comm.rank == 0:
    print(json.dumps(out))
"""
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "two-hosts.sh")


def job(prefix: list[str], ranks: int, code: str, *args: str) -> dict:
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    argv = [*prefix, mpiexec, "-n", str(ranks), sys.executable, "-c", code, *args] if ranks > 1 else \
        [*prefix, sys.executable, "-c", code, *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} …: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.link", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported (default 3)")
    p.add_argument("--steps", type=int, default=20, help="timed LeNet-5 steps a job (default 20)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    a = p.parse_args(argv)
    rows: dict[str, list] = {"allreduce shared memory": [], "allreduce two hosts": [], "step 1 rank": [],
                             "step 1 host × 2 ranks": [], "step 2 hosts × 1 rank": []}
    with tempfile.TemporaryDirectory(prefix="convprop-link-") as tmp:
        hosts = os.path.join(tmp, "hosts")
        subprocess.run(["bash", SCRIPT, "up", hosts], check=True, capture_output=True)
        two = ["bash", SCRIPT, "run", hosts]
        try:
            for _ in range(a.rounds):
                rows["allreduce shared memory"].append(job([], 2, ALLREDUCE))
                rows["allreduce two hosts"].append(job(two, 2, ALLREDUCE))
                rows["step 1 rank"].append(job([], 1, WORKER, "lenet5", "256", str(a.steps)))
                rows["step 1 host × 2 ranks"].append(job([], 2, WORKER, "lenet5", "256", str(a.steps)))
                rows["step 2 hosts × 1 rank"].append(job(two, 2, WORKER, "lenet5", "256", str(a.steps)))
        finally:
            subprocess.run(["bash", SCRIPT, "down", hosts], capture_output=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {cpu_model()}; load average {load:.1f}; {a.rounds} rounds, medians")
    print("\n| Allreduce of | 1 host, 2 ranks (shared memory) | 2 hosts (TCP over veth) | bandwidth, 2 hosts |")
    print("|---|---|---|---|")
    result = {"cpu": cpu_model(), "rounds": a.rounds, "allreduce": {}, "lenet5_step": {}}
    for nbytes in rows["allreduce shared memory"][0]:
        shm = statistics.median(r[nbytes] for r in rows["allreduce shared memory"])
        net = statistics.median(r[nbytes] for r in rows["allreduce two hosts"])
        result["allreduce"][nbytes] = {"shared_memory_s": shm, "two_hosts_s": net}
        size = f"{int(nbytes):,} B"
        bandwidth = f"{int(nbytes) / net / 1e6:,.0f} MB/s" if int(nbytes) >= 65536 else "—"  # (small: latency)
        print(f"| {size} | {shm * 1e6:,.1f} µs | {net * 1e6:,.1f} µs | {bandwidth} |")
    print("\n| LeNet-5 step, batch 256 | step | Allreduce of the gradients |")
    print("|---|---|---|")
    for name in ("step 1 rank", "step 1 host × 2 ranks", "step 2 hosts × 1 rank"):
        step = statistics.median(r["step_s"] for r in rows[name])
        ar = statistics.median(r["allreduce_s"] for r in rows[name])
        result["lenet5_step"][name] = {"step_s": step, "allreduce_s": ar}
        print(f"| {name[5:]} | {step * 1e3:.1f} ms | {f'{ar * 1e3:.2f} ms' if ar else '—'} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
