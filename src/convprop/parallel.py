"""Data parallelism over processes: one training step's batch split over forked workers.

Why processes: between a step's few hundred NumPy calls, threads of one process trade the GIL, and
here that costs a second core most of what it gives (docs/performance.md, "Threads"); processes have
a GIL each.  So `DataParallel`, like torch's DistributedDataParallel on one machine:
  - keeps the parameters in shared memory: every worker, forked once, computes with the values the
    optimizer last wrote (in place, as every convprop optimizer writes them);
  - each step, hands worker k a contiguous shard of n_k samples and computes shard 0 itself;
  - adds the shards' gradients, each weighted by its share of the batch — the batch's mean loss is
    L = Σ_k (n_k / N) L_k, so ∂L/∂W = Σ_k (n_k / N) ∂L_k/∂W — in a fixed order, then steps here.
The step is `train_step`'s up to float rounding, and reproducible for a given number of workers.

Limits: POSIX fork (Linux, macOS); a loss that averages over the batch (convprop's do); a model
without buffers, because BatchNorm's running statistics would be each worker's own
(`supports(model)` says which).  Worker k draws its dropout masks from a generator seeded, each
step, with k and the parent generator's state, so a resumed run draws what an unbroken one does.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import pickle
import signal
import time
import zlib
from collections.abc import Callable

import numpy as np

from . import nn
from . import random as _random
from .functional import _threads
from .nn import Module
from .optim import Optimizer
from .train import gradients, train_step

# How long a waiting process polls before it sleeps.  A sleeping one wakes in ~0.1 ms, and Linux then
# tends to move it onto the CPU of the process that woke it, where the two share one core for a while
# (LeNet-5 steps of 12 ms took 20 now and then).  A worker waits for the next step 1 ms (between
# steps the parent may run evaluation on every core); the parent waits for the workers' shards up
# to 50 ms, the time the shards themselves take.
SPIN_S, DONE_SPIN_S = 1e-3, 50e-3
_ERROR_BYTES = 1 << 16


def supports(model: Module) -> str | None:
    """Why `model` cannot train data-parallel here, or None if it can."""
    if not hasattr(os, "fork"):
        return "this platform cannot fork processes"
    names = [name for name, _ in model.named_buffers()]
    if names:
        return f"the model has buffers ({', '.join(names[:3])}…) that each worker would update on its own"
    return None


def _shared(arrays: list[tuple[tuple[int, ...], np.dtype]]) -> list[np.ndarray]:
    """Zeroed arrays of these shapes and dtypes in one anonymous shared mapping, which a forked
    child shares with its parent (writes of either are seen by the other)."""
    offsets, end = [], 0
    for shape, dtype in arrays:
        end = -(-end // 64) * 64  # cache-line aligned
        offsets.append(end)
        end += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    buffer = mmap.mmap(-1, max(end, 1))
    return [np.ndarray(shape, dtype, buffer=buffer, offset=o) for (shape, dtype), o in zip(arrays, offsets)]


def _acquire(sem, alive: Callable[[], bool], spin_s: float) -> None:
    """sem.acquire(), polling for spin_s first; raises if alive() turns False while sleeping."""
    deadline = time.perf_counter() + spin_s
    while not sem.acquire(False):
        if time.perf_counter() > deadline:
            while not sem.acquire(timeout=0.05):
                if not alive():
                    raise RuntimeError("DataParallel: a worker process exited unexpectedly")
            return


def _pickled(e: Exception, k: int) -> bytes:
    """e as bytes that unpickle in the parent (a RuntimeError with its message where e's will not)."""
    try:
        payload = pickle.dumps(e)
        pickle.loads(payload)
    except Exception:
        payload = b""
    if not payload or len(payload) > _ERROR_BYTES:
        payload = pickle.dumps(RuntimeError(f"in DataParallel worker {k}: {str(e)[:1000]}"))
    return payload


class DataParallel:
    """`step(x, y) -> (loss, correct)`, as train_step(model, loss_fn, optimizer, x, y), with the batch
    split over `workers` processes (this one and workers − 1 forked ones, started at the first step).

    x (N, ...) and y (N, ...): one batch; N ≥ workers uses every worker, a smaller one fewer.
    Call close() (or use `with`) to end the workers; they also end with this process.
    """

    def __init__(self, model: Module, loss_fn, optimizer: Optimizer, workers: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers: expected a positive int, got {workers!r}")
        why = supports(model) if workers > 1 else None
        if why:
            raise ValueError(f"workers={workers}: cannot train data-parallel: {why}")
        self.model, self.loss_fn, self.optimizer, self.workers = model, loss_fn, optimizer, workers
        self._pids: list[int] = []
        self._layout = None

    # ----------------------------------------------------------------- the step
    def __call__(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        return self.step(x, y)

    def step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        if (self.workers == 1 or not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray)
                or min(x.ndim, y.ndim) == 0 or len(x) < self.workers or len(y) != len(x)
                or x.dtype.hasobject or y.dtype.hasobject):
            return train_step(self.model, self.loss_fn, self.optimizer, x, y)  # (which explains bad inputs)
        n = len(x)
        bounds = [n * k // self.workers for k in range(self.workers + 1)]
        self._start_if_needed(x, y, -(-n // self.workers))
        # the workers' dropout draws: from the parent's generator state, which this does not advance
        seed = zlib.crc32(repr(_random.get_state()).encode())
        for k in range(1, self.workers):  # hand the shards out: inputs first, then the go
            a, b = bounds[k], bounds[k + 1]
            self._x[k][: b - a], self._y[k][: b - a] = x[a:b], y[a:b]
            self._n[k] = b - a, self.model.training, seed, nn.is_anomaly_enabled()
            self._go[k].release()
        try:
            self.optimizer.zero_grad()
            with _threads.serial():  # one core per process
                loss, correct = gradients(self.model, self.loss_fn, x[: bounds[1]], y[: bounds[1]])
        finally:  # every worker's results in before anything else touches the shared arrays
            for k in range(1, self.workers):
                _acquire(self._done[k], lambda k=k: self._alive(k), DONE_SPIN_S)
        for k in range(1, self.workers):
            if self._stats[k][2]:
                raise pickle.loads(self._error[k][: int(self._stats[k][2])].tobytes())
        share = [(b - a) / n for a, b in zip(bounds[:-1], bounds[1:])]
        for i, p in enumerate(self._params):
            g = p.grad if p.grad is not None else np.zeros_like(p.data)
            g *= share[0]
            for k in range(1, self.workers):  # ∂L/∂W = Σ_k (n_k / N) ∂L_k/∂W, k in order
                g += share[k] * self._grads[k][i]
            p.grad = g
        self.optimizer.step()
        loss = share[0] * loss + sum(share[k] * self._stats[k][0] for k in range(1, self.workers))
        return loss, correct + int(sum(self._stats[k][1] for k in range(1, self.workers)))

    # ----------------------------------------------------------------- the workers
    def _start_if_needed(self, x: np.ndarray, y: np.ndarray, shard: int) -> None:
        """Fork the workers, or fork them again when the parameters were replaced (load_state_dict,
        to(dtype)) or a batch does not fit the shared input buffers."""
        params = list(self.model.parameters())
        layout = (x.shape[1:], x.dtype, y.shape[1:], y.dtype)
        if (self._pids and layout == self._layout and shard <= len(self._x[1])
                and len(params) == len(self._params) and all(p.data is v for p, v in zip(params, self._views))):
            return
        self.close()
        k1, like_params = self.workers, [(p.data.shape, p.data.dtype) for p in params]
        self._views = _shared(like_params)
        for p, v in zip(params, self._views):
            v[...] = p.data
            p.data = v  # the optimizer writes in place: every worker sees the new values
        self._grads = [None] + [_shared(like_params) for _ in range(1, k1)]  # each worker's ∂L_k/∂W
        self._x = [None] + [_shared([((shard, *x.shape[1:]), x.dtype)])[0] for _ in range(1, k1)]
        self._y = [None] + [_shared([((shard, *y.shape[1:]), y.dtype)])[0] for _ in range(1, k1)]
        # per worker: (n_k, training, seed, anomaly) in; (loss, correct, error length) and error out
        self._n, self._stats, self._error = _shared([((k1, 4), np.int64), ((k1, 3), np.float64),
                                                     ((k1, _ERROR_BYTES), np.uint8)])
        self._params, self._layout = params, layout
        ctx = multiprocessing.get_context("fork")
        self._go = [None] + [ctx.Semaphore(0) for _ in range(1, k1)]
        self._done = [None] + [ctx.Semaphore(0) for _ in range(1, k1)]
        _threads.shutdown()  # fork with no worker threads about
        parent = os.getpid()
        for k in range(1, k1):
            pid = os.fork()
            if pid == 0:  # the worker: serve until told to stop, then leave without cleaning up the parent's state
                code = 0
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
                    self._serve(k, parent)
                except BaseException:
                    code = 1
                os._exit(code)
            self._pids.append(pid)

    def _serve(self, k: int, parent: int) -> None:
        _threads.set_num_threads(1)
        while True:
            _acquire(self._go[k], lambda: os.getppid() == parent, SPIN_S)
            n, training, seed, anomaly = (int(v) for v in self._n[k])
            if n < 0:
                return
            _random.manual_seed([seed, k])
            nn.detect_anomaly(bool(anomaly))
            stats = self._stats[k]
            try:
                self.model.train(bool(training))
                self.model.zero_grad()
                loss, correct = gradients(self.model, self.loss_fn, self._x[k][:n], self._y[k][:n])
                for g, p in zip(self._grads[k], self._params):
                    g[...] = 0 if p.grad is None else p.grad
                stats[:] = loss, correct, 0
            except Exception as e:  # raised again in the parent, as the parent's own error would be
                payload = _pickled(e, k)
                self._error[k][: len(payload)] = np.frombuffer(payload, np.uint8)
                stats[2] = len(payload)
            self._done[k].release()

    def _alive(self, k: int) -> bool:
        pid, _ = os.waitpid(self._pids[k - 1], os.WNOHANG)
        return pid == 0

    def close(self) -> None:
        """End the worker processes (the model keeps its parameters' current values)."""
        if not self._pids:
            return
        for k in range(1, self.workers):
            self._n[k] = -1, 0, 0, 0
            self._go[k].release()
        for pid in self._pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:  # already reaped by _alive
                pass
        self._pids = []

    def __enter__(self) -> DataParallel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
