"""convprop's one random generator: initialisation, dropout and data order draw from it.

`manual_seed(s)` makes a run reproducible; `get_state()`/`set_state()` let a checkpoint resume it.
"""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int | list[int]) -> np.random.Generator:
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator() -> np.random.Generator:
    return _generator


def get_state() -> dict:
    return _generator.bit_generator.state


def set_state(state: dict) -> None:
    _generator.bit_generator.state = state
