"""Weights that leave convprop: safetensors both ways with torch, `convprop export`, and `convprop predict`
on directories, with --top-k, --json, class names and warnings; images read in bounded memory."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
Image = pytest.importorskip("PIL.Image")

import convprop  # noqa: E402
import convprop.random  # noqa: E402
from convprop import checkpoint, models  # noqa: E402
from convprop.data import load_mnist, normalize  # noqa: E402
from convprop.data.images import ImageError, read_digit  # noqa: E402
from convprop.weights import WeightsError, save_weights  # noqa: E402


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "convprop", *args], capture_output=True, text=True, timeout=300)


def _cap_1gb():  # `ulimit -v 1048576` in the child: address space of 1 GiB
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def torch_lenet5():
    t = torch.nn
    return t.Sequential(t.Conv2d(1, 6, 5, padding=2), t.ReLU(), t.MaxPool2d(2), t.Conv2d(6, 16, 5), t.ReLU(),
                        t.MaxPool2d(2), t.Flatten(), t.Linear(400, 120), t.ReLU(), t.Linear(120, 84), t.ReLU(),
                        t.Linear(84, 10))


def torch_vgg_small(width=16):
    t = torch.nn

    def block(cin, cout):
        return [t.Conv2d(cin, cout, 3, padding=1, bias=False), t.BatchNorm2d(cout), t.ReLU()]

    return t.Sequential(*block(1, width), *block(width, width), t.MaxPool2d(2), *block(width, 2 * width),
                        *block(2 * width, 2 * width), t.MaxPool2d(2), t.AdaptiveAvgPool2d(1), t.Flatten(),
                        t.Linear(2 * width, 10))


def close(a, b, tol=1e-5):
    scale = max(1.0, float(np.abs(b).max()))
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()) / scale <= tol


def test_lenet5_trained_by_torch_loads_into_convprop(tmp_path):
    torch.manual_seed(0)
    net = torch_lenet5()
    images, labels = load_mnist()
    x, y = torch.tensor(normalize(images[:640])), torch.tensor(labels[:640]).long()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for i in range(0, 640, 64):  # one short epoch: weights far from their initial values
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
        opt.step()
    path = str(tmp_path / "torch-lenet5.safetensors")
    safetensors_torch.save_file(net.state_dict(), path)
    model = models.lenet5()
    model.load_state_dict(convprop.load_weights(path))
    test = normalize(load_mnist(train=False)[0][:200])
    with torch.no_grad():
        ref = net.eval()(torch.tensor(test)).numpy()
    assert close(model.eval()(test), ref)


def test_convprop_weights_load_into_torch_with_buffers(tmp_path):
    convprop.random.manual_seed(1)
    model = models.vgg_small()
    for m in model.modules():  # running statistics away from their defaults
        if hasattr(m, "running_mean") and m.running_mean is not None:
            m.running_mean[...] = np.linspace(-1, 1, m.num_features)
            m.running_var[...] = np.linspace(0.5, 2, m.num_features)
            m.num_batches_tracked[...] = 7
    path = save_weights(model, str(tmp_path / "vgg.safetensors"))
    net = torch_vgg_small()
    net.load_state_dict(safetensors_torch.load_file(path))  # strict: every key, shape and buffer
    assert int(net[1].num_batches_tracked) == 7
    x = normalize(load_mnist(train=False)[0][:32])
    with torch.no_grad():
        assert close(model.eval()(x), net.eval()(torch.tensor(x)).numpy())


def test_load_weights_refuses_damaged_files_in_one_line(tmp_path):
    good = save_weights(models.lenet5(), str(tmp_path / "w.safetensors"))
    data = open(good, "rb").read()
    cases = {"truncated": data[:len(data) // 2], "empty": b"", "noise": b"\x07" * 100,
             "huge-header-length": struct.pack("<Q", 2**60) + data[8:],
             "huge-shape": _safetensors_bytes({"w": {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 8]}},
                                              8),
             "wrong-dtype": _safetensors_bytes({"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, 8),
             "bool-dtype": _safetensors_bytes({"w": {"dtype": "BOOL", "shape": [8], "data_offsets": [0, 8]}}, 8)}
    for name, blob in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(WeightsError) as e:
            convprop.load_weights(str(p))
        assert "\n" not in str(e.value) and str(e.value).startswith(str(p)), (name, str(e.value))
    model = models.lenet5()
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict(convprop.load_weights(save_weights({"x": np.zeros(3, np.float32)},
                                                                 str(tmp_path / "other.safetensors"))))


def _safetensors_bytes(header: dict, nbytes: int) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"\0" * nbytes


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    convprop.random.manual_seed(0)
    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint.npz")
    checkpoint.save(path, models.lenet5(), "lenet5", {"num_classes": 10}, epoch=1)
    return path


def test_export_command_writes_onnx_and_safetensors(ckpt, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    r = run_cli("export", ckpt, str(tmp_path / "m.onnx"), "--opset", "15")
    assert r.returncode == 0 and "opset 15" in r.stdout, r.stderr
    model = checkpoint.restore_model(checkpoint.load(ckpt), ckpt).eval()
    raw = load_mnist(train=False)[0][:16]
    x = normalize(raw)
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"pixels": raw[:, None].astype(np.float32)})[0]  # raw pixels: the graph normalises them
    assert close(got, model(x))
    r = run_cli("export", ckpt, str(tmp_path / "m.safetensors"))
    assert r.returncode == 0, r.stderr
    net = torch_lenet5()
    net.load_state_dict(safetensors_torch.load_file(str(tmp_path / "m.safetensors")))
    with torch.no_grad():
        assert close(net.eval()(torch.tensor(x)).numpy(), model(x))
    for args, words in ((["m.txt"], "expected a file name ending in .onnx or .safetensors"),
                        (["m.safetensors", "--opset", "13"], "--opset: for .onnx files; safetensors holds the weights"),
                        (["m.safetensors", "--input-type", "uint8", "--no-normalize"],
                         "--input-type, --no-normalize: for .onnx files"),
                        (["m.onnx", "--input-type", "uint8", "--no-normalize"], "--input-type uint8 needs the "),
                        (["m.onnx", "--input-type", "int8"], "argument --input-type: invalid choice"),
                        (["m.onnx", "--opset", "3"], "opset: expected an int from 13"),
                        (["m.onnx", "--input-shape", "1,x"], "--input-shape: expected C,H,W")):
        r = run_cli("export", ckpt, str(tmp_path / args[0]), *args[1:])
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


# --------------------------------------------------------------------------- predict
def _digits(tmp_path, n=4):
    images, labels = load_mnist(train=False)
    d = tmp_path / "digits"
    d.mkdir()
    for i in range(n):
        Image.fromarray(255 - images[i]).save(d / f"{i}.png")
    (d / "notes.txt").write_text("not an image")
    return d, labels[:n]


def test_predict_directory_top_k_json(ckpt, tmp_path):
    d, _ = _digits(tmp_path)
    r = run_cli("predict", ckpt, str(d), "--json", "--top-k", "4")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["image"] for row in rows] == [str(d / f"{i}.png") for i in range(4)]
    for row in rows:
        assert len(row["top"]) == 4 and row["top"][0]["class"] == row["class"] and row["name"] == str(row["class"])
        assert row["p"] >= row["top"][1]["p"] >= row["top"][3]["p"]
        assert [w[:14] for w in row["warnings"]] == ["low confidence"]  # an untrained model: p ≈ 0.1
    r = run_cli("predict", ckpt, str(d / "0.png"), str(d / "1.png"), "--top-k", "2")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 4, r.stdout


def test_predict_names_fashion_mnist_classes(tmp_path):
    convprop.random.manual_seed(0)
    path = str(tmp_path / "fashion.npz")
    checkpoint.save(path, models.lenet5(), "lenet5", {"num_classes": 10}, epoch=1,
                    args={"model": "lenet5", "data": "/data/FashionMNIST/raw"})
    d, _ = _digits(tmp_path, 1)
    r = run_cli("predict", path, str(d / "0.png"), "--json", "--top-k", "10")
    row = json.loads(r.stdout)
    assert sorted(t["name"] for t in row["top"]) == sorted(["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"])


def test_predict_warns_for_blank_and_alpha_hidden_ink(ckpt, tmp_path):
    Image.new("L", (40, 40), 200).save(tmp_path / "blank.png")
    images, _ = load_mnist(train=False)
    rgba = np.zeros((28, 28, 4), np.uint8)  # black everywhere; the digit only in the alpha channel
    rgba[..., 3] = images[0]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    r = run_cli("predict", ckpt, str(tmp_path / "blank.png"), str(tmp_path / "alpha.png"))
    assert r.returncode == 0, r.stderr
    assert f"warning: {tmp_path / 'blank.png'}: blank or almost uniform" in r.stderr
    assert f"warning: {tmp_path / 'alpha.png'}: the ink is only in the alpha channel" in r.stderr
    digit, _ = read_digit(str(tmp_path / "alpha.png"))  # drawn on white, then inverted: the digit itself
    assert np.corrcoef(digit.ravel().astype(float), images[0].ravel().astype(float))[0, 1] > 0.8


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    images, _ = load_mnist(train=False)
    Image.fromarray(images[0].astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 0..65535
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    d16, warnings = read_digit(str(tmp_path / "deep.png"))
    Image.fromarray(images[0]).save(tmp_path / "flat.png")
    d8, _ = read_digit(str(tmp_path / "flat.png"))
    assert warnings == [] and np.abs(d16.astype(int) - d8.astype(int)).max() <= 1


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_huge_image_refused_before_decoding(ckpt, tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    with pytest.raises(ImageError, match=r"20000×20000 = 400,000,000 pixels, over the limit .* resize it"):
        read_digit(str(tmp_path / "bomb.png"))
    r = subprocess.run([sys.executable, "-m", "convprop", "predict", ckpt, str(tmp_path / "bomb.png")],
                       capture_output=True, text=True, timeout=300, preexec_fn=_cap_1gb)
    assert r.returncode == 2 and "over the limit" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_big_png_is_read_in_bounded_memory(ckpt, tmp_path):
    """A 9500×9500 PNG (a digit drawn big): classified under `ulimit -v` 1 GiB with a peak RSS under 500 MB
    (it once took 2.25 GB)."""
    side, path = 9500, tmp_path / "big.png"
    images, _ = load_mnist(train=False)
    digit = np.asarray(Image.fromarray(images[0]).resize((side // 2, side // 2)))
    comp, raw = zlib.compressobj(1), []
    for y in range(side):  # written row by row: the test itself never holds the image
        row = np.zeros(side, np.uint8)
        if side // 4 <= y < side // 4 + side // 2:
            row[side // 4:side // 4 + side // 2] = digit[y - side // 4]
        raw.append(comp.compress(b"\0" + row.tobytes()))
    raw.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    body = b"".join(raw)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        for kind, data in ((b"IHDR", ihdr), (b"IDAT", body), (b"IEND", b"")):
            f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))
    code = ("import sys\nfrom convprop.cli import main\nrc = main(['predict', sys.argv[1], sys.argv[2], '--json'])\n"
            "peak = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0].split()[1]\n"
            "print(int(peak) // 1024, file=sys.stderr)\nsys.exit(rc)")  # VmHWM: this program's own peak RSS
    r = subprocess.run([sys.executable, "-c", code, ckpt, str(path)], capture_output=True, text=True, timeout=300,
                       preexec_fn=_cap_1gb)
    assert r.returncode == 0, r.stderr
    peak_mb = int(r.stderr.strip().splitlines()[-1])
    assert peak_mb < 500, f"peak RSS {peak_mb} MB"
    assert [w for w in json.loads(r.stdout)["warnings"] if not w.startswith("low confidence")] == []


def test_train_init_starts_from_torch_made_weights(tmp_path):
    torch.manual_seed(3)
    net = torch_lenet5()
    init = str(tmp_path / "init.safetensors")
    safetensors_torch.save_file(net.state_dict(), init)
    out = tmp_path / "run"
    r = run_cli("train", "--init", init, "--epochs", "1", "--lr", "1e-9", "--train-size", "64", "--test-size", "50",
                "--no-progress", "--out", str(out), "--workers", "1")
    assert r.returncode == 0 and "starting from the weights in" in r.stdout, r.stderr
    trained = checkpoint.load(str(out / "checkpoint.npz"))["model"]
    for k, v in net.state_dict().items():  # one step of lr 1e-9: still the torch weights
        assert np.abs(trained[k] - v.numpy()).max() < 1e-6, k
    bad = save_weights({"0.weight": np.zeros((6, 1, 5, 5), np.float32)}, str(tmp_path / "bad.safetensors"))
    r = run_cli("train", "--init", bad, "--epochs", "1", "--train-size", "64", "--test-size", "50", "--no-progress",
                "--out", str(tmp_path / "run2"))
    assert r.returncode == 2 and "--init" in r.stderr and "missing" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_predict_reads_images_for_a_colour_lenet5_from_before_the_input_record(tmp_path):
    path = str(tmp_path / "rgb.npz")
    checkpoint.save(path, models.lenet5(in_channels=3), "lenet5", {"num_classes": 10, "in_channels": 3}, epoch=1)
    d, _ = _digits(tmp_path, 1)
    r = run_cli("predict", path, str(d))  # a colour model (as a folder of colour images trains): images resized
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert len([line for line in r.stdout.splitlines() if line.strip()]) >= 1, r.stdout
