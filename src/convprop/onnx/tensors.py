"""TensorProtos as arrays: their data types, external data beside the model, and the size limits."""

from __future__ import annotations

import math
import os
import re
import stat

import numpy as np

from .errors import OnnxError, onnx_module

MAX_FILE_BYTES = 512 * 2**20  # an ONNX file larger than this is refused before it is read
MAX_TENSOR_ELEMENTS = 64 * 2**20  # per tensor (256 MB of float32), checked before converting
MAX_TENSOR_BYTES = 512 * 2**20  # all of a model's tensors together, inline and external
MAX_NODES = 100_000  # ResNet-152 has ~500; each node becomes a layer object
FLOATS = {1: np.float32, 11: np.float64}  # TensorProto.FLOAT, DOUBLE
INTS = {7: np.int64, 6: np.int32}  # TensorProto.INT64, INT32 (shapes)
TYPED_FIELD = {1: "float_data", 11: "double_data", 7: "int64_data", 6: "int32_data"}


def type_name(code: int) -> str:
    try:
        return onnx_module().TensorProto.DataType.Name(code)
    except ValueError:
        return str(code)


class Budget:
    """The bytes all of a model's tensors may take together (inline and external, Constant nodes too),
    spent as each is converted, before its array is made."""

    def __init__(self, total: int, max_elements: int):
        self.left, self.total, self.max_elements = total, total, max_elements

    def take(self, nbytes: int, where: str, what: str) -> None:
        if nbytes > self.left:
            raise OnnxError(f"{where}: {what} ({nbytes:,} bytes) takes the model's tensors over the limit of "
                            f"{self.total:,} bytes in all")
        self.left -= nbytes


_EXTERNAL_KEYS = {"location", "offset", "length", "checksum"}
_DIGITS = re.compile(r"[0-9]{1,19}")


def _external(t, where: str, directory: str | None, dtype: np.dtype, n: int) -> np.ndarray:
    """The n values of a tensor stored beside the model (torch.onnx.export's external data): a regular
    file of the model's own directory, named without any path, that is still inside that directory once
    every link is resolved; its offset and length checked against its size; read straight into the array."""
    keys = [e.key for e in t.external_data]
    info = {e.key: e.value for e in t.external_data}
    if len(info) != len(keys) or not set(info) <= _EXTERNAL_KEYS:
        raise OnnxError(f"{where}: tensor {t.name!r} has external data keys {keys[:8]}; expected each of "
                        f"{sorted(_EXTERNAL_KEYS)} at most once")
    name = info.get("location", "")
    if (directory is None or not name or os.path.basename(name) != name or name in (".", "..") or "\0" in name
            or os.path.isabs(name)):
        raise OnnxError(f"{where}: tensor {t.name!r} names external data {name[:100]!r}; only a file beside the "
                        "model, named without a path, is read")
    nbytes = n * dtype.itemsize
    text = {k: info.get(k, v) for k, v in (("offset", "0"), ("length", str(nbytes)))}
    if not all(_DIGITS.fullmatch(v) for v in text.values()):
        raise OnnxError(f"{where}: tensor {t.name!r} has external data offset {text['offset'][:30]!r} and length "
                        f"{text['length'][:30]!r}; expected whole numbers of bytes")
    offset, length = int(text["offset"]), int(text["length"])
    home = os.path.realpath(directory)
    file = os.path.realpath(os.path.join(home, name))
    if os.path.dirname(file) != home:
        raise OnnxError(f"{where}: tensor {t.name!r} names external data {name!r}, a link to {file!r} outside the "
                        "model's directory; only a file beside the model is read")
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a fifo opens without a writer
    except OSError as e:
        raise OnnxError(f"{where}: tensor {t.name!r}: cannot open its external data {name!r} "
                        f"({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OnnxError(f"{where}: tensor {t.name!r}: its external data {name!r} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if length != nbytes or offset + length > st.st_size:
            raise OnnxError(f"{where}: tensor {t.name!r} needs {nbytes:,} bytes at offset {offset:,} of {name!r} "
                            f"({st.st_size:,} bytes; length {length:,})")
        f.seek(offset)
        a = np.empty(n, dtype)
        if f.readinto(memoryview(a.view(np.uint8))) != nbytes:
            raise OnnxError(f"{where}: tensor {t.name!r}: {name!r} shrank while being read")
    return a


def tensor(t, where: str, budget: Budget, directory: str | None = None) -> np.ndarray:
    """A TensorProto as an array, its declared shape checked against its bytes and the model's budget
    first.  Inline bytes are viewed, not copied (np.frombuffer; read-only); at most one conversion."""
    onnx = onnx_module()
    if not isinstance(t, onnx.TensorProto):
        raise OnnxError(f"{where}: expected a tensor, got {type(t).__name__}")
    dtypes = {**FLOATS, **INTS}
    if t.data_type not in dtypes:
        raise OnnxError(f"{where}: tensor {t.name!r} has data type {type_name(t.data_type)} "
                        "(supported: float32, float64, and int64/int32 for shapes)")
    if t.HasField("segment"):
        raise OnnxError(f"{where}: tensor {t.name!r} is segmented; not supported")
    if len(t.dims) > 8 or any(d < 0 for d in t.dims):
        raise OnnxError(f"{where}: tensor {t.name!r} declares an invalid shape {list(t.dims)[:10]}")
    dims = [int(d) for d in t.dims]
    n = math.prod(dims)
    if n > budget.max_elements:
        raise OnnxError(f"{where}: tensor {t.name!r} declares shape {dims} ({n:,} elements), over the limit "
                        f"of {budget.max_elements:,}")
    dtype = np.dtype(dtypes[t.data_type]).newbyteorder("<")
    external = t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data)
    field = getattr(t, TYPED_FIELD[t.data_type])
    if sum(map(bool, (external, t.HasField("raw_data"), len(field)))) > 1:
        raise OnnxError(f"{where}: tensor {t.name!r} holds its values in more than one place (external data, "
                        "raw_data, a typed field)")
    budget.take(n * dtype.itemsize, where, f"tensor {t.name!r} of shape {dims}")
    if external:
        a = _external(t, where, directory, dtype, n)
    elif t.HasField("raw_data"):
        raw = t.raw_data  # protobuf hands out its own bytes object: viewed, not copied again
        if len(raw) != n * dtype.itemsize:
            raise OnnxError(f"{where}: tensor {t.name!r} declares shape {dims} ({n * dtype.itemsize:,} bytes) "
                            f"but holds {len(raw):,} bytes")
        a = np.frombuffer(raw, dtype)
    else:
        if len(field) != n:
            raise OnnxError(f"{where}: tensor {t.name!r} declares shape {dims} ({n:,} values) "
                            f"but holds {len(field):,}")
        a = np.asarray(field, dtype)
    if a.dtype.kind == "f" and not np.isfinite(a).all():  # (the weights of a damaged or hostile file)
        bad = a[~np.isfinite(a)]
        raise OnnxError(f"{where}: tensor {t.name!r} holds {bad.size:,} values that are not finite (e.g. "
                        f"{bad[0]}): damaged weights")
    return a.astype(dtype.newbyteorder("="), copy=False).reshape(dims)
