"""Pictures of a training run (matplotlib PNGs): curves, first-layer filters, feature maps,
saliency through the hand-written backward pass, and the confusion matrix."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from . import nn, steps
from ._extras import install, require
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
    for key, label in (("val", "validation"), ("test", "test")):  # (epochs before the validation split: test)
        rows = [h for h in history if f"{key}_loss" in h]  # (a resumed older run has both kinds of row)
        if rows:
            a.plot([h["epoch"] for h in rows], [h[f"{key}_loss"] for h in rows], "o-", label=label)
            b.plot([h["epoch"] for h in rows], [100 * h[f"{key}_acc"] for h in rows], "o-", label=label)
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


PER_ROW = 8  # tiles per row of the filters and feature maps: ≤ 1,000 px wide at 100 dpi


def filters(model: nn.Module, path: str) -> str:
    """The learned kernels of the first convolution, one tile per (output, input) channel pair, in rows of 8."""
    plt = _plt()
    w = _first_conv(model).weight.data
    cout, cin = w.shape[:2]
    tiles = [(o, i) for o in range(cout) for i in range(cin)]
    cols = min(PER_ROW, len(tiles))
    rows = -(-len(tiles) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.3 * rows + 0.5), squeeze=False)
    lim = float(np.abs(w).max()) or 1.0
    for ax in axes.ravel():
        ax.axis("off")
    for (o, i), ax in zip(tiles, axes.ravel()):
        ax.imshow(w[o, i], cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"filter {o}" + (f", in {i}" if cin > 1 else ""), fontsize=8)
    fig.suptitle(f"first-layer filters {cout}×{cin}×{w.shape[2]}×{w.shape[3]} (red +, blue −, ±{lim:.2g})")
    fig.tight_layout()
    return _save(fig, path)


PICTURED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def feature_rows(model: nn.Module, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """What feature_maps draws of one image (1, C, H, W), as (title, maps (C, H, W)): the input, the output of
    every conv and pooling layer outside residual blocks, and of every residual block (convprop.steps: the
    block's last layer, after its join) — at least one row per block, however deep the network.  Outputs of
    1×1 (a global pooling) are left out: one pixel per map."""
    model.eval()
    walk, _ = steps.forward(model, image)
    rows = [("input", image[0])]
    for k, s in enumerate(walk):
        last_of_block = s.block is not None and (k + 1 == len(walk) or walk[k + 1].block != s.block)
        pictured = s.kind == "layer" and s.block is None and isinstance(s.module, PICTURED)
        if (pictured or last_of_block) and s.output.ndim == 4 and s.output.shape[2] * s.output.shape[3] > 1:
            what = f"block {s.block}: relu(f(x) + shortcut(x))" if last_of_block else f"{s.path}: {s.name}"
            rows.append((f"{what} → {'×'.join(map(str, s.output.shape[1:]))}", s.output[0]))
    return rows


def feature_maps(model: nn.Sequential, image: np.ndarray, path: str, max_channels: int = PER_ROW) -> str:
    """The first max_channels maps of each row of feature_rows, one row each."""
    plt = _plt()
    rows = feature_rows(model, image)
    cols = min(max_channels, max(r[1].shape[0] for r in rows))
    height = 1.45 * len(rows) + 0.5
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.2 * cols, height), squeeze=False)
    for r, (name, maps) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < maps.shape[0]:
                ax.imshow(maps[c], cmap="viridis")
        axes[r][0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(f"feature maps of one test image (the first {cols} channels of each)")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / height, wspace=0.06, hspace=0.3)
    return _save(fig, path)


def smoothgrad(model: nn.Sequential, images: np.ndarray, classes: np.ndarray, samples: int = 32,
               noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """SmoothGrad (Smilkov et al., 2017): ∂z_c/∂x, the gradient of each image's class logit z_c through the
    hand-written backward pass, averaged over `samples` noisy copies x + ε, ε ~ N(0, (noise·(max x − min x))²).
    One gradient is speckled by the ReLUs' and max-pools' switching; the mean is smooth.  The logit rather than
    the loss: at p ≈ 1 the loss's gradient (p − 1)·∂z_c/∂x is ~0 for an image the model is sure of.
    images (N, C, H, W) → (N, C, H, W); samples=1, noise=0 gives the plain gradient."""
    rng = np.random.default_rng(seed)
    model.eval()
    spread = images.max(axis=(1, 2, 3), keepdims=True) - images.min(axis=(1, 2, 3), keepdims=True)
    total = np.zeros(images.shape)
    for _ in range(samples):
        x = (images + noise * spread * rng.standard_normal(images.shape)).astype(images.dtype)
        z = model(x)
        dz = np.zeros_like(z)
        dz[np.arange(len(images)), classes] = 1  # ∂z_c/∂z
        model.zero_grad()
        total += model.backward(dz, input_grad=True)
    model.zero_grad()
    return total / samples


def saliency(model: nn.Sequential, images: np.ndarray, labels: np.ndarray,
             path: str) -> tuple[np.ndarray, np.ndarray]:
    """For each image: SmoothGrad's |∂z_c/∂x| (where a change of the pixel moves the class's logit most) and
    SmoothGrad's ∂z_c/∂x × (x − black) (each pixel's ink: red for the class, blue against it), c the label.
    Writes the picture (rows: image, |gradient|, gradient × ink) and returns the last two rows' maps (N, H, W)."""
    plt = _plt()
    grads = smoothgrad(model, images, labels)
    maps = np.abs(grads).max(axis=1)
    black = images.min(axis=(1, 2, 3), keepdims=True)  # the background, normalised
    ink = (grads * (images - black)).sum(axis=1)
    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(1.7 * n, 5.4), squeeze=False)
    for i in range(n):
        axes[0][i].imshow(images[i, 0], cmap="gray")
        axes[0][i].set_title(f"label {labels[i]}", fontsize=8)
        axes[1][i].imshow(maps[i], cmap="hot", vmin=0)
        lim = float(np.abs(ink[i]).max()) or 1.0
        axes[2][i].imshow(ink[i], cmap="RdBu_r", vmin=-lim, vmax=lim)
        for r in range(3):
            axes[r][i].axis("off")
    axes[1][0].set_title("|∂z/∂x|", fontsize=8, loc="left")
    axes[2][0].set_title("∂z/∂x × ink", fontsize=8, loc="left")
    fig.suptitle("saliency of the label's logit z (SmoothGrad, 32 noisy copies): where it is sensitive (middle),\n"
                 "what ink it comes from (bottom: red for the label, blue against)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return maps, ink


def confusion_figure(matrix: np.ndarray):
    """The confusion matrix as a matplotlib (figure, axes): the diagonal (right answers) in greens on its own
    scale, the mistakes in reds on theirs (0 to the largest mistake count), so that a few mistakes among hundreds of
    right answers still show; every non-zero count printed in its cell."""
    plt = _plt()
    k = matrix.shape[0]
    eye = np.eye(k, dtype=bool)
    off, diag = np.ma.masked_where(eye, matrix), np.ma.masked_where(~eye, matrix)
    worst, best = max(int(off.max() or 0), 1), max(int(diag.max() or 0), 1)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(diag, cmap="Greens", vmin=0, vmax=1.5 * best)
    im = ax.imshow(off, cmap="Reds", vmin=0, vmax=worst)
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                dark = matrix[i, j] > (0.75 * best if i == j else worst / 2)
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(k), yticks=range(k),
           title=f"confusion matrix — accuracy {np.trace(matrix) / max(matrix.sum(), 1):.2%}")
    fig.colorbar(im, label="mistakes (off the diagonal; the diagonal in green, on its own scale)")
    fig.tight_layout()
    return fig, ax


def confusion(matrix: np.ndarray, path: str) -> str:
    return _save(confusion_figure(matrix)[0], path)


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
        log(f"(matplotlib is not installed: no pictures; {install('train')})")
        return []
    paths = plot_run(out, model, history, normalize(test_images, mean, std, dtype=model.dtype), test_labels)
    log("pictures:   " + "\n            ".join(paths))
    return paths
