"""`convprop train/evaluate/predict --data DIR` on folders of class folders of images, the validation
split and the best checkpoint, and bad input: one line naming the file or argument, exit 2, nothing left."""

from __future__ import annotations

import json

import numpy as np
import pytest
from imagefolders import SHAPES, write_folder
from runner import run_cli

from convprop import checkpoint

pytest.importorskip("PIL")
FAST = ("--epochs", "2", "--batch-size", "16", "--workers", "1", "--no-progress")


def one_line(r, rc=2):
    assert r.returncode == rc, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def test_train_evaluate_predict_on_a_folder(tmp_path):
    data, out = tmp_path / "shapes", tmp_path / "run"
    bad = write_folder(data, per_class=15, corrupt=1)
    r = run_cli("train", "--data", str(data), "--out", str(out), *FAST)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("convprop: warning:")]
    assert all(any(b in w for w in warnings) for b in bad)
    assert "3 unreadable image files skipped" in r.stderr
    assert "39 images, validating on 6" in r.stdout and "3 classes, 28×28, 1 channel" in r.stdout
    assert "val loss" in r.stdout and "validation accuracy" in r.stdout  # no test set: no test line
    for name in ("checkpoint.npz", "checkpoint-best.npz"):
        spec = checkpoint.input_spec(checkpoint.load(str(out / name))["meta"])
        assert spec["classes"] == list(SHAPES) and spec["channels"] == 1 and spec["size"] == [28, 28]
        assert spec["prepare"] == "resize" and spec["range"] == [0, 255] and len(spec["mean"]) == 1
    e = run_cli("evaluate", str(out / "checkpoint-best.npz"), "--data", str(data))
    assert e.returncode == 0, e.stderr
    assert "on 45 images in" in e.stdout and "cross:" in e.stdout and "square:" in e.stdout
    assert "3 unreadable image files skipped" in e.stderr
    p = run_cli("predict", str(out / "checkpoint.npz"), str(data / "disc" / "000.png"), "--json", "--top-k", "3")
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout)
    assert row["name"] in SHAPES and sorted(t["name"] for t in row["top"]) == sorted(SHAPES)


def test_a_split_folder_uses_its_own_val_and_test(tmp_path):
    data, out = tmp_path / "d", tmp_path / "run"
    write_folder(data / "train", per_class=8, seed=1, colour=True)
    write_folder(data / "val", per_class=2, seed=2, colour=True)
    write_folder(data / "test", per_class=3, seed=3, colour=True)
    r = run_cli("train", "--data", str(data), "--out", str(out), "--final", "last", *FAST)
    assert r.returncode == 0, r.stderr
    assert "24 images, validating on 6, testing on 9 (3 classes, 28×28, 3 channels)" in r.stdout
    assert "test accuracy" in r.stdout and "last epoch 2: checkpoint.npz" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_checkpoint"].endswith("checkpoint.npz") and m["input"]["channels"] == 3
    e = run_cli("evaluate", str(out / "checkpoint.npz"), "--data", str(data))
    assert f"accuracy {m['test_accuracy']:.2%} on 9 images in" in e.stdout
    # --show writes each image as the model saw it: RGB at the model's size, read as training read it
    shown, image = tmp_path / "shown", next((data / "test" / "disc").iterdir())
    p = run_cli("predict", str(out), str(image), "--show", str(shown))
    assert p.returncode == 0, p.stderr
    from PIL import Image

    from convprop.data.folders import read_image

    saw = Image.open(shown / (image.stem + ".png"))
    assert saw.mode == "RGB" and saw.size == (28, 28)
    assert np.array_equal(np.asarray(saw).transpose(2, 0, 1), read_image(str(image), (28, 28), 3))


def test_mnist_gets_a_validation_split_and_the_best_checkpoint_is_tested(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--out", str(out), "--train-size", "800", "--val-split", "0.25", "--final", "best", *FAST)
    assert r.returncode == 0, r.stderr
    assert "training lenet5 (61,706 parameters) on 800 images, validating on 1,250, testing on 10,000" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert all("val_acc" in row and "test_acc" not in row for row in m["epochs"])
    best = min(m["epochs"], key=lambda row: row["val_loss"])["epoch"]
    assert m["best_epoch"] == best and m["test_checkpoint"].endswith("checkpoint-best.npz")
    assert checkpoint.load(str(out / "checkpoint-best.npz"))["meta"]["epoch"] == best
    assert checkpoint.load(str(out / "checkpoint.npz"))["meta"]["epoch"] == 2
    e = run_cli("evaluate", str(out / "checkpoint-best.npz"))
    assert f"accuracy {m['test_accuracy']:.2%} on 10,000 test images" in e.stdout
    assert f"test accuracy {m['test_accuracy']:.2%} after 2 epochs" in r.stdout


def test_augmented_runs_are_bit_identical(tmp_path):
    args = ("--train-size", "300", "--test-size", "100", "--epochs", "1", "--rotate", "15", "--scale", "0.2")
    for name in ("a", "b"):
        assert run_cli("train", "--out", str(tmp_path / name), *args, *FAST[2:]).returncode == 0
    a, b = (checkpoint.load(str(tmp_path / n / "checkpoint.npz"))["model"] for n in "ab")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", ["empty", "all-corrupt", "val-class", "val-split", "final", "rotate"])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, case):
    data, out = tmp_path / "d", tmp_path / "run"
    data.mkdir()
    extra = []
    if case == "all-corrupt":
        (data / "a").mkdir()
        (data / "a" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    elif case == "val-class":
        write_folder(data / "train", per_class=2, classes=("a", "b"))
        write_folder(data / "val", per_class=1, classes=("a", "c"))
    else:
        write_folder(data, per_class=2)
        extra = {"val-split": ["--val-split", "1.5"], "final": ["--final", "middle"],
                 "rotate": ["--rotate", "90"], "empty": []}[case]
        if case == "empty":
            data = tmp_path / "nothing-here"
            data.mkdir()
    r = run_cli("train", "--data", str(data), "--out", str(out), *extra, *FAST)
    assert r.returncode == 2, r.stderr
    last = r.stderr.splitlines()[-1]
    assert "Traceback" not in r.stderr
    expect = {"empty": "nothing-here", "all-corrupt": "none of its 1 image files could be read",
              "val-class": "a class the training data does not have", "val-split": "--val-split",
              "final": "--final", "rotate": "--rotate"}[case]
    assert expect in last, r.stderr
    if case in ("val-split", "final", "rotate", "empty", "val-class"):
        one_line(r) if case != "final" else None
    assert not out.exists()  # no half-made run directory


def test_resnet8_has_its_own_default_recipe():
    from convprop.run import Settings

    assert Settings.recipe() == Settings()
    r = Settings.recipe(model="resnet8")
    assert (r.epochs, r.batch_size, r.optimizer, r.lr) == (30, 64, "adam", 0.02)
    assert Settings.recipe(model="resnet8", optimizer="adam").lr == 0.02  # the recipe's own optimizer: its rate
    assert Settings.recipe(model="resnet8", optimizer="sgd").lr == 0.05  # the optimizer's own rate
    assert Settings.recipe(model="resnet8", epochs=3).epochs == 3
