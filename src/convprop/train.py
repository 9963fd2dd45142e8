"""fit / evaluate / predict: the explicit loop — forward, loss, backward, step — and its bookkeeping."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import numpy as np

from .errors import Divergence
from .nn import Module, no_grad
from .optim import Optimizer
from .optim.lr_scheduler import LRScheduler, OneCycleLR

__all__ = ["fit", "StepInfo", "train_step", "gradients", "evaluate", "predict", "confusion_matrix", "Divergence"]


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What fit hands on_step after every optimizer step."""

    epoch: int  # 1-based, as in the history
    step: int  # the step's index in this epoch, from 0
    steps: int  # the steps of a whole epoch (len(train_loader))
    loss: float  # the batch's mean loss (under MPI: the global batch's)
    correct: int  # its number of correct predictions
    batch_size: int  # its number of samples (under MPI: the global batch's)
    lr: float  # the learning rate the step was taken with (of the first parameter group)


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


def gradients(model: Module, loss_fn, x: np.ndarray, y: np.ndarray, *, check: bool = True) -> tuple[float, int]:
    """Forward, loss, backward: adds ∂L/∂W of this batch into every parameter's .grad.
    Returns (loss, number of correct predictions).  A loss that is not finite raises Divergence
    (before backward); with check=False it is returned, after a backward that warns of nothing."""
    logits = model(x)  # forward: every layer caches what its backward needs
    loss, dlogits = loss_fn(logits, y)  # L and ∂L/∂Z of the last layer (with the 1/β)
    finite = bool(np.isfinite(loss))
    if not finite and check:
        raise Divergence(f"the loss became {loss}: training diverged (try a smaller --lr)")
    with np.errstate(all="ignore") if not finite else nullcontext():  # (diverged: nan in, nan out)
        model.backward(dlogits, input_grad=False)  # ∂Z^l for every l, ∂W and ∂B into .grad
    return loss, int((logits.argmax(axis=1) == y).sum())


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


def fit(model: Module, loss_fn, optimizer: Optimizer, train_loader: Iterable, epochs: int,
        val_loader: Iterable | None = None, scheduler: LRScheduler | None = None, start_epoch: int = 0,
        history: list[dict] | None = None, progress: bool = True,
        on_epoch_end: Callable[[int, list[dict]], None] | None = None,
        log: Callable[[str], None] | None = print, *, step: Callable = train_step, evaluate: Callable = evaluate,
        on_step: Callable[[StepInfo], bool | None] | None = None) -> list[dict]:
    """Train for epochs start_epoch+1 … epochs; return the history, one dict per epoch:
    epoch, train_loss, train_acc, [val_loss, val_acc], lr, seconds, images_per_s.

    A OneCycleLR scheduler steps every batch, any other every epoch.  on_epoch_end(epoch, history)
    runs after each whole epoch (checkpointing, say).

    step(model, loss_fn, optimizer, x, y) takes one optimizer step on a batch and returns (loss,
    correct) or (loss, correct, n), n the number of samples its loss averages (default len(y));
    evaluate(model, val_loader, loss_fn) returns (loss, accuracy).  By default they are train_step
    and evaluate; convprop.distributed.fit passes its own, which spread every batch over MPI ranks.

    on_step(info) runs after every optimizer step (and its scheduler step) with a StepInfo: epoch,
    step (index in the epoch, from 0), steps, loss, correct, batch_size, lr.  It may return True to
    stop training there: the epoch so far becomes the history's last row, marked "partial": True
    (evaluated on val_loader and logged like any other, but on_epoch_end does not run for it), and
    fit returns.  An exception it raises ends fit as any error of the step would.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
    history = list(history or [])
    per_batch = isinstance(scheduler, OneCycleLR)
    stop = False
    for epoch in range(start_epoch + 1, epochs + 1):
        model.train()
        start, seen, total_loss, correct = time.perf_counter(), 0, 0.0, 0
        bar = _progress(train_loader, len(train_loader), f"epoch {epoch}/{epochs}", progress)
        for k, (x, y) in enumerate(bar):
            loss, right, *n = step(model, loss_fn, optimizer, x, y)
            n = n[0] if n else len(y)
            if per_batch:
                scheduler.step()
            seen += n
            total_loss += loss * n
            correct += right
            last = k == len(train_loader) - 1
            if on_step is not None:
                stop = bool(on_step(StepInfo(epoch, k, len(train_loader), float(loss), int(right), int(n),
                                             optimizer.param_groups[0]["lr"])))
            if progress and hasattr(bar, "set_postfix") and (k % 10 == 0 or last or stop):
                # drawn by tqdm's own refresh (so the count is current), and once more at the epoch's end
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=last or stop)
            if stop:
                break
        if scheduler is not None and not per_batch and not stop:
            scheduler.step()
        seconds = time.perf_counter() - start
        row = {"epoch": epoch, "train_loss": total_loss / seen, "train_acc": correct / seen,
               "lr": optimizer.param_groups[0]["lr"], "seconds": seconds, "images_per_s": seen / seconds}
        if stop:
            row["partial"] = True
        if val_loader is not None:
            row["val_loss"], row["val_acc"] = evaluate(model, val_loader, loss_fn)
        history.append(row)
        if log:
            test = f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}" if val_loader is not None else ""
            log(f"epoch {epoch:>3}/{epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}{test}"
                f"  {seconds:.1f}s ({row['images_per_s']:.0f} img/s)" + (" (stopped)" if stop else ""))
        if stop:
            break
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history
