"""Softmax, log-softmax and cross-entropy: the loss, and the ∂Z of the last layer that starts every backward.

All follow the functional contract (`op(...) -> (out, cache)`, `op_backward(dout, cache)`), with
torch.nn.functional's names, argument orders and semantics.  For cross-entropy the class axis is
dimension 1 of logits (N, C) or (N, C, d1, …), or the only axis of unbatched logits (C,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _checks as chk

__all__ = ["softmax", "softmax_backward", "log_softmax", "log_softmax_backward", "cross_entropy",
           "cross_entropy_backward", "softmax_cross_entropy", "mse_loss"]

REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True, eq=False)
class SoftmaxCache:
    op: str  # "softmax" or "log_softmax"
    out: np.ndarray  # what the forward returned: softmax(Z) or log softmax(Z)
    dim: int
    input_dtype: np.dtype  # ∂Z's (the forward's `dtype` casts Z first, as torch)


def _dim(x: np.ndarray, dim) -> int:
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or not -max(x.ndim, 1) <= dim < max(x.ndim, 1):
        raise ValueError(f"dim: expected an int in [{-max(x.ndim, 1)}, {max(x.ndim, 1)}) for shape {x.shape}, "
                         f"got {dim!r}")
    return int(dim) % max(x.ndim, 1)


def _log_softmax(z: np.ndarray, dim: int) -> np.ndarray:
    """log softmax(Z) = Z − max Z − log Σ e^{Z − max Z}, stable for any finite logits (empty stays empty)."""
    if not z.size:
        return np.empty_like(z)
    shifted = z - z.max(axis=dim, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=dim, keepdims=True))


def _cast(x: np.ndarray, dtype) -> np.ndarray:
    """torch's `dtype=`: the input cast to it before the op (a floating dtype), or as it is for None."""
    if dtype is None:
        return x
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise TypeError(f"dtype: expected a floating dtype (float32 or float64) or None, got {dtype!r}")
    return x.astype(dt, copy=False)


def softmax(x: np.ndarray, dim: int, dtype=None) -> tuple[np.ndarray, SoftmaxCache]:
    """S = e^{Z} / Σ_dim e^{Z}  (computed as exp(log softmax)).   any shape -> same shape;
    dtype: cast Z to it first (as torch), ∂Z comes back in Z's own dtype."""
    chk.float_array(x, "x", tuple(range(0, 33)))
    d = _dim(x, dim)
    z = _cast(x, dtype)
    out = np.exp(_log_softmax(z, d)) if z.ndim else np.ones_like(z)
    return out, SoftmaxCache("softmax", out, d, x.dtype)


def softmax_backward(dout: np.ndarray, cache: SoftmaxCache) -> np.ndarray:
    """∂Z = S ⊙ (∂S − Σ_dim ∂S ⊙ S)   (the Jacobian diag(S) − S Sᵀ applied to ∂S)."""
    c = _softmax_cache(cache, "softmax")
    ds = chk.grad_output(dout, c.out.shape, c.out.dtype)
    if not ds.ndim:
        return np.zeros_like(ds, dtype=c.input_dtype)
    return (c.out * (ds - (ds * c.out).sum(axis=c.dim, keepdims=True))).astype(c.input_dtype, copy=False)


def log_softmax(x: np.ndarray, dim: int, dtype=None) -> tuple[np.ndarray, SoftmaxCache]:
    """log S = Z − log Σ_dim e^{Z}.   any shape -> same shape; dtype as softmax's."""
    chk.float_array(x, "x", tuple(range(0, 33)))
    d = _dim(x, dim)
    z = _cast(x, dtype)
    out = _log_softmax(z, d) if z.ndim else np.zeros_like(z)
    return out, SoftmaxCache("log_softmax", out, d, x.dtype)


def log_softmax_backward(dout: np.ndarray, cache: SoftmaxCache) -> np.ndarray:
    """∂Z = ∂(log S) − S ⊙ Σ_dim ∂(log S)."""
    c = _softmax_cache(cache, "log_softmax")
    dl = chk.grad_output(dout, c.out.shape, c.out.dtype)
    if not dl.ndim:
        return np.zeros_like(dl, dtype=c.input_dtype)
    return (dl - np.exp(c.out) * dl.sum(axis=c.dim, keepdims=True)).astype(c.input_dtype, copy=False)


def _softmax_cache(cache, op: str) -> SoftmaxCache:
    chk.cache_of(cache, SoftmaxCache, op)
    if cache.op != op:
        raise TypeError(f"cache: expected the cache returned by {op}, got one from {cache.op}")
    return cache


# --------------------------------------------------------------------------- cross-entropy
@dataclass(frozen=True, eq=False)
class CrossEntropyCache:
    logp: np.ndarray  # log softmax(Z), class axis 1: (N, C, *)
    r: np.ndarray  # the weighted targets r_nc (N, C, *): L_n = −Σ_c r_nc log S_nc
    denominator: float  # what 'mean' divides by (1 for 'sum' and 'none')
    reduction: str
    shape: tuple[int, ...]  # the logits' shape as given (unbatched (C,) too)
    target_grad: np.ndarray | None  # ∂L_n/∂t_nc for probability targets, else None
    kept: np.ndarray | None  # class-index targets: the rows not ignored (N, 1, *); their ∂ alone can be nan


def _targets(logits: np.ndarray, target, weight, ignore_index: int, label_smoothing: float):
    """r (N, C, *) with L_n = −Σ_c r_nc log S_nc, and the denominator of 'mean'.

    class indices y:   r_nc = w_{y_n} (1 − ε) [c = y_n] + w_c ε / C,  rows of ignored n zero;
                       'mean' divides by Σ_n w_{y_n} over the n not ignored (torch's weighted mean)
    probabilities t:   r_nc = w_c ((1 − ε) t_nc + ε / C);  'mean' divides by the number of rows N·d1·…
    """
    k = logits.shape[1]
    w = None if weight is None else weight.reshape((1, k) + (1,) * (logits.ndim - 2))
    if not isinstance(target, np.ndarray):
        raise TypeError(f"target: expected a NumPy array of class indices or probabilities, got "
                        f"{type(target).__name__}")
    if target.dtype.kind == "f":  # probabilities, one row per sample (and position)
        if target.shape != logits.shape:
            raise ValueError(f"target: expected probabilities of the logits' shape {logits.shape}, got {target.shape}")
        if ignore_index != -100:
            raise ValueError(f"ignore_index: applies to class-index targets only (as torch), got ignore_index="
                             f"{ignore_index} with probability targets")
        q = target.astype(logits.dtype, copy=False) * logits.dtype.type(1 - label_smoothing) \
            + logits.dtype.type(label_smoothing / k)  # (1 − ε) t + ε/C
        r = q if w is None else q * w
        return r, float(logits.size // k), None
    if target.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class indices or floating probabilities, got {target.dtype}")
    want = logits.shape[:1] + logits.shape[2:]
    if target.shape != want:
        raise ValueError(f"target: expected shape {want} (one class per logits row), got {target.shape}")
    keep = target != ignore_index
    y = np.where(keep, target, 0)
    if y.size and (y.min() < 0 or y.max() >= k):
        bad = target[keep & ((target < 0) | (target >= k))]
        raise ValueError(f"target: expected classes in [0, {k}) (or ignore_index={ignore_index}), got "
                         f"{bad.ravel()[:5].tolist()}")
    onehot = (np.expand_dims(y, 1) == np.arange(k).reshape((1, k) + (1,) * (logits.ndim - 2)))
    wy = keep.astype(logits.dtype) if weight is None else np.where(keep, weight[y], 0).astype(logits.dtype)
    r = onehot * np.expand_dims(wy * logits.dtype.type(1 - label_smoothing), 1)  # w_y (1 − ε) [c = y]
    if label_smoothing:
        smooth = np.expand_dims(keep, 1) * logits.dtype.type(label_smoothing / k)  # + w_c ε / C
        r = r + (smooth if w is None else smooth * w)
    return r, float(wy.sum()), np.expand_dims(keep, 1)


def cross_entropy(logits: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, *,
                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                  ) -> tuple[np.ndarray, CrossEntropyCache]:
    """L_n = −Σ_c r_nc log softmax(Z_n)_c, reduced as torch.nn.functional.cross_entropy.

    logits (N, C), (N, C, d1, …) or (C,); target: class indices (N,), (N, d1, …) or () — or
    probabilities of the logits' shape; weight (C,) per-class weights.  r is the weighted target
    (see _targets).  reduction 'mean' -> Σ L_n / denominator, 'sum' -> Σ L_n (both 0-d arrays),
    'none' -> L (N, d1, …).
    """
    chk.float_array(logits, "logits", tuple(range(1, 33)), "N, C, ...")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing!r}")
    shape = logits.shape
    z = logits[None] if logits.ndim == 1 else logits  # unbatched (C,): one row
    if logits.ndim == 1 and isinstance(target, np.ndarray):
        target = target[None]
    if weight is not None:
        chk.float_array(weight, "weight", 1, "classes")
        if weight.shape != (z.shape[1],):
            raise ValueError(f"weight: expected shape ({z.shape[1]},) (one per class), got {weight.shape}")
        weight = weight.astype(z.dtype, copy=False)
    r, denominator, kept = _targets(z, target, weight, ignore_index, float(label_smoothing))
    logp = _log_softmax(z, 1)
    losses = -(r * logp).sum(axis=1)  # L_n = −Σ_c r_nc log S_nc   (N, d1, …)
    if reduction == "none":
        out, denominator = (losses[0] if logits.ndim == 1 else losses), 1.0
    else:
        denominator = denominator if reduction == "mean" else 1.0
        with np.errstate(divide="ignore", invalid="ignore"):  # as torch: 0/0 = nan when every row is ignored
            out = np.asarray(losses.sum() / z.dtype.type(denominator), dtype=z.dtype)
    target_grad = None
    if kept is None:  # probabilities: ∂L_n/∂t_nc = −(1 − ε) w_c log S_nc
        target_grad = -logp * z.dtype.type(1 - label_smoothing)
        target_grad = target_grad if weight is None else target_grad * weight.reshape((1, -1) + (1,) * (z.ndim - 2))
    return out, CrossEntropyCache(logp, r, denominator, reduction, shape, target_grad, kept)


def cross_entropy_backward(dout: np.ndarray | float, cache: CrossEntropyCache,
                           ) -> tuple[np.ndarray, np.ndarray | None]:
    """dout: ∂ of the reduced loss (a scalar) or of every L_n ('none') -> (∂Z, ∂target or None).

    ∂L_n/∂Z_nk = S_nk Σ_c r_nc − r_nk   (= S − onehot for an unweighted class index),
    times dout / denominator ('mean'), dout ('sum'), or dout_n ('none').
    """
    chk.cache_of(cache, CrossEntropyCache, "cross_entropy")
    c = cache
    dtype = c.logp.dtype
    rows = c.logp.shape[:1] + c.logp.shape[2:]
    if c.reduction == "none":
        d = chk.grad_output(np.asarray(dout, dtype), rows[1:] if len(c.shape) == 1 else rows, dtype)
        d = np.expand_dims(d.reshape(rows), 1)
    else:
        with np.errstate(divide="ignore"):
            d = chk.grad_output(np.asarray(dout, dtype), (), dtype) / dtype.type(c.denominator)
    with np.errstate(invalid="ignore"):
        dz = (np.exp(c.logp) * c.r.sum(axis=1, keepdims=True) - c.r) * d  # (S Σ_c r − r) ⊙ dout
    if c.kept is not None and not np.isfinite(d).all():  # 'mean' over no weight: ignored rows still get 0, as torch
        dz = np.where(c.kept, dz, dtype.type(0))
    dt = None if c.target_grad is None else c.target_grad * d
    if len(c.shape) == 1:
        return dz[0], (None if dt is None else dt[0])
    return dz, dt


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray, *, label_smoothing: float = 0.0,
                          ) -> tuple[float, np.ndarray]:
    """The training loss: (mean cross-entropy as a float, ∂L/∂Z) for logits (β, K), targets (β,).

    ∂L/∂Z = (softmax(Z) − q) / β with q = (1 − ε)·onehot(y) + ε/K.  The 1/β is the batch averaging
    (docs/math.md), done once, here.
    """
    chk.float_array(logits, "logits", 2, "batch, classes")
    if not isinstance(targets, np.ndarray) or targets.dtype.kind not in "iu":
        raise TypeError(f"targets: expected an integer NumPy array of class indices, got "
                        f"{getattr(targets, 'dtype', type(targets).__name__)}")
    beta, k = logits.shape
    if targets.shape != (beta,):
        raise ValueError(f"targets: expected shape ({beta},) (one class per logits row), got {targets.shape}")
    if beta and (targets.min() < 0 or targets.max() >= k):
        raise ValueError(f"targets: expected classes in [0, {k}), got values in [{targets.min()}, {targets.max()}]")
    loss, cache = cross_entropy(logits, targets, label_smoothing=label_smoothing)
    return float(loss), cross_entropy_backward(1.0, cache)[0]


def mse_loss(pred: np.ndarray, target: np.ndarray, *, reduction: str = "mean",
             ) -> tuple[float | np.ndarray, np.ndarray]:
    """L = (ŷ − y)² per element, reduced: 'mean' -> Σ L / numel (a float; nan for no elements, as torch),
    'sum' -> Σ L (a float), 'none' -> L (pred's shape).   ∂(Σ L)/∂ŷ = 2(ŷ − y), over numel for 'mean'."""
    chk.float_array(pred, "pred", tuple(range(0, 33)))
    chk.float_array(target, "target", tuple(range(0, 33)))
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")
    if pred.shape != target.shape:
        raise ValueError(f"target: expected the shape of pred {pred.shape}, got {target.shape}")
    diff = pred - target.astype(pred.dtype, copy=False)
    grad = diff * pred.dtype.type(2.0)
    if reduction == "none":
        return diff * diff, grad
    if reduction == "sum":
        return float((diff * diff).sum()), grad
    if not diff.size:
        return float("nan"), grad
    return float((diff * diff).mean()), grad / pred.dtype.type(diff.size)
