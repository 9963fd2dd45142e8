"""`convprop summary CKPT|RUN_DIR|MODEL`: the table of a checkpoint, a run directory or a model by name;
bad input is one line and exit 2."""

from __future__ import annotations

from runner import run_cli

import convprop.random
from convprop import checkpoint, models


def test_summary_of_a_model_name_a_checkpoint_and_a_run_directory(tmp_path):
    r = run_cli("summary", "resnet8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("resnet8 (new, untrained); input (N, 1, 28, 28) with N = 1")
    assert "Total params: 77,754" in r.stdout and "Total mult-adds (M): 9.35" in r.stdout
    assert "│    │    └─conv1 (Conv2d)" in r.stdout  # the blocks' layers, nested
    convprop.random.manual_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save(str(run / "checkpoint.npz"), models.vgg_small(in_channels=3), "vgg_small", {"in_channels": 3})
    for target in (str(run), str(run / "checkpoint.npz")):
        r = run_cli("summary", target)
        assert r.returncode == 0, r.stderr
        assert "vgg_small, epoch 0; input (N, 3, 32, 32)" in r.stdout and "[1, 16, 32, 32]" in r.stdout
    r = run_cli("summary", "lenet5", "--input-shape", "3,28,28", "--batch-size", "8")
    assert r.returncode == 0 and "[8, 6, 28, 28]" in r.stdout and "Total params: 62,006" in r.stdout, r.stderr


def test_summary_refuses_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, words in ((["nope"], "nope: no such checkpoint or run directory, and not a model name"),
                        ([str(tmp_path / "empty")], "checkpoint.npz: no such checkpoint file"),
                        ([str(tmp_path / "missing.npz")], "no such checkpoint file"),
                        (["lenet5", "--input-shape", "1,8,8"], "--input-shape 1,8,8: input_shape [1, 1, 8, 8]"),
                        (["lenet5", "--input-shape", "1,x"], "--input-shape: expected C,H,W"),
                        (["lenet5", "--batch-size", "0"], "--batch-size: expected a positive integer")):
        r = run_cli("summary", *args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
