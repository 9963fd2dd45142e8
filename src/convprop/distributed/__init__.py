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
Needs mpi4py (the `mpi` extra, which brings an MPICH whose `mpiexec` lands next to
the Python).

Faults: a collective that waits longer than `timeout` seconds (a rank stopped, hung or lost) stops
every rank with one line (naming a rank of this machine found stopped, or the other hosts); a rank
whose launcher (Hydra's proxy, its parent) dies stops by itself; `init(abort_on_error=True)`
makes an exception that escapes on one rank print one line naming the rank and stop every rank
(MPI_Abort) rather than leave the others waiting forever.
"""

from __future__ import annotations

from ..errors import Divergence, MPIError, mark_every_rank
from . import comm
from .comm import (
    DEFAULT_TIMEOUT_S,
    abort,
    allreduce,
    allreduce_gradients,
    init,
    is_initialized,
    launched_rank,
    launched_size,
    rank,
    together,
    world_size,
)
from .data_parallel import (
    DistributedOptimizer,
    broadcast_parameters,
    evaluate,
    fit,
    step,
    sync_batch_norm,
    train_step,
)
from .launch import available, find_mpiexec, launch

__all__ = ["init", "is_initialized", "rank", "world_size", "launched_rank", "launched_size", "abort", "allreduce",
           "allreduce_gradients", "together", "broadcast_parameters", "sync_batch_norm", "step", "train_step", "fit",
           "evaluate", "DistributedOptimizer", "find_mpiexec", "available", "launch", "MPIError", "Divergence",
           "mark_every_rank", "DEFAULT_TIMEOUT_S"]


def __getattr__(name: str):
    """The job's state as it is now (_comm, _rank, _size: set by init(), kept in comm)."""
    if name in ("_comm", "_rank", "_size"):
        return getattr(comm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
