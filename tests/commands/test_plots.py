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


def test_saliency_is_the_input_gradient_of_the_hand_written_backward(pictures, tmp_path):
    """|∂L_n/∂x_n| per image, equal to torch's autograd on the same weights (MNIST's flat background makes
    max-pool ties, where central differences are one-sided; torch breaks ties as we do)."""
    from helpers import torch
    from twins import to_torch_state, torch_twin

    from convprop.plots import saliency

    _, _, model, x, y = pictures
    maps = saliency(model, x, y, str(tmp_path / "s.png"))
    theirs = torch_twin(model).eval()
    theirs.load_state_dict(to_torch_state(model.state_dict()))
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(theirs(xt), torch.tensor(y), reduction="sum").backward()
    np.testing.assert_allclose(maps, xt.grad.abs().numpy()[:, 0], rtol=1e-4, atol=1e-7)
    assert maps.shape == (6, 28, 28) and maps.max() > 0
