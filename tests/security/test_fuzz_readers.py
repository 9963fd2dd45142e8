"""Fuzzing the readers of files from strangers that are not commands' own (safetensors weights, CIFAR-10
batches, ONNX models), under a 1 GiB address-space cap (as `ulimit -v 1048576`), in subprocesses.

Valid files are damaged with a seeded generator (bit flips, inserted, deleted and duplicated bytes,
truncations), their headers and fields edited (lengths, dtypes, shapes, offsets, labels, attributes of
every type, external data locations, special files), and each goes through its reader by the API
(tests/support/fuzz_probe.py --readers, one capped process per chunk of files): every file loads, or
its reader raises its documented exception (WeightsError, CIFARError, OnnxError, FileNotFoundError)
with a message of one line; never another exception, never a MemoryError or a process killed by the cap.

CI: 400 safetensors files (each read with and without the model), 300 CIFAR-10 directories (both splits)
and 400 ONNX models, 1,100 in all.  The dedicated run, 21,000 (7,000 a reader):
    CONVPROP_FUZZ_EXAMPLES=7000 python -m pytest tests/security/test_fuzz_readers.py
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time

import hostile
import numpy as np
import pytest

from convprop import models
from convprop.data.cifar import RECORD

_ENV = os.environ.get("CONVPROP_FUZZ_EXAMPLES")
COUNTS = {"weights": int(_ENV or 400), "cifar": int(_ENV or 300), "onnx": int(_ENV or 400)}  # files per reader
CHUNK = 250  # files on disk at a time (each chunk: one capped probe process)
READERS = {"weights": ("weights", "weights-model"), "cifar": ("cifar-train", "cifar-test"), "onnx": ("onnx",)}


def mutate(rng: np.random.Generator, data: bytes, edits: int | None = None) -> bytes:
    """Flip, insert, delete, duplicate or cut bytes."""
    b = bytearray(data)
    for _ in range(edits if edits is not None else int(rng.integers(1, 6))):
        pos = int(rng.integers(0, max(len(b), 1)))
        kind = rng.integers(0, 6)
        if kind in (0, 5) and b:
            b[pos] ^= 1 << int(rng.integers(0, 8)) if kind == 5 else int(rng.integers(1, 256))
        elif kind == 1:
            b[pos:pos] = rng.bytes(int(rng.integers(1, 9)))
        elif kind == 2 and b:
            del b[pos:pos + int(rng.integers(1, 9))]
        elif kind == 3 and b:
            b[pos:pos] = b[pos:pos + int(rng.integers(1, 65))]
        elif kind == 4:
            del b[pos:]
    return bytes(b)


ODD = [None, True, False, 0, -1, 1, 3, 7, 2**31, 2**63, -2**63, 2**64, 10**30, 0.5, -0.0, 1e308, "", "x", "F32",
       "BF16", "__metadata__", [], [1], [[]], [-1, 5], [2**62, 2**62], {}, {"a": 1}, {"a": "b"}]


def odd(rng: np.random.Generator):
    return ODD[int(rng.integers(0, len(ODD)))]


# --------------------------------------------------------------------------- safetensors
def valid_weights() -> tuple[dict, bytes]:
    """lenet5's header (a dict) and data, as save_weights writes them."""
    state = models.lenet5().state_dict()
    return hostile_split(hostile.safetensors_of(state))


def hostile_split(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def weights_case(rng: np.random.Generator, header: dict, data: bytes) -> bytes:
    header = json.loads(json.dumps(header))
    data = bytearray(data)
    names = [k for k in header if k != "__metadata__"]
    kind = int(rng.integers(0, 7))
    if kind == 0:  # the file's bytes
        return mutate(rng, hostile.safetensors_bytes(header, bytes(data)))
    if kind == 1:  # the header length lies
        blob = hostile.safetensors_bytes(header, bytes(data))
        n = struct.unpack("<Q", blob[:8])[0]
        lie = int(rng.choice([0, 1, n - 1, n + 1, n + 8, len(blob), 2**32, 2**63, 2**64 - 1, n - 100]))
        return struct.pack("<Q", lie % 2**64) + blob[8:]
    if kind == 2:  # fields of entries: dtype, shape, offsets, extra or missing fields
        for _ in range(int(rng.integers(1, 4))):
            e = header[names[int(rng.integers(0, len(names)))]]
            field = str(rng.choice(["dtype", "shape", "data_offsets", "extra", "del"]))
            if field == "dtype":
                e["dtype"] = str(rng.choice(["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3",
                                             "Q", ""])) if rng.random() < 0.8 else odd(rng)
            elif field == "shape":
                e["shape"] = [int(rng.choice([0, 1, 2, 5, 6, 84, 2**31, 2**62, -1])) for _ in
                              range(int(rng.integers(0, 5)))] if rng.random() < 0.8 else odd(rng)
            elif field == "data_offsets":
                b, end = (e.get("data_offsets") or [0, 0]) if isinstance(e.get("data_offsets"), list) and len(
                    e["data_offsets"]) == 2 and all(isinstance(v, int) for v in e["data_offsets"]) else (0, 0)
                e["data_offsets"] = [b + int(rng.integers(-8, 9)), end + int(rng.integers(-8, 9))] if \
                    rng.random() < 0.6 else ([end, b] if rng.random() < 0.5 else odd(rng))
            elif field == "extra":
                e[str(rng.choice(["x", "dtype2", "offsets"]))] = odd(rng)
            else:
                e.pop(str(rng.choice(["dtype", "shape", "data_offsets"])), None)
        return hostile.safetensors_bytes(header, bytes(data))
    if kind == 3:  # keys: extra, missing, renamed, twice (raw), metadata of odd values
        k = names[int(rng.integers(0, len(names)))]
        what = int(rng.integers(0, 5))
        if what == 0:
            header.pop(k)
        elif what == 1:
            header[k + "x"] = header.pop(k)
        elif what == 2:
            header["__metadata__"] = odd(rng) if rng.random() < 0.5 else {"a": odd(rng)}
        elif what == 3:
            header["extra"] = {"dtype": "F32", "shape": [2], "data_offsets": [len(data), len(data) + 8]}
            data += rng.bytes(8)
        else:
            text = json.dumps(header)
            entry = json.dumps(header[k]) if rng.random() < 0.5 else json.dumps(
                {"dtype": "F32", "shape": [2**20], "data_offsets": [0, 2**22]})
            text = "{" + json.dumps(k) + ": " + entry + ", " + text[1:]
            return struct.pack("<Q", len(text)) + text.encode() + bytes(data)
        return hostile.safetensors_bytes(header, bytes(data))
    if kind == 4:  # values that are not finite, or the data cut or grown
        if rng.random() < 0.6 and len(data) >= 4:
            at = int(rng.integers(0, len(data) // 4)) * 4
            data[at:at + 4] = np.float32(rng.choice([np.nan, np.inf, -np.inf])).tobytes()
        elif rng.random() < 0.5:
            del data[int(rng.integers(0, len(data))):]
        else:
            data += rng.bytes(int(rng.integers(1, 64)))
        return hostile.safetensors_bytes(header, bytes(data))
    if kind == 5:  # the header's JSON text damaged, or nested deep
        text = json.dumps(header).encode()
        if rng.random() < 0.3:
            d = int(rng.choice([10, 65, 1000, 100_000]))
            text = b'{"a": ' + b"[" * d + b"]" * d + b"}"
        else:
            text = mutate(rng, text)
        return struct.pack("<Q", len(text)) + text + bytes(data)
    return rng.bytes(int(rng.integers(0, 200)))  # noise


# --------------------------------------------------------------------------- CIFAR-10
def cifar_records(rng: np.random.Generator, n: int) -> bytes:
    r = rng.integers(0, 256, (n, RECORD)).astype(np.uint8)
    r[:, 0] = rng.integers(0, 10, n)
    return r.tobytes()


def cifar_case(rng: np.random.Generator, d) -> None:
    """A directory of test_batch.bin and data_batch_1/2.bin with one thing wrong (or nothing)."""
    d.mkdir()
    files = {"test_batch.bin": 4, "data_batch_1.bin": 5, "data_batch_2.bin": 3}
    for name, n in files.items():
        (d / name).write_bytes(cifar_records(rng, n))
    name = str(rng.choice(list(files) + ["data_batch_3.bin"]))
    path = d / name
    data = path.read_bytes() if path.exists() else cifar_records(rng, 2)
    kind = int(rng.integers(0, 6))
    if kind == 0:  # the bytes
        path.write_bytes(mutate(rng, data))
    elif kind == 1:  # labels
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            b[RECORD * int(rng.integers(0, len(b) // RECORD))] = int(rng.choice([0, 9, 10, 99, 255]))
        path.write_bytes(bytes(b))
    elif kind == 2:  # sizes: cut or grown, by bytes or records, sparse up to 3 GB
        size = int(rng.choice([0, 1, RECORD - 1, RECORD, RECORD + 1, 2 * RECORD, len(data) - 1, len(data) + 1,
                               RECORD * 100_000, RECORD * 300_000 + 5, RECORD * 700_000, RECORD * 1_000_000]))
        hostile.sparse_file(str(path), data[:size], size)
    elif kind == 3:  # not a regular file
        if path.exists():
            path.unlink()
        what = int(rng.integers(0, 6))
        if what == 0:
            path.mkdir()
        elif what == 1:
            os.symlink(path, path)
        elif what == 2:
            os.symlink("/nonexistent/cifar", path)
        elif what == 3:
            os.mkfifo(path)
        elif what == 4:
            os.symlink("/dev/zero", path)
        else:
            os.symlink("/proc/self/mem", path)
    elif kind == 4:  # a batch missing, or one more
        if path.exists() and rng.random() < 0.7:
            path.unlink()
        else:
            (d / "data_batch_4.bin").write_bytes(cifar_records(rng, 2))
    # kind 5: valid


# --------------------------------------------------------------------------- ONNX
def valid_onnx() -> bytes:
    from convprop import nn
    from convprop import onnx as conv_onnx

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    d = hostile_tmp()
    try:
        return open(conv_onnx.export(model, os.path.join(d, "m.onnx"), (1, 1, 8, 8)), "rb").read()
    finally:
        shutil.rmtree(d)


def hostile_tmp() -> str:
    import tempfile

    return tempfile.mkdtemp()


def _odd_attribute(onnx, rng: np.random.Generator, name: str):
    """An attribute named `name` of any type, some of them where no operator takes one."""
    h = onnx.helper
    kind = int(rng.integers(0, 10))
    if kind == 0:
        return h.make_attribute(name, int(rng.choice([0, 1, -1, 2**62, 3])))
    if kind == 1:
        return h.make_attribute(name, float(rng.choice([0.5, np.nan, np.inf, -1.0])))
    if kind == 2:
        return h.make_attribute(name, [int(rng.choice([0, 1, -1, 2**40])) for _ in range(int(rng.integers(0, 6)))],
                                attr_type=onnx.AttributeProto.INTS)
    if kind == 3:
        return h.make_attribute(name, [0.5, 1.5], attr_type=onnx.AttributeProto.FLOATS)
    if kind == 4:
        return h.make_attribute(name, str(rng.choice(["NOTSET", "VALID", "SAME_UPPER", "x", ""])))
    if kind == 5:
        return h.make_attribute(name, [b"a", b"b"], attr_type=onnx.AttributeProto.STRINGS)
    if kind == 6:
        g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "sub", [h.make_tensor_value_info("x", 1, [1])],
                         [h.make_tensor_value_info("y", 1, [1])])
        return h.make_attribute(name, g)
    if kind == 7:
        dims = [int(rng.choice([0, 1, 2, 2**40])) for _ in range(int(rng.integers(0, 3)))]
        return h.make_attribute(name, onnx.TensorProto(name="t", data_type=int(rng.choice([1, 7, 6, 9, 16])),
                                                       dims=dims, raw_data=bytes(int(rng.integers(0, 17)))))
    if kind == 8:
        return h.make_attribute(name, [h.make_tensor("t", 1, [1], [1.0])], attr_type=onnx.AttributeProto.TENSORS)
    a = onnx.AttributeProto(name=name, type=int(rng.choice([1, 2, 3, 4, 5, 6, 7, 0, 8, 9, 10])))  # a type, no value
    return a


def onnx_case(rng: np.random.Generator, valid: bytes, d) -> str:
    """A damaged or edited model in directory d (with its external data, if any); its path."""
    import onnx

    d.mkdir()
    path = str(d / "m.onnx")
    kind = int(rng.integers(0, 7))
    if kind == 0:  # the bytes
        with open(path, "wb") as f:
            f.write(mutate(rng, valid))
        return path
    if kind == 6:
        with open(path, "wb") as f:
            f.write(rng.bytes(int(rng.integers(0, 200))))
        return path
    m = onnx.ModelProto.FromString(valid)
    g = m.graph
    if kind == 1:  # an initializer's dims, data type or bytes
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        what = int(rng.integers(0, 4))
        if what == 0:
            del t.dims[:]
            t.dims.extend(int(rng.choice([0, 1, 2, 3, 8, -1, 2**31, 2**62])) for _ in range(int(rng.integers(0, 6))))
        elif what == 1:
            t.data_type = int(rng.choice([0, 1, 2, 3, 6, 7, 9, 10, 11, 16, 99]))
        elif what == 2:
            t.raw_data = t.raw_data[:int(rng.integers(0, len(t.raw_data) + 1))]
        else:
            t.ClearField("raw_data")
            t.float_data.extend([1.0] * int(rng.integers(0, 40)))
    elif kind == 2:  # an attribute replaced by one of any type, or one added
        node = g.node[int(rng.integers(0, len(g.node)))]
        names = [a.name for a in node.attribute] + ["value", "kernel_shape", "pads", "strides", "alpha", "axis"]
        name = str(rng.choice(names))
        keep = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(keep + [_odd_attribute(onnx, rng, name)])
    elif kind == 3:  # Constant nodes: a weight given by a Constant whose value is of any type
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        c = onnx.helper.make_node("Constant", [], [t.name])
        c.attribute.extend([_odd_attribute(onnx, rng, str(rng.choice(["value", "value_ints", "value_float",
                                                                          "sparse_value"])))])
        keep = [i for i in g.initializer if i.name != t.name]
        del g.initializer[:]
        g.initializer.extend(keep)
        g.node.insert(0, c)
    elif kind == 4:  # the graph: cycles, undefined inputs, duplicate initializers, nodes twice
        what = int(rng.integers(0, 4))
        node = g.node[int(rng.integers(0, len(g.node)))]
        if what == 0:
            node.input[0] = g.node[-1].output[0]
        elif what == 1:
            node.input[0] = "undefined"
        elif what == 2:
            t = g.initializer[int(rng.integers(0, len(g.initializer)))]
            dup = onnx.TensorProto()
            dup.CopyFrom(t)
            del dup.dims[:]
            dup.dims.extend([1])
            dup.raw_data = dup.raw_data[:dup.raw_data and 4]
            g.initializer.append(dup)
        else:
            g.node.append(g.node[int(rng.integers(0, len(g.node)))])
    else:  # kind 5: external data, its location and range edited, or the file replaced
        from onnx.external_data_helper import convert_model_to_external_data

        convert_model_to_external_data(m, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
        blob = b"".join(t.raw_data for t in g.initializer)
        offsets, at = {}, 0
        for t in g.initializer:
            offsets[t.name] = (at, len(t.raw_data))
            at += len(t.raw_data)
        for t in g.initializer:
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", "w.bin"), ("offset", str(offsets[t.name][0])),
                         ("length", str(offsets[t.name][1]))):
                t.external_data.add(key=k, value=v)
        (d / "w.bin").write_bytes(blob)
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        info = {e.key: e for e in t.external_data}
        what = int(rng.integers(0, 5))
        if what == 0:
            info["location"].value = str(rng.choice(["../w.bin", "/etc/passwd", str(d / "w.bin"), "", ".", "..",
                                                     "sub/w.bin", "w.bin\0x", "link", "fifo", "dir", "zero", "loop"]))
            (d / "sub").mkdir()
            (d / "sub" / "w.bin").write_bytes(blob)
            os.symlink("/etc/passwd", d / "link")
            os.mkfifo(d / "fifo")
            (d / "dir").mkdir()
            os.symlink("/dev/zero", d / "zero")
            os.symlink(d / "loop", d / "loop")
        elif what == 1:
            info[str(rng.choice(["offset", "length"]))].value = str(rng.choice(
                ["-1", "0", "7", "x", "", "1e3", str(2**63), str(2**64), str(len(blob)), "12" * 40]))
        elif what == 2:
            (d / "w.bin").write_bytes(blob[:int(rng.integers(0, len(blob)))])
        elif what == 3:
            os.unlink(d / "w.bin")
            os.symlink("/etc/passwd" if rng.random() < 0.5 else "/dev/zero", d / "w.bin")
        else:
            t.external_data.add(key=str(rng.choice(["checksum", "location", "basepath"])), value="x")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return path


# --------------------------------------------------------------------------- running them
def _chunks(root):
    """(directory, [(reader, path)]) chunk by chunk, each chunk's files made as it is asked for."""
    rng = np.random.default_rng(20261205)
    header, data = valid_weights()
    onnx_bytes = valid_onnx()
    for kind, count in COUNTS.items():
        for start in range(0, count, CHUNK):
            chunk = root / f"{kind}-{start}"
            chunk.mkdir()
            cases = []
            for i in range(start, min(count, start + CHUNK)):
                if kind == "weights":
                    path = chunk / f"{i}.safetensors"
                    path.write_bytes(weights_case(rng, header, data))
                elif kind == "cifar":
                    path = chunk / str(i)
                    cifar_case(rng, path)
                else:
                    path = onnx_case(rng, onnx_bytes, chunk / str(i))
                cases += [(reader, str(path)) for reader in READERS[kind]]
            yield kind, chunk, cases


@pytest.fixture(scope="module")
def reader_results(tmp_path_factory):
    """{reader: [(path, result)]}: each chunk read by its own capped probe process, two at a time."""
    root = tmp_path_factory.mktemp("fuzz-readers")
    probe = os.path.join(os.path.dirname(hostile.__file__), "fuzz_probe.py")
    by_reader: dict[str, list] = {}
    running: list = []
    started = time.monotonic()

    def collect(chunk, cases, p):
        _, err = p.communicate(timeout=3600)
        assert p.returncode == 0, f"the probe of {chunk.name} died: {err[-3000:]}"
        with open(chunk / "results.json") as f:
            for (reader, path), result in zip(cases, json.load(f)):
                by_reader.setdefault(reader, []).append((path, result))
        shutil.rmtree(chunk)

    for _, chunk, cases in _chunks(root):
        with open(chunk / "cases.json", "w") as f:
            json.dump(cases, f)
        running.append((chunk, cases, subprocess.Popen(
            [sys.executable, probe, "--readers", str(chunk / "cases.json"), str(chunk / "results.json")], cwd=chunk,
            preexec_fn=hostile.limit_address_space, env=hostile.capped_env(), stderr=subprocess.PIPE, text=True)))
        while len(running) >= 2 and all(p.poll() is None for *_, p in running):
            time.sleep(0.05)
        for job in [j for j in running if j[2].poll() is not None]:
            running.remove(job)
            collect(*job)
    for job in running:
        collect(*job)
    by_reader["seconds"] = time.monotonic() - started
    return by_reader


def _failure(r) -> str | None:
    if r["escaped"]:
        return "traceback:\n" + r["escaped"][-1500:]
    if r["outcome"] == "error" and (not r["message"] or "\n" in r["message"]):
        return f"not one line: {r['message'][-500:]!r}"
    return None if r["outcome"] in ("ok", "error") else f"outcome {r['outcome']!r}"


@pytest.mark.parametrize("reader", [r for rs in READERS.values() for r in rs])
def test_no_generated_file_makes_a_reader_fail_other_than_in_one_line(reader_results, reader):
    results = reader_results[reader]
    bad = [(p, f) for p, r in results if (f := _failure(r))]
    assert not bad, f"{len(bad)} of {len(results)} files mishandled; the first:\n" + "\n\n".join(
        f"{reader} {p}\n{f}" for p, f in bad[:3])


def test_the_reader_fuzzing_runs_enough_cases_and_exercises_both_outcomes(reader_results):
    files = {kind: len(reader_results[rs[0]]) for kind, rs in READERS.items()}
    assert files == COUNTS and (sum(files.values()) >= 1000 or _ENV), files
    for reader in (r for rs in READERS.values() for r in rs):  # some files load, most are refused
        outcomes = [r["outcome"] for _, r in reader_results[reader]]
        assert outcomes.count("error") > len(outcomes) // 10 and outcomes.count("ok") >= 1, (
            reader, outcomes.count("ok"), outcomes.count("error"))
    counts = {r: (sum(x["outcome"] == "ok" for _, x in reader_results[r]), len(reader_results[r]))
              for rs in READERS.values() for r in rs}
    print(f"\n{sum(files.values())} files, {sum(n for _, n in counts.values())} reads in "
          f"{reader_results['seconds']:.0f} s; loaded/read: " + ", ".join(f"{r} {a}/{n}"
                                                                           for r, (a, n) in counts.items()))
