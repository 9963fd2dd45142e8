"""Hostile CIFAR-10 batch directories: each ends in one line naming the file, with exit code 2, under a
1 GiB address-space cap, before anything the size of the file is allocated."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hostile import GIB, one_line_failure, raised_within, run_many_capped, sparse_file

from convprop.data import CIFARError, load_cifar10, read_cifar_bin
from convprop.data.cifar import RECORD

TEST, B1, B2 = "test_batch.bin", "data_batch_1.bin", "data_batch_2.bin"


def records(n: int, label: int = 3, bad_at: int | None = None) -> bytes:
    rng = np.random.default_rng(n)
    r = rng.integers(0, 256, (n, RECORD)).astype(np.uint8)
    r[:, 0] = label
    if bad_at is not None:
        r[bad_at, 0] = 255
    return r.tobytes()


def _write(content):
    def make(p):
        with open(p, "wb") as f:
            f.write(content)
    return make


def _link(target):
    return lambda p: os.symlink(target if target != "self" else p, p)


def _remove(p):
    os.unlink(p)


CASES = {  # name: ({file: make(path)}, which split (train?), words)
    "3000 bytes": ({TEST: _write(bytes(3000))}, False, "3000 bytes, expected a positive multiple of 3073"),
    "one byte over a record": ({B2: _write(records(2) + b"\0")}, True, "6147 bytes"),
    "empty": ({TEST: _write(b"")}, False, "0 bytes"),
    "CIFAR-100 records (3074 bytes)": ({TEST: _write(bytes(3074 * 3))}, False, "9222 bytes"),
    "label 255 at record 7": ({TEST: _write(records(20, bad_at=7))}, False, "record 7 has label 255"),
    "label 10": ({B2: _write(records(5, label=10))}, True, "data_batch_2.bin: record 0 has label 10"),
    "label 255 in the second chunk": ({B1: _write(records(1500, bad_at=1400))}, True, "record 1400 has label 255"),
    "sparse 6 GB, a multiple of the record": ({TEST: lambda p: sparse_file(p, records(1), RECORD * 2_000_000)}, False,
                                              "6,146,000,000 bytes, over the limit of 2,147,483,648"),
    "sparse 6 GB, not a multiple": ({TEST: lambda p: sparse_file(p, records(1), 6 * GIB)}, False,
                                    "6442450944 bytes, expected a positive multiple"),
    "sparse 1.8 GB, over the cap": ({TEST: lambda p: sparse_file(p, records(1), RECORD * 600_000)}, False,
                                    "of memory, more than is free"),
    "five sparse 600 MB batches": ({f"data_batch_{i}.bin": (lambda p: sparse_file(p, records(1), RECORD * 200_000))
                                    for i in range(1, 6)}, True, "over the limit of 2,147,483,648"),
    "test_batch.bin a directory": ({TEST: os.mkdir}, False, "got a directory"),
    "data_batch_1.bin a directory": ({B1: os.mkdir}, True, "data_batch_1.bin: expected a CIFAR-10 batch file, got "
                                                           "a directory"),
    "test_batch.bin a symlink loop": ({TEST: _link("self")}, False, "Too many levels of symbolic links"),
    "data_batch_2.bin a symlink loop": ({B2: _link("self")}, True, "data_batch_2.bin: cannot read"),
    "data_batch_1.bin a broken link": ({B1: _link("/nonexistent/x")}, True, "a broken link"),
    "test_batch.bin a fifo": ({TEST: os.mkfifo}, False, "got a device, fifo or socket"),
    "test_batch.bin /dev/zero": ({TEST: _link("/dev/zero")}, False, "got a device, fifo or socket"),
    "test_batch.bin /proc/self/mem": ({TEST: _link("/proc/self/mem")}, False, "0 bytes"),
    "data_batch_2 missing, 3 there": ({B2: _remove, "data_batch_3.bin": _write(records(3))}, True,
                                      "data_batch_2.bin: missing, while data_batch_3.bin is there"),
    "no training batches": ({B1: _remove, B2: _remove}, True, "no data_batch_1.bin"),
}


def make_dir(tmp_path, case) -> str:
    d = tmp_path / f"cifar{abs(hash(case))}"
    d.mkdir()
    base = {TEST: _write(records(10)), B1: _write(records(20)), B2: _write(records(20))}
    for name, make in base.items():
        make(str(d / name))
    for name, make in CASES[case][0].items():
        path = str(d / name)
        if os.path.lexists(path) and make is not _remove:
            os.unlink(path)
        make(path)
    return str(d)


FAST = [c for c in sorted(CASES) if "cap" not in c]  # the 1.8 GB case would take 1.8 GB without the cap


@pytest.mark.parametrize("case", FAST)
def test_load_cifar10_refuses_each_hostile_directory_in_one_line(tmp_path, case):
    d = make_dir(tmp_path, case)
    with pytest.raises((CIFARError, FileNotFoundError)) as e:
        load_cifar10(d, train=CASES[case][1])
    assert "\n" not in str(e.value) and CASES[case][2] in str(e.value), str(e.value)


def test_every_hostile_directory_is_one_line_from_train_under_1_gib(tmp_path):
    cases = sorted(CASES)
    dirs = [make_dir(tmp_path, c) for c in cases]
    results = run_many_capped([["train", "--model", "resnet8", "--data", d, "--epochs", "1", "--no-progress",
                                "--workers", "1", "--out", str(tmp_path / f"run{i}")] for i, d in enumerate(dirs)],
                              tmp_path)
    bad = [(c, f) for c, r in zip(cases, results) if (f := one_line_failure(r, CASES[c][2]))]
    assert not bad, f"{len(bad)} of {len(cases)} mishandled: {bad[:3]}"


def test_a_valid_split_reads_in_chunks_as_written(tmp_path):
    path = tmp_path / TEST
    data = records(2500)
    path.write_bytes(data)
    x, y = read_cifar_bin(str(path))
    raw = np.frombuffer(data, np.uint8).reshape(-1, RECORD)
    np.testing.assert_array_equal(x.reshape(2500, -1), raw[:, 1:])
    np.testing.assert_array_equal(y, raw[:, 0])
    assert y.dtype == np.int64 and x.dtype == np.uint8
    with pytest.raises(CIFARError, match="over the limit of 1,000"):
        read_cifar_bin(str(path), max_bytes=1000)


def test_a_name_swapped_for_a_fifo_after_the_look_is_refused_not_waited_on(tmp_path, monkeypatch):
    import convprop.data.cifar as cifar

    fifo = str(tmp_path / TEST)
    os.mkfifo(fifo)
    monkeypatch.setattr(cifar, "_records", lambda path: 1)  # its size looked like one record's
    e = raised_within(lambda: read_cifar_bin(fifo))
    assert isinstance(e, CIFARError) and "changed while being read" in str(e), e
