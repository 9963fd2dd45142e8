"""The page's Training tab: the engine's model trained on the bundled MNIST sample in a background thread,
with `train.fit`, every step holding the engine's lock, so that requests are answered between steps."""

from __future__ import annotations

import threading
import time

import numpy as np

from .. import models, nn, optim
from ..data import DataLoader, load_mnist
from ..train import Divergence, evaluate, fit
from .engine import Engine


class Busy(RuntimeError):
    """A request the trainer's state forbids now (HTTP 409): start while running, restore while training."""


class Trainer:
    """Trains the engine's model in a background thread, with `train.fit` one epoch at a time; a stop ends
    the epoch after the current step.  `points` and `epochs` are the curves the page draws."""

    BATCH, TEST_IMAGES, MAX_POINTS = 64, 1000, 20000

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.initial = {k: v.copy() for k, v in engine.model.state_dict().items()}  # what restore puts back
        self.thread: threading.Thread | None = None
        self.stop_event = threading.Event()
        self.points: list[list[float]] = []  # [step, loss, batch accuracy]
        self.epochs: list[dict] = []
        self.error: str | None = None
        self.step = 0
        self.run = 0  # counts resets: the curves start again
        self.started = 0.0
        self._data = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, lr: float = 1e-3, reset: bool = False, seed: int = 0) -> None:
        if self.running:
            raise Busy("training is already running: stop it first")
        if reset:
            import convprop.random as R

            R.manual_seed(seed)
            meta = self.engine.meta
            fresh = models.build(meta["model"], **meta.get("config", {})) if meta.get("model") else models.lenet5()
            with self.engine.locked() as model:
                model.load_state_dict(fresh.state_dict())
            self.points, self.epochs, self.step = [], [], 0
            self.run += 1
        self.error = None
        self.stop_event.clear()
        self.started = time.time()
        self.thread = threading.Thread(target=self._train, args=(lr, seed), name="convprop-serve-train", daemon=True)
        self.thread.start()

    def stop(self, wait: float = 10.0) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(wait)

    def restore(self) -> None:
        """The weights the server started with."""
        if self.running:
            raise Busy("training is running: stop it first")
        with self.engine.locked() as model:
            model.load_state_dict(self.initial)

    def data(self):
        if self._data is None:
            images, labels = load_mnist(None, train=True)
            test_x, test_y = load_mnist(None, train=False)
            self._data = (images, labels, test_x[: self.TEST_IMAGES], test_y[: self.TEST_IMAGES])
        return self._data

    def _train(self, lr: float, seed: int) -> None:
        engine, model = self.engine, self.engine.model
        try:
            images, labels, test_x, test_y = self.data()
            loader = DataLoader(images, labels, self.BATCH, shuffle=True, seed=seed, max_shift=2, dtype=engine.dtype)
            loader.epoch = len(self.epochs)
            test_loader = DataLoader(test_x, test_y, 500, dtype=engine.dtype)
            optimizer = optim.Adam(model.parameters(), lr=lr)
            loss_fn = _Recording(nn.CrossEntropyLoss(), self)
            while not self.stop_event.is_set():
                epoch = len(self.epochs)
                rows = fit(model, loss_fn, optimizer, _Locked(loader, engine, self.stop_event), epoch + 1,
                           start_epoch=epoch, progress=False, log=None)
                row = rows[-1]
                with engine.locked():
                    row["test_loss"], row["test_acc"] = evaluate(model, test_loader, nn.CrossEntropyLoss())
                    model.eval()
                row["step"], row["partial"] = self.step, self.stop_event.is_set()
                self.epochs.append(row)
        except Divergence as e:
            self.error = str(e)
        except Exception as e:  # shown on the page, never kills the server
            self.error = f"{type(e).__name__}: {e}"
        finally:
            model.eval()

    def state(self, since: int = 0) -> dict:
        return {"running": self.running, "run": self.run, "step": self.step, "epoch": len(self.epochs),
                "error": self.error, "points": self.points[since:], "next": len(self.points),
                "epochs": list(self.epochs), "seconds": (time.time() - self.started) if self.started else 0.0}


class _Recording:
    """The loss function, recording each training step's loss and batch accuracy for the curves."""

    def __init__(self, loss_fn, trainer: Trainer) -> None:
        self.loss_fn, self.trainer = loss_fn, trainer

    def __call__(self, logits: np.ndarray, y: np.ndarray):
        loss, dlogits = self.loss_fn(logits, y)
        t = self.trainer
        if self.trainer.engine.model.training:
            t.step += 1
            if len(t.points) < t.MAX_POINTS:
                t.points.append([t.step, float(loss), float((logits.argmax(axis=1) == y).mean())])
        return loss, dlogits


class _Locked:
    """A loader whose batches are handed out with the engine's lock held until the next one is asked for
    (fit runs the step in between); it ends early, after at least one batch, when stop is set."""

    def __init__(self, loader: DataLoader, engine: Engine, stop: threading.Event) -> None:
        self.loader, self.engine, self.stop = loader, engine, stop

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for k, batch in enumerate(self.loader):
            if k and self.stop.is_set():
                return
            with self.engine.locked() as model:
                model.train()
                yield batch
            if self.engine.waiting:
                time.sleep(0.002)  # let a waiting request have the model between two steps
