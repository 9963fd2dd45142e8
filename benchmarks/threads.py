"""What a second core can give a NumPy kernel on this machine (docs/performance.md, "Threads").

    python -m benchmarks.threads [--smoke]

Three measurements, medians (the last two interleaved as in the suite), no torch needed:
- wake-up: a round trip to a Python worker thread after it idled 0, 1 and 5 ms (what a split
  kernel pays before the worker starts);
- memory-bound: np.maximum over LeNet conv1's activation at batch 256, passes in a row on one
  thread and on two at once (throughput: the threads start once);
- GEMM: LeNet conv2's sgemm at batch 256 (16×150 weights by 150×25,600 patches), the same.
The step-level estimate in docs/performance.md is built from these.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np

from convprop.functional import _schedule

from .timing import interleaved


def wake_up_us(gap_s: float, rounds: int) -> float:
    """Median round trip (µs) to a worker thread that has been idle gap_s seconds."""
    go, back = threading.Semaphore(0), threading.Semaphore(0)
    worker = threading.Thread(target=lambda: [(go.acquire(), back.release()) for _ in range(rounds)])
    worker.start()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        while time.perf_counter() - t < gap_s:  # busy here, so only the worker's core goes idle
            pass
        t = time.perf_counter()
        go.release()
        back.acquire()
        times.append(time.perf_counter() - t)
    worker.join()
    return statistics.median(times) * 1e6


def one_and_two(half: Callable[[int], object], passes: int, rounds: int) -> tuple[float, float]:
    """ms for `passes` calls of half(0) and of half(1): all on one thread, then half(0)'s on this
    thread and half(1)'s on another at the same time (started once, so mostly throughput)."""
    def on(i):
        for _ in range(passes):
            half(i)

    def pair():
        other = threading.Thread(target=on, args=(1,))
        other.start()
        on(0)
        other.join()
    t = interleaved({"one": lambda: (on(0), on(1)), "two": pair}, rounds)
    return t["one"] * 1e3, t["two"] * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="few rounds, small arrays: checks that it runs (CI)")
    args = p.parse_args(argv)
    rounds, n = (5, 8) if args.smoke else (300, 256)
    _schedule._pin_blas()  # one BLAS thread per caller, as convprop runs with its own threads
    for gap in (0.0, 0.001, 0.005):
        print(f"wake-up after {gap * 1e3:.0f} ms idle: {wake_up_us(gap, rounds):7.1f} µs a round trip")

    k = max(2, rounds // 15)  # passes over each half
    xs = [np.ones((n // 2, 6, 28, 28), np.float32) for _ in range(2)]  # LeNet conv1's activation, halved
    ys = [np.empty_like(x) for x in xs]
    one, two = one_and_two(lambda i: np.maximum(xs[i], 0, out=ys[i]), k, rounds // 60 + 3)
    mb = 2 * k * xs[0].nbytes / 1e6
    print(f"np.maximum over {mb:.1f} MB: on one thread {one:.2f} ms, on two at once {two:.2f} ms")

    a = np.ones((16, 150), np.float32)  # LeNet conv2's sgemm: weights by a batch's patches, halved
    cols = [np.ones((150, n * 50), np.float32) for _ in range(2)]
    outs = [np.empty((16, n * 50), np.float32) for _ in range(2)]
    one, two = one_and_two(lambda i: np.matmul(a, cols[i], out=outs[i]), k, rounds // 60 + 3)
    print(f"{2 * k} sgemms 16x150x{n * 50}: on one thread {one:.2f} ms, on two at once {two:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
