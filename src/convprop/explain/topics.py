"""The topics of `convprop explain TOPIC`: every equation of docs/math.md, worked on small numbers and checked.

Each topic builds an `Explanation`: steps (an equation and the arrays it produces) and checks (the
hand-written gradient against central differences, against the library's fast kernels, or against a
second route to the same value).  Convolution and pooling compute their steps with
functional/reference.py — the sums as plain loops — so the numbers shown are the equations' own.
render.py turns an explanation into 80-column text or markdown; tests assert on the arrays, not the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from ..functional import reference as R
from ..gradcheck import numeric_gradient
from .equations import EQUATIONS, LAYER_RULES

TOPICS = ("conv", "transposed-conv", "maxpool", "avgpool", "linear", "network", "residual")
MAX_SIZE = 16  # --size, --kernel, --stride, --padding: every example prints in full and checks in a second
RTOL = 1e-6  # a check agrees within RTOL × max(1, the largest value compared)


@dataclass
class Step:
    title: str
    equation: str
    arrays: dict[str, np.ndarray]
    note: str = ""


@dataclass
class Check:
    """analytic vs reference; `agree=False` marks a check that must show a *difference* (a wrong rule)."""

    name: str
    analytic: np.ndarray
    reference: np.ndarray
    method: str = "central differences"
    agree: bool = True

    @property
    def max_error(self) -> float:
        return float(np.abs(np.asarray(self.analytic, float) - np.asarray(self.reference, float)).max())

    @property
    def scale(self) -> float:
        """The largest magnitude compared: float round-off grows with it."""
        return float(max(np.abs(np.asarray(a, float)).max() for a in (self.analytic, self.reference)))

    @property
    def tolerance(self) -> float:
        return RTOL * max(1.0, self.scale)

    @property
    def only_zeros(self) -> bool:
        """Both sides (near) zero: agreement would prove nothing (a saturated or dead network)."""
        return self.agree and self.scale < RTOL

    @property
    def ok(self) -> bool:
        return not self.only_zeros and (self.max_error < self.tolerance) == self.agree

    @property
    def verdict(self) -> str:
        if self.only_zeros:
            return "MISMATCH: compares only zeros, proves nothing"
        if not self.ok:
            return "MISMATCH"
        return "agrees" if self.agree else "differs, as it must"


@dataclass
class Explanation:
    topic: str
    title: str
    intro: str
    steps: list[Step] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _ints(rng, low, high, shape, nonzero=False) -> np.ndarray:
    a = rng.integers(low, high, size=shape).astype(np.float64)
    if nonzero:
        a[a == 0] = 1.0
    return a

def _fast_checks(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[Check]:
    """The library's fast kernels (tiles, layouts, threads) against the plain sums shown."""
    return [Check(f"{name} (convprop.functional)", fast, ref, "the plain sums") for name, (fast, ref) in pairs.items()]


# --------------------------------------------------------------------------- conv
FLIP_NOTE = ("Convention: ∂A is the transposed convolution of ∂Z with the kernel K itself (every ∂Z_ij·K "
             "scattered back onto its window), which is the same as a full cross-correlation of the "
             "zero-inserted, padded ∂Z with the flipped kernel K^F. One flip, not two.")


def explain_conv(size: int = 4, kernel: int = 2, stride: int = 1, padding: int = 0, seed: int = 0) -> Explanation:
    rng = np.random.default_rng(seed)
    for _ in range(100):  # a kernel that its 180° rotation changes, so a wrong flip shows
        K = _ints(rng, -1, 3, (1, 1, kernel, kernel))
        if kernel == 1 or not np.array_equal(K, K[..., ::-1, ::-1]):
            break
    A = _ints(rng, 0, 4, (1, 1, size, size))
    B = np.array([1.0])
    s2, p2 = (stride, stride), (padding, padding)
    Z = R.conv2d(A, K, B, s2, p2)  # the plain sums
    dZ = _ints(rng, -1, 2, Z.shape, nonzero=True)
    while dZ.size > 1 and dZ.sum() == 0:  # ∂B = Σ ∂Z: a zero would check nothing
        dZ = _ints(rng, -1, 2, Z.shape, nonzero=True)
    dA, dK, dB = R.conv2d_backward(dZ, A, K, s2, p2)
    fast_Z, cache = F.conv2d(A, K, B, stride=stride, padding=padding)  # the library's kernels
    fast_dA, fast_dK, fast_dB = F.conv2d_backward(dZ, cache)
    oh, s, p, k = Z.shape[2], stride, padding, kernel
    e = Explanation("conv", "Backprop through a convolutional layer",
                    f"One channel in and out: A^(l-1) is {size}×{size}, the kernel K is {k}×{k}, stride {s}, "
                    f"padding {p}. The upstream gradient ∂Z = ∂L/∂Z is given. " + FLIP_NOTE)
    Ap = np.pad(A[0, 0], p)
    e.steps.append(Step("Forward", EQUATIONS["conv.forward"],
                        {"A^(l-1)" + (" padded" if p else ""): Ap, "K": K, "B": B, "Z": Z}))
    e.steps.append(Step("Upstream gradient", "∂Z = ∂L/∂Z, the same shape as Z", {"∂Z": dZ}))
    # ∂A, route 1: full cross-correlation of the zero-inserted, padded ∂Z with the flipped kernel
    KF = K[..., ::-1, ::-1].copy()
    ins = np.zeros((1, 1, (oh - 1) * s + 1, (oh - 1) * s + 1))
    ins[..., ::s, ::s] = dZ
    padded = np.pad(ins, ((0, 0), (0, 0), (k - 1, k - 1), (k - 1, k - 1)))
    full, _ = F.conv2d(padded, KF)
    dAp = np.zeros((1, 1, size + 2 * p, size + 2 * p))
    dAp[..., : full.shape[2], : full.shape[3]] = full
    dA_corr = dAp[..., p: p + size, p: p + size]
    arrays = {"K^F (flipped)": KF}
    if s > 1:
        arrays[f"∂Z zero-inserted (s−1 = {s - 1})"] = ins
    arrays[f"… padded by k−1 = {k - 1}"] = padded
    arrays["full corr. with K^F"] = full
    e.steps.append(Step("∂A^(l-1): the flipped kernel, correlated over the padded ∂Z",
                        "∂A = pad(∂Z) ⋆ K^F   (then crop the forward padding p)", arrays))
    # ∂A, route 2: transposed convolution with the unflipped K = what conv2d_backward computes
    e.steps.append(Step("∂A^(l-1): the same as a transposed convolution with K", EQUATIONS["conv.dA"],
                        {"∂A (corr. route)": dA_corr, "∂A (K ⋆ᵀ ∂Z)": dA},
                        "In a layer below, ∂Z^(l-1) = ∂A ⊙ act'(Z^(l-1))."))
    patches = {}
    for i in range(oh):
        for j in range(oh):
            patches[f"A_patch{i}{j}·∂Z{i}{j}"] = Ap[i * s: i * s + k, j * s: j * s + k] * dZ[0, 0, i, j]
    patches["Σ = ∂W"] = dK
    e.steps.append(Step("∂W: every patch of A^(l-1) times its ∂Z_ij, summed",
                        EQUATIONS["conv.dW"], patches))
    e.steps.append(Step("∂B: the sum of ∂Z over positions", EQUATIONS["conv.dB"], {"∂B": dB}))
    wrong, _ = F.conv_transpose2d(dZ, KF, stride=s, padding=p, output_padding=size + 2 * p - ((oh - 1) * s + k))
    e.steps.append(Step("vxnuaj's \"Backprop for CNNs\" read literally: flip K *and* transpose",
                        "(K^F) ⋆ᵀ ∂Z   — flips twice",
                        {"(K^F) ⋆ᵀ ∂Z": wrong, "true ∂A": dA}, "This differs from ∂A: the double flip is wrong."))
    nA, nK, nB = numeric_gradient(lambda a, w, b: F.conv2d(a, w, b, stride=s, padding=p)[0], [A, K, B], dZ)
    e.checks += [Check("∂A", dA, nA), Check("∂W", dK, nK), Check("∂B", dB, nB),
                 *_fast_checks(dict(Z=(fast_Z, Z), **{"∂A": (fast_dA, dA), "∂W": (fast_dK, dK), "∂B": (fast_dB, dB)})),
                 Check("∂A: correlation with K^F = K ⋆ᵀ ∂Z", dA_corr, dA, "the other route"),
                 Check("∂A vs flip + transpose (must differ)", wrong, dA, "the double flip", agree=False)]
    return e


# --------------------------------------------------------------------------- transposed conv
def explain_transposed_conv(size: int = 3, kernel: int = 2, stride: int = 2, padding: int = 0,
                            seed: int = 0) -> Explanation:
    rng = np.random.default_rng(seed)
    X, K = _ints(rng, 0, 4, (1, 1, size, size)), _ints(rng, -1, 3, (1, 1, kernel, kernel), nonzero=True)
    fast_Y, cache = F.conv_transpose2d(X, K, stride=stride, padding=padding)
    s2, p2 = (stride, stride), (padding, padding)
    Y = R.conv2d_backward(X, np.zeros(fast_Y.shape), K, s2, p2)[0]  # Y = K ⋆ᵀ X: a convolution's ∂A, of X
    dY = _ints(rng, -1, 2, Y.shape, nonzero=True)
    dX = R.conv2d(dY, K, None, s2, p2)[:, :, :size, :size]  # ∂X = K * ∂Y
    dK = R.conv2d_backward(X, dY, K, s2, p2)[1]  # ∂K = Σ ∂Y_patch ⊙ X
    fast_dX, fast_dK, _ = F.conv_transpose2d_backward(dY, cache)
    s, k, p = stride, kernel, padding
    e = Explanation("transposed-conv", "Backprop through a transposed convolution",
                    f"X is {size}×{size}, K is {k}×{k}, stride {s}, padding {p}. The forward pass *is* a "
                    "convolution's backward-data: every X_ij·K is placed at (i·s, j·s) and overlaps sum. Its "
                    "backward is therefore a plain convolution.")
    full = (size - 1) * s + k
    pieces = {}
    for i in range(size):
        for j in range(size):
            canvas = np.zeros((full, full))
            canvas[i * s: i * s + k, j * s: j * s + k] = X[0, 0, i, j] * K[0, 0]
            pieces[f"X{i}{j}·K"] = canvas
    pieces["Σ, cropped by p = Y"] = Y
    e.steps.append(Step("Forward", "Y = K ⋆ᵀ X = Σ_ij X_ij·K placed at (i·s, j·s)", {"X": X, "K": K, **pieces}))
    e.steps.append(Step("Upstream gradient", "∂Y = ∂L/∂Y", {"∂Y": dY}))
    e.steps.append(Step("∂X: the convolution of ∂Y with K", "∂X_ij = Σ_ab K_ab · ∂Y_(i·s+a, j·s+b)", {"∂X": dX}))
    dYp = np.pad(dY[0, 0], p)
    parts = {f"∂Y_patch{i}{j}·X{i}{j}": dYp[i * s: i * s + k, j * s: j * s + k] * X[0, 0, i, j]
             for i in range(size) for j in range(size)}
    e.steps.append(Step("∂K: every patch of ∂Y times the X_ij that made it", "∂K = Σ_ij ∂Y_patch_ij ⊙ X_ij",
                        {**parts, "Σ = ∂K": dK}))
    nX, nK = numeric_gradient(lambda x, w: F.conv_transpose2d(x, w, stride=s, padding=p)[0], [X, K], dY)
    e.checks += [Check("∂X", dX, nX), Check("∂K", dK, nK),
                 *_fast_checks({"Y": (fast_Y, Y), "∂X": (fast_dX, dX), "∂K": (fast_dK, dK)})]
    return e


# --------------------------------------------------------------------------- pooling
def explain_maxpool(size: int = 4, kernel: int = 2, stride: int = 2, padding: int = 0, seed: int = 0) -> Explanation:
    rng = np.random.default_rng(seed)
    values = np.array([v for v in range(-size * size, size * size + 1) if v != 0], dtype=np.float64)
    Zp = rng.permutation(values)[: size * size].reshape(1, 1, size, size)  # distinct, no kinks at 0
    A, relu_cache = F.relu(Zp)
    k2, s2, p2 = (kernel, kernel), (stride, stride), (padding, padding)
    P, argmax = R.max_pool2d(A, k2, s2, p2)
    fast_P, cache = F.max_pool2d(A, kernel, stride=stride, padding=padding)
    dZ = _ints(rng, 1, 4, P.shape)
    unpooled = R.max_pool2d_backward(dZ, A.shape, argmax)
    act = (Zp > 0).astype(np.float64)
    dZp = F.relu_backward(unpooled, relu_cache)
    e = Explanation("maxpool", "Backprop through max pooling",
                    f"Z^(l-1) is {size}×{size}, A^(l-1) = ReLU(Z^(l-1)) is pooled {kernel}×{kernel} with stride "
                    f"{stride}. The forward pass caches where each maximum came from; the backward pass puts "
                    "each gradient back there (max-unpooling into a zero mask), then multiplies by act'.")
    e.steps.append(Step("Forward", "A^(l-1) = ReLU(Z^(l-1)),  Z^l_ij = max of window ij of A^(l-1)",
                        {"Z^(l-1)": Zp, "A^(l-1)": A, "Z^l": P}))
    e.steps.append(Step("Cached argmax indices", "flat index y·W + x of each window's maximum (torch's convention)",
                        {"indices": argmax[..., 0] * size + argmax[..., 1]}))
    e.steps.append(Step("Max-unpool ∂Z^l into a zero mask", EQUATIONS["maxpool.unpool"],
                        {"∂Z^l": dZ, "zero mask": np.zeros_like(A), "max-unpooled": unpooled},
                        "Where windows overlap, two gradients landing on one cell add up."))
    e.steps.append(Step("Times the activation's derivative", EQUATIONS["maxpool.act"],
                        {"act'(Z^(l-1))": act, "∂Z^(l-1)": dZp}))
    n = numeric_gradient(lambda z: F.max_pool2d(F.relu(z)[0], kernel, stride=stride, padding=padding)[0], [Zp], dZ)
    e.checks += [Check("∂Z^(l-1)", dZp, n[0]),
                 *_fast_checks({"Z^l": (fast_P, P), "max-unpooled": (F.max_pool2d_backward(dZ, cache), unpooled)}),
                 Check("indices (convprop.functional)", cache.indices, argmax[..., 0] * size + argmax[..., 1],
                       "the plain sums")]
    return e


def explain_avgpool(size: int = 4, kernel: int = 2, stride: int = 1, padding: int = 0, seed: int = 0) -> Explanation:
    rng = np.random.default_rng(seed)
    A = _ints(rng, 0, 5, (1, 1, size, size))
    k2, s2, p2 = (kernel, kernel), (stride, stride), (padding, padding)
    Z = R.avg_pool2d(A, k2, s2, p2)
    fast_Z, cache = F.avg_pool2d(A, kernel, stride=stride, padding=padding)
    dZ = _ints(rng, 1, 5, Z.shape) * kernel * kernel / 2  # so that ∂Z / r_size stays readable
    dA = R.avg_pool2d_backward(dZ, A, k2, s2, p2)
    share = dZ / cache.divisor
    oh = Z.shape[2]
    full = size + 2 * padding
    spreads, counts = {}, np.zeros((full, full))
    for i in range(oh):
        for j in range(oh):
            canvas = np.zeros((full, full))
            canvas[i * stride: i * stride + kernel, j * stride: j * stride + kernel] = share[0, 0, i, j]
            counts[i * stride: i * stride + kernel, j * stride: j * stride + kernel] += 1
            spreads[f"window {i}{j}"] = canvas[padding: padding + size, padding: padding + size]
    e = Explanation("avgpool", "Backprop through average pooling",
                    f"A is {size}×{size}, pooled {kernel}×{kernel} with stride {stride}"
                    f"{' (windows overlap)' if stride < kernel else ''}. Each ∂Z_ij is divided by the window "
                    "size r and spread evenly over its window; where windows overlap the spreads add up.")
    e.steps.append(Step("Forward", "Z_ij = Σ window ij / r", {"A": A, "Z": Z}))
    e.steps.append(Step("Each gradient divided by the window size", EQUATIONS["avgpool.divide"],
                        {"∂Z": dZ, "∂Z / r": share}))
    e.steps.append(Step("Spread over every window", EQUATIONS["avgpool.spread"], spreads))
    e.steps.append(Step("Summed where windows overlap", EQUATIONS["avgpool.sum"],
                        {"windows per cell": counts[padding: padding + size, padding: padding + size], "∂A": dA}))
    n = numeric_gradient(lambda a: F.avg_pool2d(a, kernel, stride=stride, padding=padding)[0], [A], dZ)
    e.checks += [Check("∂A", dA, n[0]), *_fast_checks({"Z": (fast_Z, Z), "∂A": (F.avg_pool2d_backward(dZ, cache), dA)})]
    return e


# --------------------------------------------------------------------------- linear
def explain_linear(size: int = 4, seed: int = 0) -> Explanation:
    rng = np.random.default_rng(seed)
    hidden, out = 3, 2
    for _ in range(100):  # some unit of layer l active (else every gradient is 0), none at ReLU's kink
        A0 = _ints(rng, -2, 3, (1, size))
        W1, b1 = _ints(rng, -1, 2, (hidden, size), nonzero=True), _ints(rng, -1, 2, (hidden,))
        W2 = _ints(rng, -1, 2, (out, hidden), nonzero=True)
        Z1, c1 = F.linear(A0, W1, b1)
        A1, r1 = F.relu(Z1)
        Z2, c2 = F.linear(A1, W2)
        dZ2 = _ints(rng, -2, 3, Z2.shape, nonzero=True)
        dA1, dW2, _ = F.linear_backward(dZ2, c2)
        dZ1 = F.relu_backward(dA1, r1)
        if dZ1.any() and Z1.all():
            break
    _, dW1, db1 = F.linear_backward(dZ1, c1)
    e = Explanation("linear", "Backprop through fully connected layers",
                    f"Layer l: Z^l = W^l A^(l-1) + b^l, A^l = ReLU(Z^l); layer l+1: Z^(l+1) = W^(l+1) A^l. "
                    f"Sizes {size} → {hidden} → {out}; vectors are shown as rows (a batch of one).")
    e.steps.append(Step("Forward", "Z^l = W^l A^(l-1) + b^l,  A^l = ReLU(Z^l),  Z^(l+1) = W^(l+1) A^l",
                        {"A^(l-1)": A0, "W^l": W1, "b^l": b1, "Z^l": Z1, "A^l": A1, "W^(l+1)": W2, "Z^(l+1)": Z2}))
    e.steps.append(Step("Back through W^(l+1)", "(W^(l+1))ᵀ ∂Z^(l+1)", {"∂Z^(l+1)": dZ2, "(W^(l+1))ᵀ ∂Z^(l+1)": dA1}))
    e.steps.append(Step("Times act'(Z^l)", "∂Z^l = (W^(l+1))ᵀ ∂Z^(l+1) ⊙ act'(Z^l)",
                        {"act'(Z^l)": (Z1 > 0).astype(float), "∂Z^l": dZ1}))
    e.steps.append(Step("The weights' gradients", "∂W^l = ∂Z^l (A^(l-1))ᵀ,  ∂b^l = ∂Z^l,  ∂W^(l+1) = ∂Z^(l+1) (A^l)ᵀ",
                        {"∂W^l": dW1, "∂b^l": db1, "∂W^(l+1)": dW2}))
    nZ1 = numeric_gradient(lambda z: F.linear(F.relu(z)[0], W2)[0], [Z1.copy()], dZ2)[0]
    nW1, nb1 = numeric_gradient(lambda w, b: F.linear(F.relu(F.linear(A0, w, b)[0])[0], W2)[0], [W1, b1], dZ2)
    e.checks += [Check("∂Z^l", dZ1, nZ1), Check("∂W^l", dW1, nW1), Check("∂b^l", db1, nb1)]
    return e


# --------------------------------------------------------------------------- network
def explain_network(size: int = 6, seed: int = 0) -> Explanation:
    from .. import nn

    rng = np.random.default_rng(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(2 * ((size - 2) // 2) ** 2, 3)).to(np.float64)
    for _ in range(100):
        for p in net.parameters():  # weights ~ N(0, 1/fan-in): logits stay O(1) at any size, softmax never saturates
            fan_in = int(np.prod(p.data.shape[1:])) if p.data.ndim > 1 else 1
            p.data[...] = np.round(rng.standard_normal(p.data.shape) / np.sqrt(fan_in), 2)
        x = np.round(rng.standard_normal((1, 1, size, size)), 2)
        z = net[0](x)
        if (z > 0).any() and np.abs(z).min() > 0.01:  # some unit alive (else every gradient is 0), none at a kink
            break
    target = np.array([int(rng.integers(0, 3))])
    loss_fn = nn.CrossEntropyLoss()
    e = Explanation("network", "One backward pass through a tiny network, layer by layer",
                    f"conv 3×3 (1→2 channels) → ReLU → max-pool 2×2 → flatten → linear → softmax "
                    f"cross-entropy with target class {target[0]}, on one {size}×{size} image. Each layer's "
                    "backward takes ∂L/∂(its output) and returns ∂L/∂(its input).")
    acts = {"x": x}
    h = x
    for k, layer in enumerate(net):
        h = layer(h)
        acts[f"{k}: {type(layer).__name__}"] = h
    loss, dlogits = loss_fn(h, target)
    e.steps.append(Step("Forward, every layer caching what its backward needs", "h_(k+1) = layer_k(h_k)",
                        {name: (a[0] if a.ndim == 4 else a) for name, a in acts.items()}))
    e.steps.append(Step("The loss and its gradient", EQUATIONS["loss"],
                        {"logits z": h, "L": np.array([loss]), "∂L/∂z": dlogits}))
    d = dlogits
    for k in range(len(net) - 1, -1, -1):
        layer = net[k]
        d = layer.backward(d)
        arrays = {f"∂L/∂(input of {k})": d[0] if d.ndim == 4 else d}
        for name, p in layer.named_parameters():
            arrays[f"∂{name}"] = p.grad[:, 0] if p.grad.ndim == 4 else p.grad
        e.steps.append(Step(f"Backward through layer {k}: {type(layer).__name__}", LAYER_RULES[type(layer).__name__],
                            arrays))

    def loss_of(*_arrays):
        return np.array(loss_fn(net(x), target)[0])

    params = [p for _, p in net.named_parameters()]
    numeric = numeric_gradient(loss_of, [p.data for p in params] + [x], np.array(1.0))
    for (name, p), n in zip(net.named_parameters(), numeric):
        e.checks.append(Check(f"∂L/∂{name}", p.grad, n))
    e.checks.append(Check("∂L/∂x", d, numeric[-1]))
    return e


# --------------------------------------------------------------------------- residual
def explain_residual(size: int = 4, kernel: int = 3, seed: int = 0, **_) -> Explanation:
    """The fork and the join of a residual block y = ReLU(K * x + x), on small integers."""
    rng = np.random.default_rng(seed)
    x = _ints(rng, -2, 3, (1, 1, size, size))
    K = _ints(rng, -1, 2, (1, 1, kernel, kernel), nonzero=True)
    f, conv_cache = F.conv2d(x, K, padding="same")  # the branch f(x) = K * x, as large as x
    s = f + x  # the join
    y, relu_cache = F.relu(s)
    dy = _ints(rng, -2, 3, y.shape, nonzero=True)
    dy[s == 0] = 0  # no ∂ into ReLU's kink, where central differences would be one-sided
    ds = F.relu_backward(dy, relu_cache)
    dx_f, dK, _ = F.conv2d_backward(ds, conv_cache)  # the branch's ∂x and ∂K, from ∂f = ∂s
    dx = dx_f + ds  # the fork: x fed the branch and the shortcut, so their ∂x add
    e = Explanation("residual", "Forks and joins: backprop through a residual block",
                    f"y = ReLU(s), s = f(x) + x with f(x) = K * x ({kernel}×{kernel}, 'same' padding): the "
                    "input x forks into the convolution and the identity shortcut, and the two join in a sum. "
                    "At a join (s = a + b) the gradient goes to both branches unchanged: ∂a = ∂b = ∂s. At a fork "
                    "(x used twice) the gradients of the uses add: ∂x = ∂x|_f + ∂x|_shortcut.")
    e.steps.append(Step("Forward: fork, branch, join", "f = K * x,   s = f + x,   y = ReLU(s)",
                        {"x": x, "K": K, "f = K * x": f, "s = f + x": s, "y": y}))
    e.steps.append(Step("Back through the activation", "∂s = ∂y ⊙ [s > 0]", {"∂y": dy, "[s > 0]": (s > 0) * 1.0,
                                                                            "∂s": ds}))
    e.steps.append(Step("The join hands ∂s to both branches", "∂f = ∂s,   ∂(shortcut) = ∂s",
                        {"∂f": ds, "∂(shortcut)": ds}))
    e.steps.append(Step("Back through the branch (a convolution)", "∂x|_f = K ⋆ᵀ ∂f,   ∂K = Σ_ij x_patch_ij ⊙ ∂f_ij",
                        {"∂x|_f": dx_f, "∂K": dK}))
    e.steps.append(Step("The fork adds the gradients of x's two uses", "∂x = ∂x|_f + ∂x|_shortcut = K ⋆ᵀ ∂s + ∂s",
                        {"∂x|_f": dx_f, "∂x|_shortcut": ds, "∂x": dx},
                        note="The identity's Jacobian is I, so the shortcut passes ∂s through untouched: the gradient "
                             "reaches x even where the branch's weights are small - why deep ResNets train."))

    def block(a, k):
        return F.relu(F.conv2d(a, k, padding="same")[0] + a)[0]

    n_x, n_K = numeric_gradient(block, [x.copy(), K.copy()], dy)
    e.checks += [Check("∂x", dx, n_x), Check("∂K", dK, n_K),
                 Check("∂x|_f alone (the fork's sum forgotten)", dx_f, n_x, agree=False)]
    return e


BUILDERS = {"conv": explain_conv, "transposed-conv": explain_transposed_conv, "maxpool": explain_maxpool,
            "avgpool": explain_avgpool, "linear": explain_linear, "network": explain_network,
            "residual": explain_residual}


OPTIONS = {topic: ("size", "kernel", "stride", "padding", "seed") for topic in TOPICS}
OPTIONS["linear"] = OPTIONS["network"] = ("size", "seed")  # fixed layers: no kernel, stride or padding


def accepted(topic: str, options: dict) -> dict:
    """The options (not None) that `topic` takes."""
    return {k: v for k, v in options.items() if v is not None and k in OPTIONS[topic]}


def explain(topic: str, **options) -> Explanation:
    """The explanation of `topic` for the given options (None: the topic's default).  An option the
    topic does not take, or a size beyond MAX_SIZE, is a ValueError naming the command-line flag."""
    if topic not in BUILDERS:
        raise ValueError(f"topic: expected one of {', '.join(TOPICS)}, got {topic!r}")
    for name, value in options.items():
        if value is None:
            continue
        if name not in OPTIONS[topic]:
            raise ValueError(f"--{name}: the {topic} topic does not use it (it takes "
                             f"{', '.join('--' + o for o in OPTIONS[topic])})")
        if name != "seed" and not (name == "padding" and value == 0) and not 1 <= value <= MAX_SIZE:
            low = 0 if name == "padding" else 1
            raise ValueError(f"--{name}: expected {low} to {MAX_SIZE} (the examples print every value and are "
                             f"checked one by one), got {value}")
    return BUILDERS[topic](**accepted(topic, options))
