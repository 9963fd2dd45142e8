"""The IDX reader, the bundled sample, and the loader's batches, order and shifts."""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import pytest
from datafiles import write_idx

from convprop.data import DataLoader, IDXError, bundled_sample_dir, load_mnist, random_shift, read_idx


def test_bundled_sample_is_the_real_one_with_its_licence():
    d = bundled_sample_dir()
    readme = open(os.path.join(d, "README.md")).read()
    words = " ".join(readme.split())
    assert "Creative Commons Attribution-Share Alike" in words and "LeCun" in words
    for line in readme.splitlines():
        if len(line) > 64 and line[64:66] == "  ":
            digest, name = line.split()
            assert hashlib.sha256(open(os.path.join(d, name), "rb").read()).hexdigest() == digest
    x, y = load_mnist()
    xt, yt = load_mnist(train=False)
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8 and np.bincount(y).tolist() == [500] * 10
    assert xt.shape == (10000, 28, 28) and yt.dtype == np.int64


@pytest.mark.parametrize("layout", ["", "raw", "MNIST/raw", "FashionMNIST/raw"])
@pytest.mark.parametrize("compress", [False, True])
def test_reads_idx_in_every_layout(tmp_path, layout, compress):
    d = tmp_path / layout
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), rng.integers(0, 10, 7).astype(np.uint8)
    gz = ".gz" if compress else ""
    write_idx(d / f"t10k-images-idx3-ubyte{gz}", imgs, compress=compress)
    write_idx(d / f"t10k-labels-idx1-ubyte{gz}", labels, compress=compress)
    x, y = load_mnist(str(tmp_path), train=False)
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, labels)


def test_reads_wider_idx_types(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)
    write_idx(tmp_path / "f.idx", a, code=0x0D)
    out = read_idx(str(tmp_path / "f.idx"))
    assert out.dtype == np.float32 and np.array_equal(out, a)


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[:3], "truncated"),
    (lambda b: b"\x08\x00" + b[2:], "wrong magic"),
    (lambda b: b[:100], "expected 784"),
    (lambda b: b[:4] + struct.pack(">I", 2**31) + b[8:], "more than any IDX file"),
    (lambda b: b[:3] + bytes([70]) + bytes(280), "expected 1 to 32 dimensions, got 70"),  # NumPy takes 64 at most
    (lambda b: b[:3] + bytes([5, 0, 0, 0, 0]) + b"\x20\x00\x00\x00" * 4, "not one NumPy can make"),  # 0 bytes
])
def test_corrupt_idx_files_fail_clearly(tmp_path, damage, words):
    p = tmp_path / "x-idx3-ubyte"
    write_idx(p, np.zeros((1, 28, 28), np.uint8))
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(IDXError, match=words):
        read_idx(str(p))


def test_gz_name_without_gzip_data_and_mismatched_counts(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(p, np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(IDXError, match="expected gzip data"):
        read_idx(str(p))
    write_idx(p, np.zeros((3, 28, 28), np.uint8), compress=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(2, np.uint8), compress=True)
    with pytest.raises(IDXError, match="2 labels for 3 images"):
        load_mnist(str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(3, 12, np.uint8), compress=True)
    with pytest.raises(IDXError, match=r"labels must lie in \[0, 10\)"):
        load_mnist(str(tmp_path))


def test_loader_batches_are_seeded_normalised_and_cover_the_data():
    x, y = load_mnist()
    a = DataLoader(x, y, 64, shuffle=True, seed=3, max_shift=2)
    b = DataLoader(x, y, 64, shuffle=True, seed=3, max_shift=2)
    first_a, first_b = next(iter(a)), next(iter(b))
    np.testing.assert_array_equal(first_a[0], first_b[0])
    assert first_a[0].dtype == np.float32 and first_a[0].shape == (64, 1, 28, 28)
    assert len(set(first_a[1].tolist())) > 3  # shuffled: the sample is sorted by label
    plain = DataLoader(x, y, 1000)
    seen = np.concatenate([yy for _, yy in plain])
    np.testing.assert_array_equal(seen, y)
    allx = np.concatenate([xx for xx, _ in plain])
    assert abs(allx.mean()) < 0.1 and abs(allx.std() - 1) < 0.1  # (x/255 − 0.1307)/0.3081
    assert len(DataLoader(x, y, 64, drop_last=True)) == 5000 // 64
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(x, y, 0)


def test_random_shift_moves_each_image_within_the_bound():
    rng = np.random.default_rng(0)
    img = np.zeros((50, 1, 28, 28), np.float32)
    img[:, :, 13, 13] = 1.0
    out = random_shift(img, 2, rng)
    pos = np.argwhere(out[:, 0] == 1.0)
    assert len(pos) == 50 and np.abs(pos[:, 1:] - 13).max() <= 2 and len({tuple(p) for p in pos[:, 1:]}) > 5
