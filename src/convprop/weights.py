"""Weights as safetensors files, with torch's state_dict keys and layouts.

    convprop.save_weights(model, "lenet5.safetensors")       # torch: model.load_state_dict(load_file(...))
    model.load_state_dict(convprop.load_weights("torch-made.safetensors", model))

safetensors is an 8-byte little-endian header length, a JSON header ({name: {dtype, shape,
data_offsets}}, plus "__metadata__": {str: str}), then the tensors' raw little-endian bytes, back to
back: no pickle, nothing runs on load.  The file is untrusted, so it is read here without the
safetensors package: the header first (its length bounded, its JSON bounded in size and depth, a key
twice refused), every tensor's dtype, shape and byte range checked (sizes exact, ranges contiguous,
in the file, not overlapping) — and, given the model, its names, shapes and dtypes checked against
the model's — before any tensor is read; then each tensor is read straight into its own array (memory:
the model's tensors, whatever the file's size) and refused if any of its values is not finite.
Writing (save_weights) uses the safetensors package (the safetensors extra).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from . import safe_json
from ._extras import require
from ._files import atomic_write, open_regular
from .nn import Module
from .nn.module import _key_summary

__all__ = ["save_weights", "load_weights", "read_header", "read_metadata", "WeightsError", "Header", "TensorInfo",
           "MAX_FILE_BYTES", "MAX_HEADER_BYTES"]

MAX_FILE_BYTES = 1 << 30  # a weights file larger than this is refused before it is opened
MAX_HEADER_BYTES = 4 << 20  # ~100 bytes a tensor: room for 40,000 tensors and the metadata
MAX_DIMS = 32
# the dtypes convprop reads (little-endian on disk), and the itemsizes of the rest of safetensors' dtypes
_DTYPES = {"F16": "<f2", "BF16": "<u2", "F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "I16": "<i2",
           "I8": "i1", "U8": "u1"}
_OTHER = {"BOOL": 1, "F8_E5M2": 1, "F8_E4M3": 1, "U16": 2, "U32": 4, "U64": 8}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


class WeightsError(ValueError):
    """A weights file convprop cannot read; the message is one line and starts with the file's name."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the header: its dtype as safetensors spells it, shape, and [begin, end) byte range
    counted from the start of the data."""
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """A checked safetensors header: the tensors in file order, the metadata (strings), and where the
    data starts in the file."""
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int


def _safetensors():
    require("safetensors.numpy", "safetensors", "writing safetensors files needs the safetensors package")
    import safetensors

    return safetensors


def save_weights(model: Module | dict, path: str, metadata: dict[str, object] | None = None) -> str:
    """Write a model's state_dict (or a state_dict) as safetensors; metadata values are stored as JSON
    strings (safetensors' header holds strings only; read them back with read_metadata).  Returns path."""
    st = _safetensors()
    state = model.state_dict() if isinstance(model, Module) else model
    if "__metadata__" in state:
        raise WeightsError(f"{path}: '__metadata__' is the name safetensors gives its header's metadata, not a "
                           "tensor's")
    arrays = {k: np.asarray(v, order="C") for k, v in state.items()}  # (ascontiguousarray makes () (1,))
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    try:
        data = st.numpy.save(arrays, metadata=meta or None)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as e:  # SafetensorError; a Rust panic (pyo3's PanicException) is a BaseException
        raise WeightsError(f"{path}: cannot write these tensors as safetensors ({_one_line(e)})") from None
    atomic_write(path, data)  # (the bytes, then one rename: never a half-written file)
    return path


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def _name(key: str) -> str:
    """A tensor's name as it appears in a message: quoted, escaped, at most 80 characters."""
    return repr(key[:80] + ("…" if len(key) > 80 else ""))


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(path: str, key: str, e) -> TensorInfo:
    """One header entry, its types checked, its size agreeing with its byte range."""
    if not isinstance(e, dict) or set(e) != _ENTRY_KEYS:
        got = sorted(e) if isinstance(e, dict) else type(e).__name__
        raise WeightsError(f"{path}: tensor {_name(key)}: expected the fields dtype, shape, data_offsets, got {got}")
    dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        other = " (a safetensors dtype convprop does not read)" if isinstance(dtype, str) and dtype in _OTHER else ""
        raise WeightsError(f"{path}: tensor {_name(key)} has dtype {str(dtype)[:40]!r}{other}; supported: "
                           f"{', '.join(_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_whole(d) and d >= 0 for d in shape):
        raise WeightsError(f"{path}: tensor {_name(key)}: expected a shape of at most {MAX_DIMS} sizes ≥ 0, got "
                           f"{str(shape)[:100]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise WeightsError(f"{path}: tensor {_name(key)}: expected data_offsets [begin, end] with 0 ≤ begin ≤ end, "
                           f"got {str(offsets)[:100]}")
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(_DTYPES[dtype]).itemsize  # Python ints: no overflow
    if nbytes != offsets[1] - offsets[0]:
        raise WeightsError(f"{path}: tensor {_name(key)}: {dtype} of shape {shape} is {nbytes:,} bytes, but its "
                           f"data_offsets {offsets} span {offsets[1] - offsets[0]:,}")
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def _check_layout(path: str, tensors: dict[str, TensorInfo], data_bytes: int) -> None:
    """The tensors' byte ranges tile the data exactly: from byte 0, back to back, to its end."""
    at, previous = 0, None
    for key, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if t.begin < at:
            raise WeightsError(f"{path}: tensor {_name(key)} (bytes {t.begin:,}–{t.end:,}) overlaps tensor "
                               f"{_name(previous)} (ending at {at:,})")
        if t.begin > at:
            raise WeightsError(f"{path}: {t.begin - at:,} bytes before tensor {_name(key)} belong to no tensor "
                               f"(it starts at {t.begin:,}, expected {at:,})")
        if t.end > data_bytes:
            raise WeightsError(f"{path}: tensor {_name(key)} ends at byte {t.end:,} of the data, past its end "
                               f"({data_bytes:,} bytes: the file is truncated or its header lies)")
        at, previous = t.end, key
    if at != data_bytes:
        raise WeightsError(f"{path}: the tensors end at byte {at:,} of the data, but the file has {data_bytes:,} "
                           "(extra bytes after the last tensor)")


def _parse_header(path: str, f, size: int, max_header_bytes: int) -> Header:
    if size < 8:
        raise WeightsError(f"{path}: {size} bytes, too short for a safetensors file (an 8-byte header length, "
                           "then the header)")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(max_header_bytes, size - 8):
        why = (f"the file has {size - 8:,} bytes after it (not a safetensors file, or truncated)" if n > size - 8
               else f"the limit is {max_header_bytes:,}")
        raise WeightsError(f"{path}: header length {n:,} bytes, but {why}")
    text = f.read(n)
    if len(text) != n:
        raise WeightsError(f"{path}: truncated header ({len(text)} of {n} bytes)")
    if not text.startswith(b"{"):
        raise WeightsError(f"{path}: the header does not start with '{{' (got {text[:8]!r}): not a safetensors file")
    try:
        doc = safe_json.loads(text, f"{path}: header", unique_keys=True)
    except ValueError as e:
        raise WeightsError(" ".join(str(e).split())[:400]) from None
    if not isinstance(doc, dict):
        raise WeightsError(f"{path}: header: expected a JSON object, got {type(doc).__name__}")
    metadata = doc.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        bad = type(metadata).__name__ if not isinstance(metadata, dict) else next(
            f"{k!r} is {type(v).__name__}" for k, v in metadata.items() if not isinstance(v, str))
        raise WeightsError(f"{path}: __metadata__: expected an object of strings, {bad}"[:300])
    tensors = {key: _entry(path, key, e) for key, e in doc.items()}
    _check_layout(path, tensors, size - 8 - n)
    return Header(tensors, metadata, 8 + n)


def read_header(path: str, max_bytes: int = MAX_FILE_BYTES, max_header_bytes: int = MAX_HEADER_BYTES) -> Header:
    """The checked header of a safetensors file (no tensor read).  Raises WeightsError in one line."""
    f, size = open_regular(path, "a safetensors file", WeightsError, max_bytes)
    with f:
        return _parse_header(path, f, size, max_header_bytes)


def read_metadata(path: str) -> dict[str, str]:
    """The header's __metadata__ (strings; save_weights stores other values as JSON, e.g. `convprop export`'s
    "convprop_model": {"name", "config", "dtype"}), without reading a tensor."""
    return read_header(path).metadata


def _check_against(path: str, tensors: dict[str, TensorInfo], model: Module) -> None:
    """Names, shapes and dtypes of the file's tensors against the model's state_dict: one line for the first
    difference, before anything is read."""
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise WeightsError(f"{path}: tensor names do not match this {type(model).__name__}: "
                           + _key_summary([_name(k) for k in missing], [_name(k) for k in unexpected], []))
    for key, target in own.items():
        t = tensors[key]
        if t.shape != target.shape:
            raise WeightsError(f"{path}: tensor {_name(key)}: expected shape {list(target.shape)}, got {list(t.shape)}")
        floating = t.dtype.startswith(("F", "BF"))
        if floating != (np.asarray(target).dtype.kind == "f"):
            raise WeightsError(f"{path}: tensor {_name(key)}: expected {'a floating' if not floating else 'an integer'}"
                               f" dtype (the model's is {np.asarray(target).dtype}), got {t.dtype}")


def _read_tensor(path: str, f, key: str, t: TensorInfo, data_start: int) -> np.ndarray:
    """One tensor, read into its own array (one copy: the file's bytes), then made native and checked."""
    out = np.empty(t.shape, _DTYPES[t.dtype])
    f.seek(data_start + t.begin)
    got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    if got != t.end - t.begin:
        raise WeightsError(f"{path}: tensor {_name(key)}: read {got:,} of its {t.end - t.begin:,} bytes "
                           "(the file changed while being read?)")
    if t.dtype == "BF16":  # bfloat16: the high half of a float32
        out = (out.astype(np.uint32) << 16).view(np.float32)
    elif not out.dtype.isnative:
        out = out.byteswap(inplace=True).view(out.dtype.newbyteorder())
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        bad = out[~np.isfinite(out)].flat[0]
        raise WeightsError(f"{path}: tensor {_name(key)} holds {np.count_nonzero(~np.isfinite(out)):,} values "
                           f"that are not finite (e.g. {bad}): damaged weights")
    return out


def _check_fits(path: str, key: str, a: np.ndarray, target) -> None:
    """Float values the model's (narrower) dtype can hold: 1e300 in a float64 file is no float32 weight."""
    if target is None or a.dtype.kind != "f" or a.size == 0:
        return
    top = float(np.finfo(np.asarray(target).dtype).max)
    biggest = float(np.abs(a).max())
    if biggest > top:
        raise WeightsError(f"{path}: tensor {_name(key)} holds {biggest:.3g}, beyond the model's "
                           f"{np.asarray(target).dtype} (at most {top:.3g})")


def load_weights(path: str, model: Module | None = None, max_bytes: int = MAX_FILE_BYTES,
                 max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, np.ndarray]:
    """A safetensors file as a {name: array} state_dict (torch's keys and layouts) for
    Module.load_state_dict.  Given the model, its keys, shapes and kinds of dtype (floating / integer)
    are checked against the header before any tensor is read, so memory is bounded by the model's size.
    Raises WeightsError in one line for a damaged or hostile file: a bad header, byte ranges that do not
    tile the data, a tensor with a value that is not finite, a mismatch with the model."""
    f, size = open_regular(path, "a safetensors file", WeightsError, max_bytes)
    with f:
        header = _parse_header(path, f, size, max_header_bytes)
        own = model.state_dict() if model is not None else {}
        if model is not None:
            _check_against(path, header.tensors, model)
        try:
            out = {}
            for key, t in header.tensors.items():
                out[key] = a = _read_tensor(path, f, key, t, header.data_start)
                _check_fits(path, key, a, own.get(key))
            return out
        except OSError as e:
            raise WeightsError(f"{path}: cannot read ({e.strerror or e})") from None
        except MemoryError:
            raise WeightsError(f"{path}: its tensors need more memory than is free") from None
