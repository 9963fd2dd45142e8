"""One training run: where it writes, what it trains, and what it keeps.

`Run` owns everything `convprop train` does, in this order:
  - its directory, claimed before any data is read: created (or one line saying why it cannot be),
    locked against a second run on it (which gets one line naming the holder), and never silently
    reused — an earlier run there is refused, or, for the default directory, the next number taken;
  - the data, the model, the optimizer and its one-cycle schedule — built from `Settings`, or
    restored from a checkpoint by `Run.resume`;
  - after every epoch a checkpoint (checkpoint.npz) and metrics.json — only of finite weights with a
    finite loss — so an interrupted or killed run is still a run that `convprop plot` draws and
    `--resume` continues; and checkpoint-best.npz, the epoch of the best validation accuracy so far;
  - at the end, the test set evaluated once, on the checkpoint `final` names (best or last), and the pictures.
Every failure a user can cause ends in `RunError` (one line); a run that diverges ends in
`RunDiverged`, one saying exactly which checkpoint, if any, exists.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable

import numpy as np

from .. import checkpoint, distributed, models, nn, optim
from .. import random as _random
from ..data import DataLoader, normalize
from ..errors import Divergence, RunDiverged, RunError, RunInterrupted, mark_every_rank
from ..train import evaluate
from .data import load_run_data
from .metrics import metrics, write_metrics
from .rundir import BEST_NAME, CHECKPOINT_NAME, METRICS_NAME, claim, remove_created
from .settings import Settings, default_out


def count(n: int, noun: str) -> str:
    """'1 epoch', '15 epochs', '5,000 images'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def make_optimizer(name: str, params, lr: float) -> optim.Optimizer:
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    return (optim.AdamW if name == "adamw" else optim.Adam)(params, lr=lr)


class Run:
    """One training run in one directory (see the module's docstring).

        with Run(Settings(epochs=3), out="runs/a") as run:
            run.train()
            run.finish()
    """

    def __init__(self, settings: Settings, out: str | None = None, *, progress: bool = True,
                 detect_anomaly: bool = False, log: Callable[[str], None] = print,
                 _resume: tuple[str, dict] | None = None) -> None:
        self.settings, self.progress, self.anomaly = settings, progress, detect_anomaly
        # one rank of an MPI job (convprop.distributed) when started by mpiexec: every rank trains, rank 0
        # alone claims the directory and writes (its checkpoints, metrics and pictures)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.log = log
        self.ckpt, self.resume_path = (_resume[1], _resume[0]) if _resume else (None, None)
        self.history: list[dict] = []
        self.start_epoch = self.saved_epoch = 0
        self.seconds = 0.0
        self.status = "running"
        self.out = self._claim(out)
        self.ckpt_path = os.path.join(self.out, CHECKPOINT_NAME)
        self.best_path = os.path.join(self.out, BEST_NAME)
        self.test_result: dict | None = None
        self.metrics_path = os.path.join(self.out, METRICS_NAME)
        try:
            self._build()
        except BaseException:  # (bad data, say): the run never started, so its new directory goes too
            lock = getattr(self, "_lock", None)
            self.close()
            if lock is not None:
                remove_created(self.out, lock.created)
            raise

    @classmethod
    def resume(cls, path: str, out: str | None = None, *, given: dict | None = None, data: str | None = None,
               **kw) -> Run:
        """Continue the run saved in checkpoint `path` with its own settings, up to its epochs.

        `given`: settings the caller was also handed (command-line flags), refused: a resumed run
        is the saved one.  `data` may point at the same data moved elsewhere."""
        ckpt = checkpoint.load(path)
        settings = Settings.from_saved(ckpt["meta"].get("args"), path)
        ignored = {k: v for k, v in (given or {}).items() if v is not None}
        if ignored:
            flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in ignored.items())
            saved = ", ".join(f"{k.replace('_', '-')} {getattr(settings, k)}" for k in ignored)
            raise RunError(f"--resume continues {path} with its own settings ({saved}); {flags} would be "
                           "ignored: drop them, or start a new run with another --out")
        if data is not None:
            settings.data = data
        return cls(settings, out or os.path.dirname(os.path.abspath(path)), _resume=(path, ckpt), **kw)

    # ----------------------------------------------------------------- setting up
    def _claim(self, out: str | None) -> str:
        if self.rank != 0:  # (rank 0 claims it and writes there)
            return out or default_out(self.settings)
        path, self._lock = claim(out, default_out(self.settings), self.resume_path, self.log)
        return path

    def _build(self) -> None:
        s = self.settings
        # a resumed run reads its data as it did (a checkpoint from before "input" existed: as the data says)
        saved_input = self.ckpt["meta"].get("input") if self.ckpt is not None else None
        d = load_run_data(s.data, s.model, s.val_split, s.seed, s.train_size, s.test_size, saved_input)
        self.data = d
        self.images, self.labels = d.train
        self.val_images, self.val_labels = d.val if d.val is not None else (None, None)
        self.test_images, self.test_labels = d.test if d.test is not None else (None, None)
        if len(self.labels) == 0:
            raise RunError(f"--data {s.data or '(the bundled sample)'}: the training set has no images")
        if d.test is not None and len(self.test_labels) == 0:
            raise RunError(f"--data {s.data or '(the bundled sample)'}: the test set has no images")
        self.input = d.input
        _random.manual_seed(s.seed)
        self.config = {"num_classes": 10 if d.kind != "folder" else len(d.input["classes"])}
        if d.input["channels"] != 1:
            self.config["in_channels"] = d.input["channels"]
        if self.ckpt is None:
            self.model = models.build(s.model, **self.config)
            if s.init is not None:
                self._load_init(s.init)
        else:
            self._check_resumed_model()
            self.model = checkpoint.restore_model(self.ckpt, self.resume_path)
            self.config = dict(self.ckpt["meta"]["model"].get("config", {}))
        dtype = self.model.dtype
        self._check_images_fit(dtype)
        # with K ranks, every rank draws the same order and shifts and takes its shard of each batch
        norm = dict(mean=d.input["mean"], std=d.input["std"], dtype=dtype)
        if d.kind == "cifar":
            augment = dict(crop_padding=4, hflip=True)
        else:  # digits and folders: shifts, and rotation and scaling where asked for
            augment = dict(max_shift=s.shift, max_rotation=s.rotate, max_scale=s.scale)
        self.train_loader = DataLoader(self.images, self.labels, s.batch_size, shuffle=True, seed=s.seed,
                                       num_replicas=self.world, rank=self.rank, **augment, **norm)
        self.val_loader = DataLoader(self.val_images, self.val_labels, 1000, **norm) if d.val is not None else None
        self.test_loader = DataLoader(self.test_images, self.test_labels, 1000, **norm) if d.test is not None \
            else None
        self.optimizer = make_optimizer(s.optimizer, self.model.parameters(), s.lr)
        self.scheduler = optim.OneCycleLR(self.optimizer, max_lr=s.lr, epochs=s.epochs,
                                          steps_per_epoch=len(self.train_loader))
        self.loss_fn = nn.CrossEntropyLoss()
        self.best_epoch, self.best_loss = 0, math.inf  # the best validation epoch so far: the lowest loss
        if self.ckpt is not None:
            checkpoint.restore_training(self.ckpt, self.model, self.optimizer, self.scheduler, self.resume_path)
            meta = self.ckpt["meta"]
            self.start_epoch = self.saved_epoch = meta.get("epoch", 0)
            self.history = list(meta.get("history", []))
            self.train_loader.epoch = self.start_epoch
            for row in self.history:  # the best so far, as the run before saw it
                if isinstance(row.get("val_loss"), (int, float)) and row["val_loss"] < self.best_loss:
                    self.best_epoch, self.best_loss = row.get("epoch", 0), row["val_loss"]

    def _check_resumed_model(self) -> None:
        """The checkpoint's weights are those of the model its settings name, for this data (its classes
        and channels): the same keys, shapes and dtypes, else one line naming the first difference."""
        m = self.ckpt["meta"]["model"]
        where = f"--resume {self.resume_path}"
        if m["name"] != self.settings.model:
            raise RunError(f"{where}: its weights are a {m['name']}'s, but its run settings name model "
                           f"{self.settings.model}")
        state = _random.get_state()  # (building a model draws its initial weights)
        try:
            want = models.build(self.settings.model, **self.config).to(m.get("dtype", "float32")).state_dict()
        finally:
            _random.set_state(state)
        got = self.ckpt["model"]
        for key in [*want, *(k for k in got if k not in want)]:
            if key not in got or key not in want:
                raise RunError(f"{where}: its weights do not fit {self.settings.model}: "
                               f"{'missing' if key not in got else 'unexpected'} {key!r}")
            a, b = np.asarray(got[key]), np.asarray(want[key])
            if a.shape != b.shape or a.dtype != b.dtype:
                raise RunError(f"{where}: its weights do not fit {self.settings.model} on this data "
                               f"({', '.join(f'{k} {v}' for k, v in self.config.items())}): {key!r} has shape "
                               f"{a.shape} and dtype {a.dtype}, expected {b.shape} and {b.dtype}")

    def _load_init(self, path: str) -> None:
        """Start from weights made elsewhere (torch's state_dict keys and layouts, e.g. by torch)."""
        from ..weights import WeightsError, load_weights

        try:
            self.model.load_state_dict(load_weights(path, self.model))
        except (WeightsError, FileNotFoundError) as e:  # names the file
            raise RunError(f"--init: {e}") from None
        except (ValueError, TypeError) as e:
            raise RunError(f"--init {path}: {e}") from None
        self.log(f"starting from the weights in {path}")

    def _check_images_fit(self, dtype) -> None:
        """One image through the model before training: a size it cannot take is one line now, not a
        traceback after an epoch."""
        x = normalize(self.images[:1], self.input["mean"], self.input["std"], dtype=dtype)
        try:
            out = self.model.eval()(x)
        except (ValueError, TypeError) as e:
            raise RunError(f"--data: images of {'×'.join(map(str, self.images.shape[1:]))} pixels do not fit "
                           f"{self.settings.model}: {e}") from None
        finally:
            self.model.train()
        k = out.shape[1]
        top = int(max(ys.max(initial=0) for ys in (self.labels, self.val_labels, self.test_labels) if ys is not None))
        if top >= k:
            raise RunError(f"--data: labels go up to {top}, but the model has {k} classes")

    # ----------------------------------------------------------------- training
    def describe(self) -> str:
        s, w, d = self.settings, self.world, self.data
        n_params = sum(p.data.size for p in self.model.parameters())
        sets = count(len(self.labels), "image") + (f", validating on {len(self.val_labels):,}" if d.val else "") + (
            f", testing on {len(self.test_labels):,}" if d.test else "")
        if d.kind == "folder":
            i = d.input
            sets += f" ({len(i['classes'])} classes, {i['size'][0]}×{i['size'][1]}, {i['channels']} channel" + \
                "s" * (i["channels"] != 1) + ")"
        if d.kind == "cifar":
            aug = "4 px random crops and flips"
        else:
            aug = ", ".join([f"±{s.shift} px shifts"] + [f"±{s.rotate:g}° rotations"] * bool(s.rotate)
                            + [f"±{s.scale:.0%} scaling"] * bool(s.scale))
        return (f"training {s.model} ({n_params:,} parameters) on {sets}; {count(s.epochs, 'epoch')}, "
                f"batch {s.batch_size}, {s.optimizer} one-cycle lr {s.lr:g}, {aug}"
                + (f"; {w} MPI ranks" if w > 1 else ""))

    def train(self) -> list[dict]:
        """Epochs start_epoch+1 … settings.epochs; a checkpoint and metrics.json after each."""
        s = self.settings
        if self.ckpt is not None:
            if self.start_epoch >= s.epochs:
                self.log(f"{self.resume_path}: the run already finished its {count(s.epochs, 'epoch')}; "
                         "nothing to train")
            else:
                self.log(f"resuming {s.model} from epoch {self.start_epoch} of {s.epochs}")
        self.log(self.describe())
        nn.detect_anomaly(self.anomaly)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():  # overflow on the way to NaN: said once, by the Divergence below
                warnings.simplefilter("ignore", RuntimeWarning)
                self.history = distributed.fit(self.model, self.loss_fn, self.optimizer, self.train_loader,
                                               s.epochs, self.val_loader, self.scheduler, start_epoch=self.start_epoch,
                                               history=self.history, progress=self.progress,
                                               on_epoch_end=self._end_of_epoch, log=self.log)
        except (Divergence, nn.AnomalyError) as e:
            self.status = "diverged"
            diverged = RunDiverged(f"{e}; {self.what_exists()}")
            diverged.every_rank = getattr(e, "every_rank", False)  # (said once by rank 0, or by the rank that saw it)
            raise diverged from e
        except KeyboardInterrupt as e:
            self.status = "interrupted"
            self.seconds = time.perf_counter() - start
            self._settle_after_interrupt()
            raise RunInterrupted(f"interrupted; {self.what_exists()}" + (
                f"; continue with: convprop train --resume {self.ckpt_path}" if self.saved_epoch else "")) from e
        finally:
            nn.detect_anomaly(False)
        self.seconds = time.perf_counter() - start
        self.status = "finished"
        if self.rank == 0:
            self.write_metrics()
        return self.history

    def _settle_after_interrupt(self) -> None:
        """Ctrl-C may land anywhere, even between a save and its bookkeeping: ask the disk which epoch the
        checkpoint holds, and leave metrics.json with exactly the epochs up to it (plottable, resumable)."""
        if self.rank != 0:
            return
        try:
            exists = os.path.exists(self.ckpt_path)
            self.saved_epoch = checkpoint.load(self.ckpt_path)["meta"].get("epoch", 0) if exists else 0
        except (OSError, ValueError):
            pass
        if self.saved_epoch:
            self.history = [h for h in self.history if h.get("epoch", 0) <= self.saved_epoch]
            try:
                self.write_metrics()
            except (OSError, RunError):
                pass

    def what_exists(self) -> str:
        if self.saved_epoch:
            return f"the last good checkpoint, of epoch {self.saved_epoch}, is kept: {self.ckpt_path}"
        return "no checkpoint was saved (no epoch ended with finite weights and loss)"

    def _end_of_epoch(self, epoch: int, history: list[dict]) -> None:
        self.history, row = history, history[-1]
        bad = [k for k in ("train_loss", "val_loss") if k in row and not math.isfinite(row[k])]
        # (every rank holds the same history and weights: under MPI, every rank raises these together)
        if bad:
            raise mark_every_rank(Divergence(
                f"epoch {epoch} ended with a {bad[0].replace('_', ' ')} of {row[bad[0]]}: training diverged "
                "(try a smaller --lr)"))
        if not all(np.isfinite(p.data).all() for p in self.model.parameters()):
            raise mark_every_rank(Divergence(
                f"epoch {epoch} ended with weights that are not finite: training diverged (try a smaller --lr)"))
        if self.rank != 0:  # every rank holds the same model: rank 0 alone writes it
            self.saved_epoch = epoch
            return
        # the best: the lowest validation loss (Keras's ModelCheckpoint default; on a few hundred images the
        # accuracy moves in steps and ties, the loss does not); without validation, none
        best = bool("val_loss" in row and row["val_loss"] < self.best_loss)
        for path in (self.ckpt_path,) + (self.best_path,) * best:
            try:
                checkpoint.save(path, self.model, self.settings.model, self.config, self.optimizer,
                                self.scheduler, epoch, history=history, args=self.settings.dict(), input=self.input)
            except OSError as e:
                raise RunError(f"could not save the checkpoint of epoch {epoch} to {path} "
                               f"({e.strerror or e}); {self.what_exists()}") from None
            self.saved_epoch = epoch if path == self.ckpt_path else self.saved_epoch
        if best:
            self.best_epoch, self.best_loss = epoch, row["val_loss"]
        self.write_metrics()

    def metrics(self) -> dict:
        m = metrics(self.settings, self.status, self.history, self.seconds)
        best = next((h for h in self.history if h.get("epoch") == self.best_epoch), {})
        m.update(best_epoch=self.best_epoch or None, best_val_loss=best.get("val_loss"),
                 best_val_accuracy=best.get("val_acc"),
                 final=self.settings.final, input=self.input)
        if self.test_result is not None:
            m.update(self.test_result)
        return m

    def write_metrics(self) -> None:
        write_metrics(self.metrics_path, self.metrics(), self.what_exists())

    # ----------------------------------------------------------------- the end
    def final_model(self) -> tuple[nn.Module, str, int]:
        """(model, path, epoch) of the checkpoint `final` names: the best validation epoch's or the last."""
        path = self.best_path if self.settings.final == "best" and os.path.exists(self.best_path) else self.ckpt_path
        if not os.path.exists(path):
            return self.model, path, len(self.history)
        ckpt = checkpoint.load(path)
        return checkpoint.restore_model(ckpt, path), path, ckpt["meta"].get("epoch", 0)

    def test(self) -> dict | None:
        """The test set, evaluated once, on the final checkpoint (None without a test set)."""
        if self.test_loader is None:
            return None
        model, path, epoch = self.final_model()
        loss, acc = evaluate(model, self.test_loader, self.loss_fn)
        self.test_result = {"test_accuracy": acc, "test_loss": loss, "test_checkpoint": path, "test_epoch": epoch}
        self.tested_model = model
        return self.test_result

    def finish(self) -> list[str]:
        """The test, the closing lines and the pictures; returns the pictures' paths."""
        result = self.test() if self.history else None
        if result is not None:
            which = f"{self.settings.final} epoch {result['test_epoch']}" if self.best_epoch else "last epoch"
            self.log(f"test accuracy {result['test_accuracy']:.2%} after {count(len(self.history), 'epoch')} "
                     f"({self.seconds:.1f} s this run; {which}: {os.path.basename(result['test_checkpoint'])})")
            self.write_metrics()
        elif self.best_epoch:
            best = next(h for h in self.history if h.get("epoch") == self.best_epoch)
            self.log(f"validation accuracy {best['val_acc']:.2%} at the best epoch, {self.best_epoch} of "
                     f"{len(self.history)} "
                     f"({self.seconds:.1f} s this run)")
        self.log(f"metrics:    {self.metrics_path}")
        self.log(f"checkpoint: {self.ckpt_path} (last)" + (f", {self.best_path} (best)" if self.best_epoch else ""))
        from ..plots import pictures

        model = getattr(self, "tested_model", self.model)
        images, labels = (self.test_images, self.test_labels) if self.test_loader is not None else \
            (self.val_images, self.val_labels)
        if images is None:
            images, labels = self.images, self.labels
        return pictures(self.out, model, self.history, images, labels, self.log,
                        mean=self.input["mean"], std=self.input["std"])

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_training(settings: Settings | None = None, out: str | None = None, *, resume: str | None = None,
                 given: dict | None = None, data: str | None = None, **kw) -> Run:
    """Train (or resume) one run to its end: claim the directory, train, write metrics and pictures."""
    run = Run.resume(resume, out, given=given, data=data, **kw) if resume else Run(settings or Settings(), out, **kw)
    with run:
        run.train()
        run.finish()
    return run
