"""`convprop train`'s checks on what a run is given: --workers within the CPUs this process may use, and
--resume only of a checkpoint whose weights are those of the model its settings name."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from convprop import checkpoint, models
from convprop.run import Settings

FLAGS = ["--train-size", "200", "--test-size", "100", "--batch-size", "50", "--no-progress"]


def convprop(*args, **kw):
    return subprocess.run([sys.executable, "-m", "convprop", *args], capture_output=True, text=True, timeout=300,
                          **kw)


def one_line(r, words):
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, (r.returncode, r.stderr)
    assert words in r.stderr, r.stderr
    return r.stderr


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_workers_beyond_the_cpus_available_are_one_line(tmp_path):
    n = cpus()
    r = convprop("train", "--workers", str(n + 1), "--out", str(tmp_path / "run"), *FLAGS)
    one_line(r, f"--workers {n + 1}: this process may use {n} CPU")
    assert f"at most --workers {n}" in r.stderr and not (tmp_path / "run").exists()


def test_workers_spread_over_a_host_file_are_not_bounded_by_this_machine(tmp_path):
    """HYDRA_HOST_FILE spreads the ranks over its hosts: this machine's CPUs are not the limit (the run then
    fails here on the host file that names no reachable host, in its own one line)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("no-such-host.invalid:64\n")
    n = cpus()
    r = convprop("train", "--workers", str(n + 1), "--epochs", "1", "--out", str(tmp_path / "run"), *FLAGS,
                 env={**os.environ, "HYDRA_HOST_FILE": str(hosts)})
    assert "CPU" not in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_workers_are_bounded_by_the_affinity_not_the_machine(tmp_path):
    """Under `taskset -c 0` (a container's or a batch job's CPU set) two workers are one too many."""
    first = min(os.sched_getaffinity(0))
    r = convprop("train", "--workers", "2", "--out", str(tmp_path / "run"), *FLAGS,
                 preexec_fn=lambda: os.sched_setaffinity(0, {first}))
    one_line(r, "--workers 2: this process may use 1 CPU (its affinity), so at most --workers 1")


def _checkpoint(path, model, name, config, settings: Settings, epoch=1):
    checkpoint.save(str(path), model, name, config, epoch=epoch, args=settings.dict(),
                    history=[{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5}])
    return str(path)


SMALL = dict(epochs=2, train_size=200, test_size=100, batch_size=50)


@pytest.mark.parametrize("name, config, model_setting, words", [
    ("lenet5", {"num_classes": 10}, "resnet8", "its weights are a lenet5's, but its run settings name model resnet8"),
    ("vgg_small", {"num_classes": 10, "width": 4}, "vgg_small",
     "its weights do not fit vgg_small on this data (num_classes 10): '0.weight' has shape (4, 1, 3, 3)"),
    ("lenet5", {"num_classes": 12}, "lenet5",
     "'11.weight' has shape (12, 84) and dtype float32, expected (10, 84) and float32"),
])
def test_resume_refuses_weights_of_another_model_than_its_settings_name(tmp_path, name, config, model_setting,
                                                                      words):
    """Before: the checkpoint's own architecture was trained on, whatever its settings said."""
    model = models.build(name, **config)
    path = _checkpoint(tmp_path / "run" / "checkpoint.npz", model, name, config,
                       Settings(model=model_setting, **SMALL))
    before = open(path, "rb").read()
    err = one_line(convprop("train", "--resume", path, "--no-progress"), f"--resume {path}: ")
    assert words in err, err
    assert open(path, "rb").read() == before


def test_resume_of_a_matching_float64_checkpoint_trains_on(tmp_path):
    model = models.lenet5(dtype=np.float64)
    path = _checkpoint(tmp_path / "run" / "checkpoint.npz", model, "lenet5", {"num_classes": 10, "dtype": "float64"},
                       Settings(**SMALL))
    r = convprop("train", "--resume", path, "--no-progress")
    assert r.returncode == 0, r.stderr
    ckpt = checkpoint.load(path)
    assert ckpt["meta"]["epoch"] == 2 and ckpt["meta"]["model"]["dtype"] == "float64"
