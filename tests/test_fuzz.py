"""Property-based fuzzing of the two loaders of untrusted files: the IDX reader and the checkpoint loader.

Every generated or corrupted file must either load or raise the documented exception (IDXError /
CheckpointError, both ValueErrors); anything else fails.  CI runs 300 files per target; the
dedicated run is
    CONVPROP_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py      (10,000 files)
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
