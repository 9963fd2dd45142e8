"""Hostile files and odd-but-valid ones, end to end through `convprop` with 1 GiB of address space:
each hostile case ends in one line `convprop: error: …` and exit code 2, each valid one works."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hostile import (
    GIB,
    MIB,
    gzip_of_zeros,
    idx_header,
    image_claiming,
    make_tiny,
    npy_header,
    png_with_text,
    rewrite_npz,
    run_capped,
    sparse_file,
)

from convprop import checkpoint, models
from convprop.run import Settings

IMAGES, LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def write_idx(path, array, code=0x08, compress=True):
    data = idx_header(code, array.shape) + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    make_tiny(root)
    return root


def one_line(r, words=""):
    assert r.returncode == 2, (r.returncode, r.stdout[-300:], r.stderr[-2000:])
    assert r.stderr.startswith("convprop: error: ") and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert words in r.stderr, r.stderr
    return r.stderr


def data_dir(tiny, tmp_path, name, content: bytes | None = None, make=None):
    """A copy of the tiny data directory with file `name` replaced by content (or made by make(path))."""
    d = tmp_path / "data"
    shutil.copytree(tiny / "data", d)
    os.unlink(d / (name + ".gz"))
    path = d / (name + (".gz" if content is not None and content[:2] == b"\x1f\x8b" else ""))
    if make is not None:
        make(str(path))
    else:
        path.write_bytes(content)
    return d


# --------------------------------------------------------------------------- IDX and gzip
IDX_CASES = {
    # a gzip that expands to 4 GiB (4 MB on disk), its header honest about it
    "gzip 4 GiB, header says so": (IMAGES, lambda: gzip_of_zeros(idx_header(8, (5_478_275, 28, 28)), 4 * GIB),
                                   "more than any IDX file holds"),
    # the same 4 GiB behind a header that claims 10 images
    "gzip 4 GiB, header says 10 images": (IMAGES, lambda: gzip_of_zeros(idx_header(8, (10, 28, 28)), 4 * GIB),
                                          "more data than the 7840 bytes its header declares"),
    # 1.9 GB declared and really there: more than the 1 GiB cap lets anyone allocate
    "gzip 1.9 GB, header honest, over the cap": (IMAGES, lambda: gzip_of_zeros(idx_header(8, (2_400_000, 28, 28)),
                                                                                2_400_000 * 784 + 16),
                                                 "of memory, more than is free"),
    # a header that claims more than ~1032:1 deflate can hold
    "gzip too small for its header": (IMAGES, lambda: gzip.compress(idx_header(8, (1_000_000, 28, 28))),
                                      "bytes of gzip can hold"),
    "NaN float labels": (LABELS, lambda: gzip.compress(idx_header(0x0D, (30,)) +
                                                       np.r_[np.zeros(29), np.nan].astype(">f4").tobytes()),
                         "labels must be whole numbers, got nan"),
    "0×0 images": (IMAGES, lambda: gzip.compress(idx_header(8, (30, 0, 0))), "at least 1×1 pixels"),
}
SPARSE_CASES = {
    "sparse 6 GB raw, wrong magic": (lambda p: sparse_file(p, b"\x12\x34\x08\x03", 6 * GIB), "wrong magic"),
    "sparse 6 GB raw, header says so": (lambda p: sparse_file(p, idx_header(8, (7_650_000, 28, 28)),
                                                              7_650_000 * 784 + 16), "more than any IDX file holds"),
    "sparse 1.9 GB raw, over the cap": (lambda p: sparse_file(p, idx_header(8, (2_400_000, 28, 28)),
                                                              2_400_000 * 784 + 16), "of memory, more than is free"),
}


@pytest.mark.parametrize("case", sorted(IDX_CASES) + sorted(SPARSE_CASES))
def test_hostile_idx_files_end_in_one_line_under_1_gib(tiny, tmp_path, case):
    if case in IDX_CASES:
        name, make, words = IDX_CASES[case]
        d = data_dir(tiny, tmp_path, name, make())
    else:
        make, words = SPARSE_CASES[case]
        d = data_dir(tiny, tmp_path, IMAGES, make=make)
    assert sum(os.stat(os.path.join(d, n)).st_blocks * 512 for n in os.listdir(d)) < 20 * MIB  # small on disk
    one_line(run_capped("evaluate", str(tiny / "run" / "checkpoint.npz"), "--data", str(d)), words)
    r = run_capped("train", "--data", str(d), "--epochs", "1", "--out", str(tmp_path / "out"))
    one_line(r, words)


def test_zero_training_or_test_images_are_one_line_before_training(tiny, tmp_path):
    empty = gzip.compress(idx_header(8, (0, 28, 28)))
    d = data_dir(tiny, tmp_path, IMAGES, empty)
    (d / (LABELS + ".gz")).write_bytes(gzip.compress(idx_header(8, (0,))))
    r = run_capped("train", "--data", str(d), "--epochs", "1", "--out", str(tmp_path / "out"))
    assert "the test set has no images" in one_line(r) and "epoch" not in r.stdout
    one_line(run_capped("evaluate", str(tiny / "run" / "checkpoint.npz"), "--data", str(d)), "no images")


# --------------------------------------------------------------------------- checkpoints
def _meta_of(path):
    with np.load(path) as z:
        return json.loads(z["meta"].tobytes())


def _with_meta(src, dst, change):
    meta = _meta_of(src)
    change(meta)
    raw = json.dumps(meta).encode() if not isinstance(meta, bytes) else meta
    return rewrite_npz(src, dst, members={"meta.npy": _npy_bytes(np.frombuffer(raw, np.uint8))})


def _npy_bytes(a):
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _deep_meta(src, dst):
    meta = json.dumps(_meta_of(src)).encode()
    raw = meta[:-1] + b', "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return rewrite_npz(src, dst, members={"meta.npy": _npy_bytes(np.frombuffer(raw, np.uint8))})


def _config(**kw):
    return lambda m: m["model"].__setitem__("config", kw)


CKPT_CASES = {  # name: (make(src, dst), words, commands the case is run through)
    "extra 4 GiB member": (lambda s, d: rewrite_npz(s, d, {"extra.npy": (npy_header((GIB,), "<f4"), 4 * GIB)}),
                           "unknown entry 'extra.npy'", "epr"),
    "4 GiB weight member": (lambda s, d: rewrite_npz(s, d, {"model/0.weight.npy": (npy_header((GIB,)), 4 * GIB)}),
                            "expected shape (6, 1, 5, 5)", "ep"),
    "4 GiB optimizer member": (lambda s, d: rewrite_npz(s, d, {"optim/0/exp_avg.npy": (npy_header((GIB,)), 4 * GIB)}),
                               "expected shape (6, 1, 5, 5)", "r"),
    "100 MB header": (lambda s, d: rewrite_npz(s, d, {"meta.npy": (npy_header((100 * MIB,), "u1"), 100 * MIB)}),
                      "more than a checkpoint's", "e"),
    "header nested 100,000 deep": (_deep_meta, "nested 100", "epr"),
    "num_classes 10**12": (lambda s, d: _with_meta(s, d, _config(num_classes=10**12)), "num_classes", "ep"),
    "num_classes 3e6": (lambda s, d: _with_meta(s, d, _config(num_classes=3_000_000)), "num_classes", "e"),
    "unknown config key": (lambda s, d: _with_meta(s, d, _config(depth=5)), "lenet5 takes", "e"),
    "epoch 1e400": (lambda s, d: rewrite_npz(s, d, members={"meta.npy": _npy_bytes(np.frombuffer(
        json.dumps(_meta_of(s)).replace('"epoch": 1', '"epoch": 1e400').encode(), np.uint8))}), "epoch", "r"),
    "args without model": (lambda s, d: _with_meta(s, d, lambda m: m["args"].pop("model")), "lack model", "r"),
    "optimizer state optim/99": (lambda s, d: rewrite_npz(s, d, {"optim/99/exp_avg.npy": (npy_header((1,)), 132)}),
                                 "parameter 99", "r"),
    "optimizer state optim/-1": (lambda s, d: rewrite_npz(s, d, {"optim/-1/exp_avg.npy": (npy_header((1,)), 132)}),
                                 "unknown entry", "r"),
    "optimizer state optim/x": (lambda s, d: rewrite_npz(s, d, {"optim/x/exp_avg.npy": (npy_header((1,)), 132)}),
                                "unknown entry", "r"),
    "scheduler state of the wrong type": (lambda s, d: _with_meta(s, d, lambda m: m["scheduler"].__setitem__(
        "state", [1, 2])), "scheduler state", "r"),
    "scheduler state with a string": (lambda s, d: _with_meta(s, d, lambda m: m["scheduler"]["state"].__setitem__(
        "last_epoch", "x")), "scheduler state", "r"),
    "optimizer param_groups crafted": (lambda s, d: _with_meta(s, d, lambda m: m["optimizer"].__setitem__(
        "param_groups", [{"lr": "fast"}])), "param_groups", "r"),
    "rng state crafted": (lambda s, d: _with_meta(s, d, lambda m: m.__setitem__("rng", {"bit_generator": 5})),
                          "rng", "r"),
}


@pytest.mark.parametrize("case", sorted(CKPT_CASES))
def test_hostile_checkpoints_end_in_one_line_under_1_gib(tiny, tmp_path, case):
    make, words, commands = CKPT_CASES[case]
    bad = make(str(tiny / "run" / "checkpoint.npz"), str(tmp_path / "bad.npz"))
    assert os.path.getsize(bad) < 20 * MIB
    argv = {"e": ["evaluate", bad, "--data", str(tiny / "data")], "p": ["predict", bad, str(tiny / "digit.png")],
            "r": ["train", "--resume", bad, "--no-progress"]}
    for c in commands:
        one_line(run_capped(*argv[c]), words)


# --------------------------------------------------------------------------- metrics.json
METRICS_CASES = {
    "nested 100,000 deep": (b'{"epochs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested 100"),
    "epochs not a list": (b'{"epochs": {"a": 1}}', "not a convprop metrics file"),
    "an epoch of strings": (b'{"epochs": [{"epoch": "1", "train_loss": "x", "train_acc": 1}]}', "epochs[0]"),
    "test loss in some epochs only": (json.dumps({"epochs": [
        {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5},
        {"epoch": 2, "train_loss": 1.0, "train_acc": 0.5}]}).encode(), "epochs[1]"),
    "args of the wrong kind": (json.dumps({"epochs": [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}],
                                           "args": {"model": "lenet5", "epochs": 1, "optimizer": "adam", "lr": 0.1,
                                                    "seed": "x"}}).encode(), "seed"),
    "not JSON": (b"\xff\xfe{", "not valid JSON"),
    "no epoch yet": (b'{"epochs": []}', "no epoch has finished yet"),
}


@pytest.mark.parametrize("case", sorted(METRICS_CASES))
def test_crafted_metrics_json_for_plot_is_one_line(tiny, tmp_path, case):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny / "run" / "checkpoint.npz", run)
    content, words = METRICS_CASES[case]
    (run / "metrics.json").write_bytes(content)
    one_line(run_capped("plot", str(run)), words)


def test_a_100_mb_metrics_json_is_refused_unread(tiny, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    sparse_file(str(run / "metrics.json"), b'{"epochs": [', 100 * MIB)
    one_line(run_capped("plot", str(run)), "more than a metrics file holds")


# --------------------------------------------------------------------------- valid, if unusual: they work
def test_checkpoints_of_five_classes_and_of_float64_work_in_evaluate_predict_and_plot(tiny, tmp_path):
    for name, model in (("five", models.lenet5(num_classes=5)), ("f64", models.lenet5().to(np.float64))):
        d = tmp_path / name
        d.mkdir()
        ckpt = checkpoint.save(str(d / "checkpoint.npz"), model, "lenet5",
                               {"num_classes": 5} if name == "five" else {}, epoch=1)
        r = run_capped("evaluate", ckpt, "--data", str(tiny / "data"))
        assert r.returncode == 0 and "accuracy" in r.stdout and "Traceback" not in r.stderr, r.stderr
        assert "on 30 test images" in r.stdout
        r = run_capped("predict", ckpt, str(tiny / "digit.png"))
        assert r.returncode == 0 and "digit.png: " in r.stdout, r.stderr
        (d / "metrics.json").write_text(json.dumps({"epochs": [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5}],
                                                    "args": Settings(data=str(tiny / "data")).dict()}))
        r = subprocess.run([sys.executable, "-m", "convprop", "plot", str(d)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0 and (d / "confusion-matrix.png").exists(), r.stderr


def test_the_hostile_cases_did_need_the_checks():
    """The fixed hostile cases above are hostile: a plain reader would take gigabytes for them."""
    bomb = gzip_of_zeros(idx_header(8, (10, 28, 28)), 4 * GIB)
    assert len(bomb) < 5 * MIB
    d = gzip.GzipFile(fileobj=__import__("io").BytesIO(bomb))
    assert len(d.read(100 * MIB)) == 100 * MIB  # it really expands (checked to 100 MiB here)


# --------------------------------------------------------------------------- images: one bounded decoder
FORMATS = ("PNG", "GIF", "BMP", "PPM", "JPEG", "TIFF")
IMAGE_CASES = {
    **{f"{fmt} claiming 20000×20000": (lambda fmt=fmt: image_claiming(fmt, 20000, 20000), "over the limit")
       for fmt in FORMATS},
    "PNG text chunks of 7 MiB in 7 KB": (lambda: png_with_text(8, 900_000), "text chunks"),
    "PNG cut in half": (lambda: _digit_png()[:len(_digit_png()) // 2], "truncated or damaged"),
    "PNG signature, then nothing": (lambda: b"\x89PNG\r\n\x1a\n", "not an image convprop can read"),
    "a Photoshop file (a format Pillow reads, convprop does not)": (lambda: b"8BPS" + bytes(60),
                                                                    "not an image convprop can read"),
}


def _digit_png() -> bytes:
    import io

    from PIL import Image

    from convprop.data import load_mnist

    buf = io.BytesIO()
    Image.fromarray(255 - load_mnist(train=False)[0][0]).resize((280, 280)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_hostile_images_end_in_one_line_under_1_gib(tiny, tmp_path, case):
    make, words = IMAGE_CASES[case]
    path = tmp_path / "photo.img"
    path.write_bytes(make())
    skipped(run_capped("predict", str(tiny / "run" / "checkpoint.npz"), str(path)), words)


def skipped(r, words=""):
    """predict on one unreadable image: a warning line naming it and why, then one error line, exit 2."""
    assert r.returncode == 2, (r.returncode, r.stdout[-300:], r.stderr[-2000:])
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("convprop: warning: ") and words in lines[0], r.stderr[-2000:]
    assert lines[1].startswith("convprop: error: ") and "could not be read" in lines[1], r.stderr[-2000:]


@pytest.mark.parametrize("fmt", FORMATS)
def test_pillows_own_bomb_warning_never_reaches_the_user(tiny, tmp_path, fmt):
    """9500×9500 is over Pillow's warning threshold (89.5 million) and under convprop's limit: the header-
    only file is one line of convprop's (or, for JPEG, whose decoder fills what is missing, a prediction),
    never Pillow's DecompressionBombWarning."""
    path = tmp_path / f"big.{fmt.lower()}"
    path.write_bytes(image_claiming(fmt, 9500, 9500))
    r = run_capped("predict", str(tiny / "run" / "checkpoint.npz"), str(path))
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    if r.returncode != 0:
        skipped(r, "truncated or damaged")


def _most_decodes_at_once(monkeypatch, read, threads: int) -> int:
    """The most images decoded at once while `threads` threads each call read(a digit's PNG bytes), every
    decode slowed to 50 ms so that they would overlap."""
    import threading
    import time

    from convprop.data import images

    active, most, lock = [0], [0], threading.Lock()
    real = images._decode

    def slow(*a, **k):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        try:
            return real(*a, **k)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(images, "_decode", slow)
    data = _digit_png()
    running = [threading.Thread(target=read, args=(data,)) for _ in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    return most[0]


def test_image_decodes_are_bounded_in_number_and_leave_warnings_as_they_were(monkeypatch):
    import warnings

    from convprop.data import images

    before = list(warnings.filters)
    assert _most_decodes_at_once(monkeypatch, images.open_image, 12) == images.MAX_DECODES
    assert warnings.filters == before


def test_only_the_first_frame_is_read(tmp_path):
    """An animated GIF whose second frame claims 60000×60000: the first frame is what is decoded."""
    import io
    import struct
    import warnings

    from PIL import Image

    from convprop.data.images import open_image

    frames = [Image.new("L", (40, 30), 200), Image.new("L", (40, 30), 10)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    b = bytearray(buf.getvalue())
    second = b.index(b"\x2c", b.index(b"\x2c", 13) + 10)  # the second image descriptor
    b[second + 5:second + 9] = struct.pack("<HH", 60000, 60000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning either
        a = open_image(bytes(b), max_pixels=10_000)
    assert a.shape == (30, 40) and abs(int(a.mean()) - 200) <= 2


def test_file_names_are_printed_escaped():
    from convprop.data.images import ImageError, display_name, open_image

    assert display_name("a\nconvprop: 7 (p = 1.000)\r\x1b[2K.png") == "a\\nconvprop: 7 (p = 1.000)\\r\\x1b[2K.png"
    assert display_name("Ziffer-ä 7.png") == "Ziffer-ä 7.png" and display_name(b"x\xff.png") == "x\\udcff.png"
    with pytest.raises(ImageError) as e:
        open_image(b"not an image", name="evil\n.png")
    assert "\n" not in str(e.value) and str(e.value).startswith("evil\\n.png: ")


def test_the_server_decodes_through_the_bounded_decoder(monkeypatch):
    """Many requests' images at once: the server holds at most MAX_DECODES decoded images."""
    from convprop.data import images
    from convprop.serve import inputs

    assert _most_decodes_at_once(monkeypatch, inputs.digit_from_image, 10) == images.MAX_DECODES
    with pytest.raises(inputs.InputError, match="over the limit of 4,000,000"):
        inputs.digit_from_image(image_claiming("TIFF", 3000, 3000))
