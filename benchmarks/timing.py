"""What every benchmark shares: interleaved timing (A B A B …, medians) and the CPU's name."""

from __future__ import annotations

import platform
import statistics
import time


def interleaved(fns: dict, rounds: int, min_round_s: float = 0.02, warm_up_s: float = 0.1) -> dict:
    """Per-call seconds of each fn: warm up (two calls, and at least warm_up_s: a forked worker's
    first steps copy pages), calibrate repeats, then A B A B … rounds; median per fn."""
    reps = {}
    for name, fn in fns.items():
        fn()
        t = time.perf_counter()
        while True:
            fn()
            if time.perf_counter() - t > warm_up_s:
                break
        t = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t, 1e-6)
        reps[name] = max(1, min(200, int(min_round_s / one)))
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(reps[name]):
                fn()
            samples[name].append((time.perf_counter() - t) / reps[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
