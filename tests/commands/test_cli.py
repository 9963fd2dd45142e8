"""`convprop train / evaluate / predict` end to end, on small subsets of the bundled sample."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from runner import run_cli

from convprop import checkpoint, cli
from convprop.data import load_mnist, normalize
from convprop.data.images import load_digit
from convprop.train import predict

SMALL = ["--train-size", "500", "--test-size", "300", "--no-progress", "--batch-size", "50"]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    r = run_cli("train", "--epochs", "1", "--out", str(out), *SMALL)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_train_writes_complete_metrics_checkpoint_and_curves(one_epoch_run):
    out, stdout = one_epoch_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1
    row = metrics["epochs"][0]
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"):
        assert isinstance(row[key], (int, float)), key
    assert 0.1 < metrics["test_accuracy"] <= 1.0 and metrics["best_epoch"] == 1  # (tested once, at the end)
    png = (out / "training-curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for name in ("metrics.json", "checkpoint.npz", "training-curves.png"):
        assert str(out / name) in stdout


def test_reloaded_checkpoint_gives_the_same_predictions(one_epoch_run):
    out, _ = one_epoch_run
    ckpt = checkpoint.load(str(out / "checkpoint.npz"))
    model = checkpoint.restore_model(ckpt)
    images, labels = load_mnist(train=False)
    probs = predict(model, normalize(images[:300]))
    again = predict(checkpoint.restore_model(checkpoint.load(str(out / "checkpoint.npz"))), normalize(images[:300]))
    np.testing.assert_array_equal(probs, again)
    # and the accuracy it reports on the run's own test subset is the one recorded
    idx = np.sort(np.random.default_rng([0, 1234]).permutation(len(labels))[:300])
    acc = float((predict(model, normalize(images[idx])).argmax(1) == labels[idx]).mean())
    assert acc == json.loads((out / "metrics.json").read_text())["test_accuracy"]


def test_evaluate_prints_accuracy_per_class_and_confusion(one_epoch_run):
    out, _ = one_epoch_run
    r = run_cli("evaluate", str(out / "checkpoint.npz"))
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "per-class accuracy" in r.stdout and "confusion matrix" in r.stdout
    rows = [line.split() for line in r.stdout.splitlines()[-10:]]
    assert sum(int(v) for row in rows for v in row[1:]) == 10000


def test_predict_reads_png_and_jpeg_digits(one_epoch_run, tmp_path):
    from PIL import Image

    out, _ = one_epoch_run
    images, _ = load_mnist(train=False)
    Image.fromarray(images[0]).resize((56, 56)).save(tmp_path / "a.png")
    Image.fromarray(255 - images[1]).convert("RGB").save(tmp_path / "b.jpg")  # black ink on white
    r = run_cli("predict", str(out / "checkpoint.npz"), str(tmp_path / "a.png"), str(tmp_path / "b.jpg"))
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(lines) == 2 and all(line.split(": ")[1][0].isdigit() for line in lines)


def test_load_digit_matches_mnist_conventions(tmp_path):
    from PIL import Image

    images, _ = load_mnist(train=False)
    Image.fromarray(255 - images[3]).save(tmp_path / "inv.png")
    d = load_digit(str(tmp_path / "inv.png"))
    assert d.shape == (28, 28) and d.dtype == np.uint8
    assert d[0].max() < 30 and d.max() > 200  # inverted back to white ink on a black background


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """2 epochs straight == 1 epoch, interrupted, then --resume: weights, optimizer state, history."""
    full, part = tmp_path / "full", tmp_path / "part"
    args = ["--epochs", "2", *SMALL, "--train-size", "200", "--test-size", "100", "--optimizer", "adam"]
    assert cli.main(["train", "--out", str(full), *args]) == 0

    real_save = checkpoint.save

    def save_then_die(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt  # killed right after the epoch-1 checkpoint

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    assert cli.main(["train", "--out", str(part), *args]) == 130
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert checkpoint.load(str(part / "checkpoint.npz"))["meta"]["epoch"] == 1
    assert cli.main(["train", "--resume", str(part / "checkpoint.npz"), "--no-progress"]) == 0

    a, b = checkpoint.load(str(full / "checkpoint.npz")), checkpoint.load(str(part / "checkpoint.npz"))
    assert a["meta"]["epoch"] == b["meta"]["epoch"] == 2
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k], err_msg=k)
    for i in a["optim"]:
        for name in a["optim"][i]:
            np.testing.assert_array_equal(a["optim"][i][name], b["optim"][i][name])
    assert a["meta"]["rng"] == b["meta"]["rng"] and a["meta"]["scheduler"] == b["meta"]["scheduler"]
    ha, hb = (json.loads((d / "metrics.json").read_text())["epochs"] for d in (full, part))
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in ha]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in hb]


@pytest.mark.parametrize("args, words", [
    (["train", "--epochs", "0"], "argument --epochs: expected an integer from 1 to 100,000, got 0"),
    (["train", "--batch-size", "-3"], "--batch-size"),
    (["train", "--lr", "0"], "argument --lr: expected a positive number"),
    (["train", "--model", "resnet"], "argument --model: invalid choice"),
    (["explain", "nope"], "argument topic: invalid choice"),
    (["train", "--data", "/nonexistent/dir"], "/nonexistent/dir: no such directory"),
    (["evaluate", "/nonexistent.npz"], "no such checkpoint"),
    (["predict", "/nonexistent.npz", "x.png"], "no such checkpoint"),
])
def test_cli_user_errors_exit_2_with_one_line(args, words, tmp_path):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert words in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_cli_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    r = run_cli("evaluate", str(bad))
    assert r.returncode == 2 and "not a checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_train_keeps_freed_memory_for_the_next_step():
    import platform

    from convprop.allocator import keep_freed_memory

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory() is True


def test_load_digit_recovers_mnist_digits_from_resized_and_inverted_files(tmp_path):
    from PIL import Image

    images, _ = load_mnist(train=False)
    corrs = []
    for i in range(20):
        img = Image.fromarray(images[i] if i % 2 else 255 - images[i]).resize((84, 84))
        path = tmp_path / f"{i}.{'png' if i % 3 else 'jpg'}"
        img.convert("RGB").save(path)
        d = load_digit(str(path)).astype(float)
        corrs.append(np.corrcoef(d.ravel(), images[i].astype(float).ravel())[0, 1])
    assert np.mean(corrs) > 0.9 and min(corrs) > 0.7, corrs  # the same digit, where MNIST put it


def test_every_flag_of_every_command_has_help_text():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"convprop {name} {action.option_strings or action.dest} has no help text"


def test_progress_bar_on_a_terminal_only(tmp_path):
    """On a terminal: a bar with loss, accuracy and images per second.  Into a file or pipe: no bar
    (no carriage-return frames), the per-epoch lines only."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    args = ["train", "--epochs", "1", "--train-size", "500", "--test-size", "100", "--batch-size", "20"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "convprop", *args, "--out", str(tmp_path / "tty")],
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    tty = b"".join(chunks).decode(errors="replace")
    assert "epoch 1/1" in tty and "loss=" in tty and "acc=" in tty and "img_s=" in tty and "\r" in tty
    r = run_cli(*args, "--out", str(tmp_path / "pipe"))
    assert r.returncode == 0 and "\r" not in r.stderr and "loss=" not in r.stderr, r.stderr
    assert "epoch   1/1  train loss" in r.stdout


def test_version_help_and_global_flags_after_the_command():
    from convprop import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"convprop {__version__}"
    r = run_cli("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: convprop") and r.stderr == ""
    parser = cli.build_parser()
    for argv, threads, debug in ((["--threads", "2", "explain", "conv"], 2, False),
                                 (["explain", "conv", "--threads", "3", "--debug"], 3, True),
                                 (["explain", "conv"], None, False)):
        args = parser.parse_args(argv)
        assert (args.threads, args.debug) == (threads, debug), argv


@pytest.mark.parametrize("argv", [["train", "--seed", "-1"], ["explain", "conv", "--seed", "-1"]])
def test_a_negative_seed_names_seed(argv):
    r = run_cli(*argv)
    assert r.returncode == 2 and "argument --seed: expected a non-negative integer" in r.stderr
    assert r.stderr.count("\n") == 1


def closed_pipe_run(*argv):
    """convprop writing into a pipe whose reader has gone (as `| head` after its lines)."""
    import os

    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "convprop", *argv], stdout=w, stderr=subprocess.PIPE, text=True,
                              timeout=300)
    finally:
        os.close(w)


def test_output_into_a_closed_pipe_ends_quietly(one_epoch_run):
    """`convprop explain all | head -2`, `convprop evaluate … | head`: no BrokenPipeError traceback."""
    out, _ = one_epoch_run
    for argv in (["explain", "all"], ["evaluate", str(out / "checkpoint.npz")]):
        r = closed_pipe_run(*argv)
        assert r.returncode == 141 and r.stderr == "", (argv, r.stderr)


def test_sgd_and_adam_each_get_their_own_default_learning_rate():
    from convprop.run import DEFAULT_LR, Settings

    assert Settings(optimizer="sgd").lr == DEFAULT_LR["sgd"] == 0.05
    assert Settings().lr == Settings(optimizer="adam").lr == DEFAULT_LR["adam"] == 5e-3
    assert Settings(optimizer="sgd", lr=0.1).lr == 0.1


@pytest.mark.parametrize("flag, value, parsed", [("--epochs", "100001", 100001), ("--batch-size", "0", 0),
                                                 ("--seed", str(2**63), 2**63), ("--lr", "inf", float("inf")),
                                                 ("--shift", "5", 5), ("--train-size", "0", 0)])
def test_a_flag_and_its_run_setting_are_checked_by_one_rule(capsys, flag, value, parsed):
    from convprop.run import RunError, Settings

    name = flag[2:].replace("-", "_")
    with pytest.raises(RunError) as info:
        Settings(**{name: parsed})
    expected = str(info.value).split(": expected ", 1)[1].split(", got")[0].removesuffix(" or None")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", flag, value])
    assert f"argument {flag}: expected {expected}, got" in capsys.readouterr().err


def test_predict_shows_what_the_model_saw_warns_and_escapes_names(one_epoch_run, tmp_path):
    import os

    from PIL import Image

    from convprop.data.images import read_digit

    out, _ = one_epoch_run
    images, _ = load_mnist(train=False)
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(255 - images[0]).resize((200, 200)).save(d / "a.png")
    evil = d / "b\nconvprop: 7 (p = 1.000).png"  # a name that would forge a line of output
    Image.fromarray(255 - images[1]).save(evil)
    Image.new("L", (60, 60), 128).save(d / "blank.png")
    seen = tmp_path / "seen"
    r = run_cli("predict", str(out / "checkpoint.npz"), str(d / "a.png"), str(evil), str(d / "blank.png"),
                "--top-k", "1", "--show", str(seen))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3 and lines[1].startswith(str(d / "b\\nconvprop: 7 (p = 1.000).png: ")), lines
    assert all(line.startswith("convprop: warning: ") for line in r.stderr.splitlines()), r.stderr
    assert f"{d / 'blank.png'}: blank or almost uniform" in r.stderr
    assert sorted(os.listdir(seen)) == ["a.png", "b\\nconvprop: 7 (p = 1.000).png", "blank.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(seen / "a.png")), read_digit(str(d / "a.png"))[0])
    r = run_cli("predict", str(out / "checkpoint.npz"), str(d / "a.png"), "--show", str(d / "a.png"))
    assert r.returncode == 2 and "--show" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_train_reference_runs_the_loop_kernels_to_the_same_numbers(tmp_path, monkeypatch):
    """`convprop train --reference`: conv and pooling on functional/reference.py's loops; the same run
    (seed, data, steps) as on the fast kernels, up to float32 rounding."""
    from convprop.functional import reference

    calls = []
    loops = reference.conv2d_backward
    monkeypatch.setattr(reference, "conv2d_backward", lambda *a: calls.append(1) or loops(*a))
    tiny = ["--train-size", "8", "--test-size", "4", "--batch-size", "4", "--epochs", "1", "--workers", "1",
            "--no-progress", "--shift", "0"]
    rows = []
    for flag in ([], ["--reference"]):
        assert cli.main(["train", *tiny, *flag, "--out", str(tmp_path / f"run{len(rows)}")]) == 0
        rows.append(json.loads((tmp_path / f"run{len(rows)}" / "metrics.json").read_text())["epochs"][-1])
        assert len(calls) == (4 if flag else 0)  # 2 steps × LeNet-5's 2 convolutions, with the flag only
    assert not reference.active()  # off again after the run
    fast, loops_ = rows
    for key in ("train_loss", "val_loss"):
        assert abs(fast[key] - loops_[key]) <= 1e-4 * abs(fast[key]), (key, fast[key], loops_[key])
