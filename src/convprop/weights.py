"""Weights as safetensors files, with torch's state_dict keys and layouts (pip install 'convprop[safetensors]').

    convprop.save_weights(model, "lenet5.safetensors")       # torch: model.load_state_dict(load_file(...))
    model.load_state_dict(convprop.load_weights("torch-made.safetensors"))

safetensors is a JSON header (names, dtypes, shapes, byte offsets) followed by the raw bytes: no
pickle, nothing runs on load.  The file is untrusted: load_weights checks its size, and each tensor's
dtype, shape and size from the header before reading that tensor.
"""

from __future__ import annotations

import json

import numpy as np

from ._extras import require
from ._files import atomic_write, checked_size
from .nn import Module

__all__ = ["save_weights", "load_weights", "WeightsError", "MAX_FILE_BYTES"]

MAX_FILE_BYTES = 1 << 30  # a weights file larger than this is refused before it is opened
_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


class WeightsError(ValueError):
    """A weights file convprop cannot read; the message is one line."""


def _safetensors():
    require("safetensors.numpy", "safetensors", "safetensors files need the safetensors package")
    import safetensors

    return safetensors


def save_weights(model: Module | dict, path: str, metadata: dict[str, object] | None = None) -> str:
    """Write a model's state_dict (or a state_dict) as safetensors; metadata values are stored as JSON
    strings (safetensors' header holds strings only).  Returns path."""
    st = _safetensors()
    state = model.state_dict() if isinstance(model, Module) else model
    arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, st.numpy.save(arrays, metadata=meta or None))  # (the bytes, then one rename)
    return path


def load_weights(path: str, max_bytes: int = MAX_FILE_BYTES) -> dict[str, np.ndarray]:
    """A safetensors file as a {name: array} state_dict (torch's keys and layouts) for
    Module.load_state_dict.  Raises WeightsError in one line for a damaged or hostile file."""
    st = _safetensors()
    size = checked_size(path, "a safetensors file", WeightsError, max_bytes)
    try:
        with st.safe_open(path, framework="numpy") as f:  # validates the header against the file size
            out: dict[str, np.ndarray] = {}
            for key in f.keys():
                s = f.get_slice(key)
                dtype, shape = s.get_dtype(), [int(d) for d in s.get_shape()]
                if dtype not in _DTYPES:
                    raise WeightsError(f"{path}: tensor {key!r} has dtype {dtype} (supported: "
                                       f"{', '.join(_DTYPES)})")
                nbytes = int(np.prod(shape, dtype=object)) * np.dtype(_DTYPES[dtype]).itemsize
                if nbytes > size:
                    raise WeightsError(f"{path}: tensor {key!r} declares shape {shape} ({nbytes:,} bytes), more than "
                                       f"the file's {size:,}")
                out[key] = np.array(f.get_tensor(key))
    except WeightsError:
        raise
    except Exception as e:  # safetensors_rust.SafetensorError, OSError, …: a damaged file
        text = " ".join(str(e).split())[:200]
        raise WeightsError(f"{path}: not a valid safetensors file ({type(e).__name__}: {text})") from None
    return out
