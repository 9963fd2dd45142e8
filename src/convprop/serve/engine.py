"""What the page shows, computed by convprop's own layers: one digit's forward pass and its backward
pass for a chosen class.

The backward pass is the one `Sequential.backward` runs — every layer's own `backward`, last layer
first — walked here one layer at a time so that the gradient between every two layers can be shown.
One lock serialises everything that uses the model (its layers keep their forward caches): every
user, the passes here and the trainer's steps, holds `with engine.locked():`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .. import checkpoint, nn, steps
from ..data import normalize
from ..explain.equations import EQUATIONS, LAYER_RULES
from ..functional import conv_transpose2d, log_softmax
from .inputs import SIZE, InputError, target_class


def describe_layer(k: int | str, layer: nn.Module) -> str:
    """'3: Conv2d 6→16, 5×5' — the label the page prints above a layer's pictures (k: its index or dotted name)."""
    name = type(layer).__name__
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        extra = "".join(f", {a} {v}" for a, v in (("stride", layer.stride), ("pad", layer.padding)) if v not in (1, 0))
        return f"{k}: {name} {layer.in_channels}→{layer.out_channels}, {kh}×{kw}{extra}"
    if isinstance(layer, nn.Linear):
        return f"{k}: {name} {layer.in_features}→{layer.out_features}"
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        return f"{k}: {name} {layer.kernel_size}×{layer.kernel_size}"
    return f"{k}: {name}"


def describe_step(s: steps.Step) -> str:
    """A step's label: its layer's, or what a block's fork and join do."""
    if s.kind == "fork":
        return f"{s.path}: fork — x feeds the residual branch f and the shortcut"
    if s.kind == "join":
        return f"{s.path}: join — s = f(x) + shortcut(x)"
    return describe_layer(s.path, s.module)


def step_info(k: int, s: steps.Step) -> dict:
    """What the page shows of step k besides its arrays: index, type, label, block, branch, equation."""
    return {"index": k, "type": s.name, "label": describe_step(s), "block": s.block, "branch": s.branch,
            "equation": LAYER_RULES.get(s.name)}


def digit_spec() -> dict:
    """The input of a model trained on MNIST (checkpoint.input_spec): 28×28 grey digits, MNIST's mean and std."""
    return checkpoint.input_spec({"model": {"config": {"in_channels": 1}}})


def servable(spec: dict) -> str | None:
    """Why the page cannot serve a model of this input (checkpoint.input_spec), or None: it draws, prepares
    and explains one-channel 28×28 images."""
    if spec["channels"] != 1 or list(spec["size"]) != [SIZE, SIZE]:
        h, w = spec["size"]
        return (f"the model takes {spec['channels']}×{h}×{w} images; the page draws and explains 1×{SIZE}×{SIZE} "
                "ones (classify these with convprop predict or evaluate)")
    return None


class Engine:
    """A Sequential model and the passes the page draws; `spec` (checkpoint.input_spec) says how a drawing or
    an uploaded image becomes its input: the normalisation and the class names its training recorded."""

    def __init__(self, model: nn.Sequential, source: str, meta: dict | None = None, spec: dict | None = None) -> None:
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"model: expected an nn.Sequential, got {type(model).__name__}")
        self.spec = spec or digit_spec()
        refused = servable(self.spec)
        if refused:
            raise ValueError(f"{source}: {refused}")
        self.model, self.source, self.meta = model, source, dict(meta or {})
        self.model.eval()
        self.dtype = model.dtype.type  # np.float32 or np.float64
        self.waiting = 0  # threads queued for the lock (training yields to them between steps)
        self._lock, self._count = threading.Lock(), threading.Lock()

    @contextmanager
    def locked(self) -> Iterator[nn.Sequential]:
        """The model, to this thread alone until the block ends; `waiting` counts the threads queued."""
        with self._count:
            self.waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count:
                self.waiting -= 1
        try:
            yield self.model
        finally:
            self._lock.release()

    @contextmanager
    def _evaluating(self) -> Iterator[nn.Sequential]:
        """The model locked, in eval mode; its mode (training may be running) restored after."""
        with self.locked() as model:
            was = model.training
            model.eval()
            try:
                yield model
            finally:
                model.train(was)

    def input(self, digit: np.ndarray) -> np.ndarray:
        """uint8 (28, 28) → the model's (1, 1, 28, 28) input, normalised as in training (the spec's mean, std)."""
        return normalize(digit[None], self.spec["mean"], self.spec["std"], dtype=self.dtype)

    def describe(self) -> dict:
        x = np.zeros((1, 1, SIZE, SIZE), self.dtype)
        with self.locked() as model:
            walk, h = steps.forward(model, x)
        layers = [{**step_info(k, s), "output_shape": list(s.output.shape[1:]),
                   "parameters": {n: list(p.shape) for n, p in s.module.named_parameters()
                                  if s.kind == "layer"}} for k, s in enumerate(walk)]
        return {"source": self.source, **self.meta, "input_shape": [1, SIZE, SIZE], "classes": int(h.shape[1]),
                "class_names": list(self.spec["classes"]), "prepare": self.spec["prepare"],
                "layers": layers, "equations": {"loss": EQUATIONS["loss"]}}

    def filters(self) -> np.ndarray:
        """A copy of the first Conv2d layer's weights (O, I, kh, kw)."""
        with self.locked():
            for layer in self.model:
                if isinstance(layer, nn.Conv2d):
                    return layer.weight.data.copy()
        raise InputError("model: has no Conv2d layer to show filters of")

    def forward(self, x: np.ndarray) -> tuple[list[steps.Step], np.ndarray]:
        """Every step's output for one input (1, 1, 28, 28) — every layer, residual blocks opened with their
        fork and join (convprop.steps) — and the class probabilities."""
        with self._evaluating() as model:
            walk, logits = steps.forward(model, x)
        return walk, np.exp(log_softmax(logits.astype(np.float64), 1)[0])[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self._evaluating() as model:
            return np.exp(log_softmax(model(x).astype(np.float64), 1)[0])[0]

    def backward(self, x: np.ndarray, target: int | None = None) -> dict:
        """The backward pass of L = cross-entropy(model(x), target) (default: the runner-up class, the
        most likely after the predicted one: at p ≈ 1 the predicted class's gradients are ~1e-6, the runner-up's
        say what would make the digit more like it), step by step through each layer's own backward.
        Returns the loss, the probabilities, ∂L/∂x and for every step k (convprop.steps: layers, and a
        block's fork and join): ∂L/∂(output of k), ∂L/∂(input of k), its parameters' gradients, the pieces
        of its rule (pooling: where the gradient goes; conv: K ⋆ᵀ ∂Z by channel and patch ⊙ ∂Z_ij)."""
        with self._evaluating() as model:
            return _backward(model, x, target)


def default_class(probs: np.ndarray) -> int:
    """The class the page's backward pass shows unless one is chosen: the runner-up (the most likely after the
    predicted one), whose loss is large enough for gradients a learner can see; the only class of a 1-class model."""
    order = np.argsort(-probs, kind="stable")
    return int(order[1] if len(order) > 1 else order[0])


def _backward(model: nn.Sequential, x: np.ndarray, target: int | None) -> dict:
    """Engine.backward's pass, on the model it holds locked."""
    walk, logits = steps.forward(model, x)
    probs = np.exp(log_softmax(logits.astype(np.float64), 1)[0])[0]
    target = target_class(target, logits.shape[1])
    if target is None:
        target = default_class(probs)
    loss, d = nn.CrossEntropyLoss()(logits, np.array([target]))  # L and ∂L/∂z
    model.zero_grad()
    dx = steps.backward(model, walk, d)  # the model's own backward; every step's gradients recorded
    out = []
    for k, s in enumerate(walk):
        layer = s.module
        entry = {**step_info(k, s), "grad_output": s.grad_output, "grad_input": s.grad_input, "parameters": {}}
        if s.kind != "layer":
            entry["parts"] = s.parts
            entry["grad_parts"] = s.grad_parts
            out.append(entry)
            continue
        entry["parameters"] = {n: {"value": p.data.copy(), "grad": p.grad.copy()}
                               for n, p in layer.named_parameters()}
        if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            layer(s.input)  # the same forward again, then its backward of ones: where each ∂ goes
            entry["routing"] = layer.backward(np.ones_like(s.output))
            key = "maxpool.unpool" if isinstance(layer, nn.MaxPool2d) else "avgpool.spread"
            entry["routing_equation"] = EQUATIONS[key]
        pieces = _conv_pieces(layer, s.input, s.grad_output) if isinstance(layer, nn.Conv2d) else None
        if pieces is not None:
            pieces["sum_check"] = float(np.abs(pieces.pop("patch_sum") - entry["parameters"]["weight"]["grad"]
                                               [pieces["channel"]]).max())
            entry["pieces"] = pieces
        out.append(entry)
    model.zero_grad()
    return {"class": target, "loss": float(loss), "probs": probs, "predicted": int(probs.argmax()),
            "input_grad": dx, "layers": out}


def _conv_pieces(layer: nn.Conv2d, a: np.ndarray, dz: np.ndarray, top: int = 4) -> dict | None:
    """A conv layer's two sums of docs/math.md, on this input: ∂A = Σ_o ∂Z_o ⋆ᵀ K_o (the largest of the
    per-channel transposed convolutions, by convprop's conv_transpose2d) and, for the output channel o
    with the largest Σ|∂Z_o|, the patches A_patch_ij ⊙ ∂Z_ij of the `top` largest |∂Z_ij|, whose sum over all
    ij is ∂W_o.  None for grouped or dilated convolutions (the pictures assume neither)."""
    if layer.groups != 1 or layer.dilation not in (1, (1, 1)):
        return None
    (kh, kw), s, p = layer.kernel_size, _pair(layer.stride), _pair(layer.padding)
    K, Z = layer.weight.data, dz[0]  # (O, I, kh, kw), (O, OH, OW)
    h, w = a.shape[2:]
    extra = (h + 2 * p[0] - ((Z.shape[1] - 1) * s[0] + kh), w + 2 * p[1] - ((Z.shape[2] - 1) * s[1] + kw))
    energy = np.abs(Z).sum(axis=(1, 2))
    channels = [int(o) for o in np.argsort(-energy, kind="stable")[:top]]
    transposed = [{"channel": o, "dz": Z[o], "kernel": K[o],
                   "contribution": conv_transpose2d(dz[:, o:o + 1], K[o:o + 1], stride=s, padding=p,
                                                    output_padding=extra)[0][0]} for o in channels]
    ap = np.pad(a[0], ((0, 0), (p[0], p[0]), (p[1], p[1])))
    patches = np.lib.stride_tricks.sliding_window_view(ap, (kh, kw), axis=(1, 2))[:, ::s[0], ::s[1]]
    patches = patches[:, : Z.shape[1], : Z.shape[2]]  # (I, OH, OW, kh, kw)
    o = channels[0]
    flat = np.argsort(-np.abs(Z[o]).ravel(), kind="stable")[:top]
    products = []
    for f in flat:
        i, j = divmod(int(f), Z.shape[2])
        products.append({"position": [i, j], "dz": float(Z[o, i, j]), "patch": patches[:, i, j],
                         "product": patches[:, i, j] * Z[o, i, j]})
    return {"transposed": transposed, "transposed_equation": EQUATIONS["conv.dA"], "channel": o,
            "patches": products, "patch_equation": EQUATIONS["conv.dW"], "bias_equation": EQUATIONS["conv.dB"],
            "patch_sum": np.einsum("iyxab,yx->iab", patches, Z[o])}


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)
