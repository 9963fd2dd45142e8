"""What surprised a newcomer in their first hour with the commands, each removed and kept so by a test."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from runner import run_cli

from convprop import checkpoint, models

SMALL = ["--train-size", "500", "--test-size", "300", "--no-progress", "--batch-size", "50"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`convprop train --epochs 1` on a small subset: its run directory and what it printed."""
    out = tmp_path_factory.mktemp("trained") / "run"
    r = run_cli("train", "--epochs", "1", "--workers", "1", "--out", str(out), *SMALL)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two digits and, between them, a file that is no image, under a name with a newline in it."""
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    Image.fromarray(digit).save(d / "a.png")
    (d / "b\nad.png").write_bytes(b"not an image")
    Image.fromarray(digit.T.copy()).save(d / "c.png")
    return d


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


def test_one_unreadable_file_in_a_directory_is_skipped_and_the_rest_predicted(trained, images):
    out, _ = trained
    r = run_cli("predict", str(out / "checkpoint.npz"), str(images))
    assert "a.png" in r.stdout and "c.png" in r.stdout, r.stdout + r.stderr
    warnings = [line for line in r.stderr.splitlines() if "ad.png" in line]
    assert len(warnings) == 1 and "b\\nad.png" in warnings[0], r.stderr  # one line, the newline escaped
    assert r.returncode == 2 and "1 of 3" in r.stderr.splitlines()[-1], r.stderr


@pytest.mark.parametrize("command", ["evaluate", "plot", "predict", "export"])
def test_a_run_directory_and_its_checkpoint_are_both_accepted(trained, images, tmp_path, command):
    out, _ = trained
    extra = {"predict": [str(images / "a.png")], "export": [str(tmp_path / "w.safetensors")],
             "evaluate": [], "plot": []}[command]
    for target in (out, out / "checkpoint.npz"):
        r = run_cli(command, str(target), *extra)
        assert r.returncode == 0, f"{command} {target}: {r.stderr}"


def test_top_k_beyond_the_classes_is_refused_in_one_line(trained, images):
    out, _ = trained
    r = run_cli("predict", str(out), str(images / "a.png"), "--top-k", "11")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--top-k" in r.stderr and "10" in r.stderr, r.stderr
    assert r.stdout == ""


def test_no_command_prints_the_usage_to_stderr_and_exits_2():
    r = run_cli()
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("usage: convprop"), (r.returncode, r.stderr)


def test_one_epoch_is_one_epoch(trained):
    _, stdout = trained
    assert "1 epochs" not in stdout and "1 epoch," in stdout and "after 1 epoch " in stdout, stdout


def test_train_on_missing_data_says_so_in_one_line_and_leaves_no_run_directory(tmp_path):
    r = run_cli("train", "--data", str(tmp_path / "nonexistent"), "--epochs", "1", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nonexistent" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_init_from_another_models_weights_is_one_short_line(tmp_path):
    from convprop import save_weights

    path = save_weights(models.resnet8(), str(tmp_path / "resnet8.safetensors"))
    r = run_cli("train", "--init", path, "--epochs", "1", "--out", str(tmp_path / "run"), *SMALL)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and len(r.stderr) < 400, r.stderr
    assert "missing" in r.stderr and "unexpected" in r.stderr


def test_an_error_of_rank_zeros_own_work_has_no_rank_prefix(tmp_path):
    """Rank 0 alone claims --out: its refusal is the user's error, not a rank's (no 'rank 0 of 2:')."""
    (tmp_path / "afile").write_text("")
    r = run_cli("train", "--workers", "2", "--epochs", "1", "--out", str(tmp_path / "afile"), *SMALL)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "rank 0 of" not in r.stderr and "--out" in r.stderr, r.stderr


def test_ctrl_c_under_mpi_is_one_line(tmp_path):
    """Ctrl-C reaches the whole foreground process group (the launcher, mpiexec, the ranks): one line, no
    MPICH notes."""
    proc = subprocess.Popen([sys.executable, "-m", "convprop", "train", "--workers", "2", "--epochs", "50",
                             "--out", str(tmp_path / "run"), *SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("epoch") or not line:
                break
        assert any(line.startswith("epoch") for line in lines), "".join(lines) + proc.stderr.read()
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "mpiexec" not in stdout + stderr and "Ctrl-C" not in stdout + stderr, stdout + stderr
    assert proc.returncode == 130 and stderr.count("\n") == 1 and "interrupted" in stderr, (proc.returncode, stderr)
