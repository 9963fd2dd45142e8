"""convprop: CNNs with hand-written, PyTorch-checked backward passes, in NumPy."""

from .functional._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"
__all__ = ["get_num_threads", "set_num_threads"]
