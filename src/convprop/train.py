"""fit / evaluate / predict: the explicit loop — forward, loss, backward, step — and its bookkeeping."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable

import numpy as np

from .nn import Module, no_grad
from .optim import Optimizer
from .optim.lr_scheduler import LRScheduler, OneCycleLR


class Divergence(RuntimeError):
    """The loss became NaN or infinite."""


def _progress(iterable, total: int, desc: str, enabled: bool):
    """A tqdm bar on a terminal (or in a notebook); nothing where stderr is a file or a pipe, which would
    collect every carriage-return frame (the per-epoch lines say it all there)."""
    terminal = sys.stderr.isatty() or os.environ.get("CONVPROP_STDERR_TTY") == "1"  # (set under mpiexec)
    if not enabled or not (terminal or "ipykernel" in sys.modules):
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra; no bar without it
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.1)


def train_step(model: Module, loss_fn, optimizer: Optimizer, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """One step of backprop (docs/math.md): forward, loss and ∂Z_last, backward layer by layer, update.
    Returns (loss, number of correct predictions)."""
    optimizer.zero_grad()
    result = gradients(model, loss_fn, x, y)
    optimizer.step()  # W ← W − lr·∂W (or the optimizer's rule)
    return result


def gradients(model: Module, loss_fn, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Forward, loss, backward: adds ∂L/∂W of this batch into every parameter's .grad.
    Returns (loss, number of correct predictions)."""
    logits = model(x)  # forward: every layer caches what its backward needs
    loss, dlogits = loss_fn(logits, y)  # L and ∂L/∂Z of the last layer (with the 1/β)
    if not np.isfinite(loss):
        raise Divergence(f"the loss became {loss}: training diverged (try a smaller --lr)")
    model.backward(dlogits, input_grad=False)  # ∂Z^l for every l, ∂W and ∂B into .grad
    return loss, int((logits.argmax(axis=1) == y).sum())


def fit(model: Module, loss_fn, optimizer: Optimizer, train_loader: Iterable, epochs: int,
        val_loader: Iterable | None = None, scheduler: LRScheduler | None = None, start_epoch: int = 0,
        history: list[dict] | None = None, progress: bool = True,
        on_epoch_end: Callable[[int, list[dict]], None] | None = None,
        log: Callable[[str], None] | None = print) -> list[dict]:
    """Train for epochs start_epoch+1 … epochs; return the history, one dict per epoch:
    epoch, train_loss, train_acc, [test_loss, test_acc], lr, seconds, images_per_s.

    A OneCycleLR scheduler steps every batch, any other every epoch.  on_epoch_end(epoch, history)
    runs after each epoch (checkpointing, say).

    Under mpiexec, after convprop.distributed.init() (K > 1 ranks): every step is
    distributed.train_step (the global batch's step; train_loader must be a DataLoader with
    num_replicas=K, rank=r), BatchNorm layers are synchronised, rank 0's parameters are broadcast
    first, the validation is sharded (distributed.evaluate), and the history's losses and accuracies
    are the global batches', the same on every rank.  Only rank 0 shows progress and logs;
    on_epoch_end runs on every rank.
    """
    from . import distributed

    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
    history = list(history or [])
    per_batch = isinstance(scheduler, OneCycleLR)
    step, evaluate_ = (lambda x, y: (*train_step(model, loss_fn, optimizer, x, y), len(y))), evaluate
    if distributed.is_initialized():
        world, rank = distributed.world_size(), distributed.rank()
        replicas = getattr(train_loader, "num_replicas", world)
        if replicas != world or getattr(train_loader, "rank", rank) != rank:
            raise ValueError(f"train_loader: expected a loader sharded for rank {rank} of {world} (DataLoader("
                             f"..., num_replicas={world}, rank={rank})), got num_replicas={replicas}")
        distributed.sync_batch_norm(model)
        distributed.broadcast_parameters(model)
        step, evaluate_ = (lambda x, y: distributed.step(model, loss_fn, optimizer, x, y)), distributed.evaluate
        progress, log = progress and rank == 0, log if rank == 0 else None
    for epoch in range(start_epoch + 1, epochs + 1):
        model.train()
        start, seen, total_loss, correct = time.perf_counter(), 0, 0.0, 0
        bar = _progress(train_loader, len(train_loader), f"epoch {epoch}/{epochs}", progress)
        for k, (x, y) in enumerate(bar):
            loss, right, n = step(x, y)
            if per_batch:
                scheduler.step()
            seen += n
            total_loss += loss * n
            correct += right
            last = k == len(train_loader) - 1
            if progress and hasattr(bar, "set_postfix") and (k % 10 == 0 or last):
                # drawn by tqdm's own refresh (so the count is current), and once more at the epoch's end
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=last)
        if scheduler is not None and not per_batch:
            scheduler.step()
        seconds = time.perf_counter() - start
        row = {"epoch": epoch, "train_loss": total_loss / seen, "train_acc": correct / seen,
               "lr": optimizer.param_groups[0]["lr"], "seconds": seconds, "images_per_s": seen / seconds}
        if val_loader is not None:
            row["test_loss"], row["test_acc"] = evaluate_(model, val_loader, loss_fn)
        history.append(row)
        if log:
            test = f"  test loss {row['test_loss']:.4f} acc {row['test_acc']:.2%}" if val_loader is not None else ""
            log(f"epoch {epoch:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}{test}"
                f"  {seconds:.1f}s ({row['images_per_s']:.0f} img/s)")
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history


def predict(model: Module, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Class probabilities (N, classes) in eval mode, in batches."""
    from .functional import log_softmax

    model.eval()
    # max(len, 1): no images still make one (empty) batch, so the result has the model's (0, classes)
    with no_grad():  # no caches: one layer's temporaries at a time
        out = [np.exp(log_softmax(model(x[i:i + batch_size]), 1)[0]) for i in range(0, max(len(x), 1), batch_size)]
    return np.concatenate(out)


def evaluate(model: Module, loader: Iterable, loss_fn=None) -> tuple[float, float]:
    """(mean loss, accuracy) over a loader in eval mode (loss is nan without loss_fn)."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        with no_grad():  # no caches: one layer's temporaries at a time
            logits = model(x)
        if loss_fn is not None:
            total_loss += loss_fn(logits, y)[0] * len(y)
        correct += int((logits.argmax(axis=1) == y).sum())
        seen += len(y)
    if seen == 0:
        raise ValueError("evaluate: the loader holds no images")
    return (total_loss / seen if loss_fn is not None else float("nan")), correct / seen


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted] (classes, classes)."""
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (labels, predicted), 1)
    return m
