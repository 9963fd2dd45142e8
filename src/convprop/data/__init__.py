"""Data: the IDX reader, the bundled MNIST sample, a batching DataLoader with ±2 px shifts."""

from .idx import IDXError, find_mnist, load_mnist, read_idx
from .loader import MNIST_MEAN, MNIST_STD, DataLoader, normalize, random_shift

__all__ = ["IDXError", "read_idx", "load_mnist", "find_mnist", "bundled_sample_dir", "DataLoader", "normalize",
           "random_shift", "MNIST_MEAN", "MNIST_STD"]


def bundled_sample_dir() -> str:
    """The MNIST sample shipped inside the package (5,000 training images, the 10,000 test images)."""
    from importlib.resources import files

    return str(files(__name__) / "mnist-sample")
