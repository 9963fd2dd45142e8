"""What surprised a newcomer in their first hour with the commands, each removed and kept so by a test."""

from __future__ import annotations

import os
import stat

import pytest
from runner import run_cli

from convprop import checkpoint, models


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A LeNet-5 checkpoint as `convprop train` writes it, in a run directory."""
    run = tmp_path_factory.mktemp("run") / "lenet5-seed0"
    return checkpoint.save(str(run / "checkpoint.npz"), models.lenet5(), "lenet5", {"num_classes": 10}, epoch=1,
                           history=[])


def test_every_export_gets_the_umasks_mode(ckpt, tmp_path):
    old = os.umask(0o027)
    try:
        for name in ("w.safetensors", "m.onnx"):
            r = run_cli("export", ckpt, str(tmp_path / name))
            assert r.returncode == 0, r.stderr
    finally:
        os.umask(old)
    modes = {n: oct(stat.S_IMODE(os.stat(tmp_path / n).st_mode)) for n in ("w.safetensors", "m.onnx")}
    assert modes == {"w.safetensors": "0o640", "m.onnx": "0o640"}
