"""convprop: CNNs with hand-written, PyTorch-checked backward passes, in NumPy.

Docstrings cite the docs by their path under docs/: in a checkout that is the docs/ folder; an installed convprop
carries the same files in <environment>/share/doc/convprop/ (with the README)."""

from .functional._schedule import get_num_threads, set_num_threads

__version__ = "0.1.0"
__all__ = ["get_num_threads", "set_num_threads", "load_weights", "save_weights"]


def __getattr__(name: str):
    """convprop.load_weights / save_weights (safetensors) and convprop.onnx, imported on first use."""
    if name in ("load_weights", "save_weights"):
        from . import weights

        return getattr(weights, name)
    if name == "onnx":
        import importlib

        return importlib.import_module(".onnx", __name__)
    raise AttributeError(f"module 'convprop' has no attribute {name!r}")
