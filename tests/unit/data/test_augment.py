"""The affine augmentation (data/augment.py): one bilinear warp per batch, against exact cases and torch."""

from __future__ import annotations

import numpy as np
import pytest

from convprop.data import DataLoader
from convprop.data.augment import random_affine, rotation, scaling, translation, warp


def _batch(n=6, c=2, h=9, w=11, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(np.float32)


def test_identity_and_whole_pixel_shifts_are_exact():
    x = _batch()
    eye, zero = np.tile(np.eye(2), (6, 1, 1)), np.zeros((6, 2))
    assert np.array_equal(warp(x, eye, zero, 0.0), x)
    shift = np.tile([[2.0, -1.0]], (6, 1))  # down 2, left 1
    out = warp(x, eye, shift, -7.0)
    assert np.array_equal(out[:, :, 2:, :-1], x[:, :, :-2, 1:])
    assert (out[:, :, :2] == -7).all() and (out[:, :, :, -1] == -7).all()


def test_half_pixel_shift_is_the_mean_of_neighbours():
    x = _batch()
    eye = np.tile(np.eye(2), (6, 1, 1))
    out = warp(x, eye, np.tile([[0.0, 0.5]], (6, 1)), 0.0)
    assert np.allclose(out[:, :, :, 1:], (x[:, :, :, :-1] + x[:, :, :, 1:]) / 2, atol=1e-6)


def test_quarter_turn_is_rot90():
    x = _batch(h=9, w=9)
    turn = rotation(6, 0.0, np.random.default_rng(0))
    theta = np.deg2rad(90.0)
    turn[:] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    out = warp(x, turn, np.zeros((6, 2)), 0.0)
    assert any(np.allclose(out, np.rot90(x, k, axes=(2, 3)), atol=1e-5) for k in (1, 3))


def test_draws_are_seeded_and_sharded_as_the_whole_batch():
    x = _batch(n=8)
    a = random_affine(x, np.random.default_rng(5), 15, 0.2, 2)
    b = random_affine(x, np.random.default_rng(5), 15, 0.2, 2)
    assert np.array_equal(a, b) and a.dtype == x.dtype
    part = random_affine(x[3:6], np.random.default_rng(5), 15, 0.2, 2, shard=(3, 8))
    assert np.allclose(part, a[3:6])
    assert scaling(4, 0.1, np.random.default_rng(0)).min() >= 1 / 1.1
    assert np.abs(translation(50, 2, np.random.default_rng(0))).max() <= 2


def test_warp_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = _batch(n=4, c=1, h=12, w=12)
    rng = np.random.default_rng(1)
    inverse = rotation(4, 30, rng) * scaling(4, 0.2, rng)[:, None, None]
    shift = translation(4, 2, rng)
    ours = warp(x, inverse, shift, 0.0)
    # torch: normalised coordinates (x, y) in [−1, 1] with align_corners=True; the same map written as theta
    h = w = 12
    c = (h - 1) / 2
    theta = np.zeros((4, 2, 3))
    for n in range(4):
        m = inverse[n]  # (y, x) rows → torch's (x, y)
        mx = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
        t = -mx @ shift[n, ::-1] / c
        theta[n, :, :2], theta[n, :, 2] = mx, t
    grid = F.affine_grid(torch.tensor(theta, dtype=torch.float32), (4, 1, h, w), align_corners=True)
    want = F.grid_sample(torch.tensor(x), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    assert np.allclose(ours, want.numpy(), atol=1e-5)


def test_loader_rotation_is_reproducible_and_validated():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), np.arange(40) % 10
    run = [np.concatenate([b for b, _ in DataLoader(images, labels, 16, shuffle=True, seed=2, max_shift=2,
                                                    max_rotation=10, max_scale=0.1)]) for _ in range(2)]
    assert np.array_equal(run[0], run[1])
    plain = np.concatenate([b for b, _ in DataLoader(images, labels, 16, shuffle=True, seed=2, max_shift=2)])
    assert not np.array_equal(run[0], plain)
    with pytest.raises(ValueError, match="max_rotation"):
        DataLoader(images, labels, max_rotation=-1)
