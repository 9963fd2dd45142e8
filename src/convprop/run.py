"""One training run: where it writes, what it trains, and what it keeps.

`Run` owns everything `convprop train` does, in this order:
  - its directory, claimed before any data is read: created (or one line saying why it cannot be),
    locked against a second run on it (which gets one line naming the holder), and never silently
    reused — an earlier run there is refused, or, for the default directory, the next number taken;
  - the data, the model, the optimizer and its one-cycle schedule — built from `Settings`, or
    restored from a checkpoint by `Run.resume`;
  - after every epoch a checkpoint and metrics.json — only of finite weights with a finite loss —
    so an interrupted or killed run is still a run that `convprop plot` draws and `--resume` continues;
  - the pictures at the end.
Every failure a user can cause ends in `RunError` (one line); a run that diverges ends in
`RunDiverged`, one saying exactly which checkpoint, if any, exists.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from . import checkpoint, distributed, models, nn, optim, safe_json
from . import random as _random
from .data import DataLoader, load_images, normalize
from .train import Divergence, fit

CHECKPOINT_NAME, METRICS_NAME, LOCK_NAME = "checkpoint.npz", "metrics.json", ".convprop.lock"
OPTIMIZERS = ("adam", "adamw", "sgd")
# The peak learning rate of the one-cycle schedule when none is given: Adam's steps are scaled by its
# second-moment estimate, SGD's by the gradient itself, so the two need different rates.
DEFAULT_LR = {"adam": 5e-3, "adamw": 5e-3, "sgd": 0.05}
MAX_EPOCHS, MAX_BATCH = 100_000, 1_000_000


class RunError(ValueError):
    """A run that cannot start or go on, for a reason the user can fix (the message says which)."""


class RunDiverged(RuntimeError):
    """The loss or the weights stopped being finite; the message says what was kept."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C: the message says what was saved and how to continue."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- settings
@dataclasses.dataclass
class Settings:
    """What a run trains; a checkpoint keeps them, so that `--resume` continues with the same."""

    model: str = "lenet5"
    data: str | None = None
    epochs: int = 15
    batch_size: int = 64
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    optimizer: str = "adam"
    shift: int = 2
    seed: int = 0
    train_size: int | None = None
    test_size: int | None = None
    init: str | None = None  # a safetensors file of weights (torch's keys) the model starts from

    def __post_init__(self) -> None:
        if self.lr is None and self.optimizer in DEFAULT_LR:
            self.lr = DEFAULT_LR[self.optimizer]
        self.validate()

    def validate(self, where: str = "") -> None:
        """Every value in range, or RunError naming the setting (and `where` it came from)."""
        pre = f"{where}: " if where else ""

        def bad(name: str, expected: str, value: Any) -> RunError:
            return RunError(f"{pre}{name}: expected {expected}, got {value!r}")

        def whole(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if self.model not in models.MODELS:
            raise bad("model", f"one of {sorted(models.MODELS)}", self.model)
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"one of {list(OPTIMIZERS)}", self.optimizer)
        if self.data is not None and not isinstance(self.data, str):
            raise bad("data", "a directory name", self.data)
        if self.init is not None and not isinstance(self.init, str):
            raise bad("init", "a safetensors file name", self.init)
        for name, top in (("epochs", MAX_EPOCHS), ("batch_size", MAX_BATCH)):
            v = getattr(self, name)
            if not whole(v) or not 1 <= v <= top:
                raise bad(name, f"an integer from 1 to {top:,}", v)
        for name in ("train_size", "test_size"):
            v = getattr(self, name)
            if v is not None and (not whole(v) or v < 1):
                raise bad(name, "a positive integer or None", v)
        if not whole(self.shift) or not 0 <= self.shift <= 4:
            raise bad("shift", "an integer from 0 to 4", self.shift)
        if not whole(self.seed) or not 0 <= self.seed < 2**63:
            raise bad("seed", "a non-negative integer below 2**63", self.seed)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise bad("lr", "a positive finite number", self.lr)

    @classmethod
    def from_saved(cls, saved: Any, where: str) -> Settings:
        """The settings a checkpoint recorded (its other keys — out, threads, workers — are ignored)."""
        if not isinstance(saved, dict):
            raise RunError(f"{where}: holds no run settings to resume from")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("model", "epochs", "optimizer", "lr", "seed") if k not in saved]
        if missing:
            raise RunError(f"{where}: the run settings lack {', '.join(missing)}; cannot resume")
        try:
            return cls(**{k: v for k, v in saved.items() if k in fields})
        except RunError as e:
            raise RunError(f"{where}: saved run setting {e}") from None

    def dict(self) -> dict:
        return dataclasses.asdict(self)


def default_out(settings: Settings) -> str:
    return os.path.join("runs", f"{settings.model}-seed{settings.seed}")


def holds_run(directory: str) -> bool:
    return any(os.path.exists(os.path.join(directory, n)) for n in (CHECKPOINT_NAME, METRICS_NAME))


# --------------------------------------------------------------------------- the directory
def make_directory(path: str) -> None:
    """Create `path` (and its parents) or raise RunError saying why it cannot hold a run."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"--out {path}: expected a directory, got an existing file")
    try:
        os.makedirs(path, exist_ok=True)
    except NotADirectoryError:
        raise RunError(f"--out {path}: a part of the path is a file, not a directory") from None
    except OSError as e:
        raise RunError(f"--out {path}: cannot create the directory ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunError(f"--out {path}: the directory is not writable")


class DirectoryLock:
    """An exclusive lock on a run directory: a lock file holding the owner's pid, flock'ed.

    A second run on the same directory gets RunError naming the holder.  The lock ends with the process
    (the kernel drops a flock when its file closes), so a killed run never leaves a directory locked."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        self.fd: int | None = None

    def acquire(self) -> DirectoryLock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): runs are not protected from each other there
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunError(f"--out {os.path.dirname(self.path)}: cannot write there ({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunError(f"--out {os.path.dirname(self.path)}: another convprop run (pid {holder}) is "
                               "using this directory; wait for it to end or choose another --out") from None
            try:  # the holder we waited for may have removed the file: lock the one on disk
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while still held: a run waiting on the old file retries
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------- the run
def _subset(images: np.ndarray, labels: np.ndarray, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n is None or n >= len(labels):
        return images, labels
    idx = np.sort(np.random.default_rng([seed, 1234]).permutation(len(labels))[:n])
    return images[idx], labels[idx]


def make_optimizer(name: str, params, lr: float) -> optim.Optimizer:
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    return (optim.AdamW if name == "adamw" else optim.Adam)(params, lr=lr)


def _write_json(path: str, value: Any) -> None:
    """Atomically (a temporary of this process, then a rename): a reader sees the old file or the new."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        self.metrics_path = os.path.join(self.out, METRICS_NAME)
        try:
            self._build()
        except BaseException:
            self.close()
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
        if out is not None:
            make_directory(out)
            self._lock = DirectoryLock(out).acquire()
            resuming_here = self.resume_path and os.path.samefile(os.path.dirname(os.path.abspath(self.resume_path)),
                                                                   out)
            if holds_run(out) and not resuming_here:
                self._lock.release()
                raise RunError(f"--out {out}: holds an earlier run; continue it with convprop train --resume "
                               f"{os.path.join(out, CHECKPOINT_NAME)}, or choose another --out")
            return out
        base = default_out(self.settings)
        for k in range(1, 10_000):
            path = base if k == 1 else f"{base}-{k}"
            if holds_run(path):
                continue
            make_directory(path)
            try:
                self._lock = DirectoryLock(path).acquire()
            except RunError:
                continue  # another run is starting there
            if holds_run(path):
                self._lock.release()
                continue
            if k > 1:
                self.log(f"{base} holds an earlier run: this one goes to {path}")
            return path
        raise RunError(f"{base}: 10,000 runs there already; choose an --out")

    def _build(self) -> None:
        s = self.settings
        images, labels = load_images(s.data, train=True)  # MNIST-style IDX, or CIFAR-10's binary batches
        test_images, test_labels = load_images(s.data, train=False)
        self.images, self.labels = _subset(images, labels, s.train_size, s.seed)
        self.test_images, self.test_labels = _subset(test_images, test_labels, s.test_size, s.seed)
        for what, ys in (("training", self.labels), ("test", self.test_labels)):
            if len(ys) == 0:
                raise RunError(f"--data {s.data or '(the bundled sample)'}: the {what} set has no images")
        _random.manual_seed(s.seed)
        self.config = {"num_classes": 10}
        if self.colour:
            self.config["in_channels"] = 3
        if self.ckpt is None:
            self.model = models.build(s.model, **self.config)
            if s.init is not None:
                self._load_init(s.init)
        else:
            self.model = checkpoint.restore_model(self.ckpt, self.resume_path)
            self.config = dict(self.ckpt["meta"]["model"].get("config", {}))
        dtype = self.model.dtype
        self._check_images_fit(dtype)
        # with K ranks, every rank draws the same order and shifts and takes its shard of each batch
        augment = dict(crop_padding=4, hflip=True) if self.colour else dict(max_shift=s.shift)  # CIFAR's, or shifts
        self.train_loader = DataLoader(self.images, self.labels, s.batch_size, shuffle=True, seed=s.seed,
                                       dtype=dtype, num_replicas=self.world, rank=self.rank, **augment)
        self.test_loader = DataLoader(self.test_images, self.test_labels, 1000, dtype=dtype)  # (evaluation shards it)
        self.optimizer = make_optimizer(s.optimizer, self.model.parameters(), s.lr)
        self.scheduler = optim.OneCycleLR(self.optimizer, max_lr=s.lr, epochs=s.epochs,
                                          steps_per_epoch=len(self.train_loader))
        self.loss_fn = nn.CrossEntropyLoss()
        if self.ckpt is not None:
            checkpoint.restore_training(self.ckpt, self.model, self.optimizer, self.scheduler, self.resume_path)
            meta = self.ckpt["meta"]
            self.start_epoch = self.saved_epoch = meta.get("epoch", 0)
            self.history = list(meta.get("history", []))
            self.train_loader.epoch = self.start_epoch

    def _load_init(self, path: str) -> None:
        """Start from weights made elsewhere (torch's state_dict keys and layouts, e.g. by torch)."""
        from .weights import WeightsError, load_weights

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
        x = normalize(self.images[:1], dtype=dtype)
        try:
            out = self.model.eval()(x)
        except (ValueError, TypeError) as e:
            raise RunError(f"--data: images of {'×'.join(map(str, self.images.shape[1:]))} pixels do not fit "
                           f"{self.settings.model}: {e}") from None
        finally:
            self.model.train()
        k = out.shape[1]
        top = int(max(self.labels.max(), self.test_labels.max()))
        if top >= k:
            raise RunError(f"--data: labels go up to {top}, but the model has {k} classes")

    # ----------------------------------------------------------------- training
    @property
    def colour(self) -> bool:
        """Colour images (N, 3, H, W): CIFAR-10."""
        return self.images.ndim == 4

    def describe(self) -> str:
        s, w = self.settings, self.world
        n_params = sum(p.data.size for p in self.model.parameters())
        return (f"training {s.model} ({n_params:,} parameters) on {len(self.labels):,} images, testing on "
                f"{len(self.test_labels):,}; {s.epochs} epochs, batch {s.batch_size}, {s.optimizer} one-cycle lr "
                f"{s.lr:g}, " + ("4 px random crops and flips" if self.colour else f"±{s.shift} px shifts")
                + (f"; {w} MPI ranks" if w > 1 else ""))

    def train(self) -> list[dict]:
        """Epochs start_epoch+1 … settings.epochs; a checkpoint and metrics.json after each."""
        s = self.settings
        if self.ckpt is not None:
            if self.start_epoch >= s.epochs:
                self.log(f"{self.resume_path}: the run already finished its {s.epochs} epochs; nothing to train")
            else:
                self.log(f"resuming {s.model} from epoch {self.start_epoch} of {s.epochs}")
        self.log(self.describe())
        nn.detect_anomaly(self.anomaly)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():  # overflow on the way to NaN: said once, by the Divergence below
                warnings.simplefilter("ignore", RuntimeWarning)
                self.history = fit(self.model, self.loss_fn, self.optimizer, self.train_loader, s.epochs,
                                   self.test_loader, self.scheduler, start_epoch=self.start_epoch,
                                   history=self.history, progress=self.progress, on_epoch_end=self._end_of_epoch,
                                   log=self.log)
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
        bad = [k for k in ("train_loss", "test_loss") if k in row and not math.isfinite(row[k])]
        # (every rank holds the same history and weights: under MPI, every rank raises these together)
        if bad:
            raise distributed.mark_every_rank(Divergence(
                f"epoch {epoch} ended with a {bad[0].replace('_', ' ')} of {row[bad[0]]}: training diverged "
                "(try a smaller --lr)"))
        if not all(np.isfinite(p.data).all() for p in self.model.parameters()):
            raise distributed.mark_every_rank(Divergence(
                f"epoch {epoch} ended with weights that are not finite: training diverged (try a smaller --lr)"))
        if self.rank != 0:  # every rank holds the same model: rank 0 alone writes it
            self.saved_epoch = epoch
            return
        try:
            checkpoint.save(self.ckpt_path, self.model, self.settings.model, self.config, self.optimizer,
                            self.scheduler, epoch, history=history, args=self.settings.dict())
        except OSError as e:
            raise RunError(f"could not save the checkpoint of epoch {epoch} to {self.ckpt_path} "
                           f"({e.strerror or e}); {self.what_exists()}") from None
        self.saved_epoch = epoch
        self.write_metrics()

    def metrics(self) -> dict:
        h = self.history
        return {"model": self.settings.model, "args": self.settings.dict(), "status": self.status, "epochs": h,
                "test_accuracy": h[-1].get("test_acc") if h else None,
                "test_loss": h[-1].get("test_loss") if h else None, "seconds": self.seconds}

    def write_metrics(self) -> None:
        try:
            _write_json(self.metrics_path, self.metrics())
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES):
                raise RunError(f"could not write {self.metrics_path} ({e.strerror}); {self.what_exists()}") from None
            raise

    # ----------------------------------------------------------------- the end
    def finish(self) -> list[str]:
        """The closing lines and the pictures; returns the pictures' paths."""
        m = self.metrics()
        if m["test_accuracy"] is not None:
            self.log(f"test accuracy {m['test_accuracy']:.2%} after {len(self.history)} epochs "
                     f"({self.seconds:.1f} s this run)")
        self.log(f"metrics:    {self.metrics_path}")
        self.log(f"checkpoint: {self.ckpt_path}")
        return pictures(self.out, self.model, self.history, self.test_images, self.test_labels, self.log)

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


MAX_METRICS_BYTES = 64 << 20


def read_metrics(path: str) -> tuple[list[dict], Settings]:
    """A run's metrics.json, checked as a stranger's file: (its epochs' rows, its settings).
    ValueError naming the file and what is wrong with it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no metrics.json (is {os.path.dirname(path) or '.'} a convprop train "
                                "--out directory?)")
    size = os.path.getsize(path)
    if size > MAX_METRICS_BYTES:
        raise RunError(f"{path}: {size:,} bytes, more than a metrics file holds ({MAX_METRICS_BYTES:,})")
    with open(path, "rb") as f:
        metrics = safe_json.loads(f.read(), path)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("epochs"), list):
        raise RunError(f"{path}: not a convprop metrics file (expected an object with a list of 'epochs')")
    rows = metrics["epochs"]
    if not rows:
        raise RunError(f"{path}: no epoch has finished yet: nothing to draw")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    with_test = "test_loss" in rows[0]
    for k, row in enumerate(rows):
        keys = ("epoch", "train_loss", "train_acc") + (("test_loss", "test_acc") if with_test else ())
        if not isinstance(row, dict) or not all(number(row.get(key)) for key in keys):
            raise RunError(f"{path}: epochs[{k}]: expected numbers {', '.join(keys)}, got {str(row)[:80]}")
    args = metrics.get("args")
    settings = Settings.from_saved(args, path) if args is not None else Settings()
    return rows, settings


def pictures(out: str, model, history, test_images, test_labels, log: Callable[[str], None] = print) -> list[str]:
    """The five pictures of a run into `out` (none, with a note, without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("(matplotlib is not installed: no pictures; pip install 'convprop[train]')")
        return []
    from . import plots

    paths = plots.plot_run(out, model, history, normalize(test_images, dtype=model.dtype), test_labels)
    log("pictures:   " + "\n            ".join(paths))
    return paths


def run_training(settings: Settings | None = None, out: str | None = None, *, resume: str | None = None,
                 given: dict | None = None, data: str | None = None, **kw) -> Run:
    """Train (or resume) one run to its end: claim the directory, train, write metrics and pictures."""
    run = Run.resume(resume, out, given=given, data=data, **kw) if resume else Run(settings or Settings(), out, **kw)
    with run:
        run.train()
        run.finish()
    return run
