"""Hostile safetensors files for `convprop train --init` and convprop.load_weights: each is refused in one
line naming the file (and the tensor where there is one) before any tensor is read where the header
can tell, under a 1 GiB address-space cap; odd-but-valid files (F16, BF16, F64, padded headers) load."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from hostile import (
    GIB,
    one_line_failure,
    raised_within,
    run_many_capped,
    safetensors_bytes,
    safetensors_of,
    sparse_file,
)

from convprop import models
from convprop.weights import WeightsError, load_weights, read_header, read_metadata, save_weights

LENET = models.lenet5().state_dict()


def _set(key, field, value):
    def edit(h, d):
        h[key][field] = value
    return edit


def _nan(value):
    def edit(h, d):
        begin = h["3.weight"]["data_offsets"][0]
        d[begin + 40:begin + 44] = np.float32(value).tobytes()
    return edit


def _dup_raw(state) -> bytes:
    """A header with "0.bias" twice: the first a lie about its shape, the second right."""
    good = safetensors_of(state)
    n = struct.unpack("<Q", good[:8])[0]
    text = good[8:8 + n].decode()
    entry = json.dumps({"dtype": "F32", "shape": [6000], "data_offsets": [0, 24000]})
    text = text[:1] + f'"0.bias": {entry}, ' + text[1:]
    return struct.pack("<Q", len(text)) + text.encode() + good[8 + n:]


def _shift_all(h, d, by=4):
    for e in h.values():
        e["data_offsets"] = [e["data_offsets"][0] + by, e["data_offsets"][1] + by]


HEADER = {"0.weight": {"dtype": "F32", "shape": [6, 1, 5, 5], "data_offsets": [0, 600]}}
CASES = {  # name: (file bytes, or (path) -> None for special files, words the message must hold)
    "empty file": (b"", "too short"),
    "7 bytes": (b"\x10" * 7, "too short"),
    "header length > file": (struct.pack("<Q", 500) + b"{}", "header length 500 bytes, but the file has 2"),
    "header length 2^63": (struct.pack("<Q", 2**63) + b"{}" + bytes(64), "header length 9,223,372,036,854,775,808"),
    "header length 2^64-1": (struct.pack("<Q", 2**64 - 1) + b"{}", "header length"),
    "header length 0": (struct.pack("<Q", 0), "does not start with '{'"),
    "header not JSON": (safetensors_bytes({}, raw_header=b"{not json at all}"), "not valid JSON"),
    "header not UTF-8": (safetensors_bytes({}, raw_header=b'{"\xff\xfe": 1}'), "not valid JSON"),
    "header a list": (safetensors_bytes({}, raw_header=b"[1, 2]"), "does not start with '{'"),
    "header JSON nested 10^5 deep": (safetensors_bytes({}, raw_header=b'{"a": ' + b"[" * 100_000 + b"]" * 100_000
                                                       + b"}"), "nested 100001 deep"),
    "header of 10^5-digit integer": (safetensors_bytes({}, raw_header=b'{"a": {"dtype": "F32", "shape": [1' + b"0" *
                                                       100_000 + b'], "data_offsets": [0, 4]}}'), "not valid JSON"),
    "header length over 4 MiB": (safetensors_bytes({}, raw_header=b"{" + b" " * (5 << 20) + b"}"), "the limit is"),
    "duplicate tensor key": (_dup_raw(LENET), "'0.bias' appears twice"),
    "duplicate __metadata__": (safetensors_bytes({}, raw_header=b'{"__metadata__": {}, "__metadata__": {"a": "b"}}'),
                               "'__metadata__' appears twice"),
    "offsets overlapping": (safetensors_of(LENET, _set("0.bias", "data_offsets", [576, 600])), "overlaps"),
    "offsets out of range": (safetensors_of(LENET, lambda h, d: [_shift_all(h, d, 4000)]), "belong to no tensor"),
    "offsets past the end": (safetensors_of(LENET, lambda h, d: d.__delitem__(slice(len(d) - 8, None))),
                             "past its end"),
    "offsets reversed": (safetensors_of(LENET, _set("0.bias", "data_offsets", [624, 600])), "0 ≤ begin ≤ end"),
    "offsets negative": (safetensors_of(LENET, _set("0.bias", "data_offsets", [-24, 0])), "0 ≤ begin ≤ end"),
    "offsets of 3": (safetensors_of(LENET, _set("0.bias", "data_offsets", [600, 624, 0])), "data_offsets"),
    "offsets as strings": (safetensors_of(LENET, _set("0.bias", "data_offsets", ["600", "624"])), "data_offsets"),
    "a gap before a tensor": (safetensors_of(LENET, lambda h, d: [_shift_all(h, d), d.__setitem__(slice(0, 0),
                                                                                                  bytes(4))]),
                              "4 bytes before tensor"),
    "extra bytes after the last tensor": (safetensors_of(LENET, lambda h, d: d.extend(bytes(16))), "extra bytes"),
    "dtype unknown": (safetensors_of(LENET, _set("0.bias", "dtype", "Q9")), "has dtype 'Q9'"),
    "dtype BOOL": (safetensors_of(LENET, _set("0.bias", "dtype", "BOOL")), "convprop does not read"),
    "dtype a number": (safetensors_of(LENET, _set("0.bias", "dtype", 5)), "has dtype '5'"),
    "dtype I32 for a float weight": (safetensors_of(LENET, _set("0.bias", "dtype", "I32")),
                                     "expected a floating dtype"),
    "dtype F16, size of F32": (safetensors_of(LENET, _set("0.bias", "dtype", "F16")), "span"),
    "shape product overflows int64": (safetensors_bytes({"w": {"dtype": "F32", "shape": [2**62, 2**62, 16],
                                                               "data_offsets": [0, 8]}}, bytes(8)),
                                      "1,361,129,467,683,753,853,853,498,429,727,072,845,824 bytes"),
    "shape huge, offsets honest, data small": (safetensors_bytes({"w": {"dtype": "F32", "shape": [2**30, 2**30],
                                                                        "data_offsets": [0, 2**62]}}, bytes(8)),
                                               "past its end"),
    "shape negative": (safetensors_of(LENET, _set("0.bias", "shape", [-1, -6])), "sizes ≥ 0"),
    "shape of floats": (safetensors_of(LENET, _set("0.bias", "shape", [6.0])), "sizes ≥ 0"),
    "shape of booleans": (safetensors_of(LENET, _set("0.bias", "shape", [True] * 6)), "sizes ≥ 0"),
    "shape NaN": (safetensors_bytes({}, raw_header=b'{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}'),
                  "sizes ≥ 0"),
    "shape of 40 dims": (safetensors_of(LENET, _set("0.bias", "shape", [1] * 34 + [6])), "at most 32"),
    "shape a string": (safetensors_of(LENET, _set("0.bias", "shape", "6")), "sizes ≥ 0"),
    "shape wrong for the model": (safetensors_of(LENET, _set("0.weight", "shape", [1, 6, 5, 5])),
                                  "'0.weight': expected shape [6, 1, 5, 5], got [1, 6, 5, 5]"),
    "entry with an extra field": (safetensors_of(LENET, _set("0.bias", "sha256", "x")), "expected the fields"),
    "entry without data_offsets": (safetensors_of(LENET, lambda h, d: h["0.bias"].pop("data_offsets")),
                                   "expected the fields"),
    "entry a list": (safetensors_bytes({"w": [1, 2]}), "expected the fields"),
    "NaN weight": (safetensors_of(LENET, _nan(np.nan)), "'3.weight' holds 1 values that are not finite"),
    "Inf weight": (safetensors_of(LENET, _nan(-np.inf)), "not finite (e.g. -inf)"),
    "NaN in F16": (safetensors_of(LENET, lambda h, d: d.__setitem__(slice(0, 2), np.float16(np.nan).tobytes()),
                                  dtype="F16"), "'0.weight' holds 1 values that are not finite"),
    "F64 beyond float32": (safetensors_of(LENET, lambda h, d: d.__setitem__(slice(8, 16), np.float64(-1e300).tobytes()),
                                          dtype="F64"), "'0.weight' holds 1e+300, beyond the model's float32"),
    "extra key": (safetensors_of({**LENET, "evil": np.zeros(3, np.float32)}), "1 unexpected ('evil')"),
    "missing key": (safetensors_of({k: v for k, v in LENET.items() if k != "11.bias"}), "1 missing ('11.bias')"),
    "keys of another model": (safetensors_of(models.vgg_small(width=2).state_dict()), "do not match this"),
    "no tensors at all": (safetensors_bytes({}), "10 missing"),
    "__metadata__ int value": (safetensors_of(LENET, lambda h, d: h.__setitem__("__metadata__", {"a": 1})),
                               "'a' is int"),
    "__metadata__ a list": (safetensors_of(LENET, lambda h, d: h.__setitem__("__metadata__", ["a"])),
                            "expected an object of strings, list"),
    "__metadata__ nested": (safetensors_of(LENET, lambda h, d: h.__setitem__("__metadata__", {"a": {"b": "c"}})),
                            "'a' is dict"),
    "50,000 tiny tensors": (safetensors_bytes({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                                               for i in range(50_000)}), "50000 unexpected"),
    "a name with a newline": (safetensors_of({**LENET, "a\nconvprop: error: forged": np.zeros(1, np.float32)}),
                              "'a\\nconvprop: error: forged'"),
}
HUGE = safetensors_bytes({"0.weight": {"dtype": "F32", "shape": [225_000_000], "data_offsets": [0, 900_000_000]}})
SPECIAL = {  # made on disk by make(path)
    "sparse 6 GB, honest header": (lambda p: sparse_file(p, safetensors_bytes({"0.weight": {
        "dtype": "F32", "shape": [6, 1, 5, 5 * 10**7], "data_offsets": [0, 6 * 10**9]}}), 6 * 10**9 + 200),
        "over the limit of 1,073,741,824"),
    "sparse 900 MB, a model's name, a huge shape": (lambda p: sparse_file(p, HUGE, 900_000_000 + len(HUGE)),
        "9 missing ('0.bias'"),
    "sparse 900 MB header length": (lambda p: sparse_file(p, struct.pack("<Q", 900_000_000) + b"{", 900_000_100),
                                    "the limit is"),
    "a directory": (lambda p: os.mkdir(p), "got a directory or device"),
    "a fifo": (lambda p: os.mkfifo(p), "got a directory or device"),
    "/dev/zero": (lambda p: os.symlink("/dev/zero", p), "got a directory or device"),
    "/proc/self/mem": (lambda p: os.symlink("/proc/self/mem", p), "0 bytes, too short"),
    "a symlink loop": (lambda p: os.symlink(p, p), "no such file"),
    "/etc/passwd": (lambda p: os.symlink("/etc/passwd", p), "header length"),
}


def _make(tmp_path, case) -> str:
    path = str(tmp_path / f"{case.replace(' ', '_').replace('/', '_')}.safetensors")
    if case in CASES:
        with open(path, "wb") as f:
            f.write(CASES[case][0])
    else:
        SPECIAL[case][0](path)
    return path


def _words(case):
    return (CASES.get(case) or SPECIAL[case])[1]


@pytest.mark.parametrize("case", sorted(CASES) + sorted(SPECIAL))
def test_load_weights_refuses_each_hostile_file_in_one_line_naming_it(tmp_path, case):
    path = _make(tmp_path, case)
    with pytest.raises((WeightsError, FileNotFoundError)) as e:
        load_weights(path, models.lenet5())
    msg = str(e.value)
    assert msg.startswith(path) and "\n" not in msg and _words(case) in msg, msg


def test_every_hostile_file_is_one_line_from_train_init_under_1_gib(tmp_path):
    cases = sorted(CASES) + sorted(SPECIAL)
    paths = [_make(tmp_path, c) for c in cases]
    results = run_many_capped([["train", "--init", p, "--epochs", "1", "--train-size", "20", "--test-size", "10",
                                "--no-progress", "--workers", "1", "--out", str(tmp_path / f"run{i}")]
                               for i, p in enumerate(paths)], tmp_path)
    bad = [(c, f) for c, p, r in zip(cases, paths, results) if (f := one_line_failure(r, _words(c)))]
    assert not bad, f"{len(bad)} of {len(cases)} mishandled: {bad[:3]}"
    assert all("--init" in r["stderr"] and "--lr" not in r["stderr"] for r in results), [r["stderr"] for r in results]


def test_header_is_checked_against_the_model_before_any_tensor_is_read(tmp_path, monkeypatch):
    import convprop.weights as w

    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_of(LENET, _set("11.bias", "shape", [5, 2])))
    read = []
    monkeypatch.setattr(w, "_read_tensor", lambda *a: read.append(a[2]))
    with pytest.raises(WeightsError, match="'11.bias': expected shape"):
        load_weights(str(path), models.lenet5())
    assert read == []


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
def test_valid_files_of_every_float_dtype_and_padded_headers_load(tmp_path, dtype):
    model = models.vgg_small(width=2)
    state = {k: np.asarray(v) + (0.25 if np.asarray(v).dtype.kind == "f" else 3) for k, v in model.state_dict().items()}
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_of(state, dtype=dtype))
    loaded = load_weights(str(path), model)
    model.load_state_dict(loaded)
    tol = {"F32": 0, "F64": 0, "F16": 1e-3, "BF16": 1e-2}[dtype]
    for k, v in state.items():
        assert np.allclose(model.state_dict()[k], v, rtol=tol, atol=tol), k
    padded = save_weights(model, str(tmp_path / "p.safetensors"), metadata={"classes": ["a", "b"], "note": "x"})
    assert read_metadata(padded) == {"classes": '["a", "b"]', "note": "x"}
    assert (read_header(padded).data_start - 8) % 8 == 0  # the package pads its header with spaces
    assert load_weights(padded, model).keys() == state.keys()


def test_memory_is_bounded_by_the_model_not_the_file(tmp_path):
    """An honest 700 MB file of the model's names, one of them of another shape, is refused from its
    header: nothing of it is read (under the 1 GiB cap, this process could not hold 700 MB more)."""
    header, at = {}, 0
    for k, v in LENET.items():
        shape = [175_000_000] if k == "0.weight" else list(v.shape)
        n = 4 * int(np.prod(shape))
        header[k] = {"dtype": "F32", "shape": shape, "data_offsets": [at, at + n]}
        at += n
    head = safetensors_bytes(header)
    path = sparse_file(str(tmp_path / "big.safetensors"), head, len(head) + at)
    with pytest.raises(WeightsError, match=r"'0.weight': expected shape \[6, 1, 5, 5\], got \[175000000\]"):
        load_weights(path, models.lenet5())
    with pytest.raises(WeightsError, match="over the limit"):
        load_weights(path, max_bytes=GIB // 2)


def test_save_weights_keeps_0_d_tensors_0_d(tmp_path):
    """BatchNorm's num_batches_tracked is 0-d, as torch's; np.ascontiguousarray would write it as (1,)."""
    model = models.vgg_small(width=2)
    path = save_weights(model, str(tmp_path / "v.safetensors"))
    assert read_header(path).tensors["1.num_batches_tracked"].shape == ()
    model.load_state_dict(load_weights(path, model))


def test_a_name_swapped_for_a_fifo_after_the_look_is_refused_not_waited_on(tmp_path, monkeypatch):
    import convprop._files as files

    fifo = str(tmp_path / "w.safetensors")
    os.mkfifo(fifo)
    monkeypatch.setattr(files, "checked_size", lambda *a: 0)  # the name looked like a regular file
    e = raised_within(lambda: load_weights(fifo, models.lenet5()))
    assert isinstance(e, WeightsError) and "got a special file" in str(e), e
