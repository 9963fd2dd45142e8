"""The MPI job: joining it (init), this process's rank and the world size, the collectives every
rank waits in — each with a timeout that stops the whole job rather than wait forever — and abort.
One process (no mpiexec) is a job of one, and needs no MPI."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np

from .._extras import install
from .._files import atomic_write
from ..errors import MPIError, mark_every_rank
from ..nn import Parameter

_ENV_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
_ENV_RANK = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
# How long a rank waits in a collective before it stops the job (CONVPROP_MPI_TIMEOUT overrides both).  Training's
# collectives wait only for the other ranks' share of the same step, so silence past 20 s is a lost rank or a
# partition (a network partition gives no error, only silence: the run must end, not hang); setting up (loading
# the data, building the model: `together`) may take longer on one rank than another, so it waits up to 120 s.
DEFAULT_TIMEOUT_S = 20.0
SETUP_TIMEOUT_S = 120.0
SPIN_S = 0.02  # a waiting rank polls this long before it starts to sleep between polls

_comm = None
_rank, _size = 0, 1
_timeout = DEFAULT_TIMEOUT_S
_setup_timeout = SETUP_TIMEOUT_S
_peers: list[tuple[str, int, int]] = []  # (host, pid, parent's pid) of every rank
WATCH_S = 0.5  # how often a rank checks that its launcher (its parent: Hydra's proxy) is still there


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
    collective may wait before the run is stopped (default CONVPROP_MPI_TIMEOUT, else 20 in training and
    120 while setting up).
    abort_on_error: an uncaught exception on any rank prints one line and stops every rank.
    """
    global _comm, _rank, _size, _timeout, _setup_timeout, _peers
    given = timeout if timeout is not None else os.environ.get("CONVPROP_MPI_TIMEOUT")
    timeout = DEFAULT_TIMEOUT_S if given is None else float(given)
    if not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    _timeout = float(timeout)
    _setup_timeout = _timeout if given is not None else SETUP_TIMEOUT_S
    if _comm is not None or launched_size() == 1:
        return _rank, _size
    try:
        from mpi4py import MPI
    except ImportError:
        raise MPIError(f"started by mpiexec, but mpi4py is not installed: {install('mpi')}") from None
    _comm = MPI.COMM_WORLD
    _rank, _size = _comm.Get_rank(), _comm.Get_size()
    _peers = [tuple(p) for p in _comm.allgather((socket.gethostname(), os.getpid(), os.getppid()))]
    _forget_files()  # (every rank has passed MPI_Init)
    ranks_file = os.environ.get("CONVPROP_RANKS_FILE")  # for the --workers launcher: which rank is where
    if ranks_file and _rank == 0:
        atomic_write(ranks_file, json.dumps(_peers), durable=False)
    if _size > 1:
        _watch_launcher()
    if abort_on_error and _size > 1:
        previous = sys.excepthook

        def hook(kind, value, tb):
            if issubclass(kind, KeyboardInterrupt):
                return previous(kind, value, tb)
            abort(f"{kind.__name__}: {value}")

        sys.excepthook = hook
    return _rank, _size


def _forget_files() -> None:
    """Unlink the files MPI keeps for this machine's ranks while they run: MPICH's shared memory in
    /dev/shm (mpich_shm_*, mapped by every rank) and the topology file Hydra's proxy (this rank's
    parent) wrote for them in /tmp (hydra_hwloc_xmlfile_*).  Once every rank has passed MPI_Init
    neither is opened again; the ranks keep the memory, and a run that is killed or aborted, or whose
    proxy dies, leaves no file behind (MPICH and Hydra remove them only when they end in order)."""
    paths = set()
    try:
        with open("/proc/self/maps") as f:
            paths |= {line.split(None, 5)[5].strip() for line in f if "/dev/shm/mpich_shm_" in line}
        parent = os.getppid()
        for fd in os.listdir(f"/proc/{parent}/fd"):
            try:
                path = os.readlink(f"/proc/{parent}/fd/{fd}")
            except OSError:  # (closed meanwhile, or not ours to read)
                continue
            if os.path.basename(path).startswith("hydra_hwloc_xmlfile_"):
                paths.add(path)
    except OSError:  # (not Linux)
        pass
    for path in paths:
        if not path.endswith("(deleted)"):
            try:
                os.unlink(path)
            except OSError:
                pass


_launcher: int | None = None  # the pid of the process that started this rank, once it is watched


def _check_launcher() -> None:
    """Stop this rank, with one line, if the process that started it has ended (its parent changed)."""
    if _launcher is None or os.getppid() == _launcher:
        return
    try:  # (stderr led to the proxy: usually no one reads it any more)
        print(f"convprop: rank {_rank} of {_size}: lost its launcher (pid {_launcher}, Hydra's proxy on "
              f"{socket.gethostname()}); stopping", file=sys.stderr, flush=True)
    except Exception:
        pass
    os._exit(1)


def _watch_launcher() -> None:
    """Stop this rank, with one line, when the process that started it ends.  Under mpiexec that is
    Hydra's proxy on this machine (hydra_pmi_proxy): if it dies (killed, as when a cluster's node agent
    dies), MPI cannot end the rank, which would train on as an orphan and keep mpiexec waiting.  A
    daemon thread checks every WATCH_S seconds whether the parent changed (an orphan is adopted by
    init or a subreaper), and every collective checks before it starts, so no step is taken after."""
    global _launcher
    _launcher = os.getppid()

    def watch() -> None:
        while True:
            _check_launcher()
            time.sleep(WATCH_S)

    threading.Thread(target=watch, name="convprop-watch-launcher", daemon=True).start()


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


def _stopped_peers() -> str:
    """Ranks on this machine that are stopped (SIGSTOP) or gone, as a phrase ('' if none is seen)."""
    host, found = socket.gethostname(), []
    for r, (h, pid, _) in enumerate(_peers):
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


def _wait(request, what: str, setup: bool = False) -> None:
    """Wait for a nonblocking collective; stop the job if it takes longer than the timeout (the setting-up
    one where setup is true)."""
    _check_launcher()  # (a rank whose launcher died takes no further step)
    if request.Test():
        return
    limit = _setup_timeout if setup else _timeout
    start = time.perf_counter()
    spin_until = start + SPIN_S
    # every rank times out about together; the lowest rank still running speaks first (its abort ends the others)
    deadline = start + limit + 0.5 * _rank
    while not request.Test():
        now = time.perf_counter()
        if now > spin_until:
            time.sleep(2e-4)
            if now > deadline:
                seen = _stopped_peers()
                elsewhere = sorted({h for h, _, _ in _peers} - {socket.gethostname()})
                on = f" on {' or '.join(elsewhere)}" if elsewhere else ""
                abort(f"no reply from the other ranks for {limit:g} s in {what}"
                      + (f": {seen}" if seen else f" (a rank{on} stopped, hung or lost its connection)")
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


@contextmanager
def together(what: str = "setting up") -> Iterator[None]:
    """A block every rank runs (loading data, building the model): an error on any rank is raised
    on every rank after it — rank 0's copy names the failing rank when that is another rank and not every
    rank failed (an error of rank 0's own, such as its claim of --out, is the user's, with no rank in it) —
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
    _wait(_comm.Ibarrier(), f"waiting for every rank to finish {what}", setup=True)
    try:
        errors = _comm.allgather(error)
    except Exception:  # an exception that does not pickle: its message does
        errors = _comm.allgather(None if error is None else RuntimeError(f"{type(error).__name__}: {error}"))
    failed = [r for r, e in enumerate(errors) if e is not None]
    if not failed:
        return
    e = error if error is not None else errors[failed[0]]
    r = _rank if error is not None else failed[0]
    if len(failed) < _size and r != 0 and e.args and isinstance(e.args[0], str):
        e.args = (f"rank {r} of {_size}: {e.args[0]}", *e.args[1:])
    raise mark_every_rank(e)
