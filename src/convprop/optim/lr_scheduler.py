"""Learning-rate schedulers with torch's semantics: constructing one sets the step-0 rate;
`step()` after each epoch (StepLR, CosineAnnealingLR) or each batch (OneCycleLR)."""

from __future__ import annotations

import math

from .optimizer import Optimizer


class LRScheduler:
    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a convprop Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, base_lr: float, group: dict, t: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        for base, group in zip(self.base_lrs, self.optimizer.param_groups):
            group["lr"] = self.lr_at(base, group, self.last_epoch)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update(state_dict)


class StepLR(LRScheduler):
    """lr_t = lr₀ · γ^⌊t / step_size⌋."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, group, t):
        return base_lr * self.gamma ** (t // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr_t = η_min + (lr₀ − η_min)(1 + cos(π t / T_max)) / 2."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, group, t):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class OneCycleLR(LRScheduler):
    """Warm up from max_lr/div_factor to max_lr over pct_start of the steps, then anneal to
    max_lr/(div_factor·final_div_factor); momentum (or Adam's β₁) cycles the other way."""

    def __init__(self, optimizer: Optimizer, max_lr: float, total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True, base_momentum: float = 0.85,
                 max_momentum: float = 0.95, div_factor: float = 25.0, final_div_factor: float = 1e4,
                 three_phase: bool = False, last_epoch: int = -1) -> None:
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("total_steps: expected total_steps, or epochs and steps_per_epoch, got neither")
            total_steps = epochs * steps_per_epoch
        if total_steps < 1:
            raise ValueError(f"total_steps: expected a positive int, got {total_steps}")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"pct_start: expected a value in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy: expected 'cos' or 'linear', got {anneal_strategy!r}")
        self.total_steps, self.anneal_strategy, self.cycle_momentum = total_steps, anneal_strategy, cycle_momentum
        p = float(pct_start * total_steps)
        self.phases = (
            [(p - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
             (2 * p - 2, "max_lr", "initial_lr", "base_momentum", "max_momentum"),
             (total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum")]
            if three_phase else
            [(p - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
             (total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum")])
        self.use_beta1 = "betas" in optimizer.defaults
        for group in optimizer.param_groups:
            if last_epoch == -1:
                group["initial_lr"] = max_lr / div_factor
                group["max_lr"] = max_lr
                group["min_lr"] = group["initial_lr"] / final_div_factor
            if cycle_momentum:
                if not self.use_beta1 and not group.get("momentum"):
                    raise ValueError("cycle_momentum: the optimizer has no momentum; pass cycle_momentum=False")
                if last_epoch == -1:
                    self._set_momentum(group, max_momentum)
                    group["max_momentum"], group["base_momentum"] = max_momentum, base_momentum
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group: dict, m: float) -> None:
        if self.use_beta1:
            group["betas"] = (m, *group["betas"][1:])
        else:
            group["momentum"] = m

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def lr_at(self, base_lr, group, t):
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {t} times, past total_steps={self.total_steps}")
        start = 0.0
        for i, (end, lr0, lr1, m0, m1) in enumerate(self.phases):
            if t <= end or i == len(self.phases) - 1:
                pct = (t - start) / (end - start)
                if self.cycle_momentum:
                    self._set_momentum(group, self._anneal(group[m0], group[m1], pct))
                return self._anneal(group[lr0], group[lr1], pct)
            start = end
        raise AssertionError("unreachable")
