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

from .. import nn
from ..data import normalize
from ..explain.equations import EQUATIONS, LAYER_RULES
from ..functional import conv_transpose2d, log_softmax
from .inputs import SIZE, InputError, target_class


def describe_layer(k: int, layer: nn.Module) -> str:
    """'3: Conv2d 6→16, 5×5' — the label the page prints above a layer's pictures."""
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


class Engine:
    """A Sequential model and the passes the page draws."""

    def __init__(self, model: nn.Sequential, source: str, meta: dict | None = None) -> None:
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"model: expected an nn.Sequential, got {type(model).__name__}")
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
        """uint8 (28, 28) → the model's (1, 1, 28, 28) input, normalised as in training."""
        return normalize(digit[None], dtype=self.dtype)

    def describe(self) -> dict:
        x = np.zeros((1, 1, SIZE, SIZE), self.dtype)
        layers = []
        with self.locked():
            h = x
            for k, layer in enumerate(self.model):
                h = layer(h)
                layers.append({"index": k, "type": type(layer).__name__, "label": describe_layer(k, layer),
                               "output_shape": list(h.shape[1:]),
                               "parameters": {n: list(p.shape) for n, p in layer.named_parameters()},
                               "equation": LAYER_RULES.get(type(layer).__name__)})
        return {"source": self.source, **self.meta, "input_shape": [1, SIZE, SIZE], "classes": int(h.shape[1]),
                "layers": layers, "equations": {"loss": EQUATIONS["loss"]}}

    def filters(self) -> np.ndarray:
        """A copy of the first Conv2d layer's weights (O, I, kh, kw)."""
        with self.locked():
            for layer in self.model:
                if isinstance(layer, nn.Conv2d):
                    return layer.weight.data.copy()
        raise InputError("model: has no Conv2d layer to show filters of")

    def forward(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Every layer's output for one input (1, 1, 28, 28), and the class probabilities."""
        outs, h = [], x
        with self._evaluating() as model:
            for layer in model:
                h = layer(h)
                outs.append(h)
        return outs, np.exp(log_softmax(outs[-1].astype(np.float64), 1)[0])[0]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)[1]

    def backward(self, x: np.ndarray, target: int | None = None) -> dict:
        """The backward pass of L = cross-entropy(model(x), target) (default: the predicted class), layer
        by layer through each layer's own backward.  Returns the loss, the probabilities, ∂L/∂x and for
        every layer k: ∂L/∂(output of k), ∂L/∂(input of k), its parameters' gradients, and the pieces of
        its rule (pooling: where the gradient goes; conv: K ⋆ᵀ ∂Z by channel and patch ⊙ ∂Z_ij)."""
        with self._evaluating() as model:
            return _backward(model, x, target)


def _backward(model: nn.Sequential, x: np.ndarray, target: int | None) -> dict:
    """Engine.backward's pass, on the model it holds locked."""
    layers = list(model)
    acts, h = [x], x
    for layer in layers:
        h = layer(h)
        acts.append(h)
    logits = h
    probs = np.exp(log_softmax(logits.astype(np.float64), 1)[0])[0]
    target = target_class(target, logits.shape[1])
    if target is None:
        target = int(probs.argmax())
    loss, d = nn.CrossEntropyLoss()(logits, np.array([target]))  # L and ∂L/∂z
    model.zero_grad()
    out = []
    for k in range(len(layers) - 1, -1, -1):
        layer = layers[k]
        entry = {"index": k, "type": type(layer).__name__, "label": describe_layer(k, layer),
                 "equation": LAYER_RULES.get(type(layer).__name__), "grad_output": d}
        pieces = _conv_pieces(layer, acts[k], d) if isinstance(layer, nn.Conv2d) else None
        d = layer.backward(d)  # the layer's own backward: ∂L/∂(its input), parameter gradients into .grad
        entry["grad_input"] = d
        entry["parameters"] = {n: {"value": p.data.copy(), "grad": p.grad.copy()}
                               for n, p in layer.named_parameters()}
        if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            layer(acts[k])  # the same forward again, then its backward of ones: where each ∂ goes
            entry["routing"] = layer.backward(np.ones_like(acts[k + 1]))
            key = "maxpool.unpool" if isinstance(layer, nn.MaxPool2d) else "avgpool.spread"
            entry["routing_equation"] = EQUATIONS[key]
        if pieces is not None:
            pieces["sum_check"] = float(np.abs(pieces.pop("patch_sum") - entry["parameters"]["weight"]["grad"]
                                               [pieces["channel"]]).max())
            entry["pieces"] = pieces
        out.append(entry)
    model.zero_grad()
    return {"class": target, "loss": float(loss), "probs": probs, "predicted": int(probs.argmax()),
            "input_grad": d, "layers": out[::-1]}


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
