"""Data parallelism: every rank runs forward and backward on its shard of each global batch, one
fused Allreduce averages the gradients, and every rank takes the same step (step, fit, evaluate,
DistributedOptimizer); BatchNorm over the whole batch (sync_batch_norm); the same initial weights
everywhere (broadcast_parameters).  The collectives and the job's state are comm.py's."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .. import train
from ..errors import Divergence, mark_every_rank
from ..nn import Module, Parameter
from ..optim import Optimizer
from . import comm
from .comm import _wait, allreduce, allreduce_gradients, is_initialized


def broadcast_parameters(model: Module, root: int = 0) -> None:
    """Copy rank root's parameters and buffers into every rank's model (in place), as Horovod's
    broadcast_parameters: every rank then starts from the same weights whatever its seed."""
    if comm._size == 1 or comm._comm is None:
        return
    for value in [p.data for p in model.parameters()] + [b for _, b in model.named_buffers() if b is not None]:
        box = np.ascontiguousarray(value).reshape(-1).copy()
        _wait(comm._comm.Ibcast(box, root=root), "the broadcast of the parameters", setup=True)
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
    from ..nn.layers import _BatchNorm

    for i, module in enumerate(_modules(model)):
        if isinstance(module, _BatchNorm):
            what = f"the forward or backward of a {type(module).__name__} (module {i})"
            module.allreduce = (lambda a, what=what: allreduce(a, what)) if comm._size > 1 else None
    return model


def _modules(model: Module):
    yield model
    for child in model._modules.values():
        if child is not None:
            yield from _modules(child)


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
        request = comm._comm.Iallreduce(MPI.IN_PLACE, count, op=MPI.SUM)  # (overlapped with the forward)

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
                         f"{int(extra[2])} of {comm._size} ranks: training diverged (try a smaller --lr)"))
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
    replicas = getattr(train_loader, "num_replicas", comm._size)
    if replicas != comm._size or getattr(train_loader, "rank", comm._rank) != comm._rank:
        raise ValueError(f"train_loader: expected a loader sharded for rank {comm._rank} of {comm._size} (DataLoader("
                         f"..., num_replicas={comm._size}, rank={comm._rank})), got num_replicas={replicas}")
    sync_batch_norm(model)
    broadcast_parameters(model)
    if comm._rank != 0:
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
        a, b = len(y) * comm._rank // comm._size, len(y) * (comm._rank + 1) // comm._size
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
