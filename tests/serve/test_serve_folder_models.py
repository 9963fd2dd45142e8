"""`convprop serve` of a model trained on a folder of images: the page's input is normalised with the
checkpoint's own mean and std (not MNIST's), an upload is read as its training images were, the bars are
named by the folder's classes, the page's MNIST training is refused; a model of another input size or
channel count is refused at start in one line."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

pytest.importorskip("starlette")
import httpx  # noqa: E402
from imagefolders import SHAPES, write_folder  # noqa: E402
from runner import run_cli  # noqa: E402
from serve_helpers import start  # noqa: E402

from convprop import checkpoint  # noqa: E402
from convprop.data import normalize  # noqa: E402
from convprop.data.folders import read_image  # noqa: E402
from convprop.serve.server import load_engine  # noqa: E402

FAST = ("--epochs", "1", "--batch-size", "16", "--workers", "1", "--no-progress")


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grey")
    write_folder(tmp / "shapes", per_class=10)
    r = run_cli("train", "--data", str(tmp / "shapes"), "--out", str(tmp / "run"), *FAST)
    assert r.returncode == 0, r.stderr
    return tmp


def test_a_grey_folder_model_is_served_with_its_own_normalisation_and_classes(grey_run):
    ckpt = str(grey_run / "run" / "checkpoint.npz")
    spec = checkpoint.input_spec(checkpoint.load(ckpt)["meta"])
    assert spec["prepare"] == "resize" and abs(spec["mean"][0] - 0.1307) > 1e-3  # not MNIST's: the test means it
    engine = load_engine(ckpt, log=lambda *_: None)
    srv = start(engine)
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            info = client.get("/api/model").json()
            assert info["class_names"] == list(SHAPES) and info["prepare"] == "resize"
            pixels = np.random.default_rng(0).integers(0, 256, (28, 28))
            r = client.post("/api/predict", json={"pixels": pixels.tolist()})
            assert r.status_code == 200, r.text
            model = checkpoint.restore_model(checkpoint.load(ckpt), ckpt).eval()
            logits = model(normalize(pixels[None].astype(np.uint8), spec["mean"], spec["std"]))[0].astype(np.float64)
            want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            np.testing.assert_allclose(r.json()["probs"], want, rtol=1e-4, atol=1e-6)
            # an upload is the whole image resized to 28×28 grey, as training read the folder — not a digit
            image = next((grey_run / "shapes" / "disc").iterdir())
            body = {"image": base64.b64encode(image.read_bytes()).decode()}
            r = client.post("/api/predict", json=body)
            assert r.status_code == 200, r.text
            assert np.array_equal(np.asarray(r.json()["digit"]), read_image(str(image), (28, 28), 1)[0])
            r = client.post("/api/train/start", json={})
            assert r.status_code == 409 and "MNIST" in r.json()["error"] and "\n" not in r.json()["error"]
    finally:
        srv.close()


def test_a_model_of_another_input_shape_is_refused_in_one_line(tmp_path):
    write_folder(tmp_path / "colour", per_class=6, colour=True)
    r = run_cli("train", "--data", str(tmp_path / "colour"), "--out", str(tmp_path / "run"), *FAST)
    assert r.returncode == 0, r.stderr
    r = run_cli("serve", str(tmp_path / "run"), "--port", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "3×28×28" in r.stderr and "1×28×28" in r.stderr


def test_an_uploaded_image_for_a_resize_model_is_bounded_like_any_other():
    from PIL import Image

    from convprop.serve.inputs import InputError, digit_from_image

    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, "PNG")
    with pytest.raises(InputError, match="image"):
        digit_from_image(buf.getvalue(), "resize")
