"""Pictures of a training run (matplotlib PNGs): curves, first-layer filters, feature maps,
saliency through the hand-written backward pass, and the confusion matrix."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from . import nn
from ._extras import require
from .data import normalize
from .train import confusion_matrix, predict

NAMES = ("training-curves.png", "filters.png", "feature-maps.png", "saliency.png", "confusion-matrix.png")


def _plt():
    matplotlib = require("matplotlib", "train", "pictures need matplotlib", ValueError)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def training_curves(history: list[dict], path: str) -> str:
    """Loss and accuracy per epoch, train against validation."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    b.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    for key, label in (("val", "validation"), ("test", "test")):  # (runs before the validation split: test)
        if history and f"{key}_loss" in history[0]:
            a.plot(epochs, [h[f"{key}_loss"] for h in history], "o-", label=label)
            b.plot(epochs, [100 * h[f"{key}_acc"] for h in history], "o-", label=label)
    a.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss", yscale="log")
    b.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _first_conv(model: nn.Module) -> nn.Conv2d:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError("model: expected a network with a Conv2d layer, found none")


def filters(model: nn.Module, path: str) -> str:
    """The learned kernels of the first convolution, one tile per (output, input) channel pair."""
    plt = _plt()
    w = _first_conv(model).weight.data
    cout, cin = w.shape[:2]
    fig, axes = plt.subplots(cin, cout, figsize=(1.6 * cout, 1.8 * cin), squeeze=False)
    lim = float(np.abs(w).max()) or 1.0
    for i in range(cin):
        for o in range(cout):
            ax = axes[i][o]
            ax.imshow(w[o, i], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"filter {o}", fontsize=8)
            ax.axis("off")
    fig.suptitle("first-layer filters (red +, blue −)")
    fig.tight_layout()
    return _save(fig, path)


def feature_maps(model: nn.Sequential, image: np.ndarray, path: str, max_channels: int = 8) -> str:
    """The input and the output of every conv and pooling layer for one image (1, C, H, W)."""
    plt = _plt()
    model.eval()
    rows = [("input", image[0])]
    h = image
    for k, layer in enumerate(model):
        h = layer(h)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            rows.append((f"{k}: {type(layer).__name__}", h[0]))
    cols = min(max_channels, max(r[1].shape[0] for r in rows))
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.5 * cols, 1.6 * len(rows)), squeeze=False)
    for r, (name, maps) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < maps.shape[0]:
                ax.imshow(maps[c], cmap="viridis")
        axes[r][0].set_title(name, fontsize=8, loc="left")
    fig.suptitle("feature maps of one test image")
    fig.tight_layout()
    return _save(fig, path)


def saliency(model: nn.Sequential, images: np.ndarray, labels: np.ndarray, path: str) -> np.ndarray:
    """|∂L/∂x| for each image, through the hand-written backward pass, input gradient included.
    Returns the saliency maps (N, H, W) and writes image/saliency pairs."""
    plt = _plt()
    model.eval()
    loss_fn = nn.CrossEntropyLoss()
    model.zero_grad()
    _, dlogits = loss_fn(model(images), labels)
    dx = model.backward(dlogits * len(labels), input_grad=True)  # per-image ∂L_n/∂x_n
    model.zero_grad()
    maps = np.abs(dx).max(axis=1)
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 3.6), squeeze=False)
    for i in range(n):
        axes[0][i].imshow(images[i, 0], cmap="gray")
        axes[0][i].set_title(f"label {labels[i]}", fontsize=8)
        axes[1][i].imshow(maps[i], cmap="hot")
        for r in range(2):
            axes[r][i].axis("off")
    fig.suptitle("saliency |∂L/∂x| (bottom) of test images (top)")
    fig.tight_layout()
    _save(fig, path)
    return maps


def confusion(matrix: np.ndarray, path: str) -> str:
    plt = _plt()
    k = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(6, 5.5))
    im = ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(k), yticks=range(k),
           title=f"confusion matrix — accuracy {np.trace(matrix) / max(matrix.sum(), 1):.2%}")
    fig.colorbar(im)
    fig.tight_layout()
    return _save(fig, path)


def plot_run(run_dir: str, model: nn.Sequential, history: list[dict], test_x: np.ndarray,
             test_y: np.ndarray) -> list[str]:
    """All five pictures of a run into run_dir; returns their paths."""
    paths = [os.path.join(run_dir, name) for name in NAMES]
    training_curves(history, paths[0])
    filters(model, paths[1])
    feature_maps(model, test_x[:1], paths[2])
    probs = predict(model, test_x)
    predicted = probs.argmax(axis=1)
    # saliency of the true class where the model has it (a model of fewer classes than the data may not)
    fits = np.flatnonzero(test_y < probs.shape[1])[:6]
    if len(fits):
        saliency(model, test_x[fits], test_y[fits], paths[3])
    else:
        saliency(model, test_x[:6], predicted[:6], paths[3])
    confusion(confusion_matrix(test_y, predicted, int(max(test_y.max(), predicted.max())) + 1), paths[4])
    return paths


def pictures(out: str, model, history, test_images, test_labels, log: Callable[[str], None] = print,
             mean=None, std=None) -> list[str]:
    """The five pictures of a run into `out` from its raw test images (none, with a note, without matplotlib)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("(matplotlib is not installed: no pictures; pip install 'convprop[train]')")
        return []
    paths = plot_run(out, model, history, normalize(test_images, mean, std, dtype=model.dtype), test_labels)
    log("pictures:   " + "\n            ".join(paths))
    return paths
