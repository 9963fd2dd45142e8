"""convprop: CNNs with hand-written, PyTorch-checked backward passes, in NumPy."""

__version__ = "0.1.0"
