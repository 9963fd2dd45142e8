"""Hostile files, made small and fast: gzip streams and .npz members that expand to gigabytes of zeros,
sparse files, and a way to run `convprop` with its address space capped (as `ulimit -v` does).

A MiB of zeros deflated once, then flushed (Z_FULL_FLUSH resets the compressor), compresses to the
same ~1 KB every time, so a stream of n GiB is that block repeated n·1024 times.  The CRCs of such
streams are left wrong on purpose: a reader that gets far enough to check one has already failed.
"""

from __future__ import annotations

import contextlib
import os
import resource
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np

MIB = 1 << 20
GIB = 1 << 30
CAP = GIB  # the address-space limit hostile inputs run under
_ZERO = bytes(MIB)


def _deflate_zeros(prefix: bytes, total: int) -> bytes:
    """Raw deflate of `prefix` followed by zeros up to `total` bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block_c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = block_c.compress(_ZERO) + block_c.flush(zlib.Z_FULL_FLUSH)
    n, rem = divmod(total - len(prefix), MIB)
    return head + block * n + c.compress(bytes(rem)) + c.flush()


def gzip_of_zeros(prefix: bytes, total: int) -> bytes:
    """A gzip file whose data is `prefix` then zeros, `total` bytes in all (CRC deliberately wrong)."""
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + _deflate_zeros(prefix, total) + struct.pack("<II", 0, total & 0xFFFFFFFF)


@contextlib.contextmanager
def _repeating_compressor():
    """zipfile, writing zeros MiB by MiB, reuses the one compressed block (and skips the CRC)."""
    block_c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = block_c.compress(_ZERO) + block_c.flush(zlib.Z_FULL_FLUSH)

    class Compressor:
        def __init__(self):
            self.c = zlib.compressobj(9, zlib.DEFLATED, -15)

        def compress(self, data):
            return block if data is _ZERO else self.c.compress(data) + self.c.flush(zlib.Z_FULL_FLUSH)

        def flush(self):
            return self.c.flush()

    saved = zipfile._get_compressor, zipfile.crc32
    zipfile._get_compressor = lambda *a, **k: Compressor()
    zipfile.crc32 = lambda data, crc=0: 0
    try:
        yield
    finally:
        zipfile._get_compressor, zipfile.crc32 = saved


def npy_header(shape: tuple, dtype="<f4") -> bytes:
    """The .npy (version 1.0) header of an array of this shape and dtype."""
    d = f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    d += " " * (64 - (10 + len(d) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode()


def rewrite_npz(src: str, dst: str, replace: dict[str, tuple[bytes, int]] | None = None,
                members: dict[str, bytes] | None = None) -> str:
    """Copy the archive src to dst; `replace` (and add) members named name.npy by a header followed by
    zeros up to a total size, deflated; `members` replaces members by plain bytes."""
    replace, members = replace or {}, members or {}
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:  # stored, as np.savez writes them
        for info in z.infolist():
            if info.filename not in replace:
                out.writestr(info.filename, members.get(info.filename, z.read(info)))
        for name in members.keys() - {i.filename for i in z.infolist()}:
            out.writestr(name, members[name])
        with _repeating_compressor():
            for name, (head, total) in replace.items():
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                with out.open(info, "w", force_zip64=True) as w:
                    w.write(head)
                    for _ in range((total - len(head)) // MIB):
                        w.write(_ZERO)
    return dst


def sparse_file(path: str, head: bytes, size: int) -> str:
    """A file of `size` bytes that takes no disk: `head`, then a hole."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def idx_header(code: int, shape: tuple) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(int(s).to_bytes(4, "big") for s in shape)


def capped_env() -> dict:
    # one OpenBLAS / convprop thread: each thread's stack and buffers are address space too
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def limit_address_space():
    """For preexec_fn: this process and its children get at most CAP bytes of address space."""
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


def run_capped(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """`convprop *args` with at most CAP bytes of address space."""
    return subprocess.run([sys.executable, "-m", "convprop", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, preexec_fn=limit_address_space, env=capped_env())


def run_script_capped(script: str, *args, timeout=600) -> subprocess.CompletedProcess:
    """A Python script with at most CAP bytes of address space."""
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit_address_space, env=capped_env())


def make_tiny(root) -> None:
    """root/data: 40 training and 30 test images as gzipped IDX; root/run: a 1-epoch run trained on them;
    root/digit.png: one test digit."""
    import gzip

    from PIL import Image

    from convprop.data import load_mnist
    from convprop.run import Run, Settings

    data = root / "data"
    data.mkdir()
    x, y = load_mnist(train=False)
    for split, sl in (("train", slice(0, 40)), ("t10k", slice(40, 70))):
        for kind, a in (("images", x[sl]), ("labels", y[sl].astype(np.uint8))):
            with gzip.open(data / f"{split}-{kind}-idx{a.ndim}-ubyte.gz", "wb") as f:
                f.write(idx_header(8, a.shape) + a.tobytes())
    with Run(Settings(data=str(data), epochs=1, batch_size=20), str(root / "run"), progress=False,
             log=lambda *_: None) as run:
        run.train()
    Image.fromarray(x[0]).save(root / "digit.png")


# --------------------------------------------------------------------------- images
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def image_claiming(fmt: str, w: int, h: int) -> bytes:
    """A small file of format fmt (PNG, GIF, BMP, PPM, JPEG, TIFF) whose header claims w×h pixels."""
    import io

    from PIL import Image

    if fmt == "PNG":
        return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
            _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")
    if fmt == "PPM":
        return f"P5\n{w} {h}\n255\n".encode() + bytes(64)
    if fmt == "TIFF":  # little-endian, one IFD, one strip of 8-bit grey
        entries = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
                   (278, 4, h), (279, 4, min(w * h, 2**32 - 1))]
        data_at = 8 + 2 + 12 * len(entries) + 4
        ifd = struct.pack("<H", len(entries)) + b"".join(
            struct.pack("<HHI", tag, kind, 1) + (struct.pack("<H2x", value) if kind == 3 else
                                                 struct.pack("<I", data_at if tag == 273 else value))
            for tag, kind, value in entries) + struct.pack("<I", 0)
        return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(64)
    buf = io.BytesIO()
    Image.new("L" if fmt != "GIF" else "P", (8, 8)).save(buf, fmt)
    b = bytearray(buf.getvalue())
    if fmt == "GIF":  # the logical screen and the first image's descriptor
        b[6:10] = struct.pack("<HH", w, h)
        i = b.index(b"\x2c", 13)
        b[i + 5:i + 9] = struct.pack("<HH", w, h)
    elif fmt == "BMP":
        b[18:26] = struct.pack("<ii", w, h)
    elif fmt == "JPEG":  # the start-of-frame segment: precision, height, width
        i = b.index(b"\xff\xc0")
        b[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(b)


def png_with_text(chunks: int, each: int) -> bytes:
    """An 8×8 PNG carrying `chunks` compressed text chunks of `each` bytes of zeros apiece (tiny on disk)."""
    text = [_png_chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + zlib.compress(bytes(each), 9)) for i in range(chunks)]
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)) + \
        b"".join(text) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 72)) + _png_chunk(b"IEND", b"")


def run_many_capped(argvs: list[list[str]], workdir, readers: bool = False) -> list[dict]:
    """Many `convprop` command lines in one process with at most CAP bytes of address space (fuzz_probe.py):
    one {"rc", "stderr", "escaped"} per command line; with readers, [reader, path] pairs through
    fuzz_probe's READERS: one {"outcome", "message", "escaped"} each."""
    import json

    cases, results = os.path.join(workdir, "cases.json"), os.path.join(workdir, "results.json")
    with open(cases, "w") as f:
        json.dump(argvs, f)
    probe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_probe.py")
    r = subprocess.run([sys.executable, probe, *(["--readers"] if readers else []), cases, results],
                       capture_output=True, text=True, timeout=900, cwd=workdir, preexec_fn=limit_address_space,
                       env=capped_env())
    assert r.returncode == 0, f"the probe died: {r.stderr[-3000:]}"
    with open(results) as f:
        return json.load(f)


def one_line_failure(result: dict, words: str = "") -> str | None:
    """Why a probe result is not one line `convprop: error: …` (containing words) with exit code 2, or None."""
    if result["escaped"]:
        return "traceback:\n" + result["escaped"][-1500:]
    err = result["stderr"]
    if result["rc"] != 2 or not err.startswith("convprop: error: ") or err.count("\n") != 1:
        return f"exit {result['rc']}, stderr {err[-1500:]!r}"
    if words not in err:
        return f"{words!r} not in {err!r}"
    return None


def safetensors_bytes(header: dict, data: bytes = b"", raw_header: bytes | None = None) -> bytes:
    """A safetensors file: the 8-byte little-endian length, the JSON header (or raw_header), the data."""
    import json

    text = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def safetensors_of(state: dict, edit=None, dtype: str = "F32") -> bytes:
    """The state_dict's arrays as a safetensors file written here (not by the safetensors package), every
    float array as `dtype`; edit(header, data) may change the header dict and the data bytearray first."""
    header, data = {}, bytearray()
    codes = {"F32": "<f4", "F64": "<f8", "F16": "<f2"}
    for k, v in state.items():
        a = np.asarray(v)
        code, raw = ("I64", a.astype("<i8").tobytes()) if a.dtype.kind in "iu" else (dtype, a.astype(
            codes[dtype]).tobytes() if dtype != "BF16" else (a.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes())
        header[k] = {"dtype": code, "shape": list(a.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if edit is not None:
        edit(header, data)
    return safetensors_bytes(header, bytes(data))


def raised_within(fn, seconds: float = 20.0) -> BaseException | None:
    """What fn() raised (None if nothing), run in a daemon thread; AssertionError if it is still running
    after `seconds` (a reader waiting on a fifo, say: the thread is left blocked, the test goes on)."""
    import threading

    out: list = []

    def call():
        try:
            fn()
            out.append(None)
        except BaseException as e:  # noqa: BLE001 — handed to the test
            out.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"still running after {seconds} s (waiting on a fifo?)"
    return out[0]
