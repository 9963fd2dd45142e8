"""Optimizers with torch.optim's exact update rules, param_groups, state and state_dict."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import numpy as np

from ..nn.module import Parameter


class Optimizer:
    """Base class.  param_groups: [{'params': [Parameter...], 'lr': ..., ...}], as torch."""

    defaults: dict

    def __init__(self, params: Iterable, defaults: dict) -> None:
        params = list(params)
        if not params:
            raise ValueError("params: expected at least one Parameter, got an empty list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = defaults
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}  # keyed by id(Parameter)
        for g in groups:
            group = {**defaults, **g, "params": list(g["params"])}
            for i, p in enumerate(group["params"]):
                if not isinstance(p, Parameter):
                    raise TypeError(f"params[{i}]: expected a convprop Parameter, got {type(p).__name__}")
            self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.zero_grad(set_to_none)

    def _params_with_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    yield group, p, self.state.setdefault(id(p), {})

    def step(self) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- state
    def _all_params(self) -> list[Parameter]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        """{'state': {index: {name: value}}, 'param_groups': [{hyper-parameters, 'params': [index]}]}."""
        index = {id(p): i for i, p in enumerate(self._all_params())}
        state = {index[pid]: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for pid, s in self.state.items() if pid in index}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            raise ValueError("state_dict: expected the parameter groups of this optimizer "
                             f"({[len(g['params']) for g in self.param_groups]} parameters), got "
                             f"{[len(g['params']) for g in groups]}")
        params = self._all_params()
        for saved, group in zip(groups, self.param_groups):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            i = int(i)
            p = params[i]
            self.state[id(p)] = {k: (np.array(v, dtype=p.data.dtype) if isinstance(v, np.ndarray) and v.ndim
                                     else v) for k, v in s.items()}


class SGD(Optimizer):
    """v ← μ v + (1 − τ) g;  p ← p − lr · (g + μ v if nesterov else v)  (g includes weight decay λp)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        _learning_rate(lr)
        _non_negative(momentum, "momentum")  # as torch: any μ >= 0 (μ >= 1 diverges, but is the user's to try)
        _non_negative(weight_decay, "weight_decay")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov: expected momentum > 0 and dampening == 0, "
                             f"got momentum={momentum}, dampening={dampening}")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def step(self) -> None:
        for group, p, state in self._params_with_grad():
            g = p.grad
            if group["weight_decay"]:
                g = g + group["weight_decay"] * p.data  # g ← g + λ p
            mu = group["momentum"]
            if mu:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.copy()  # v ← g on the first step
                else:
                    buf *= mu
                    buf += (1 - group["dampening"]) * g  # v ← μ v + (1 − τ) g
                g = g + mu * buf if group["nesterov"] else buf
            p.data -= group["lr"] * g  # p ← p − lr · g


class Adam(Optimizer):
    """m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε).

    AdamW decays p ← p(1 − lr·λ) first instead of adding λp to g (decoupled weight decay).
    """

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        _learning_rate(lr)
        for k, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{k}]: expected a value in [0, 1), got {b}")
        _non_negative(eps, "eps")
        _non_negative(weight_decay, "weight_decay")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad))

    def step(self) -> None:
        for group, p, state in self._params_with_grad():
            g, lr, wd = p.grad, group["lr"], group["weight_decay"]
            (b1, b2), eps = group["betas"], group["eps"]
            if wd and self.decoupled:
                p.data *= 1 - lr * wd  # p ← p (1 − lr λ)
            elif wd:
                g = g + wd * p.data  # g ← g + λ p
            if not state:
                state.update(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = np.zeros_like(p.data)
            state["step"] += 1
            t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
            m += (1 - b1) * (g - m)  # m ← β₁ m + (1 − β₁) g   (torch's lerp)
            v *= b2
            v += (1 - b2) * g * g  # v ← β₂ v + (1 − β₂) g²
            if group["amsgrad"]:
                np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                v = state["max_exp_avg_sq"]
            step_size = lr / (1 - b1 ** t)  # lr / (1 − β₁ᵗ)
            denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps  # √v̂ + ε
            p.data -= step_size * m / denom


class AdamW(Adam):
    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


def _learning_rate(v: float) -> None:
    """lr >= 0 and finite, as torch (0 is a step that changes nothing)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or not math.isfinite(v):
        raise ValueError(f"lr: expected a finite number >= 0, got {v!r}")


def _non_negative(v: float, name: str) -> None:
    if not isinstance(v, (int, float)) or not v >= 0:
        raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
