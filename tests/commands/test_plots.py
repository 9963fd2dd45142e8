"""Every picture is made, is a valid PNG of the expected size, and is not blank."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import convprop.random as R
from convprop import models
from convprop.data import load_mnist, normalize
from convprop.plots import NAMES, plot_run


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    R.manual_seed(0)
    out = tmp_path_factory.mktemp("run")
    x, y = load_mnist(train=False)
    history = [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.3, "test_loss": 1.5, "test_acc": 0.5},
               {"epoch": 2, "train_loss": 1.0, "train_acc": 0.7, "test_loss": 0.9, "test_acc": 0.75}]
    model = models.lenet5()
    return out, plot_run(str(out), model, history, normalize(x[:200]), y[:200]), model, normalize(x[:6]), y[:6]


EXPECTED_SIZE = {"training-curves.png": (1000, 400), "confusion-matrix.png": (600, 550)}


def test_all_five_pictures_are_valid_non_blank_pngs(pictures):
    out, paths, *_ = pictures
    assert sorted(p.split("/")[-1] for p in paths) == sorted(NAMES)
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        img = Image.open(path)
        img.verify()
        img = np.asarray(Image.open(path).convert("L"), dtype=float)
        name = path.split("/")[-1]
        if name in EXPECTED_SIZE:
            assert img.shape[::-1] == EXPECTED_SIZE[name]
        assert min(img.shape) >= 150
        assert img.std() > 10, f"{name} looks blank"


def test_smoothgrad_is_the_input_gradient_of_the_hand_written_backward(pictures):
    """One noiseless sample of SmoothGrad is ∂z_y/∂x, equal to torch's autograd on the same weights; the mean over
    noisy copies is the mean of the same gradient at each copy."""
    from helpers import torch
    from twins import to_torch_state, torch_twin

    from convprop.plots import smoothgrad

    _, _, model, x, y = pictures
    theirs = torch_twin(model).eval()
    theirs.load_state_dict(to_torch_state(model.state_dict()))

    def torch_grad(inputs):
        xt = torch.tensor(inputs, requires_grad=True)
        theirs(xt)[torch.arange(len(y)), torch.tensor(y)].sum().backward()
        return xt.grad.numpy()

    np.testing.assert_allclose(smoothgrad(model, x, y, samples=1, noise=0), torch_grad(x), rtol=1e-4, atol=1e-6)
    rng = np.random.default_rng(0)
    spread = x.max(axis=(1, 2, 3), keepdims=True) - x.min(axis=(1, 2, 3), keepdims=True)
    noisy = [(x + 0.15 * spread * rng.standard_normal(x.shape)).astype(x.dtype) for _ in range(3)]
    np.testing.assert_allclose(smoothgrad(model, x, y, samples=3), np.mean([torch_grad(n) for n in noisy], axis=0),
                               rtol=1e-4, atol=1e-6)


def test_feature_maps_draw_every_block_of_a_resnet_and_every_conv_and_pool_of_a_chain(tmp_path):
    from convprop import nn
    from convprop.plots import feature_maps, feature_rows, filters

    x = normalize(load_mnist(train=False)[0][:1])
    R.manual_seed(0)
    resnet = models.resnet20()
    titles = [t for t, _ in feature_rows(resnet, x)]
    blocks = [p for p, m in resnet.named_modules() if isinstance(m, nn.BasicBlock)]
    assert len(blocks) == 9 and all(any(t.startswith(f"block {b}:") for t in titles) for b in blocks), titles
    assert titles[:2] == ["input", "conv1: Conv2d → 16×28×28"]
    for draw, name in ((feature_maps, "feature-maps.png"), (filters, "filters.png")):
        (draw(resnet, x, str(tmp_path / name)) if draw is feature_maps else draw(resnet, str(tmp_path / name)))
        width, height = Image.open(tmp_path / name).size
        assert width <= 1600, f"{name} is {width} px wide: wider than a screen"  # filters were one 2,560-px row
        assert height <= 2000 or name != "filters.png"
    lenet = models.lenet5()
    titles = [t for t, _ in feature_rows(lenet, x)]
    assert [t.split(":")[0] for t in titles] == ["input", "0", "2", "3", "5"]  # every conv and pooling layer


def test_saliency_and_confusion_are_readable_where_the_old_pictures_were_not(tmp_path):
    """A trained LeNet-5 (96 % on 1,000 test digits).  Saliency: the old |∂L/∂x| of the loss is speckle spread
    over the picture (the normalised entropy of its pixels, 1 for uniform, is > 0.8); SmoothGrad's gradient × ink
    sits on the strokes (< 0.72).  Confusion: in the old single blue scale the mistakes (1 to 4 among 100-odd right
    answers) are near white; on their own red scale they stand out.  Both side by side: side-by-side.png."""
    from convprop import nn, optim
    from convprop.data import DataLoader
    from convprop.plots import confusion_figure, saliency
    from convprop.train import confusion_matrix, fit, predict

    R.manual_seed(0)
    model = models.lenet5()
    images, labels = load_mnist(train=True)
    fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=3e-3),
        DataLoader(images, labels, 64, shuffle=True), 2, progress=False, log=None)
    x, y = load_mnist(train=False)
    x, y = normalize(x[:1000]), y[:1000]

    model.zero_grad()  # the old saliency: |∂L_n/∂x_n| of each image's own loss
    _, dlogits = nn.CrossEntropyLoss()(model(x[:6]), y[:6])
    old = np.abs(model.backward(dlogits * 6, input_grad=True)).max(axis=1)
    model.zero_grad()
    _, ink = saliency(model, x[:6], y[:6], str(tmp_path / "saliency.png"))

    def entropy(maps):  # of each map's |pixels| as a distribution, divided by log(pixels): 1 = uniform
        p = np.abs(maps).reshape(len(maps), -1)
        p = p / p.sum(axis=1, keepdims=True)
        return -(p * np.log(np.where(p > 0, p, 1))).sum(axis=1) / np.log(p.shape[1])

    assert entropy(old).mean() > 0.8 and entropy(ink).mean() < 0.72, (entropy(old), entropy(ink))

    matrix = confusion_matrix(y, predict(model, x).argmax(axis=1), 10)
    mistakes = [(i, j) for i in range(10) for j in range(10) if i != j and matrix[i, j]]
    assert len(mistakes) >= 10

    def old_confusion(m):  # the old picture: one blue scale for every cell
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 5.5))
        ax.imshow(m, cmap="Blues")
        fig.tight_layout()
        return fig, ax

    def ink_of_mistakes(fig, ax):  # 255 − the grey level of each mistake's cell (at a corner, off its number)
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        h = rgba.shape[0]
        out = []
        for i, j in mistakes:
            px, py = ax.transData.transform((j + 0.35, i + 0.35))
            r, g, b = rgba[int(h - py), int(px), :3].astype(float)
            out.append(255 - (0.299 * r + 0.587 * g + 0.114 * b))
        fig.savefig(tmp_path / f"confusion-{len(list(tmp_path.iterdir()))}.png", dpi=100)
        return np.median(out)

    before, after = ink_of_mistakes(*old_confusion(matrix)), ink_of_mistakes(*confusion_figure(matrix))
    assert before < 20 < 40 < after, (before, after)  # measured: 7 before, 52 after

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 11))
    pictures = [("before: |∂L/∂x|", old[0], "hot"), ("after: SmoothGrad ∂z/∂x × ink", ink[0], "RdBu_r")]
    for ax, (title, m, cmap) in zip(axes[0], pictures):
        lim = np.abs(m).max()
        ax.imshow(m, cmap=cmap, vmin=-lim if cmap == "RdBu_r" else 0, vmax=lim)
        ax.set_title(f"{title}: entropy {entropy(m[None])[0]:.2f}")
    titles = (f"before: one blue scale (mistakes' ink {before:.0f})",
              f"after: mistakes on their own scale ({after:.0f})")
    for ax, name, title in zip(axes[1], sorted(p.name for p in tmp_path.glob("confusion-*.png")), titles):
        ax.imshow(np.asarray(Image.open(tmp_path / name)))
        ax.set_title(title)
    for ax in axes.ravel():
        ax.axis("off")
    fig.savefig(tmp_path / "side-by-side.png", dpi=80)
    plt.close("all")
