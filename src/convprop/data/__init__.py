"""Data: the IDX reader, the bundled MNIST sample, CIFAR-10's batches, folders of images (ImageFolder),
datasets over arrays (ArrayDataset), and a batching DataLoader with shifts, rotations and scaling."""

from .augment import random_affine
from .cifar import CIFARError, find_cifar10, load_cifar10, read_cifar_bin
from .datasets import ArrayDataset, stratified_split
from .folders import DEFAULT_VAL_SPLIT, ImageFolder, channel_stats, find_image_folder, read_image
from .idx import IDXError, bundled_sample_dir, find_mnist, load_mnist, read_idx
from .loader import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MNIST_MEAN,
    MNIST_STD,
    DataLoader,
    normalize,
    random_crop_flip,
    random_shift,
)

__all__ = ["IDXError", "read_idx", "load_mnist", "find_mnist", "bundled_sample_dir", "DataLoader", "normalize",
           "random_shift", "MNIST_MEAN", "MNIST_STD", "CIFARError", "find_cifar10", "load_cifar10", "read_cifar_bin",
           "load_images", "random_crop_flip", "CIFAR10_MEAN", "CIFAR10_STD", "random_affine", "ArrayDataset",
           "stratified_split", "ImageFolder", "find_image_folder", "read_image", "channel_stats", "DEFAULT_VAL_SPLIT"]


def load_images(root: str | None = None, train: bool = True):
    """(images uint8, labels int64) under root: CIFAR-10's binary batches (N, 3, 32, 32) where root holds
    test_batch.bin (or root/cifar-10-batches-bin does), else MNIST-style IDX files (N, 28, 28); the
    bundled MNIST sample when root is None."""
    if root is not None and find_cifar10(root) is not None:
        return load_cifar10(root, train)
    return load_mnist(root, train)
