"""What a run trains (`Settings`), and the one check of every setting — used by Settings itself (for
values in code, in a checkpoint or in metrics.json) and by the command line's flags."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import models
from ..errors import RunError

OPTIMIZERS = ("adam", "adamw", "sgd")
# The peak learning rate of the one-cycle schedule when none is given: Adam's steps are scaled by its
# second-moment estimate, SGD's by the gradient itself, so the two need different rates.
DEFAULT_LR = {"adam": 5e-3, "adamw": 5e-3, "sgd": 0.05}
MAX_EPOCHS, MAX_BATCH = 100_000, 1_000_000


def _whole(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


FINAL = ("best", "last")  # which checkpoint the test set is evaluated on at the end
# Settings written before these existed: the run they describe had no validation split and no rotation
# or scaling, so a resumed one has none either.
BEFORE_VALIDATION = {"val_split": 0.0, "rotate": 0.0, "scale": 0.0, "final": "last"}


# setting: (is this value allowed?, what is expected); None is also allowed for the OPTIONAL ones
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda v: isinstance(v, str) and v in models.MODELS, f"one of {sorted(models.MODELS)}"),
    "optimizer": (lambda v: isinstance(v, str) and v in OPTIMIZERS, f"one of {list(OPTIMIZERS)}"),
    "data": (lambda v: isinstance(v, str), "a directory name"),
    "init": (lambda v: isinstance(v, str), "a safetensors file name"),
    "epochs": (lambda v: _whole(v) and 1 <= v <= MAX_EPOCHS, f"an integer from 1 to {MAX_EPOCHS:,}"),
    "batch_size": (lambda v: _whole(v) and 1 <= v <= MAX_BATCH, f"an integer from 1 to {MAX_BATCH:,}"),
    "train_size": (lambda v: _whole(v) and v >= 1, "a positive integer"),
    "test_size": (lambda v: _whole(v) and v >= 1, "a positive integer"),
    "shift": (lambda v: _whole(v) and 0 <= v <= 4, "an integer from 0 to 4"),
    "seed": (lambda v: _whole(v) and 0 <= v < 2**63, "a non-negative integer below 2**63"),
    "val_split": (lambda v: _number(v) and 0 <= v <= 0.9, "a fraction from 0 to 0.9"),
    "final": (lambda v: v in FINAL, f"one of {list(FINAL)}"),
    "rotate": (lambda v: _number(v) and 0 <= v <= 45, "degrees from 0 to 45"),
    "scale": (lambda v: _number(v) and 0 <= v <= 0.5, "a fraction from 0 to 0.5"),
    "lr": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf,
           "a positive number"),
}
OPTIONAL = ("data", "init", "train_size", "test_size")


def problem(name: str, value: Any) -> str | None:
    """What setting `name` expects, if `value` is not allowed for it; None if it is."""
    allowed, expected = RULES[name]
    if value is None and name in OPTIONAL:
        return None
    return None if allowed(value) else expected + (" or None" if name in OPTIONAL else "")


# A model's own default recipe, where it differs from the dataclass's (LeNet-5's): what `convprop train
# --model NAME` uses for the flags not given.  ResNet-8: 30 epochs of batch 64, Adam one-cycle peak 0.02
# (BatchNorm takes the larger rate); measured against others in docs/residual.md.
RECIPES: dict[str, dict[str, Any]] = {"resnet8": {"epochs": 30, "batch_size": 64, "lr": 0.02}}


@dataclasses.dataclass
class Settings:
    """What a run trains; a checkpoint keeps them, so that `--resume` continues with the same."""

    model: str = "lenet5"
    data: str | None = None
    epochs: int = 20
    batch_size: int = 64
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    optimizer: str = "adam"
    shift: int = 2
    seed: int = 0
    train_size: int | None = None
    test_size: int | None = None
    init: str | None = None  # a safetensors file of weights (torch's keys) the model starts from
    val_split: float = 0.1  # of the training images, held out (stratified, seeded) to validate on
    final: str = "last"  # the checkpoint the test set is evaluated on at the end (one-cycle ends at its lowest rate)
    rotate: float = 10.0  # random rotation augmentation, ± degrees
    scale: float = 0.1  # random scaling augmentation, ± fraction

    def __post_init__(self) -> None:
        if self.lr is None and self.optimizer in DEFAULT_LR:
            self.lr = DEFAULT_LR[self.optimizer]
        self.validate()

    def validate(self, where: str = "") -> None:
        """Every value in range, or RunError naming the setting (and `where` it came from)."""
        for name in RULES:
            value = getattr(self, name)
            expected = problem(name, value)
            if expected is not None:
                raise RunError(f"{where}: " * bool(where) + f"{name}: expected {expected}, got {value!r}")

    @classmethod
    def from_saved(cls, saved: Any, where: str) -> Settings:
        """The settings a checkpoint recorded (its other keys — out, threads, workers — are ignored)."""
        if not isinstance(saved, dict):
            raise RunError(f"{where}: holds no run settings to resume from")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("model", "epochs", "optimizer", "lr", "seed") if k not in saved]
        if missing:
            raise RunError(f"{where}: the run settings lack {', '.join(missing)}; cannot resume")
        saved = {**BEFORE_VALIDATION, **saved}
        try:
            return cls(**{k: v for k, v in saved.items() if k in fields})
        except RunError as e:
            raise RunError(f"{where}: saved run setting {e}") from None

    @classmethod
    def recipe(cls, **given: Any) -> Settings:
        """Settings of the given values, the rest from the model's recipe (RECIPES), then the defaults; an
        optimizer other than the recipe's, given without a learning rate, gets its own default rate."""
        base = dict(RECIPES.get(given.get("model") or cls.model, {}))
        if given.get("optimizer", base.get("optimizer", cls.optimizer)) != base.get("optimizer", cls.optimizer) \
                and "lr" not in given:
            base.pop("lr", None)
        return cls(**{**base, **given})

    def dict(self) -> dict:
        return dataclasses.asdict(self)


def default_out(settings: Settings) -> str:
    return os.path.join("runs", f"{settings.model}-seed{settings.seed}")
