"""Throughput of training on 1 vs K MPI ranks on this machine, and the Allreduce time per step.

    python -m benchmarks.distributed [--ranks 1,2] [--rounds 5] [--smoke] [--out FILE.json]

Each round starts, for every (model, batch, ranks), a fresh `mpiexec -n K` job that times training
steps of the global batch (distributed.step: forward and backward on its shard, the fused gradient
Allreduce, the optimizer step; each rank on one thread), then a bare Allreduce of the fused gradient
buffer alone.  Configurations alternate within a round; medians over rounds are reported.  Prints
the CPU model and the load average: on a shared machine the numbers move with the other load.
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
import json, sys, time
import numpy as np
from convprop import distributed, models, nn, optim, set_num_threads
from convprop.random import manual_seed
set_num_threads(1)
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
times = []
for _ in range(steps):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
params = list(model.parameters())
ar = []
for _ in range(50 if world > 1 else 0):
    t = time.perf_counter()
    distributed.allreduce_gradients(params, [0.0, 0.0, 0.0])
    ar.append(time.perf_counter() - t)
if rank == 0:
    n = sum(p.data.size for p in params)
    print(json.dumps({"step_s": float(np.median(times)), "allreduce_s": float(np.median(ar)) if ar else 0.0,
                      "buffer_bytes": (n + 3) * 4}))
"""


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
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default 1,2)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported (default 5)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per job (default 20)")
    p.add_argument("--smoke", action="store_true", help="batch 16, 2 rounds, 3 steps: checks that it runs (CI)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    ranks = [int(k) for k in args.ranks.split(",")]
    batch, rounds, steps = (16, 2, 3) if args.smoke else (256, args.rounds, args.steps)
    configs = [(m, batch, k) for m in ("lenet5", "vgg_small") for k in ranks]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f} "
          f"(other processes share this machine: read ratios, not absolute times)")
    samples: dict = {c: [] for c in configs}
    for _ in range(rounds):
        for c in configs:
            samples[c].append(run_one(*c, steps))
    rows = []
    for (model, b, k), got in samples.items():
        step_s = statistics.median(s["step_s"] for s in got)
        rows.append({"model": model, "batch": b, "ranks": k, "step_ms": step_s * 1e3, "images_per_s": b / step_s,
                     "allreduce_ms": statistics.median(s["allreduce_s"] for s in got) * 1e3,
                     "buffer_bytes": got[0]["buffer_bytes"], "steps_ms": [s["step_s"] * 1e3 for s in got]})
    base = {r["model"]: r["images_per_s"] for r in rows if r["ranks"] == 1}
    print(f"{'model':<10} {'batch':>5} {'ranks':>5} {'step ms':>8} {'img/s':>8} {'speed-up':>8} "
          f"{'Allreduce ms':>12} {'buffer':>10}")
    for r in rows:
        r["speedup"] = r["images_per_s"] / base[r["model"]] if r["model"] in base else None
        speedup = f"{r['speedup']:.2f}×" if r["speedup"] else "-"
        print(f"{r['model']:<10} {r['batch']:>5} {r['ranks']:>5} {r['step_ms']:>8.1f} {r['images_per_s']:>8.0f} "
              f"{speedup:>8} {r['allreduce_ms']:>12.3f} {r['buffer_bytes'] / 1e3:>8.1f} kB")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cpu": cpu_model(), "cpus": os.cpu_count(), "rounds": rounds, "rows": rows,
                       "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
