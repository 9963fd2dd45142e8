"""Data parallelism on MPI: K processes (ranks) train one model, on one machine or on many.

Backprop's last step averages every gradient over the batch (the 1/β; docs/math.md, "Batch
averaging").  Spread a batch of N samples over K ranks, rank k holding n_k of them, and that
average is a sum over ranks:

    ∂L/∂W = (1/N) Σ_i ∂ℓ_i/∂W = Σ_k (n_k/N) · ∂L_k/∂W       (L_k: the mean loss of rank k's shard)

so, as Horovod and torch's DistributedDataParallel do, every rank runs forward and backward on its
shard, one Allreduce (a sum over ranks, its result on every rank) of one fused buffer of all the
gradients follows, and every rank takes the same step with an unchanged optimizer.  BatchNorm's
statistics are the whole batch's (`sync_batch_norm`: SyncBatchNorm semantics).

    rank, world = distributed.init()                   # under `mpiexec -n K python …`
    loader = DataLoader(images, labels, 64, shuffle=True, num_replicas=world, rank=rank)
    distributed.fit(model, loss_fn, optimizer, loader, epochs)   # one step = one global batch of 64

`distributed.fit` is train.fit with this module's `step` and `evaluate` (train.fit itself knows
nothing of MPI); an explicit loop uses `DistributedOptimizer` (Horovod's) or `train_step`.
Needs mpi4py (`pip install 'convprop[mpi]'`, which brings an MPICH whose `mpiexec` lands next to
the Python).

Faults: a collective that waits longer than `timeout` seconds (a rank stopped, hung or lost) stops
every rank with one line (naming a rank of this machine found stopped); `init(abort_on_error=True)`
makes an exception that escapes on one rank print one line naming the rank and stop every rank
(MPI_Abort) rather than leave the others waiting forever.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from . import train
from .errors import Divergence, MPIError, mark_every_rank
from .nn import Module, Parameter
from .optim import Optimizer

_ENV_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
_ENV_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
DEFAULT_TIMEOUT_S = 120.0  # CONVPROP_MPI_TIMEOUT overrides it
SPIN_S = 0.02  # a waiting rank polls this long before it starts to sleep between polls

_comm = None
_rank, _size = 0, 1
_timeout = DEFAULT_TIMEOUT_S
_peers: list[tuple[str, int]] = []  # (host, pid) of every rank


def launched_size() -> int:
    """The number of ranks mpiexec started this process among (1 when not under mpiexec)."""
    for name in _ENV_SIZE:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def launched_rank() -> int:
    """This process's rank as mpiexec's environment says (0 when not under mpiexec), before init()."""
    for name in _ENV_RANK:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def init(timeout: float | None = None, abort_on_error: bool = True) -> tuple[int, int]:
    """Join the MPI job this process was started in; returns (rank, world size).

    Outside mpiexec this is a job of one (rank 0 of 1) and needs no MPI at all.  timeout: seconds a
    collective may wait before the run is stopped (default CONVPROP_MPI_TIMEOUT, else 120).
    abort_on_error: an uncaught exception on any rank prints one line and stops every rank.
    """
    global _comm, _rank, _size, _timeout, _peers
    if timeout is None:
        timeout = float(os.environ.get("CONVPROP_MPI_TIMEOUT", DEFAULT_TIMEOUT_S))
    if not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    _timeout = float(timeout)
    if _comm is not None or launched_size() == 1:
        return _rank, _size
    try:
        from mpi4py import MPI
    except ImportError:
        raise MPIError("started by mpiexec, but mpi4py is not installed: pip install 'convprop[mpi]'") from None
    _comm = MPI.COMM_WORLD
    _rank, _size = _comm.Get_rank(), _comm.Get_size()
    _peers = _comm.allgather((socket.gethostname(), os.getpid()))
    ranks_file = os.environ.get("CONVPROP_RANKS_FILE")  # for the --workers launcher: which pid is which rank
    if ranks_file and _rank == 0:
        with open(ranks_file + ".tmp", "w") as f:
            json.dump({str(pid): r for r, (_, pid) in enumerate(_peers)}, f)
        os.replace(ranks_file + ".tmp", ranks_file)
    if abort_on_error and _size > 1:
        previous = sys.excepthook

        def hook(kind, value, tb):
            if issubclass(kind, KeyboardInterrupt):
                return previous(kind, value, tb)
            abort(f"{kind.__name__}: {value}")

        sys.excepthook = hook
    return _rank, _size


def is_initialized() -> bool:
    """True once init() joined a job of more than one rank."""
    return _comm is not None and _size > 1


def rank() -> int:
    return _rank


def world_size() -> int:
    return _size


def abort(message: str, code: int = 1) -> None:
    """Print `convprop: rank r of K: message` (one line) and stop every rank of the job (MPI_Abort)."""
    sys.stdout.flush()
    print(f"convprop: rank {_rank} of {_size}: {message}", file=sys.stderr, flush=True)
    if _comm is not None:
        time.sleep(0.3)  # (mpiexec forwards the line before MPI_Abort tears the job down)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # MPICH's own multi-line notice of the abort: the line above says it
        _comm.Abort(code)
    os._exit(code)  # (MPI_Abort may return before the signal that ends this process arrives)


# --------------------------------------------------------------------------- collectives
def _stopped_peers() -> str:
    """Ranks on this machine that are stopped (SIGSTOP) or gone, as a phrase ('' if none is seen)."""
    host, found = socket.gethostname(), []
    for r, (h, pid) in enumerate(_peers):
        if h != host or r == _rank:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            found.append(f"rank {r} (pid {pid}) is gone")
            continue
        if state in ("T", "t"):
            found.append(f"rank {r} (pid {pid}) is stopped")
        elif state in ("Z", "X"):
            found.append(f"rank {r} (pid {pid}) is gone")
    return "; ".join(found)


def _wait(request, what: str) -> None:
    """Wait for a nonblocking collective; stop the job if it takes longer than the timeout."""
    if request.Test():
        return
    start = time.perf_counter()
    spin_until = start + SPIN_S
    # every rank times out about together; the lowest rank still running speaks first (its abort ends the others)
    deadline = start + _timeout + 0.5 * _rank
    while not request.Test():
        now = time.perf_counter()
        if now > spin_until:
            time.sleep(2e-4)
            if now > deadline:
                seen = _stopped_peers()
                abort(f"no reply from the other ranks for {_timeout:g} s in {what}"
                      + (f": {seen}" if seen else " (a rank stopped, hung or lost its connection)")
                      + "; stopping every rank (CONVPROP_MPI_TIMEOUT sets the limit)")


def allreduce(a: np.ndarray, what: str = "an Allreduce") -> np.ndarray:
    """The elementwise sum of `a` over every rank, on every rank (a new contiguous array).

    One process: a copy of a.  `what` names the collective in the message of a timeout."""
    out = np.array(a, copy=True, order="C")
    if _size == 1 or _comm is None:
        return out
    from mpi4py import MPI

    _wait(_comm.Iallreduce(MPI.IN_PLACE, out, op=MPI.SUM), what)
    return out


def allreduce_gradients(params: Iterable[Parameter], extra=None, weight: float = 1.0) -> np.ndarray:
    """Replace every parameter's .grad by Σ_ranks weight·grad: one Allreduce of one fused buffer —
    the gradients side by side, then `extra` (values to sum along with them, such as a loss and a
    count, in the gradients' dtype).  A parameter without a gradient counts as zeros.  Returns the
    summed extra (float64)."""
    params = list(params)
    extra = np.zeros(0) if extra is None else np.asarray(extra, np.float64).ravel()
    dtype = np.result_type(*[p.data.dtype for p in params]) if params else np.dtype(np.float64)
    sizes = [p.data.size for p in params]
    n = sum(sizes)
    buffer = np.empty(n + extra.size, dtype)
    offset = 0
    for p, size in zip(params, sizes):
        view = buffer[offset:offset + size]
        if p.grad is None:
            view[...] = 0
        elif weight == 1.0:
            view[...] = p.grad.ravel()
        else:
            np.multiply(p.grad.ravel(), weight, out=view, casting="unsafe")
        offset += size
    buffer[n:] = extra
    if _size > 1:
        from mpi4py import MPI

        _wait(_comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM), "the gradient Allreduce")
    offset = 0
    for p, size in zip(params, sizes):
        p.grad = buffer[offset:offset + size].reshape(p.data.shape).astype(p.data.dtype, copy=False)
        offset += size
    return buffer[n:].astype(np.float64)


def broadcast_parameters(model: Module, root: int = 0) -> None:
    """Copy rank root's parameters and buffers into every rank's model (in place), as Horovod's
    broadcast_parameters: every rank then starts from the same weights whatever its seed."""
    if _size == 1 or _comm is None:
        return
    for value in [p.data for p in model.parameters()] + [b for _, b in model.named_buffers() if b is not None]:
        box = np.ascontiguousarray(value).reshape(-1).copy()
        _wait(_comm.Ibcast(box, root=root), "the broadcast of the parameters")
        value[...] = box.reshape(value.shape)


def _average_gradients(params: list[Parameter], n: float, extra=()) -> np.ndarray:
    """Replace every parameter's .grad by the n-weighted mean over the ranks, Σ_k n_k·grad_k / Σ_k n_k:
    one fused Allreduce (allreduce_gradients) that also sums `extra` and n.  Returns the summed
    extra followed by N = Σ_k n_k (float64)."""
    summed = allreduce_gradients(params, [*extra, n], weight=n)
    for p in params:
        p.grad /= p.grad.dtype.type(summed[-1])
    return summed


def sync_batch_norm(model: Module) -> Module:
    """Make every BatchNorm layer of model normalise with the statistics of the whole batch over
    every rank (torch's SyncBatchNorm): its forward sums (m, Σx, Σx²) per channel over the ranks and
    its backward the two per-channel sums the gradient needs (see F.batch_norm).  In place; returns
    model.  Does nothing in a job of one."""
    from .nn.layers import _BatchNorm

    for i, module in enumerate(_modules(model)):
        if isinstance(module, _BatchNorm):
            what = f"the forward or backward of a {type(module).__name__} (module {i})"
            module.allreduce = (lambda a, what=what: allreduce(a, what)) if _size > 1 else None
    return model


def _modules(model: Module):
    yield model
    for child in model._modules.values():
        if child is not None:
            yield from _modules(child)


@contextmanager
def together(what: str = "setting up") -> Iterator[None]:
    """A block every rank runs (loading data, building the model): an error on any rank is raised
    on every rank after it — rank 0's copy names the failing rank when not every rank failed —
    and marked as raised everywhere, so the job ends in order (rank 0 reporting it once) rather
    than leave the other ranks waiting.  A rank that takes longer than the timeout stops the job."""
    error = None
    try:
        yield
    except Exception as e:
        if _comm is None or _size == 1:
            raise
        error = e
    if _comm is None or _size == 1:
        return
    _wait(_comm.Ibarrier(), f"waiting for every rank to finish {what}")
    try:
        errors = _comm.allgather(error)
    except Exception:  # an exception that does not pickle: its message does
        errors = _comm.allgather(None if error is None else RuntimeError(f"{type(error).__name__}: {error}"))
    failed = [r for r, e in enumerate(errors) if e is not None]
    if not failed:
        return
    e = error if error is not None else errors[failed[0]]
    if len(failed) < _size and e.args and isinstance(e.args[0], str):
        r = _rank if error is not None else failed[0]
        e.args = (f"rank {r} of {_size}: {e.args[0]}", *e.args[1:])
    raise mark_every_rank(e)


# --------------------------------------------------------------------------- launching
def find_mpiexec() -> str | None:
    """The mpiexec next to this Python (where pip install 'convprop[mpi]' puts MPICH's), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def available() -> bool:
    """Whether this Python can run ranks: mpi4py installed and an mpiexec found."""
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None and find_mpiexec() is not None


def _die_with_parent() -> None:
    """(In the child, before exec.)  Linux: SIGKILL this process when its parent dies, so that
    killing `convprop train` kills its mpiexec, and mpiexec's end ends the ranks."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:
        pass


_BANNER_PID = re.compile(r"^=\s+PID (\d+) RUNNING AT (\S+)")
_BANNER_EXIT = re.compile(r"^YOUR APPLICATION TERMINATED WITH THE EXIT STRING: (.*)$")


def launch(n: int, args: list[str]) -> int:
    """Run `python -m convprop ARGS` as n ranks on this machine under mpiexec; return its exit code.

    Rank 0's output passes through.  When a rank dies (killed, say), mpiexec (MPICH's Hydra) stops
    the others and prints a dozen lines naming a pid; those become one line naming the rank."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise MPIError("no mpiexec found next to this Python or on PATH: pip install 'convprop[mpi]'")
    with tempfile.TemporaryDirectory(prefix="convprop-ranks-") as tmp:
        ranks_file = os.path.join(tmp, "ranks.json")
        env = {**os.environ, "CONVPROP_RANKS_FILE": ranks_file, "PYTHONUNBUFFERED": "1"}
        if sys.stderr.isatty():  # mpiexec forwards the ranks' stderr through a pipe: tell them it ends on a terminal
            env.update(CONVPROP_STDERR_TTY="1", COLUMNS=str(shutil.get_terminal_size().columns))
        proc = subprocess.Popen([mpiexec, "-n", str(n), sys.executable, "-m", "convprop", *args],
                                stdout=subprocess.PIPE, env=env, preexec_fn=_die_with_parent)
        banner, pid, host, how, held = False, None, None, None, b""
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith("=" * 20) and not banner:
                    banner, held = True, b""
                if banner:
                    m = _BANNER_PID.match(line)
                    pid, host = (int(m.group(1)), m.group(2)) if m else (pid, host)
                    m = _BANNER_EXIT.match(line)
                    how = m.group(1) if m else how
                    continue
                if not line.strip():  # (the banner starts with a blank line: hold blank lines back)
                    held += raw
                    continue
                sys.stdout.buffer.write(held + raw)
                sys.stdout.flush()
                held = b""
            code = proc.wait()
        except KeyboardInterrupt:  # mpiexec passes Ctrl-C on to the ranks; let them end
            code = proc.wait()
            raise
        if banner:
            try:
                with open(ranks_file) as f:
                    ranks = json.load(f)
            except (OSError, ValueError):
                ranks = {}
            who = (f"rank {ranks[str(pid)]} of {n} (pid {pid})" if str(pid) in ranks
                   else f"a rank (pid {pid})" if pid else "a rank")
            print(f"convprop: error: {who} ended abnormally: {how or f'exit code {code}'}; every rank was stopped",
                  file=sys.stderr, flush=True)
        return code


# --------------------------------------------------------------------------- training
def train_step(model: Module, loss_fn, optimizer: Optimizer, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """train.train_step for a rank's shard: (the global batch's mean loss, its number of correct)."""
    return step(model, loss_fn, optimizer, x, y)[:2]


def step(model: Module, loss_fn, optimizer: Optimizer, x: np.ndarray, y: np.ndarray) -> tuple[float, int, int]:
    """One step on the global batch whose shard this rank holds: train.train_step's step, with the
    batch spread over the ranks.  Returns (the global batch's mean loss, its number of correct, its size N).

    ∂L/∂W = Σ_k (n_k/N) ∂L_k/∂W.  Without synchronised BatchNorm, each rank's backward yields its
    shard's ∂L_k/∂W and one fused Allreduce sums n_k·∂L_k/∂W together with n_k, n_k·L_k and the count
    of correct predictions; dividing by N = Σ n_k finishes the average: one collective a step, so a
    rank waits for the others once.  With SyncBatchNorm the shards' ∂ must share one scale inside
    the backward (its sums run over every rank), so N comes first (a small Allreduce, overlapped
    with the forward) and ∂L_k/∂Z is scaled by n_k/N before backward.  A non-finite loss on any rank
    raises Divergence on every rank, after the same collectives, before any step."""
    from mpi4py import MPI

    n_k = len(y) if hasattr(y, "__len__") else 0
    synced = any(getattr(m, "allreduce", None) is not None for m in _modules(model))
    if synced:
        count = np.array([float(n_k)])
        request = _comm.Iallreduce(MPI.IN_PLACE, count, op=MPI.SUM)  # (overlapped with the forward)

        def scaled_loss(logits, y):  # L_k, and ∂L_k/∂Z on the global batch's scale: · n_k/N
            try:
                loss, dlogits = loss_fn(logits, y)
            finally:
                _wait(request, "the batch-size Allreduce")
            return loss, dlogits * dlogits.dtype.type(n_k / count[0])

    optimizer.zero_grad()
    try:  # this shard's part of ∂L/∂W; a diverged rank runs backward too, for SyncBatchNorm's collectives
        loss, correct = train.gradients(model, scaled_loss if synced else loss_fn, x, y, check=False)
    finally:
        if synced:
            _wait(request, "the batch-size Allreduce")  # (done already unless the forward raised)
    finite = bool(np.isfinite(loss))
    params, sums = list(model.parameters()), [n_k * loss if finite else 0.0, correct, 0.0 if finite else 1.0]
    # SyncBatchNorm: the parts already carry n_k/N, so they are only summed; else Σ_k n_k ∂L_k/∂W / N
    extra = allreduce_gradients(params, [*sums, n_k]) if synced else _average_gradients(params, n_k, sums)
    N = extra[3]
    if extra[2]:
        optimizer.zero_grad()
        raise mark_every_rank(Divergence("the loss became nan or inf on "
                         f"{int(extra[2])} of {_size} ranks: training diverged (try a smaller --lr)"))
    optimizer.step()  # the same update on every rank: W ← W − lr·∂W (or the optimizer's rule)
    return float(extra[0] / N), int(round(extra[1])), int(N)


def fit(model: Module, loss_fn, optimizer: Optimizer, train_loader: Iterable, epochs: int,
        val_loader: Iterable | None = None, scheduler=None, **kw) -> list[dict]:
    """train.fit on every rank of the job init() joined, one step a global batch (this module's
    `step` and `evaluate`): train_loader must be a DataLoader with num_replicas=K, rank=r; BatchNorm
    layers are synchronised and rank 0's parameters broadcast first; the history's losses and
    accuracies are the global batches', the same on every rank.  Only rank 0 shows progress and logs;
    on_epoch_end and on_step run on every rank.  train.fit's other arguments go as keywords.  In a job
    of one (no mpiexec) it is train.fit."""
    if not is_initialized():
        return train.fit(model, loss_fn, optimizer, train_loader, epochs, val_loader, scheduler, **kw)
    replicas = getattr(train_loader, "num_replicas", _size)
    if replicas != _size or getattr(train_loader, "rank", _rank) != _rank:
        raise ValueError(f"train_loader: expected a loader sharded for rank {_rank} of {_size} (DataLoader("
                         f"..., num_replicas={_size}, rank={_rank})), got num_replicas={replicas}")
    sync_batch_norm(model)
    broadcast_parameters(model)
    if _rank != 0:
        kw.update(progress=False, log=None)
    return train.fit(model, loss_fn, optimizer, train_loader, epochs, val_loader, scheduler, step=step,
                     evaluate=evaluate, **kw)


def evaluate(model: Module, loader: Iterable, loss_fn=None) -> tuple[float, float]:
    """train.evaluate with the work sharded: each rank evaluates its contiguous part of every batch
    of an ordinary (unsharded) loader, and one Allreduce adds (Σ loss, correct, seen).  Eval mode
    uses the running statistics, identical on every rank, so no other collective runs."""
    model.eval()
    sums = np.zeros(3)
    for x, y in loader:
        a, b = len(y) * _rank // _size, len(y) * (_rank + 1) // _size
        if b == a:
            continue
        logits = model(x[a:b])
        if loss_fn is not None:
            sums[0] += loss_fn(logits, y[a:b])[0] * (b - a)
        sums[1] += int((logits.argmax(axis=1) == y[a:b]).sum())
        sums[2] += b - a
    sums = allreduce(sums, "the evaluation's Allreduce")
    return (sums[0] / sums[2] if loss_fn is not None else float("nan")), sums[1] / sums[2]


class DistributedOptimizer:
    """Horovod's DistributedOptimizer: `optimizer` unchanged, but step() first averages every
    gradient over the ranks with one fused Allreduce.

    step(n): n is this rank's number of samples in the batch; the gradients are then weighted by
    n/N (N = Σ n over the ranks), which makes uneven shards exact for a loss that averages over the
    batch (without n: equal weights, as Horovod).  With SyncBatchNorm and uneven shards, use
    train_step (it scales before backward, where SyncBatchNorm's sums need it).
    Everything else (zero_grad, param_groups, state_dict, schedulers) is the wrapped optimizer's.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a convprop.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def step(self, n: int | None = None) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        _average_gradients(params, 1.0 if n is None else float(n))
        self.optimizer.step()
