"""Fuzzing every file convprop reads from strangers, in two layers.

Property-based (hypothesis), in this process: the IDX reader, the checkpoint loader and the image reader
of `convprop predict` either load a generated or corrupted file or raise their documented exception
(IDXError, CheckpointError, ImageError, all ValueErrors, in one line).  300 files per target in CI.
(The safetensors, CIFAR-10 and ONNX readers: test_fuzz_readers.py, under the same cap as below.)

End to end, under a 1 GiB address-space cap (as `ulimit -v 1048576`): generated IDX files (raw and
gzip), checkpoint .npz members, checkpoint JSON headers (depth and values) and metrics.json files go
through `convprop train / train --resume / evaluate / predict / plot / explain` (tests/fuzz_probe.py,
one capped process per class), and no command may end in a traceback: each ends in success or in
one line `convprop: error: …` with exit code 2.  250 inputs per class and 60 explain command lines in CI.

CI runs 1,960 cases in all; the dedicated run, 35,060 (15,000 in process, 20,060 end to end):
    CONVPROP_FUZZ_EXAMPLES=5000 python -m pytest tests/security/test_fuzz.py
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

import hostile
import numpy as np
import pytest
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


# --------------------------------------------------------------------------- images
# Each loads, or raises its documented one-line error (ImageError, a ValueError).  (The ONNX and
# safetensors readers are fuzzed under an address-space cap by test_fuzz_readers.py.)


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


def _claiming(i: int, w: int, h: int, edits) -> bytes:
    from hostile import image_claiming

    return mutate(image_claiming(("PNG", "GIF", "BMP", "PPM", "JPEG", "TIFF")[i % 6], w, h), edits)


@SETTINGS
@given(data=st.one_of(IMAGES, st.builds(_claiming, st.integers(0, 5), st.integers(1, 65535), st.integers(1, 65535),
                                        EDITS)),
       mode=st.sampled_from(["L", "RGB"]))
def test_image_decoder_returns_bounded_pixels_or_raises_image_error(data, mode):
    """open_image, the decoder the data loaders and the server use: headers claiming any size in every format,
    damaged; at most max_pixels come back, and Pillow warns nothing."""
    import warnings

    from convprop.data.images import ImageError, open_image

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            a = open_image(data, name="fuzz", mode=mode, max_pixels=1_000_000)
            assert a.dtype == np.uint8 and a.ndim == (2 if mode == "L" else 3) and a.shape[0] * a.shape[1] <= 1_000_000
        except ImageError as e:
            _one_line(e)


# --------------------------------------------------------------------------- end to end, under a memory cap
CASES = int(os.environ.get("CONVPROP_FUZZ_EXAMPLES", "250"))  # inputs per class
IDX_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
JSON_VALUES = [None, True, False, 0, -1, 1, 7, 2**31, 2**63, 10**12, 10**400, 0.5, -0.0, 1e300, float("inf"),
               float("nan"), "", "x", "lenet5", "vgg_small", "float64", "adam", "sgd", [], [1], [[]], {}, {"a": 1}]


def np_mutate(rng: np.random.Generator, data: bytes, edits: int | None = None) -> bytes:
    """Flip, insert, delete, duplicate or cut bytes."""
    b = bytearray(data)
    for _ in range(edits if edits is not None else int(rng.integers(1, 6))):
        pos = int(rng.integers(0, max(len(b), 1)))
        kind = rng.integers(0, 5)
        if kind == 0 and b:
            b[pos] = int(rng.integers(0, 256))
        elif kind == 1:
            b[pos:pos] = rng.bytes(int(rng.integers(1, 9)))
        elif kind == 2 and b:
            del b[pos:pos + int(rng.integers(1, 9))]
        elif kind == 3 and b:
            b[pos:pos] = b[pos:pos + int(rng.integers(1, 65))]
        elif kind == 4:
            del b[pos:]
    return bytes(b)


def json_value(rng: np.random.Generator, depth: int = 0):
    k = rng.integers(0, 10)
    if k == 0 and depth < 3:
        return [json_value(rng, depth + 1) for _ in range(rng.integers(0, 4))]
    if k == 1 and depth < 3:
        return {str(rng.choice(["a", "epoch", "model", "state", "lr", "0"])): json_value(rng, depth + 1)
                for _ in range(rng.integers(0, 3))}
    if k == 2:  # deep nesting, sometimes very deep
        d = int(rng.choice([2, 60, 70, 1000, 100_000]))
        return json.loads("[" * min(d, 50) + "]" * min(d, 50)) if d <= 50 else _Deep(d)
    return JSON_VALUES[int(rng.integers(0, len(JSON_VALUES)))]


class _Deep:
    """A value that dumps as nesting d levels deep (json.dumps would recurse)."""

    def __init__(self, d):
        self.d = d


def dumps(value) -> bytes:
    """JSON text, _Deep values spelled out (Python's json cannot write them)."""
    marks = []

    def swap(v):
        if isinstance(v, _Deep):
            marks.append(v.d)
            return f"@@DEEP{len(marks) - 1}@@"
        if isinstance(v, list):
            return [swap(x) for x in v]
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        return v

    text = json.dumps(swap(value))
    for i, d in enumerate(marks):
        text = text.replace(f'"@@DEEP{i}@@"', "[" * d + "]" * d)
    return text.encode()


def edit_json(rng: np.random.Generator, doc):
    """Set, delete or replace values at random paths of a JSON document."""
    doc = json.loads(json.dumps(doc))
    for _ in range(int(rng.integers(1, 4))):
        node, key = doc, None
        for _ in range(int(rng.integers(1, 4))):
            if isinstance(node, dict) and node:
                key = str(rng.choice(list(node)))
            elif isinstance(node, list) and node:
                key = int(rng.integers(0, len(node)))
            else:
                break
            if isinstance(node[key], (dict, list)) and rng.random() < 0.6:
                node = node[key]
                key = None
            else:
                break
        if key is None:
            continue
        if rng.random() < 0.2 and isinstance(node, dict):
            del node[key]
        else:
            node[key] = json_value(rng)
    return doc


def idx_case(rng: np.random.Generator, raw: dict[str, bytes]) -> tuple[str, bytes, bool]:
    """(which file, its new content, gzip it?)."""
    name = IDX_NAMES[int(rng.integers(0, 4))]
    labels = "labels" in name
    kind = rng.integers(0, 6)
    if kind == 0:  # the real file, damaged
        data = np_mutate(rng, raw[name])
    elif kind == 1:  # any header, any sizes, a payload that may or may not fit
        ndim = int(rng.integers(0, 5))
        sizes = [int(rng.choice([0, 1, 2, 28, 30, 40, 2**16, 2**32 - 1])) for _ in range(ndim)]
        code = int(rng.choice([8, 9, 11, 12, 13, 14, 0, 255]))
        n = int(np.prod(sizes, dtype=object)) if sizes else 0
        payload = rng.bytes(n if n <= 100_000 and rng.random() < 0.5 else int(rng.integers(0, 200)))
        data = bytes([0, 0, code, ndim]) + b"".join(s.to_bytes(4, "big") for s in sizes) + payload
    elif kind == 2 and labels:  # labels of every type, NaN, inf, fractions, negatives included
        n = 40 if name.startswith("train") else 30
        code, dt = [(0x0D, ">f4"), (0x0E, ">f8"), (0x09, "i1"), (0x0B, ">i2"), (0x0C, ">i4")][int(rng.integers(0, 5))]
        values = rng.choice(np.array([0, 1, 9, 10, -1, 2.5, np.nan, np.inf, 2**20]), n)
        with np.errstate(invalid="ignore"):
            data = hostile.idx_header(code, (n,)) + values.astype(dt).tobytes()
    elif kind == 3 and not labels:  # images of odd sizes
        n = 40 if name.startswith("train") else 30
        h, w = int(rng.choice([0, 1, 3, 28, 29, 100])), int(rng.choice([0, 1, 28, 40]))
        data = hostile.idx_header(8, (n, h, w)) + rng.bytes(n * h * w)
    elif kind == 4:  # a gzip bomb: 64 MiB of zeros behind a header with some claim
        n = int(rng.choice([10, 40, 85_000, 2**31 // 784, 2**32 - 1]))
        return name, hostile.gzip_of_zeros(hostile.idx_header(8, (n, 28, 28)), 64 * hostile.MIB), False
    else:  # the real file, its header's sizes replaced
        data = bytearray(raw[name])
        at = 4 + 4 * int(rng.integers(0, data[3]))
        data[at:at + 4] = int(rng.choice([0, 1, 39, 41, 2**24, 2**32 - 1])).to_bytes(4, "big")
        data = bytes(data)
    return name, data, rng.random() < 0.7


def npz_case(rng: np.random.Generator, base: str, dst: str) -> None:
    """A damaged copy of the checkpoint base."""
    kind = rng.integers(0, 6)
    members = zipfile.ZipFile(base).namelist()
    if kind == 0:  # bytes of the archive
        with open(base, "rb") as f:
            data = np_mutate(rng, f.read())
        with open(dst, "wb") as f:
            f.write(data)
    elif kind == 1:  # one member's bytes
        m = str(rng.choice(members))
        hostile.rewrite_npz(base, dst, members={m: np_mutate(rng, zipfile.ZipFile(base).read(m))})
    elif kind == 2:  # a member added or replaced by any .npy header
        name = str(rng.choice(members + ["extra.npy", "model/extra.npy", "optim/0/momentum_buffer.npy",
                                         "optim/99/exp_avg.npy", "optim/-1/x.npy", "optim/x/y.npy",
                                         "../evil.npy", "meta", "model/0.weight"]))
        shape = tuple(int(rng.choice([0, 1, 5, 6, 10, 2**20, 2**40])) for _ in range(int(rng.integers(0, 4))))
        dtype = str(rng.choice(["<f4", "<f8", ">f4", "<i8", "|u1", "|b1", "<U3", "|V8", "O"]))
        head = hostile.npy_header(shape, dtype) if dtype != "O" else hostile.npy_header(shape, "<f4").replace(
            b"'<f4'", b"'|O'")
        hostile.rewrite_npz(base, dst, members={name: head + rng.bytes(int(rng.integers(0, 400)))})
    elif kind == 3:  # a member deleted
        keep = [m for m in members if m != str(rng.choice(members))]
        with zipfile.ZipFile(base) as z, zipfile.ZipFile(dst, "w") as out:
            for m in keep:
                out.writestr(m, z.read(m))
    elif kind == 4:  # a member that expands to 64 MiB behind its header
        name = str(rng.choice(members + ["extra.npy"]))
        shape = (int(rng.choice([6, 2**24, 2**28])),)
        hostile.rewrite_npz(base, dst, {name: (hostile.npy_header(shape), 64 * hostile.MIB)})
    else:  # a duplicated member
        with zipfile.ZipFile(base) as z, zipfile.ZipFile(dst, "w") as out:
            for m in members:
                out.writestr(m, z.read(m))
            m = str(rng.choice(members))
            with __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")
                out.writestr(m, z.read(m))


def header_case(rng: np.random.Generator, base: str, dst: str) -> None:
    """The checkpoint base with its JSON header edited (values, types, nesting) or its text damaged."""
    with np.load(base) as z:
        meta = json.loads(z["meta"].tobytes())
    text = dumps(edit_json(rng, meta)) if rng.random() < 0.8 else np_mutate(rng, json.dumps(meta).encode())
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(text, np.uint8))
    hostile.rewrite_npz(base, dst, members={"meta.npy": buf.getvalue()})


def metrics_case(rng: np.random.Generator, base: bytes) -> bytes:
    kind = rng.integers(0, 4)
    if kind == 0:
        return np_mutate(rng, base)
    if kind == 1:
        return dumps(json_value(rng))
    return dumps(edit_json(rng, json.loads(base)))


def explain_case(rng: np.random.Generator) -> list[str]:
    argv = ["explain", str(rng.choice(["conv", "transposed-conv", "maxpool", "avgpool", "linear", "network", "all",
                                       "nope"]))]
    for flag in ("--size", "--kernel", "--stride", "--padding", "--seed", "--format"):
        if rng.random() < 0.4:
            value = rng.choice(["0", "-1", "1", "2", "3", "5", "x", "", "1e3", "99999999999999999999999", "markdown"])
            argv += [flag, str(value) if flag != "--size" or value not in ("1e3",) else "4"]
    return argv


CHUNK = 500  # inputs on disk at a time (a dedicated run's 5,000 checkpoints a class would take 4 GB)


def _chunks(root, tiny):
    """(directory, command lines) of every chunk of every class, made as they are asked for; each
    chunk's files lie under its directory."""
    rng = np.random.default_rng(20261201)
    ckpt, data, digit = str(tiny / "run" / "checkpoint.npz"), tiny / "data", str(tiny / "digit.png")
    raw = {n: gzip.open(data / f"{n}.gz").read() for n in IDX_NAMES}
    metrics = (tiny / "run" / "metrics.json").read_bytes()

    def idx(d):
        shutil.copytree(data, d)
        name, content, compress = idx_case(rng, raw)
        os.unlink(d / f"{name}.gz")
        gz = compress or content[:2] == b"\x1f\x8b"
        with open(d / (name + (".gz" if gz else "")), "wb") as f:
            f.write(gzip.compress(content) if compress else content)
        argv = [["train", "--data", str(d), "--epochs", "1", "--workers", "1", "--no-progress", "--out", f"{d}-out"]]
        return argv + ([["evaluate", ckpt, "--data", str(d)]] if name.startswith("t10k") else [])

    def checkpoints(make):
        def one(d):
            d.mkdir()
            path = str(d / "checkpoint.npz")
            make(rng, ckpt, path)
            return [["evaluate", path, "--data", str(data)], ["predict", path, digit],
                    ["train", "--resume", path, "--no-progress", "--workers", "1"],
                    ["export", path, str(d / "weights.safetensors")]]
        return one

    def plot(d):
        d.mkdir()
        os.link(ckpt, d / "checkpoint.npz")
        (d / "metrics.json").write_bytes(metrics_case(rng, metrics))
        return [["plot", str(d), "--data", str(data)]]

    for kind, make in (("idx", idx), ("npz", checkpoints(npz_case)), ("header", checkpoints(header_case)),
                       ("metrics", plot)):
        for start in range(0, CASES, CHUNK):
            chunk = root / f"{kind}-{start}"
            chunk.mkdir()
            yield chunk, [argv for i in range(start, min(CASES, start + CHUNK)) for argv in make(chunk / str(i))]
    chunk = root / "explain"
    chunk.mkdir()
    yield chunk, [explain_case(rng) for _ in range(60)]


def command_of(argv: list[str]) -> str:
    return "train --resume" if argv[:2] == ["train", "--resume"] else argv[0]


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory):
    """{command: [(argv, result)]} for every generated input: each chunk run by its own capped probe
    process, two at a time (CI has 2 cores), and removed once read."""
    root = tmp_path_factory.mktemp("fuzz")
    tiny = root / "tiny"
    tiny.mkdir()
    hostile.make_tiny(tiny)
    probe = os.path.join(os.path.dirname(hostile.__file__), "fuzz_probe.py")
    by_command: dict[str, list] = {}
    running: list = []

    def collect(chunk, cases, p):
        _, err = p.communicate(timeout=3600)
        assert p.returncode == 0, f"the probe of {chunk.name} died: {err[-3000:]}"
        with open(chunk / "results.json") as f:
            for argv, result in zip(cases, json.load(f)):
                by_command.setdefault(command_of(argv), []).append((argv, result))
        shutil.rmtree(chunk)

    for chunk, cases in _chunks(root, tiny):
        with open(chunk / "cases.json", "w") as f:
            json.dump(cases, f)
        running.append((chunk, cases, subprocess.Popen(
            [sys.executable, probe, str(chunk / "cases.json"), str(chunk / "results.json")], cwd=chunk,
            preexec_fn=hostile.limit_address_space, env=hostile.capped_env(), stderr=subprocess.PIPE, text=True)))
        while len(running) >= 2 and all(p.poll() is None for *_, p in running):
            time.sleep(0.05)
        for job in [j for j in running if j[2].poll() is not None]:
            running.remove(job)
            collect(*job)
    for job in running:
        collect(*job)
    return by_command


def _failure(argv, r) -> str | None:
    if r["escaped"]:
        return "traceback:\n" + r["escaped"][-1500:]
    if "Traceback" in r["stderr"]:
        return "traceback on stderr:\n" + r["stderr"][-1500:]
    allowed = (0, 2, 1) if argv[0] in ("explain", "train") else (0, 2)  # 1: a failed check / a diverged run
    if r["rc"] not in allowed:
        return f"exit code {r['rc']}: {r['stderr'][-500:]}"
    if r["rc"] == 2 and not (r["stderr"].startswith("convprop: error: ") and r["stderr"].count("\n") == 1):
        return f"exit 2 without exactly one line: {r['stderr'][-500:]!r}"
    if r["rc"] == 1 and r["stderr"].count("\n") > 1:
        return f"exit 1 with more than one line: {r['stderr'][-500:]!r}"
    return None


@pytest.mark.parametrize("command", ["train", "train --resume", "evaluate", "predict", "export", "plot", "explain"])
def test_no_generated_input_makes_a_command_end_in_a_traceback(fuzz_results, command):
    results = fuzz_results[command]
    assert len(results) >= min(40, CASES)
    bad = [(argv, f) for argv, r in results if (f := _failure(argv, r))]
    assert not bad, f"{len(bad)} of {len(results)} inputs failed; the first:\n" + "\n\n".join(
        f"convprop {' '.join(argv)}\n{f}" for argv, f in bad[:3])


def test_the_fuzz_suite_runs_enough_cases_and_exercises_both_outcomes(fuzz_results):
    total = sum(len(v) for v in fuzz_results.values())
    inputs = 4 * CASES + 60
    assert (inputs >= 1000 or "CONVPROP_FUZZ_EXAMPLES" in os.environ) and total >= inputs
    for command in ("train", "evaluate", "train --resume", "plot"):  # some inputs pass, most are refused
        rcs = [r["rc"] for _, r in fuzz_results[command]]
        assert rcs.count(2) > len(rcs) // 4 and (rcs.count(0) >= 1 or CASES < 100), (command, rcs.count(0),
                                                                                       rcs.count(2))
