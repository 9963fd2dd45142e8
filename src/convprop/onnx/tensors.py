"""TensorProtos as arrays: their data types, external data beside the model, and the size limits."""

from __future__ import annotations

import math
import os

import numpy as np

from .errors import OnnxError, onnx_module

MAX_FILE_BYTES = 512 * 2**20  # an ONNX file larger than this is refused before it is read
MAX_TENSOR_ELEMENTS = 64 * 2**20  # per tensor (256 MB of float32), checked before converting
FLOATS = {1: np.float32, 11: np.float64}  # TensorProto.FLOAT, DOUBLE
INTS = {7: np.int64, 6: np.int32}  # TensorProto.INT64, INT32 (shapes)
TYPED_FIELD = {1: "float_data", 11: "double_data", 7: "int64_data", 6: "int32_data"}


def type_name(code: int) -> str:
    try:
        return onnx_module().TensorProto.DataType.Name(code)
    except ValueError:
        return str(code)


def _external(t, where: str, directory: str | None, nbytes: int) -> bytes:
    """The bytes of a tensor stored beside the model (torch.onnx.export's external data): a file of
    the model's directory named without any path, its offset and length checked against its size."""
    info = {e.key: e.value for e in t.external_data}
    name = info.get("location", "")
    if directory is None or not name or os.path.basename(name) != name or name in (".", ".."):
        raise OnnxError(f"{where}: tensor {t.name!r} names external data {name!r}; only a file beside the "
                        "model, named without a path, is read")
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
    except ValueError:
        raise OnnxError(f"{where}: tensor {t.name!r} has a malformed external data offset or length") from None
    file = os.path.join(directory, name)
    size = os.path.getsize(file) if os.path.isfile(file) else -1
    if length != nbytes or offset < 0 or offset + length > size:
        raise OnnxError(f"{where}: tensor {t.name!r} needs {nbytes:,} bytes at offset {offset:,} of {name!r} "
                        f"({'missing' if size < 0 else f'{size:,} bytes'}; length {length:,})")
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read(length)


def tensor(t, where: str, limit: int, directory: str | None = None) -> np.ndarray:
    """A TensorProto as an array, its declared shape checked against its bytes and `limit` first."""
    dtypes = {**FLOATS, **INTS}
    if t.data_type not in dtypes:
        raise OnnxError(f"{where}: tensor {t.name!r} has data type {type_name(t.data_type)} "
                        "(supported: float32, float64, and int64/int32 for shapes)")
    if t.HasField("segment"):
        raise OnnxError(f"{where}: tensor {t.name!r} is segmented; not supported")
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims) or len(dims) > 8:
        raise OnnxError(f"{where}: tensor {t.name!r} declares an invalid shape {dims}")
    n = math.prod(dims)
    if n > limit:
        raise OnnxError(f"{where}: tensor {t.name!r} declares shape {dims} ({n:,} elements), over the limit "
                        f"of {limit:,}")
    dtype = np.dtype(dtypes[t.data_type]).newbyteorder("<")
    if t.data_location == 1 or len(t.external_data):
        a = np.frombuffer(_external(t, where, directory, n * dtype.itemsize), dtype)
    elif t.raw_data:
        if len(t.raw_data) != n * dtype.itemsize:
            raise OnnxError(f"{where}: tensor {t.name!r} declares shape {dims} ({n * dtype.itemsize:,} bytes) "
                            f"but holds {len(t.raw_data):,} bytes")
        a = np.frombuffer(t.raw_data, dtype)
    else:
        field = getattr(t, TYPED_FIELD[t.data_type])
        if len(field) != n:
            raise OnnxError(f"{where}: tensor {t.name!r} declares shape {dims} ({n:,} values) "
                            f"but holds {len(field):,}")
        a = np.asarray(field, dtype)
    return a.astype(dtype.newbyteorder("="), copy=True).reshape(dims)

