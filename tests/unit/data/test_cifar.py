"""CIFAR-10's binary format, per-channel normalisation, crops and flips, and training a ResNet on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from runner import run_cli

from convprop.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFARError,
    DataLoader,
    load_cifar10,
    load_images,
    normalize,
    random_crop_flip,
    read_cifar_bin,
)


def write_batch(path, n, seed):
    """n records in the binary format: a label byte, then the R, G, B 32×32 planes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    images[:, 0, :16] = 200 + labels[:, None, None]  # something a small net can learn: the top of the red plane
    path.write_bytes(np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).tobytes())
    return images, labels


@pytest.fixture
def cifar_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    parts = [write_batch(root / f"data_batch_{i}.bin", 40, i) for i in (1, 2)]
    test = write_batch(root / "test_batch.bin", 30, 9)
    return tmp_path, parts, test


def test_batches_read_back_as_written(cifar_dir):
    root, parts, (test_x, test_y) = cifar_dir
    x, y = load_cifar10(str(root), train=True)  # root/cifar-10-batches-bin, batches 1 and 2 in order
    assert x.shape == (80, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(y, np.concatenate([p[1] for p in parts]))
    x, y = load_images(str(root / "cifar-10-batches-bin"), train=False)  # the directory itself also works
    np.testing.assert_array_equal(x, test_x)
    np.testing.assert_array_equal(y, test_y)


def test_bad_files_say_what_is_wrong(tmp_path):
    bad = tmp_path / "test_batch.bin"
    bad.write_bytes(b"\x00" * 3000)
    with pytest.raises(CIFARError, match="3000 bytes, expected a positive multiple of 3073"):
        read_cifar_bin(str(bad))
    bad.write_bytes(bytes([12]) + b"\x00" * 3072)
    with pytest.raises(CIFARError, match="record 0 has label 12, expected 0 to 9"):
        read_cifar_bin(str(bad))
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_cifar10(str(tmp_path), train=True)


def test_per_channel_normalisation():
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 5, 5)).astype(np.uint8)
    ours = normalize(x)
    for c in range(3):
        np.testing.assert_allclose(ours[:, c], (x[:, c] / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c], atol=1e-6)
    np.testing.assert_allclose(normalize(x[:, 0]), (x[:, :1] / 255 - 0.1307) / 0.3081, atol=1e-6)  # MNIST's


def test_random_crop_and_flip_take_windows_of_the_padded_image():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    fill = np.array([-1.0, -2.0, -3.0], np.float32).reshape(1, 3, 1, 1)
    out = random_crop_flip(x, 2, True, fill, np.random.default_rng(5))
    padded = np.broadcast_to(fill, (16, 3, 10, 10)).copy()
    padded[:, :, 2:8, 2:8] = x
    flips = 0
    for n in range(16):  # each output is one of the 25 crops, mirrored or not
        found = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                 if np.array_equal(out[n], padded[n, :, dy:dy + 6, dx:dx + 6][..., ::-1 if f else 1])]
        assert found, n
        flips += found[0][2]
    assert 0 < flips < 16
    np.testing.assert_array_equal(random_crop_flip(x, 0, False, fill, rng), x)


def test_loader_pads_with_black_and_is_reproducible(cifar_dir):
    root, _, _ = cifar_dir
    x, y = load_cifar10(str(root))
    a = DataLoader(x, y, 16, shuffle=True, seed=3, crop_padding=4, hflip=True)
    b = DataLoader(x, y, 16, shuffle=True, seed=3, crop_padding=4, hflip=True)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    black = normalize(np.zeros((1, 3, 1, 1), np.uint8)).ravel()
    np.testing.assert_allclose(a.fill.ravel(), black)
    assert np.isin(xa[:, 0], list(np.unique(a.x[:, 0])) + [black[0]]).all()  # only pixels, or black padding


def test_train_resnet8_on_cifar_files_then_evaluate(cifar_dir, tmp_path):
    root, _, _ = cifar_dir
    out = tmp_path / "run"
    r = run_cli("train", "--model", "resnet8", "--data", str(root), "--epochs", "2", "--batch-size", "20",
                "--out", str(out), "--no-progress", "--lr", "0.01")
    assert r.returncode == 0, r.stderr
    assert "resnet8 (78,042 parameters) on 70 images, validating on 10, testing on 30" in r.stdout
    assert "4 px random crops and flips" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2
    e = run_cli("evaluate", str(out / "checkpoint.npz"), "--data", str(root))
    assert e.returncode == 0, e.stderr
    assert f"accuracy {metrics['test_accuracy']:.2%} on 30 test images" in e.stdout
