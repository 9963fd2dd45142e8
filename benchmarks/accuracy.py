"""Accuracy and time of the default recipes, as a user runs them: `convprop train` (LeNet-5) and
`convprop train --model resnet8`, each a fresh process on the bundled 5,000-image MNIST sample (4,500
trained on, 500 validated on), tested on the official 10,000 test digits.

    python -m benchmarks.accuracy                 # both; one Markdown row each
    python -m benchmarks.accuracy --model resnet8 # one
    python -m benchmarks.accuracy --smoke         # 1 epoch on 256 images: that it runs, not what it reaches

Each row: test accuracy (of the checkpoint the run tested), wall seconds from the command to its end,
the CPU's name and the 1-minute load average before and after (other work on the machine slows the run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from .timing import cpu_name


def run(model: str, smoke: bool, workers: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="convprop-accuracy-") as tmp:
        out = os.path.join(tmp, "run")
        cmd = [sys.executable, "-m", "convprop", "train", "--model", model, "--out", out, "--no-progress"]
        if smoke:
            cmd += ["--epochs", "1", "--train-size", "256", "--test-size", "500"]
        if workers:
            cmd += ["--workers", str(workers)]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if r.returncode != 0:
            raise SystemExit(f"benchmarks.accuracy: {' '.join(cmd[1:])} failed:\n{r.stderr}")
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)
    return {"model": model, "args": m["args"], "test_accuracy": m["test_accuracy"], "best_epoch": m["best_epoch"],
            "seconds": seconds, "train_seconds": m["seconds"], "cpu": cpu_name(), "cores": os.cpu_count(),
            "load_before": load, "load_after": os.getloadavg()[0], "smoke": smoke}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", choices=["lenet5", "resnet8"], help="(default: both)")
    p.add_argument("--smoke", action="store_true", help="1 epoch on 256 images")
    p.add_argument("--workers", type=int, default=None, help="MPI ranks (default: convprop train's)")
    p.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    args = p.parse_args(argv)
    rows = []
    print("| model | recipe | test accuracy | wall s | CPU | load avg before → after |")
    print("|---|---|---|---|---|---|")
    for model in args.model or ["lenet5", "resnet8"]:
        row = run(model, args.smoke, args.workers)
        a = row["args"]
        recipe = f"{a['epochs']} ep, batch {a['batch_size']}, {a['optimizer']} lr {a['lr']:g}"
        print(f"| {model} | {recipe} | {row['test_accuracy']:.2%} | {row['seconds']:.1f} | {row['cpu']} "
              f"({row['cores']} cores) | {row['load_before']:.1f} → {row['load_after']:.1f} |", flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
