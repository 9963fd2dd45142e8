"""`convprop export` where the file cannot be written: a directory in the way, no such directory, a
read-only directory, a full disk, a write error of the safetensors writer.  Each is one line with exit
code 2, leaves no half-written file (nor a temporary) and an older file of that name whole; what export
writes gets the run's file mode (0666 less the umask), as checkpoints do; a link in OUT's place is
replaced, never followed."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys

import numpy as np
import pytest
from runner import run_cli

from convprop import checkpoint, models

SUFFIXES = [".onnx", ".safetensors"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "checkpoint.npz")
    checkpoint.save(path, models.lenet5(), "lenet5", {"num_classes": 10}, epoch=1)
    return path


def one_line(r, words=""):
    assert r.returncode == 2, (r.returncode, r.stdout[-300:], r.stderr[-2000:])
    assert r.stderr.startswith("convprop: error: ") and r.stderr.count("\n") == 1, r.stderr[-2000:]
    assert words in r.stderr, r.stderr
    return r.stderr


def _mount(*options) -> str | None:
    """A tmpfs mounted with these options on a fresh directory (root with CAP_SYS_ADMIN), else None."""
    import tempfile

    d = tempfile.mkdtemp()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", d], capture_output=True)
    if r.returncode:
        os.rmdir(d)
        return None
    return d


def _unmount(d: str) -> None:
    subprocess.run(["umount", d], capture_output=True)
    os.rmdir(d)


@contextlib.contextmanager
def read_only_dir(tmp_path):
    """A directory no file can be made in: mode 0555 for a user; a read-only tmpfs for root (who ignores
    modes); else sysfs's top directory, which refuses new files to root too."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        try:
            yield str(d)
        finally:
            d.chmod(0o755)
        return
    d = _mount("ro", "size=64k")
    if d is None:
        yield "/sys"
        return
    try:
        yield d
    finally:
        _unmount(d)


def _left(d) -> list[str]:
    return sorted(os.listdir(d))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_directory_in_the_way_is_one_line_and_nothing_is_left(ckpt, tmp_path, suffix):
    out = tmp_path / f"model{suffix}"
    out.mkdir()
    one_line(run_cli("export", ckpt, str(out)), f"{out}: cannot write")
    assert _left(tmp_path) == [out.name] and out.is_dir() and not os.listdir(out)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_missing_directory_is_one_line(ckpt, tmp_path, suffix):
    out = tmp_path / "no" / "such" / f"model{suffix}"
    one_line(run_cli("export", ckpt, str(out)), "No such file or directory")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_read_only_directory_is_one_line(ckpt, tmp_path, suffix):
    with read_only_dir(tmp_path) as d:
        before = _left(d)
        one_line(run_cli("export", ckpt, os.path.join(d, f"model{suffix}")), "cannot write")
        assert _left(d) == before


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_full_disk_is_one_line_and_keeps_the_older_file_whole(ckpt, tmp_path, suffix):
    """A real 64 KiB tmpfs where the machine lets root mount one (the model is 250 KB); the same
    error made by the file system call in process everywhere (test below)."""
    d = _mount("size=64k") if os.geteuid() == 0 else None
    if d is None:  # not root, or no CAP_SYS_ADMIN: the in-process test below covers ENOSPC
        d = None
        out = tmp_path / f"model{suffix}"
        out.write_bytes(b"older")
        _enospc_in_process(ckpt, str(out))
        return
    try:
        out = os.path.join(d, f"model{suffix}")
        with open(out, "wb") as f:
            f.write(b"older")
        one_line(run_cli("export", ckpt, out), "No space left on device")
        assert _left(d) == [f"model{suffix}"] and open(out, "rb").read() == b"older"
    finally:
        _unmount(d)


def _enospc_in_process(ckpt: str, out: str) -> None:
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from convprop import cli

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    err = io.StringIO()
    saved = os.fsync
    os.fsync = full
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            rc = cli.main(["export", ckpt, out])
    finally:
        os.fsync = saved
    assert rc == 2 and err.getvalue().startswith("convprop: error: ") and err.getvalue().count("\n") == 1, \
        err.getvalue()
    assert "No space left on device" in err.getvalue()
    d = os.path.dirname(out)
    assert _left(d) == [os.path.basename(out)] and open(out, "rb").read() == b"older", _left(d)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_full_disk_in_process_is_one_line_and_keeps_the_older_file_whole(ckpt, tmp_path, suffix):
    out = tmp_path / "d" / f"model{suffix}"
    out.parent.mkdir()
    out.write_bytes(b"older")
    _enospc_in_process(ckpt, str(out))


def test_a_safetensors_writer_error_is_one_line(ckpt, tmp_path, monkeypatch):
    import io
    from contextlib import redirect_stderr, redirect_stdout

    import safetensors
    import safetensors.numpy

    from convprop import cli

    def broken(*a, **k):
        raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28 })")

    monkeypatch.setattr(safetensors.numpy, "save", broken)
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = cli.main(["export", ckpt, str(tmp_path / "w.safetensors")])
    assert rc == 2 and err.getvalue().count("\n") == 1 and "SafetensorError" in err.getvalue(), err.getvalue()
    assert _left(tmp_path) == []


def test_a_graph_that_fails_onnx_checker_is_one_line_and_not_written(ckpt, tmp_path, monkeypatch):
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from convprop import cli
    from convprop.onnx.rules import Builder

    made = Builder.nodes_n

    def wrong(self, op, inputs, labels, **attrs):  # a Relu with an attribute Relu does not have
        return made(self, op, inputs, labels, **({**attrs, "alpha": 0.5} if op == "Relu" else attrs))

    monkeypatch.setattr(Builder, "nodes_n", wrong)
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = cli.main(["export", ckpt, str(tmp_path / "m.onnx")])
    assert rc == 2 and err.getvalue().count("\n") == 1 and "onnx.checker" in err.getvalue(), err.getvalue()
    assert "alpha" in err.getvalue() and _left(tmp_path) == []


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_exports_get_the_runs_file_mode_as_checkpoints_do(ckpt, tmp_path, suffix):
    out = tmp_path / f"model{suffix}"
    code = ("import os, sys; os.umask(0o027); from convprop import cli, checkpoint, models; "
            f"checkpoint.save({str(tmp_path / 'c.npz')!r}, models.lenet5(), 'lenet5', {{}}, epoch=1); "
            f"sys.exit(cli.main(['export', {ckpt!r}, {str(out)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out.stat().st_mode & 0o777) == 0o640 == ((tmp_path / "c.npz").stat().st_mode & 0o777)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_link_in_outs_place_is_replaced_not_followed(ckpt, tmp_path, suffix):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    out = tmp_path / f"model{suffix}"
    out.symlink_to(target)
    r = run_cli("export", ckpt, str(out))
    assert r.returncode == 0, r.stderr
    assert target.read_text() == "keep me" and not out.is_symlink() and out.stat().st_size > 1000


def test_save_weights_refuses_what_safetensors_cannot_hold_in_one_line(tmp_path):
    from convprop.weights import WeightsError, save_weights

    for state, words in (({"__metadata__": np.zeros(3, np.float32)}, "'__metadata__' is the name safetensors"),
                         ({"a": np.zeros(3, object)}, "SafetensorError")):
        with pytest.raises(WeightsError) as e:
            save_weights(state, str(tmp_path / "w.safetensors"))
        assert "\n" not in str(e.value) and words in str(e.value), str(e.value)
    assert _left(tmp_path) == []
