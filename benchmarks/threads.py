"""What a second core can give a NumPy kernel on this machine (docs/performance.md, "Threads").

    python -m benchmarks.threads [--smoke]

Three measurements, medians, no torch needed:
- wake-up: a round trip to a Python worker thread after it idled 0, 1 and 5 ms (what a split
  kernel pays before the worker starts);
- memory-bound: np.maximum over LeNet conv1's activation at batch 256, passes in a row on one
  thread and on two at once (throughput: the threads start once);
- GEMM: LeNet conv2's sgemm at batch 256, the same.
The step-level estimate in docs/performance.md is built from these.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

from convprop.functional import _parallel


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


def one_and_two(fn, rounds: int) -> tuple[float, float]:
    """Median ms of fn(0, 2) (both halves of the work on one thread), then of fn(0, 1) and fn(1, 1)
    on two threads at once: (one, two)."""
    def timed(f):
        f()
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    def pair():
        other = threading.Thread(target=fn, args=(1, 1))
        other.start()
        fn(0, 1)
        other.join()
    return timed(lambda: fn(0, 2)), timed(pair)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="few rounds, small arrays: checks that it runs (CI)")
    args = p.parse_args(argv)
    rounds, n = (5, 8) if args.smoke else (300, 256)
    if _parallel._blas is not None:
        _parallel._blas[1](1)  # one OpenBLAS thread per caller, as convprop runs with its own threads
    for gap in (0.0, 0.001, 0.005):
        print(f"wake-up after {gap * 1e3:.0f} ms idle: {wake_up_us(gap, rounds):7.1f} µs a round trip")

    k = max(2, rounds // 15)  # passes per half of the work
    xs = [np.ones((n // 2, 6, 28, 28), np.float32) for _ in range(2)]
    ys = [np.empty_like(x) for x in xs]

    def relus(part, of):
        for i in range(part, part + of):
            for _ in range(k):
                np.maximum(xs[i], 0, out=ys[i])
    one, two = one_and_two(relus, max(3, rounds // 30))
    mb = 2 * k * xs[0].nbytes / 1e6
    print(f"np.maximum over {mb:.1f} MB: on one thread {one:.2f} ms, on two at once {two:.2f} ms")

    a = np.ones((16, 150), np.float32)
    cols = [np.ones((150, n * 100), np.float32) for _ in range(2)]
    outs = [np.empty((16, n * 100), np.float32) for _ in range(2)]

    def gemms(part, of):
        for i in range(part, part + of):
            for _ in range(k):
                np.matmul(a, cols[i], out=outs[i])
    one, two = one_and_two(gemms, max(3, rounds // 30))
    print(f"{2 * k} sgemms 16x150x{n * 100}: on one thread {one:.2f} ms, on two at once {two:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
