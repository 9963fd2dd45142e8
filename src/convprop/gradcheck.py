"""Central differences: the independent check of every hand-written gradient.

numeric_gradient checks one op; gradcheck checks a whole model's backward — the way to catch a
wrong hand-written backward of a model with forks and joins (see nn/containers.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["numeric_gradient", "gradcheck", "GradcheckError"]


def numeric_gradient(fn: Callable[..., np.ndarray], arrays: Sequence[np.ndarray], dout: np.ndarray,
                     eps: float = 1e-6) -> list[np.ndarray]:
    """∂/∂a of L = Σ fn(*arrays) ⊙ dout for every array a (float64, modified in place and restored):
    (L(a + ε) − L(a − ε)) / 2ε, one element at a time."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a, dtype=np.float64)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + eps
            up = float((fn(*arrays) * dout).sum())
            a[i] = old - eps
            down = float((fn(*arrays) * dout).sum())
            a[i] = old
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


class GradcheckError(AssertionError):
    """A hand-written gradient disagrees with central differences (the message names it)."""


def gradcheck(model, x: np.ndarray, dout: np.ndarray | None = None, *, samples: int = 6, eps: float = 1e-6,
              rtol: float = 1e-4, atol: float = 1e-6, seed: int = 0) -> bool:
    """Check model.backward against central differences: ∂x and the gradient of every parameter.

    The model and x must be float64 (`model.to(np.float64)`) and the forward deterministic
    (Dropout in eval mode or p = 0; BatchNorm may train: its running statistics are restored).
    For L = Σ model(x) ⊙ dout (dout random unless given), `samples` entries of x and of each
    parameter, drawn at random, are perturbed by ±eps and (L(+) − L(−)) / 2eps compared with the
    hand-written value: |analytic − numeric| ≤ rtol·|numeric| + atol·max(1, max |analytic|); then the
    whole array at once along a random direction v (Σ analytic ⊙ v), so that no entry goes unchecked.
    A difference that disagrees is tried again with eps/10 before it counts (a ReLU or max-pool kink
    between a − eps and a + eps makes the difference quotient wrong, not the gradient).
    Returns True, or raises GradcheckError naming the first wrong gradient and entry.
    """
    params = list(model.named_parameters())
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError(f"x: expected a float64 NumPy array (central differences need it), got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    wrong = [name for name, p in params if p.data.dtype != np.float64]
    if wrong:
        raise TypeError(f"model: expected float64 parameters (call model.to(np.float64)), got "
                        f"{params[0][1].data.dtype} for {wrong[0]}")
    buffers = {name: b.copy() for name, b in model.named_buffers()}
    saved_grads = [p.grad for _, p in params]
    rng = np.random.default_rng(seed)
    x = x.copy()
    try:
        out = model(x)
        again = model(x)
        if not np.array_equal(out, again, equal_nan=True):
            raise GradcheckError("the forward is not deterministic (Dropout in training mode?): call model.eval() "
                                 "or use p=0 for the check")
        dout = rng.standard_normal(out.shape) if dout is None else np.asarray(dout, dtype=np.float64)
        model.zero_grad()
        model(x)
        dx = model.backward(dout, input_grad=True)
        if dx is None or dx.shape != x.shape:
            raise GradcheckError(f"backward returned {None if dx is None else dx.shape} for the input gradient, "
                                 f"expected an array of x's shape {x.shape}")
        checks = [("x (the input gradient)", x, dx.copy())]
        for name, p in params:
            if p.grad is None:
                raise GradcheckError(f"gradient of {name}: backward left it None (is its module's backward "
                                     f"called?)")
            checks.append((name, p.data, p.grad.copy()))

        def loss() -> float:
            return float((model(x) * dout).sum())

        def difference(array: np.ndarray, where, v, analytic: float, scale: float) -> tuple[bool, float]:
            """Central difference of L along v at `where` (an entry, or everything); retried with eps/10."""
            for step in (eps, eps / 10):
                old = array[where].copy()
                array[where] = old + step * v
                up = loss()
                array[where] = old - step * v
                down = loss()
                array[where] = old
                numeric = (up - down) / (2 * step)
                if abs(analytic - numeric) <= rtol * abs(numeric) + atol * scale:
                    return True, numeric
            return False, numeric

        hint = ("(check that backward calls each submodule's backward once, in reverse order of the forward, "
                "hands a join's ∂ to every branch and adds a fork's)")
        for name, array, analytic in checks:
            scale = max(1.0, float(np.abs(analytic).max(initial=0.0)))
            for i in rng.choice(array.size, size=min(samples, array.size), replace=False):
                index = np.unravel_index(i, array.shape)
                ok, numeric = difference(array, index, 1.0, float(analytic[index]), scale)
                if not ok:
                    raise GradcheckError(f"gradient of {name} at {tuple(int(v) for v in index)}: hand-written "
                                         f"{float(analytic[index]):.6g}, central difference {numeric:.6g} {hint}")
            # every entry at once: the derivative along a random direction v is Σ ∂L/∂a ⊙ v
            v = rng.standard_normal(array.shape)
            along = float((analytic * v).sum())
            ok, numeric = difference(array, Ellipsis, v, along, scale * np.sqrt(array.size))
            if not ok:
                raise GradcheckError(f"gradient of {name}: along a random direction hand-written {along:.6g}, "
                                     f"central difference {numeric:.6g} (the {min(samples, array.size)} sampled "
                                     f"entries agreed) {hint}")
    finally:
        for name, b in model.named_buffers():
            b[...] = buffers[name]
        for (_, p), g in zip(params, saved_grads):
            p.grad = g
    return True
