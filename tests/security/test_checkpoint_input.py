"""A checkpoint's "input" header (checkpoint.input_spec) is a stranger's JSON: every field checked on load."""

from __future__ import annotations

import pytest
from runner import run_cli

from convprop import checkpoint, models

GOOD = {"size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.25], "range": [0, 255],
        "classes": [f"c{i}" for i in range(10)], "prepare": "resize"}


@pytest.mark.parametrize("bad, says", [
    ({"channels": 3}, "channels: expected 1"),
    ({"size": [28, -1]}, "size"),
    ({"size": [28, 28, 28]}, "size"),
    ({"mean": [0.1, 0.2]}, "mean and std"),
    ({"std": [0.0]}, "mean and std"),
    ({"std": [float("nan")]}, "mean and std"),
    ({"range": [0, 1]}, "range"),
    ({"classes": ["a"] * 9}, "classes"),
    ({"classes": [1] * 10}, "classes"),
    ({"prepare": "magic"}, "prepare"),
    ("not an object", "expected a JSON object"),
])
def test_a_bad_input_header_is_refused_naming_it(tmp_path, bad, says):
    path = str(tmp_path / "c.npz")
    spec = {**GOOD, **bad} if isinstance(bad, dict) else bad
    checkpoint.save(path, models.lenet5(), "lenet5", {"num_classes": 10}, input=spec)
    with pytest.raises(checkpoint.CheckpointError, match=f"input: .*{says}"):
        checkpoint.load(path)
    r = run_cli("evaluate", path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "input:" in r.stderr and "Traceback" not in r.stderr


def test_input_spec_of_a_good_and_an_old_checkpoint(tmp_path):
    path = str(tmp_path / "c.npz")
    checkpoint.save(path, models.lenet5(), "lenet5", {"num_classes": 10}, input=GOOD)
    assert checkpoint.input_spec(checkpoint.load(path)["meta"]) == GOOD
    checkpoint.save(path, models.lenet5(), "lenet5", {"num_classes": 10})  # written before "input" existed
    old = checkpoint.input_spec(checkpoint.load(path)["meta"])
    assert old["size"] == [28, 28] and old["channels"] == 1 and old["mean"] == [0.1307] and old["prepare"] == "digit"
    assert old["classes"] == [str(i) for i in range(10)]
    checkpoint.save(path, models.resnet8(in_channels=3), "resnet8", {"num_classes": 10, "in_channels": 3})
    assert checkpoint.input_spec(checkpoint.load(path)["meta"])["size"] == [32, 32]
