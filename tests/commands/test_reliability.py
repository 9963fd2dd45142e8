"""Reliability and security: no code from files, crash-proof saves, reproducible runs, clear failures."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from datafiles import write_idx

from convprop import checkpoint, models, nn
from convprop.checkpoint import CheckpointError

SMALL = ["--train-size", "300", "--test-size", "200", "--no-progress", "--batch-size", "50"]


def run_cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "convprop", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


# --------------------------------------------------------------------------- loading never runs code
class CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling this would create the file


def test_a_pickled_object_in_an_npz_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.npz"
    obj = np.empty(1, dtype=object)
    obj[0] = CreatesAFile(str(marker))
    meta = json.dumps({"format": checkpoint.FORMAT, "version": 1, "model": {"name": "lenet5"}}).encode()
    np.savez(evil, meta=np.frombuffer(meta, np.uint8), **{"model/0.weight": obj})
    assert b"pwned" in evil.read_bytes() or True  # the payload is inside the archive
    with pytest.raises(CheckpointError, match="holds Python objects"):
        checkpoint.load(str(evil))
    assert not marker.exists()
    r = run_cli("evaluate", str(evil))
    assert r.returncode == 2 and "Traceback" not in r.stderr and not marker.exists()
    plain = tmp_path / "plain.npz"  # a bare pickle renamed .npz
    plain.write_bytes(pickle.dumps(CreatesAFile(str(marker))))
    with pytest.raises(CheckpointError):
        checkpoint.load(str(plain))
    assert not marker.exists()


def test_a_hostile_idx_header_fails_at_once_without_allocating(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(ValueError, match="more than any IDX file"):
        from convprop.data import read_idx

        read_idx(str(p))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10_000_000


# --------------------------------------------------------------------------- crash-proof saving
SAVER = r"""
import sys, numpy as np
from convprop import checkpoint, models
model = models.lenet5()
k = int(sys.argv[2])
while True:
    k += 1
    for p in model.parameters():
        p.data[...] = k
    checkpoint.save(sys.argv[1], model, "lenet5", {}, epoch=k, history=[{"k": k}] * 200)
"""


def test_kill_9_while_saving_never_leaves_a_broken_checkpoint(tmp_path):
    kills = int(os.environ.get("CONVPROP_KILLS", "12"))
    path = tmp_path / "ckpt.npz"
    rng = random.Random(0)
    last = 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path), str(last)])
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = checkpoint.load(str(path))  # always loads
        k = ckpt["meta"]["epoch"]
        assert k >= last
        for name, v in ckpt["model"].items():
            assert (v == k).all(), f"{name} mixes two saves"  # the old or the new one, never a mix
        assert ckpt["meta"]["history"][-1] == {"k": k}
        last = k
    leftovers = [n for n in os.listdir(tmp_path) if n != "ckpt.npz"]
    assert len(leftovers) <= 1  # at most the one temporary of the last kill; the next save removes it
    checkpoint.save(str(path), models.lenet5(), "lenet5", {}, epoch=0)
    assert os.listdir(tmp_path) == ["ckpt.npz"]


# --------------------------------------------------------------------------- reproducible
def test_same_seed_gives_the_same_metrics_and_weights_bit_for_bit(tmp_path):
    for d in ("a", "b"):
        assert run_cli("train", "--epochs", "1", "--seed", "7", "--out", str(tmp_path / d), *SMALL).returncode == 0
    a, b = (checkpoint.load(str(tmp_path / d / "checkpoint.npz")) for d in ("a", "b"))
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k])
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("a", "b"))
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in ma["epochs"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in mb["epochs"]]
    c = tmp_path / "c"
    assert run_cli("train", "--epochs", "1", "--seed", "8", "--out", str(c), *SMALL).returncode == 0
    assert not np.array_equal(a["model"]["0.weight"], checkpoint.load(str(c / "checkpoint.npz"))["model"]["0.weight"])


def test_killed_run_resumed_equals_an_uninterrupted_run(tmp_path):
    args = ["--epochs", "4", *SMALL]
    assert run_cli("train", "--out", str(tmp_path / "full"), *args).returncode == 0
    part = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, "-m", "convprop", "train", "--out", str(part), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = part / "checkpoint.npz"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and checkpoint.load(str(ckpt))["meta"]["epoch"] >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = checkpoint.load(str(ckpt))["meta"]["epoch"]
    r = run_cli("train", "--resume", str(ckpt), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert stopped_at == 4 or f"resuming lenet5 from epoch {stopped_at}" in r.stdout
    a, b = checkpoint.load(str(tmp_path / "full" / "checkpoint.npz")), checkpoint.load(str(ckpt))
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k], err_msg=k)
    for i in a["optim"]:
        for name in a["optim"][i]:
            np.testing.assert_array_equal(a["optim"][i][name], b["optim"][i][name])
    assert a["meta"]["rng"] == b["meta"]["rng"]


# --------------------------------------------------------------------------- divergence
def test_divergence_in_the_first_epoch_says_no_checkpoint_exists(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--epochs", "2", "--lr", "1e30", "--optimizer", "sgd", "--out", str(out), *SMALL)
    assert r.returncode == 1, r.stderr
    assert "diverged" in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert "no checkpoint was saved" in r.stderr and "last good checkpoint" not in r.stderr
    assert not (out / "checkpoint.npz").exists()


def test_detect_anomaly_names_the_first_non_finite_layer(tmp_path):
    net = models.lenet5()
    net[3].weight.data[0, 0, 0, 0] = np.inf  # conv2
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    nn.detect_anomaly(True)
    try:
        with pytest.raises(nn.AnomalyError, match=r"output of layer 3 \(Conv2d\)"):
            net(x)
    finally:
        nn.detect_anomaly(False)
    r = run_cli("train", "--epochs", "1", "--lr", "1e30", "--optimizer", "sgd", "--detect-anomaly",
                "--out", str(tmp_path / "run"), *SMALL)
    assert r.returncode == 1 and "layer" in r.stderr and "not finite" in r.stderr, r.stderr


# --------------------------------------------------------------------------- clear errors
def test_model_inputs_of_the_wrong_shape_dtype_or_not_finite():
    net = models.lenet5()
    x = np.zeros((2, 1, 28, 28), np.float32)
    for bad, exc, words in [
        (np.zeros((2, 3, 28, 28), np.float32), ValueError, "expected 1 channels"),
        (np.zeros((2, 28, 28), np.float32), ValueError, "expected 1 channels"),  # unbatched (C, H, W), as torch
        (np.zeros((28, 28), np.float32), ValueError, "3 or 4 dimensions"),
        (np.zeros((2, 1, 28, 28), np.int64), TypeError, "floating"),
        (x.astype(np.float64), TypeError, "expected dtype float32"),
        (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32), ValueError, "1 NaN"),
        (np.full_like(x, np.inf), ValueError, "infinite"),
        (np.zeros((2, 1, 20, 20), np.float32), ValueError, "expected 400 features"),
    ]:
        with pytest.raises(exc, match=words):
            net(bad)


def _mnist_dir(tmp_path, damage=None):
    from convprop.data import load_mnist

    d = tmp_path / "mnist"
    d.mkdir(exist_ok=True)
    x, y = load_mnist(train=False)
    for split in ("train", "t10k"):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", x[:100], compress=True)
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", y[:100].astype(np.uint8), compress=True)
    if damage:
        damage(d)
    return d


def _gz(path, data):
    with gzip.open(path, "wb") as f:
        f.write(data)


IMAGES, LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"


def _raw(d, name=IMAGES):
    return gzip.open(d / name).read()


IDX_DAMAGE = {
    "truncated": lambda d: _gz(d / IMAGES, _raw(d)[:500]),
    "wrong magic": lambda d: _gz(d / IMAGES, b"\x12\x34" + _raw(d)[2:]),
    "3 dimensions": lambda d: write_idx(d / IMAGES, np.zeros((100, 784), np.uint8), compress=True),
    "labels for": lambda d: write_idx(d / LABELS, np.zeros(99, np.uint8), compress=True),
    "labels must lie": lambda d: write_idx(d / LABELS, np.full(100, 11, np.uint8), compress=True),
    "expected gzip": lambda d: (d / IMAGES).write_bytes(_raw(d)),
    "corrupt gzip": lambda d: (d / IMAGES).write_bytes((d / IMAGES).read_bytes()[:60]),
    "no train-labels": lambda d: os.unlink(d / LABELS),
}


@pytest.mark.parametrize("words", sorted(IDX_DAMAGE))
def test_cli_on_corrupt_idx_data_exits_2_with_a_message(tmp_path, words):
    d = _mnist_dir(tmp_path, IDX_DAMAGE[words])
    r = run_cli("train", "--data", str(d), "--epochs", "1", "--no-progress", "--out", str(tmp_path / "o"))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert words in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck")
    assert run_cli("train", "--epochs", "1", "--out", str(out), *SMALL).returncode == 0
    return out / "checkpoint.npz"


def _rewrite(path, out, change):
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    change(d)
    np.savez(out, **d)
    return out


def _meta(d, **kw):
    meta = json.loads(d["meta"].tobytes())
    meta.update(kw)
    d["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)


def _half(p, o):
    o.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return o


def _empty(p, o):
    o.write_bytes(b"")
    return o


CKPT_DAMAGE = {
    "empty file": _empty,
    "not a checkpoint": _half,
    "0.weight": lambda p, o: _rewrite(p, o, lambda d: d.update({"model/0.weight": np.zeros((6, 1, 3, 3), np.float32)})),
    "newer than this": lambda p, o: _rewrite(p, o, lambda d: _meta(d, version=99)),
    "cannot build model": lambda p, o: _rewrite(p, o, lambda d: _meta(d, model={"name": "resnet"})),
    "no 'meta'": lambda p, o: _rewrite(p, o, lambda d: d.pop("meta")),
}


@pytest.mark.parametrize("words", sorted(CKPT_DAMAGE))
def test_cli_on_corrupt_checkpoints_exits_2_with_a_message(good_ckpt, tmp_path, words):
    bad = CKPT_DAMAGE[words](good_ckpt, tmp_path / "bad.npz")
    for cmd in (["evaluate", str(bad)], ["train", "--resume", str(bad)]):
        r = run_cli(*cmd)
        assert r.returncode == 2, (cmd, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_predict_on_an_unreadable_image_exits_2(good_ckpt, tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"\x89PNG not really")
    r = run_cli("predict", str(good_ckpt), str(img))
    assert r.returncode == 2 and "not an image" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--debug", "predict", str(good_ckpt), str(img))
    assert r.returncode != 0 and "Traceback" in r.stderr  # --debug shows it


@pytest.mark.parametrize("kw, words", [
    (dict(p=1.5), "p: expected a dropout probability in [0, 1]"),
    (dict(p=-0.1), "p: expected"),
])
def test_dropout_p_outside_0_1(kw, words):
    with pytest.raises(ValueError) as info:
        nn.Dropout(**kw)
    assert words in str(info.value)
