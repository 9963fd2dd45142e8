"""ImageFolder, ArrayDataset, stratified_split and the DataLoader over datasets, on folders the tests write."""

from __future__ import annotations

import os

import numpy as np
import pytest
from imagefolders import SHAPES, write_folder

from convprop.data import (
    ArrayDataset,
    DataLoader,
    ImageFolder,
    channel_stats,
    find_image_folder,
    normalize,
    read_image,
    stratified_split,
)
from convprop.data.images import ImageError

pytest.importorskip("PIL")


def test_image_folder_reads_mixed_sizes_modes_and_skips_corrupt_files(tmp_path):
    bad = write_folder(tmp_path, per_class=9, corrupt=1)
    warned = []
    ds = ImageFolder(str(tmp_path), warn=warned.append)
    assert ds.classes == list(SHAPES)
    assert ds.images.shape == (27, 1, 28, 28) and ds.images.dtype == np.uint8  # grey everywhere: 1 channel, 28×28
    assert np.bincount(ds.targets).tolist() == [9, 9, 9]
    assert sorted(ds.skipped) == sorted(bad) and len(warned) == 3
    assert all(os.path.basename(b) in w and "skipped" in w for b, w in zip(sorted(bad), sorted(warned)))
    assert ds.mean == channel_stats(ds.images)[0] and len(ds.std) == 1
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and y == 0


def test_image_folder_colour_and_given_size(tmp_path):
    write_folder(tmp_path, per_class=4, colour=True)
    ds = ImageFolder(str(tmp_path))
    assert ds.images.shape == (12, 3, 32, 32) and ds.channels == 3  # colour: 3 channels, 32×32
    grey = ImageFolder(str(tmp_path), size=(20, 24), channels=1)
    assert grey.images.shape == (12, 1, 20, 24)


def test_image_folder_refuses_what_is_not_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        ImageFolder(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolder(str(tmp_path))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(str(tmp_path))
    (tmp_path / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="none of its 1 image files could be read"):
        ImageFolder(str(tmp_path))
    write_folder(tmp_path / "v", per_class=2)
    with pytest.raises(ValueError, match="a class the training data does not have"):
        ImageFolder(str(tmp_path / "v"), classes=["disc", "square"])


def test_read_image_names_the_file_escaped(tmp_path):
    path = tmp_path / "bad\x1bname.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nxxxx")
    with pytest.raises(ImageError) as e:
        read_image(str(path), (28, 28), 1)
    assert "\\x1b" in str(e.value) and "\x1b" not in str(e.value) and "\n" not in str(e.value)


def test_find_image_folder_layouts(tmp_path):
    write_folder(tmp_path / "flat", per_class=2)
    assert find_image_folder(str(tmp_path / "flat")) == {"train": str(tmp_path / "flat")}
    write_folder(tmp_path / "split" / "train", per_class=2)
    write_folder(tmp_path / "split" / "test", per_class=2)
    assert find_image_folder(str(tmp_path / "split")) == {"train": str(tmp_path / "split" / "train"),
                                                          "test": str(tmp_path / "split" / "test")}
    (tmp_path / "empty").mkdir()
    assert find_image_folder(str(tmp_path / "empty")) is None


def test_stratified_split_is_per_class_seeded_and_disjoint():
    labels = np.repeat([0, 1, 2], [100, 50, 7])
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert np.bincount(labels[held]).tolist() == [10, 5, 1]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)
    again = stratified_split(labels, 0.1, seed=3)
    assert (again[1] == held).all()
    assert not (stratified_split(labels, 0.1, seed=4)[1] == held).all()
    assert len(stratified_split(labels, 0.0, seed=3)[1]) == 0
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(labels, 1.0, 0)


def test_dataloader_takes_datasets_and_their_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), np.arange(10) % 3
    ds = ArrayDataset(x, y)
    a = next(iter(DataLoader(ds, batch_size=10)))
    b = next(iter(DataLoader(x, y, batch_size=10)))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    pairs = [(x[i], int(y[i])) for i in range(10)]
    c = next(iter(DataLoader(pairs, batch_size=10)))
    assert np.array_equal(c[0], b[0])
    write_folder(tmp_path, per_class=3)
    folder = ImageFolder(str(tmp_path))
    xb, yb = next(iter(DataLoader(folder, batch_size=100)))
    assert np.allclose(xb, normalize(folder.images, folder.mean, folder.std))
    assert abs(float(xb.mean())) < 1e-3 and abs(float(xb.std()) - 1) < 1e-2  # its own statistics
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(x, y[:3])
    with pytest.raises(ValueError, match="pixels 0–255"):
        ArrayDataset(x.astype(float) * 2, y)
