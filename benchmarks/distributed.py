"""Throughput of training on 1 vs K MPI ranks on this machine, the Allreduce time per step, and the
cost model of docs/distributed.md for K nodes on a network.

    python -m benchmarks.distributed [--ranks 1,2,4] [--rounds 5] [--smoke] [--out FILE.json]

Each round starts, for every (model, batch, ranks), a fresh `mpiexec -n K` job that times training
steps of the global batch (distributed.step: forward and backward on its shard, the fused gradient
Allreduce, the optimizer step; each rank on one thread), then a bare Allreduce of the fused gradient
buffer alone; and one process that times a step on every shard size 256/K (the compute a rank of K
does).  Each K-rank job also reports its slower rank's compute (the step until it calls the gradients'
Allreduce), which bounds the speed-up any collectives could leave.  Configurations alternate within a
round; medians over rounds are reported.  Prints the CPU model and the load average: on a shared machine
the numbers move with the other load.

The model: a step on K ranks takes T_shard(B/K) + T_allreduce(K) + T_sync(K), where T_shard is the
measured one-rank step on B/K samples; a ring Allreduce of S bytes takes 2(K−1)·α + 2(K−1)/K · S/β
(β the link's bandwidth, α a message's latency); T_sync is BatchNorm's small Allreduces (two per
layer) and the batch-size one, latency only.  Efficiency = T_shard(B) / (K · step(K)).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

WORKER = r"""
import json, os, sys, time
import numpy as np
from convprop import distributed, models, nn, optim, set_num_threads
from convprop.allocator import keep_freed_memory
from convprop.random import manual_seed
set_num_threads(1)
keep_freed_memory()  # as `convprop train` does
rank, world = distributed.init()
name, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
manual_seed(0)
model = models.build(name, num_classes=10)
distributed.sync_batch_norm(model)
opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
rng = np.random.default_rng(0)
a, b = batch * rank // world, batch * (rank + 1) // world
x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)[a:b]
y = rng.integers(0, 10, batch)[a:b]
step = (lambda: distributed.step(model, loss_fn, opt, x, y)) if world > 1 else (
    lambda: __import__("convprop.train", fromlist=["x"]).train_step(model, loss_fn, opt, x, y))
for _ in range(3):
    step()
while time.time() < float(os.environ.get("START_AT", 0)):  # independent jobs started together time together
    time.sleep(0.001)
times, computes, mark = [], [], {}
if world > 1:  # a step's compute: from its start until it calls the gradients' Allreduce
    fused = distributed.data_parallel.allreduce_gradients  # (the name distributed.step calls)
    def timed(*a, **kw):
        mark["compute"] = time.perf_counter() - mark["start"]
        return fused(*a, **kw)
    distributed.data_parallel.allreduce_gradients = timed
for _ in range(steps):
    t = mark["start"] = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    computes.append(mark.get("compute", 0.0))
if world > 1:
    distributed.data_parallel.allreduce_gradients = fused
    from mpi4py import MPI
    compute = MPI.COMM_WORLD.allreduce(float(np.median(computes)), op=MPI.MAX)  # the slower rank's
params = list(model.parameters())
ar = []
for _ in range(50 if world > 1 else 0):
    t = time.perf_counter()
    distributed.allreduce_gradients(params, [0.0, 0.0, 0.0])
    ar.append(time.perf_counter() - t)
if rank == 0:
    n = sum(p.data.size for p in params)
    print(json.dumps({"step_s": float(np.median(times)), "allreduce_s": float(np.median(ar)) if ar else 0.0,
                      "compute_s": compute if world > 1 else float(np.median(times)), "buffer_bytes": (n + 4) * 4}))
"""


SHARDS = r"""
import json, sys, time
import numpy as np
from convprop import models, nn, optim, set_num_threads
from convprop.allocator import keep_freed_memory
from convprop.random import manual_seed
from convprop.train import train_step
set_num_threads(1)
keep_freed_memory()  # as `convprop train` does
name, sizes, steps, least = sys.argv[1], [int(b) for b in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4])
manual_seed(0)
model = models.build(name, num_classes=10)
opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
rng = np.random.default_rng(0)
out = {}
for b in sizes:
    x = rng.standard_normal((b, 1, 28, 28)).astype(np.float32); y = rng.integers(0, 10, b)
    for _ in range(3):
        train_step(model, nn.CrossEntropyLoss(), opt, x, y)
    times = []
    for _ in range(max(steps, least // b)):  # (at least `least` images: small shards get more steps)
        t = time.perf_counter()
        train_step(model, nn.CrossEntropyLoss(), opt, x, y)
        times.append(time.perf_counter() - t)
    out[b] = float(np.median(times))
print(json.dumps(out))
"""
NETWORKS = {"10 Gb/s Ethernet (α = 20 µs)": (10e9 / 8, 20e-6), "100 Gb/s (α = 3 µs)": (100e9 / 8, 3e-6)}
NODES = (1, 2, 4, 8, 16, 32, 64)


def ring_allreduce_s(nbytes: float, k: int, bandwidth: float, alpha: float) -> float:
    """A ring Allreduce of nbytes over k ranks: 2(k−1) messages of nbytes/k each way."""
    return 0.0 if k == 1 else 2 * (k - 1) * alpha + 2 * (k - 1) / k * nbytes / bandwidth


def syncs(model: str) -> int:
    """Small (latency-bound) collectives per step besides the gradients': with BatchNorm (synchronised),
    the batch size's and two per BatchNorm layer; without, none (the batch size rides in the gradients')."""
    from convprop import models, nn

    net = models.build(model, num_classes=10)
    bn = sum(isinstance(m, nn.BatchNorm2d) for m in net)
    return 1 + 2 * bn if bn else 0


def run_independent(model: str, batch: int, k: int, steps: int) -> dict:
    """k independent one-process jobs at once, each training on its batch/k shard and never
    communicating, timed over the same seconds: what k cores give k shards here — the ceiling of any
    data-parallel engine on this machine.  The step is the slowest job's (a synchronous step waits for it)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "START_AT": str(time.time() + 3)}
    jobs = [subprocess.Popen([sys.executable, "-c", WORKER, model, str(batch // k), str(steps)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(k)]
    outs = [job.communicate(timeout=600) for job in jobs]
    if any(job.returncode for job in jobs):
        raise RuntimeError(f"independent {model} jobs: {outs[0][1].strip()[-2000:]}")
    return {"step_s": max(json.loads(out.strip().splitlines()[-1])["step_s"] for out, _ in outs)}


def run_shards(model: str, sizes: list[int], steps: int, least: int) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", SHARDS, model, ",".join(map(str, sizes)), str(steps), str(least)],
                       capture_output=True, text=True, env=env, timeout=600, check=True)
    return {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_one(model: str, batch: int, ranks: int, steps: int) -> dict:
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [sys.executable, "-c", WORKER, model, str(batch), str(steps)]
    if ranks > 1:
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} …: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", default="1,2,4", help="comma-separated rank counts (default 1,2,4)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported (default 5)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per job (default 20)")
    p.add_argument("--smoke", action="store_true", help="batch 16, 2 rounds, 3 steps: checks that it runs (CI)")
    p.add_argument("--models", default="lenet5,vgg_small", help="comma-separated (default lenet5,vgg_small)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    names = args.models.split(",")
    ranks = [int(k) for k in args.ranks.split(",")]
    batch, rounds, steps = (16, 2, 3) if args.smoke else (256, args.rounds, args.steps)
    configs = [(m, batch, k) for m in names for k in ranks]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f} "
          f"(other processes share this machine: read ratios, not absolute times)")
    samples: dict = {c: [] for c in configs}
    ceiling_configs = [c for c in configs if 1 < c[2] <= (os.cpu_count() or 1) and 1 in ranks]
    ceiling: dict = {c: [] for c in ceiling_configs}
    sizes = sorted({max(1, batch // k) for k in NODES}, reverse=True)
    shard_samples: dict = {m: [] for m in names}
    for _ in range(rounds):
        for c in configs:
            samples[c].append(run_one(*c, steps))
        for c in ceiling_configs:
            ceiling[c].append(run_independent(*c, steps))
        for m in shard_samples:
            shard_samples[m].append(run_shards(m, sizes, steps, 0 if args.smoke else 2000))
    rows = []
    for (model, b, k), got in samples.items():
        step_s = statistics.median(s["step_s"] for s in got)
        rows.append({"model": model, "batch": b, "ranks": k, "step_ms": step_s * 1e3, "images_per_s": b / step_s,
                     "allreduce_ms": statistics.median(s["allreduce_s"] for s in got) * 1e3,
                     "compute_ms": statistics.median(s["compute_s"] for s in got) * 1e3,
                     "buffer_bytes": got[0]["buffer_bytes"], "steps_ms": [s["step_s"] * 1e3 for s in got]})
    base = {r["model"]: r["images_per_s"] for r in rows if r["ranks"] == 1}
    print(f"{'model':<10} {'batch':>5} {'ranks':>5} {'step ms':>8} {'img/s':>8} {'speed-up':>8} {'paired':>7} "
          f"{'Allreduce ms':>12} {'buffer':>10}")
    for r in rows:
        r["speedup"] = r["images_per_s"] / base[r["model"]] if r["model"] in base else None
        # the machine's speed drifts from minute to minute: also the median of each round's own ratio
        ones, these = samples.get((r["model"], r["batch"], 1)), samples[(r["model"], r["batch"], r["ranks"])]
        r["paired_speedup"] = (statistics.median(a["step_s"] / k["step_s"] for a, k in zip(ones, these))
                               if ones else None)
        speedup = f"{r['speedup']:.2f}×" if r["speedup"] else "-"
        paired = f"{r['paired_speedup']:.2f}×" if r["paired_speedup"] else "-"
        print(f"{r['model']:<10} {r['batch']:>5} {r['ranks']:>5} {r['step_ms']:>8.1f} {r['images_per_s']:>8.0f} "
              f"{speedup:>8} {paired:>7} {r['allreduce_ms']:>12.3f} {r['buffer_bytes'] / 1e3:>8.1f} kB")
    print("\neach rank's compute (its step until it calls the gradients' Allreduce; with SyncBatchNorm that includes"
          " its collectives), the slower rank's median, and the speed-up it allows with instant collectives:")
    for r in rows:
        if r["ranks"] > 1 and r["model"] in base:
            r["compute_bound"] = r["batch"] / base[r["model"]] / (r["compute_ms"] / 1e3)  # 1-rank step / compute
            print(f"{r['model']:<10} {r['batch']:>5} {r['ranks']:>5} compute {r['compute_ms']:.1f} ms of the "
                  f"{r['step_ms']:.1f} ms step: at most {r['compute_bound']:.2f}×")
    if ceiling:
        print(f"\nthe machine's ceiling: K independent processes at once, each stepping on its {batch}/K shard with no "
              "communication at all (the slowest one's step; paired with the round's 1-rank step)")
    independent = []
    for (model, b, k), got in ceiling.items():
        step_s = statistics.median(s["step_s"] for s in got)
        paired = statistics.median(a["step_s"] / c["step_s"] for a, c in zip(samples[(model, b, 1)], got))
        independent.append({"model": model, "batch": b, "processes": k, "step_ms": step_s * 1e3,
                     "images_per_s": b / step_s, "speedup": b / step_s / base[model], "paired_speedup": paired,
                     "steps_ms": [s["step_s"] * 1e3 for s in got]})
        print(f"{model:<10} {b:>5} {k:>5} {step_s * 1e3:>8.1f} {b / step_s:>8.0f} {b / step_s / base[model]:>7.2f}× "
              f"{paired:>6.2f}×")
    # the cost model: measured shard compute + modelled collectives
    shard = {m: {b: statistics.median(s[b] for s in got) for b in sizes} for m, got in shard_samples.items()}
    model_rows = []
    print(f"\ncost model, global batch {batch}: step = T_shard(B/K) + ring Allreduce + small collectives,")
    print("T_shard(b) = t0 + t1·b fitted (least squares) to the one-rank steps measured at b = " +
          ", ".join(map(str, sizes)))
    fits = {}
    for m in shard:
        import numpy as np

        t1, t0 = np.polyfit(sizes, [shard[m][b] for b in sizes], 1)
        fits[m] = (max(float(t0), 0.0), float(t1))
        nbytes = next(r["buffer_bytes"] for r in rows if r["model"] == m)
        print(f"{m}: {nbytes / 1e3:.1f} kB of gradients per step (per rank, each way: 2(K−1)/K of it), "
              f"{syncs(m)} small collectives; t0 = {fits[m][0] * 1e3:.2f} ms, t1 = {fits[m][1] * 1e3:.3f} ms/image; "
              "measured: " + ", ".join(f"{b}: {shard[m][b] * 1e3:.1f}" for b in sizes) + " ms")
        t_shard = lambda b, m=m: fits[m][0] + fits[m][1] * b  # noqa: E731
        for net, (bw, alpha) in NETWORKS.items():
            cells = []
            for k in NODES:
                b = max(1, batch // k)
                comm = ring_allreduce_s(nbytes, k, bw, alpha) + syncs(m) * ring_allreduce_s(64, k, bw, alpha)
                step = t_shard(b) + comm
                eff = t_shard(batch) / (k * step)
                cells.append(f"K={k}: {eff:.0%} ({comm * 1e3:.2f} ms comm)")
                model_rows.append({"model": m, "network": net, "nodes": k, "shard_ms": t_shard(b) * 1e3,
                                   "comm_ms": comm * 1e3, "efficiency": eff})
            print(f"  {net}: " + ", ".join(cells))
        for r in rows:  # the check: this machine's ranks, with the measured Allreduce in place of the network's
            if r["model"] == m and r["ranks"] > 1:
                predicted = shard[m][max(1, batch // r["ranks"])] * 1e3 + r["allreduce_ms"]
                r["predicted_step_ms"] = predicted
                print(f"  check, {r['ranks']} local ranks: predicted {predicted:.1f} ms a step (shard "
                      f"{shard[m][max(1, batch // r['ranks'])] * 1e3:.1f} + Allreduce {r['allreduce_ms']:.2f}), "
                      f"measured {r['step_ms']:.1f} ms")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cpu": cpu_model(), "cpus": os.cpu_count(), "rounds": rounds, "rows": rows,
                       "shard_ms": {m: {b: v * 1e3 for b, v in d.items()} for m, d in shard.items()},
                       "shard_fit_ms": {m: [t0 * 1e3, t1 * 1e3] for m, (t0, t1) in fits.items()},
                       "cost_model": model_rows, "independent": independent,
                       "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
