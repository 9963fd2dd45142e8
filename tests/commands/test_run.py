"""A run (convprop/run/): its directory, what it saves, and that every message about it is true."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

from convprop import checkpoint, cli
from convprop.run import DirectoryLock, Run, RunDiverged, RunError, RunInterrupted, Settings
from convprop.train import Divergence

TINY = dict(train_size=200, test_size=100, batch_size=50)
FLAGS = ["--train-size", "200", "--test-size", "100", "--batch-size", "50", "--no-progress"]


def run_cli(*args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "convprop", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, **kw)


def one_line(r, rc=2):
    assert r.returncode == rc, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def quiet(*_):
    pass


# --------------------------------------------------------------------------- the directory
@pytest.mark.parametrize("where, words", [
    ("file", "expected a directory, got an existing file"),
    ("under", "a part of the path is a file"),
    ("devnull", "expected a directory, got an existing file"),
])
def test_out_that_cannot_be_a_directory_fails_before_training(tmp_path, where, words):
    f = tmp_path / "f"
    f.write_text("x")
    out = {"file": str(f), "under": str(f / "run"), "devnull": os.devnull}[where]
    r = run_cli("train", "--out", out, *FLAGS)
    assert words in one_line(r) and "--out" in r.stderr and "epoch" not in r.stdout


def test_a_second_run_on_a_locked_directory_names_the_holder(tmp_path):
    lock = DirectoryLock(str(tmp_path)).acquire()
    try:
        r = run_cli("train", "--out", str(tmp_path), *FLAGS)
        assert f"another convprop run (pid {os.getpid()})" in one_line(r)
    finally:
        lock.release()
    assert not (tmp_path / ".convprop.lock").exists()  # released: removed


def test_the_lock_dies_with_its_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from convprop.run import DirectoryLock; "
                               f"DirectoryLock({str(tmp_path)!r}).acquire(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunError, match=f"pid {holder.pid}"):
        DirectoryLock(str(tmp_path)).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    DirectoryLock(str(tmp_path)).acquire().release()  # a killed run leaves nothing locked


def test_rerunning_train_refuses_an_explicit_out_and_numbers_the_default(tmp_path):
    first = run_cli("train", "--epochs", "1", *FLAGS, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_cli("train", "--epochs", "1", *FLAGS, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "runs/lenet5-seed0 holds an earlier run: this one goes to runs/lenet5-seed0-2" in second.stdout
    assert (tmp_path / "runs/lenet5-seed0-2/checkpoint.npz").exists()
    r = run_cli("train", "--epochs", "1", "--out", "runs/lenet5-seed0", *FLAGS, cwd=tmp_path)
    assert "holds an earlier run" in one_line(r) and "--resume runs/lenet5-seed0/checkpoint.npz" in r.stderr


def test_resume_with_settings_flags_says_they_would_be_ignored(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--epochs", "1", "--out", str(out), *FLAGS).returncode == 0
    r = run_cli("train", "--resume", str(out / "checkpoint.npz"), "--epochs", "5", "--lr", "0.1")
    msg = one_line(r)
    assert "--epochs 5" in msg and "--lr 0.1" in msg and "epochs 1" in msg and "ignored" in msg


# --------------------------------------------------------------------------- what is saved, what is said
def _run(tmp_path, epochs=2, **kw):
    return Run(Settings(epochs=epochs, **TINY, **kw), str(tmp_path / "run"), progress=False, log=quiet)


def test_divergence_after_a_good_epoch_keeps_that_checkpoint_and_says_so(tmp_path):
    with _run(tmp_path, epochs=3, optimizer="sgd") as run:
        end = run._end_of_epoch

        def then_explode(epoch, history):
            end(epoch, history)
            run.scheduler.step = lambda: None  # from epoch 2 on, an absurd learning rate
            run.optimizer.param_groups[0]["lr"] = 1e30

        run._end_of_epoch = then_explode
        with pytest.raises(RunDiverged) as info:
            run.train()
        weights = run.model.state_dict()["0.weight"].copy()
    msg = str(info.value)
    assert "diverged" in msg and f"the last good checkpoint, of epoch 1, is kept: {run.ckpt_path}" in msg
    kept = checkpoint.load(run.ckpt_path)
    assert kept["meta"]["epoch"] == 1 and np.isfinite(kept["model"]["0.weight"]).all()
    assert not np.array_equal(kept["model"]["0.weight"], weights)
    assert json.loads(open(run.metrics_path).read())["epochs"][-1]["epoch"] == 1


def test_an_epoch_with_a_non_finite_test_loss_or_weights_is_never_saved(tmp_path):
    with _run(tmp_path) as run:
        row = {"epoch": 1, "train_loss": 0.5, "val_loss": float("nan"), "val_acc": 0.1}
        with pytest.raises(Divergence, match="val loss of nan"):
            run._end_of_epoch(1, [row])
        next(run.model.parameters()).data[0, 0, 0, 0] = np.inf
        with pytest.raises(Divergence, match="weights that are not finite"):
            run._end_of_epoch(1, [{**row, "val_loss": 0.5}])
        assert "no checkpoint was saved" in run.what_exists()
    assert not os.path.exists(run.ckpt_path) and not os.path.exists(run.metrics_path)


def test_disk_full_during_a_save_says_the_old_checkpoint_survived(tmp_path, monkeypatch, capsys):
    real = checkpoint.save
    calls = []

    def full_on_the_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(checkpoint, "save", full_on_the_second)
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "3", "--out", str(out), "--workers", "1", *FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert f"the last good checkpoint, of epoch 1, is kept: {out / 'checkpoint.npz'}" in err
    assert checkpoint.load(str(out / "checkpoint.npz"))["meta"]["epoch"] == 1


def test_a_write_limit_reached_while_saving_is_one_line(tmp_path):
    """A real failing write (RLIMIT_FSIZE: the file-size limit, as a full disk fails a write)."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    r = run_cli("train", "--epochs", "1", "--out", str(tmp_path / "run"), "--workers", "1", *FLAGS, preexec_fn=limit)
    msg = one_line(r)
    assert "could not save the checkpoint of epoch 1" in msg and "no checkpoint was saved" in msg
    assert [n for n in os.listdir(tmp_path / "run") if n.endswith(".tmp")] == []


def test_ctrl_c_leaves_a_plottable_run_and_names_the_resume_command(tmp_path, monkeypatch, capsys):
    real = checkpoint.save

    def save_then_interrupt(*a, **kw):
        real(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)
    out = tmp_path / "run"
    assert cli.main(["train", "--epochs", "3", "--out", str(out), "--workers", "1", *FLAGS]) == 130
    err = capsys.readouterr().err
    assert f"continue with: convprop train --resume {out / 'checkpoint.npz'}" in err
    assert "of epoch 1, is kept" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and len(metrics["epochs"]) == 1
    monkeypatch.setattr(checkpoint, "save", real)
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "training-curves.png").exists()


def test_interrupted_before_any_checkpoint_says_so(tmp_path):
    with _run(tmp_path) as run:
        run._end_of_epoch = lambda *a: (_ for _ in ()).throw(KeyboardInterrupt)
        with pytest.raises(RunInterrupted) as info:
            run.train()
    assert "no checkpoint was saved" in info.value.message and "--resume" not in info.value.message


def test_checkpoints_get_the_mode_of_every_other_file_of_the_run(tmp_path):
    old = os.umask(0o022)
    try:
        with _run(tmp_path, epochs=1) as run:
            run.train()
        modes = {n: stat.S_IMODE(os.stat(os.path.join(run.out, n)).st_mode) for n in ("checkpoint.npz", "metrics.json")}
    finally:
        os.umask(old)
    assert modes == {"checkpoint.npz": 0o644, "metrics.json": 0o644}


def test_a_save_removes_only_the_temporaries_of_dead_processes(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = tmp_path / f".ckpt-{sleeper.pid}-abc.tmp"
        dead_tmp = tmp_path / f".ckpt-{dead.pid}-abc.tmp"
        live_tmp.write_bytes(b"half")
        dead_tmp.write_bytes(b"half")
        from convprop import models

        checkpoint.save(str(tmp_path / "c.npz"), models.lenet5(), "lenet5")
        assert live_tmp.exists() and not dead_tmp.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("saved, words", [
    ({"model": "lenet5", "epochs": 1e400, "optimizer": "adam", "lr": 0.1, "seed": 0}, "epochs"),
    ({"epochs": 3, "optimizer": "adam", "lr": 0.1, "seed": 0}, "lack model"),
    ({"model": "lenet5", "epochs": 3, "optimizer": "adam", "lr": "fast", "seed": 0}, "lr"),
    ({"model": "lenet5", "epochs": 3, "optimizer": "adam", "lr": 0.1, "seed": -1}, "seed"),
    ({"model": "lenet5", "epochs": 3, "optimizer": "adam", "lr": 0.1, "seed": 0, "shift": [1]}, "shift"),
    ("lenet5", "holds no run settings"),
])
def test_crafted_run_settings_in_a_checkpoint_are_refused(saved, words):
    with pytest.raises(RunError, match=words):
        Settings.from_saved(saved, "c.npz")


SAVES = r"""
import sys
from convprop import checkpoint, models
model = models.lenet5()
for k in range(int(sys.argv[2])):
    checkpoint.save(sys.argv[1], model, "lenet5", {}, epoch=k)
"""


def test_concurrent_saves_into_one_directory_never_delete_each_others_temporaries(tmp_path):
    """Before, each save removed every `.ckpt-*.tmp` it found — the half-written files of the others too."""
    procs = [subprocess.Popen([sys.executable, "-c", SAVES, str(tmp_path / f"c{i}.npz"), "40"],
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert sorted(os.listdir(tmp_path)) == ["c0.npz", "c1.npz", "c2.npz"]


def test_concurrent_runs_on_one_out_one_trains_the_others_get_one_line(tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "convprop", "train", "--epochs", "2", "--out", str(out),
                               "--workers", "1", *FLAGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    winners = [r for r in results if r[0].returncode == 0]
    assert len(winners) == 1, [(p.returncode, err) for p, _, err in results]
    for p, _, err in results:
        if p.returncode != 0:
            assert p.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
            assert "another convprop run (pid" in err or "holds an earlier run" in err, err
    assert checkpoint.load(str(out / "checkpoint.npz"))["meta"]["epoch"] == 2
    assert sorted(os.listdir(out))[:4] == ["checkpoint-best.npz", "checkpoint.npz", "confusion-matrix.png",
                                           "feature-maps.png"]


def test_fit_calls_on_step_after_every_step_and_stops_when_it_says_so():
    from convprop import models, nn, optim
    from convprop.data import DataLoader
    from convprop.train import StepInfo, fit

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), rng.integers(0, 10, 40)
    model = models.lenet5()
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    seen: list[StepInfo] = []

    def on_step(info: StepInfo) -> bool:
        seen.append(info)
        return info.epoch == 2 and info.step == 1  # stop after the second step of the second epoch

    ended = []
    history = fit(model, nn.CrossEntropyLoss(), optimizer, DataLoader(images, labels, 16), 5,
                  DataLoader(images, labels, 40), progress=False, log=None, on_step=on_step,
                  on_epoch_end=lambda epoch, h: ended.append(epoch))
    assert [(i.epoch, i.step, i.batch_size) for i in seen] == [(1, 0, 16), (1, 1, 16), (1, 2, 8), (2, 0, 16),
                                                                (2, 1, 16)]
    assert all(i.steps == 3 and np.isfinite(i.loss) and 0 <= i.correct <= i.batch_size and i.lr == 0.01
               for i in seen)
    assert [h["epoch"] for h in history] == [1, 2] and ended == [1]  # the partial epoch: a row, no on_epoch_end
    assert history[1]["partial"] and "partial" not in history[0] and "val_acc" in history[1]
    assert history[1]["train_loss"] == pytest.approx((seen[3].loss + seen[4].loss) / 2)
