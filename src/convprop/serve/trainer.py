"""The page's Training tab: the engine's model trained on the bundled MNIST sample in a background thread,
with `train.fit`, every step holding the engine's lock, so that requests are answered between steps."""

from __future__ import annotations

import threading
import time

from .. import models, nn, optim
from ..data import DataLoader, load_mnist
from ..train import Divergence, StepInfo, evaluate, fit, train_step
from .engine import Engine


class Busy(RuntimeError):
    """A request the trainer's state forbids now (HTTP 409): start while running, restore while training."""


def epochs_done(rows: list[dict], steps_per_epoch: int) -> float:
    """How many epochs the rows of the curves hold: 1 for each whole one, the share of its steps for each
    epoch training stopped in (a row marked "partial", whose "step" counts every step so far)."""
    done, before = 0.0, 0
    for row in rows:
        done += min((row["step"] - before) / steps_per_epoch, 1.0) if row.get("partial") else 1.0
        before = row["step"]
    return done


def progress_text(done: float) -> str:
    """'6 epochs', '1 epoch', or '6 epochs + 40 % of epoch 7' (never rounded up to a whole epoch not done)."""
    whole = int(done + 1e-9)
    part = int(100 * (done - whole))
    text = f"{whole} epoch{'' if whole == 1 else 's'}"
    return text + (f" + {part} % of epoch {whole + 1}" if done - whole > 1e-9 else "")


class Trainer:
    """Trains the engine's model in a background thread, with `train.fit` one epoch at a time: each step holds
    the engine's lock, fit's on_step hook records the curves the page draws (`points`, `epochs`), yields the
    model to waiting requests, and stops training after the current step once stop() is called."""

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
        self.steps_per_epoch = 1  # the training loader's batches, once training started

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, lr: float = 1e-3, reset: bool = False, seed: int = 0) -> None:
        if self.running:
            raise Busy("training is already running: stop it first")
        spec = self.engine.spec
        if spec["prepare"] != "digit" or list(spec["classes"]) != [str(k) for k in range(10)]:
            raise Busy(f"the page trains on MNIST's digits; this model was trained on other images (classes "
                       f"{', '.join(spec['classes'][:5])}{', …' if len(spec['classes']) > 5 else ''}): "
                       "train it with convprop train --data")
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

        def step(*args):  # train_step, the model the trainer's alone meanwhile
            with engine.locked():
                model.train()
                return train_step(*args)

        def evaluate_locked(*args):
            with engine.locked():
                return evaluate(*args)

        try:
            images, labels, test_x, test_y = self.data()
            loader = DataLoader(images, labels, self.BATCH, shuffle=True, seed=seed, max_shift=2, dtype=engine.dtype)
            loader.epoch = len(self.epochs)
            self.steps_per_epoch = len(loader)
            test_loader = DataLoader(test_x, test_y, 500, dtype=engine.dtype)
            optimizer = optim.Adam(model.parameters(), lr=lr)
            while not self.stop_event.is_set():
                epoch = len(self.epochs)
                row = fit(model, nn.CrossEntropyLoss(), optimizer, loader, epoch + 1, test_loader, start_epoch=epoch,
                          progress=False, log=None, step=step, evaluate=evaluate_locked, on_step=self._on_step)[-1]
                row["step"], row["partial"] = self.step, row.get("partial", False)
                # fit's held-out scores are, here, on the page's test images: named so for the page
                row["test_loss"], row["test_acc"] = row.pop("val_loss"), row.pop("val_acc")
                self.epochs.append(row)
        except Divergence as e:
            self.error = str(e)
        except Exception as e:  # shown on the page, never kills the server
            self.error = f"{type(e).__name__}: {e}"
        finally:
            model.eval()

    def _on_step(self, info: StepInfo) -> bool:
        """After every step: its loss and batch accuracy onto the curves; True (stop) once stop() was called."""
        self.step += 1
        if len(self.points) < self.MAX_POINTS:
            self.points.append([self.step, info.loss, info.correct / info.batch_size])
        if self.engine.waiting:
            time.sleep(0.002)  # let a waiting request have the model between two steps
        return self.stop_event.is_set()

    def state(self, since: int = 0) -> dict:
        rows = self.epochs  # and the epoch running now, as far as it got
        rows = rows + [{"step": self.step, "partial": True}] if self.step > (rows[-1]["step"] if rows else 0) else rows
        done = epochs_done(rows, self.steps_per_epoch)
        return {"running": self.running, "run": self.run, "step": self.step, "epoch": len(self.epochs),
                "epochs_done": done, "progress": progress_text(done),
                "error": self.error, "points": self.points[since:], "next": len(self.points),
                "epochs": list(self.epochs), "seconds": (time.time() - self.started) if self.started else 0.0}
