"""Property-based fuzzing of the loaders of untrusted files: the IDX reader, the checkpoint loader, the image
reader of `convprop predict`, the ONNX importer and the safetensors reader.

Every generated or corrupted file must either load or raise the documented exception (IDXError,
CheckpointError, ImageError, OnnxError, WeightsError, all ValueErrors, in one line); anything else
fails.  CI runs 300 files per target; the dedicated run is
    CONVPROP_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py      (25,000 files)
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
import zipfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convprop import checkpoint, models
from convprop.checkpoint import CheckpointError
from convprop.data import IDXError, read_idx

EXAMPLES = int(os.environ.get("CONVPROP_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

VALID_IDX = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") * 2 + bytes(range(18))


def _write(data: bytes, suffix: str) -> str:
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, val in edits:
        if not b and kind != "insert":
            continue
        pos %= max(len(b), 1)
        if kind == "flip":
            b[pos] = val
        elif kind == "insert":
            b[pos:pos] = bytes([val])
        elif kind == "delete":
            del b[pos]
        else:  # truncate
            del b[pos:]
    return bytes(b)


EDITS = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 10**6),
                           st.integers(0, 255)), max_size=6)

IDX_FILES = st.one_of(
    st.binary(max_size=200),  # noise
    st.builds(mutate, st.just(VALID_IDX), EDITS),  # a valid file, damaged
    st.builds(lambda code, dims, sizes, tail: bytes([0, 0, code, dims]) + b"".join(
        s.to_bytes(4, "big") for s in sizes) + tail,  # headers with any sizes, claims of huge ones included
        st.sampled_from([8, 9, 11, 12, 13, 14, 0, 255]), st.integers(0, 5),
        st.lists(st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)), max_size=5), st.binary(max_size=64)),
)


@SETTINGS
@given(data=IDX_FILES, compress=st.booleans(), gz_name=st.booleans())
def test_idx_reader_loads_or_raises_idx_error(data, compress, gz_name):
    payload = gzip.compress(data) if compress else data
    path = _write(payload, ".gz" if gz_name else "")
    try:
        out = read_idx(path)
        assert isinstance(out, np.ndarray) and out.size * out.itemsize == len(data) - 4 - 4 * data[3]
    except IDXError:
        pass
    finally:
        os.unlink(path)


_VALID = []


def valid_checkpoint_bytes() -> bytes:
    if not _VALID:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "c.npz")
            checkpoint.save(path, models.lenet5(num_classes=3), "lenet5", {"num_classes": 3}, epoch=2)
            _VALID.append(open(path, "rb").read())
    return _VALID[0]


def _rezip(data: bytes, edit_member) -> bytes:
    """Rewrite one member of the archive (valid zip, damaged content)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for i, info in enumerate(src.infolist()):
            body = src.read(info)
            z.writestr(info.filename, edit_member(i, body))
    return out.getvalue()


@SETTINGS
@given(edits=EDITS, member=st.integers(0, 15), member_edits=EDITS, mode=st.sampled_from(["bytes", "member"]))
def test_checkpoint_loader_loads_or_raises_checkpoint_error(edits, member, member_edits, mode):
    valid = valid_checkpoint_bytes()
    if mode == "bytes":
        data = mutate(valid, edits)
    else:
        data = _rezip(valid, lambda i, body: mutate(body, member_edits) if i == member else body)
    path = _write(data, ".npz")
    try:
        ckpt = checkpoint.load(path)
        checkpoint.restore_model(ckpt, path)
    except CheckpointError:
        pass
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------- images, ONNX, safetensors
# Each loads, or raises its documented one-line error (ImageError / OnnxError / WeightsError, all
# ValueErrors); NumPy allocations stay under FUZZ_ALLOC_LIMIT (tracemalloc sees NumPy's arrays).
FUZZ_ALLOC_LIMIT = 64 * 2**20


def _one_line(e: BaseException) -> None:
    assert "\n" not in str(e) and str(e), repr(e)


def _png(w: int, h: int, color_type: int, depth: int, body: bytes) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


_VALID_IMAGES: list[bytes] = []


def valid_images() -> list[bytes]:
    if not _VALID_IMAGES:
        from PIL import Image

        rng = np.random.default_rng(0)
        digit = (rng.random((12, 10)) * 255).astype(np.uint8)
        for mode, fmt in (("L", "PNG"), ("RGBA", "PNG"), ("RGB", "JPEG"), ("P", "GIF"), ("L", "BMP"),
                          ("I;16", "PNG"), ("LA", "PNG"), ("1", "PNG"), ("F", "TIFF")):
            im = Image.fromarray(digit.astype(np.uint16) * 257 if mode == "I;16" else digit)
            im = im if mode == "I;16" else im.convert(mode)
            buf = io.BytesIO()
            im.save(buf, fmt)
            _VALID_IMAGES.append(buf.getvalue())
    return _VALID_IMAGES


IMAGES = st.one_of(
    st.builds(lambda i, edits: mutate(valid_images()[i % len(valid_images())], edits), st.integers(0, 8), EDITS),
    st.builds(_png, st.one_of(st.integers(0, 64), st.integers(0, 2**31 - 1)),
              st.one_of(st.integers(0, 64), st.integers(0, 2**31 - 1)), st.sampled_from([0, 2, 3, 4, 6, 1, 7]),
              st.sampled_from([1, 2, 4, 8, 16, 3]), st.binary(max_size=300)),
    st.binary(max_size=200),
)


@SETTINGS
@given(data=IMAGES)
def test_image_reader_reads_or_raises_image_error(data):
    from convprop.data.images import ImageError, read_digit

    try:
        digit, warnings = read_digit(data, name="fuzz.png")
        assert digit.shape == (28, 28) and digit.dtype == np.uint8 and all(isinstance(w, str) for w in warnings)
    except ImageError as e:
        _one_line(e)


def _allocations_bounded(fn) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < FUZZ_ALLOC_LIMIT, f"peak allocation {peak:,} bytes"


_VALID_ONNX: list[bytes] = []


def valid_onnx_bytes() -> bytes:
    if not _VALID_ONNX:
        from convprop import nn
        from convprop import onnx as conv_onnx

        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
        with tempfile.TemporaryDirectory() as d:
            path = conv_onnx.export(model, os.path.join(d, "m.onnx"), (1, 1, 8, 8))
            _VALID_ONNX.append(open(path, "rb").read())
    return _VALID_ONNX[0]


def _edit_onnx(data: bytes, which: int, dims, dtype: int, cut: int, attr: int) -> bytes:
    """A structural edit of a valid model: an initializer's declared dims, data type or bytes, or a
    node's attribute value."""
    import onnx

    m = onnx.ModelProto.FromString(data)
    t = m.graph.initializer[which % len(m.graph.initializer)]
    if dims is not None:
        del t.dims[:]
        t.dims.extend(dims)
    if dtype:
        t.data_type = dtype
    if cut:
        t.raw_data = t.raw_data[:max(0, len(t.raw_data) - cut)]
    node = m.graph.node[which % len(m.graph.node)]
    if attr and node.attribute:
        a = node.attribute[attr % len(node.attribute)]
        if a.ints:
            a.ints[0] = attr - 5
        else:
            a.i = attr - 5
    return m.SerializeToString()


ONNX_FILES = st.one_of(
    st.builds(lambda edits: mutate(valid_onnx_bytes(), edits), EDITS),
    st.builds(lambda *a: _edit_onnx(valid_onnx_bytes(), *a), st.integers(0, 20),
              st.one_of(st.none(), st.lists(st.one_of(st.integers(0, 8), st.integers(-3, 2**62)), max_size=6)),
              st.sampled_from([0, 0, 1, 2, 3, 6, 7, 10, 11, 16, 99]), st.sampled_from([0, 0, 1, 4, 100]),
              st.integers(0, 12)),
    st.binary(max_size=200),
)


@SETTINGS
@given(data=ONNX_FILES)
def test_onnx_loader_loads_or_raises_onnx_error(data):
    pytest = __import__("pytest")
    pytest.importorskip("onnx")
    from convprop.onnx import OnnxError, load

    path = _write(data, ".onnx")

    def attempt():
        try:
            model = load(path)
        except OnnxError as e:
            _one_line(e)
            return
        try:  # a model that loads runs, or says in one line why not
            model.eval()(np.zeros((2, 1, 8, 8), model.dtype))
        except (ValueError, TypeError) as e:
            _one_line(e)

    try:
        _allocations_bounded(attempt)
    finally:
        os.unlink(path)


_VALID_WEIGHTS: list[bytes] = []


def valid_weights_bytes() -> bytes:
    if not _VALID_WEIGHTS:
        from convprop.weights import save_weights

        with tempfile.TemporaryDirectory() as d:
            path = save_weights(models.vgg_small(width=2), os.path.join(d, "w.safetensors"))
            _VALID_WEIGHTS.append(open(path, "rb").read())
    return _VALID_WEIGHTS[0]


def _safetensors(entries, tail: int) -> bytes:
    import json
    import struct

    header = json.dumps({f"t{i}": {"dtype": d, "shape": s, "data_offsets": o} for i, (d, s, o) in
                         enumerate(entries)}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * tail


WEIGHT_FILES = st.one_of(
    st.builds(lambda edits: mutate(valid_weights_bytes(), edits), EDITS),
    st.builds(_safetensors, st.lists(st.tuples(
        st.sampled_from(["F32", "F64", "F16", "I64", "BF16", "BOOL", "U8", "X", ""]),
        st.lists(st.one_of(st.integers(0, 4), st.integers(-1, 2**62)), max_size=4),
        st.lists(st.one_of(st.integers(0, 64), st.integers(-1, 2**64 - 1)), min_size=0, max_size=3)), max_size=3),
        st.integers(0, 64)),
    st.builds(lambda n, rest: n.to_bytes(8, "little") + rest, st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1)),
              st.binary(max_size=100)),
)


@SETTINGS
@given(data=WEIGHT_FILES)
def test_weights_loader_loads_or_raises_weights_error(data):
    pytest = __import__("pytest")
    pytest.importorskip("safetensors")
    from convprop.weights import WeightsError, load_weights

    path = _write(data, ".safetensors")

    def attempt():
        try:
            state = load_weights(path)
            assert all(isinstance(v, np.ndarray) for v in state.values())
        except WeightsError as e:
            _one_line(e)

    try:
        _allocations_bounded(attempt)
    finally:
        os.unlink(path)
