"""A run's directory: claimed before any data is read — created (or one line saying why it cannot be),
locked against a second run on it (which gets one line naming the holder), and never silently reused:
an earlier run there is refused, or, for the default directory, the next number taken."""

from __future__ import annotations

import os
from collections.abc import Callable

from .settings import RunError

# checkpoint.npz: the last epoch's (what --resume continues); checkpoint-best.npz: the best validation epoch's
CHECKPOINT_NAME, BEST_NAME, METRICS_NAME, LOCK_NAME = ("checkpoint.npz", "checkpoint-best.npz", "metrics.json",
                                                        ".convprop.lock")


def holds_run(directory: str) -> bool:
    return any(os.path.exists(os.path.join(directory, n)) for n in (CHECKPOINT_NAME, BEST_NAME, METRICS_NAME))


def make_directory(path: str) -> str | None:
    """Create `path` (and its parents) or raise RunError saying why it cannot hold a run.  Returns the
    outermost directory this created (path or a parent of it), None if path existed."""
    created, up = None, os.path.abspath(path)
    while not os.path.exists(up) and os.path.dirname(up) != up:
        created, up = up, os.path.dirname(up)
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"--out {path}: expected a directory, got an existing file")
    try:
        os.makedirs(path, exist_ok=True)
    except NotADirectoryError:
        raise RunError(f"--out {path}: a part of the path is a file, not a directory") from None
    except OSError as e:
        raise RunError(f"--out {path}: cannot create the directory ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunError(f"--out {path}: the directory is not writable")
    return created


def remove_created(path: str, created: str | None) -> None:
    """Undo make_directory for a run that never started: path and its parents up to `created`, each only if
    empty (so a run that failed before its first file leaves nothing behind)."""
    if created is None:
        return
    here = os.path.abspath(path)
    while True:
        try:
            os.rmdir(here)
        except OSError:
            return
        if here == created or os.path.dirname(here) == here:
            return
        here = os.path.dirname(here)


def _lock(fd: int) -> None:
    """An exclusive, non-blocking lock on the open file fd, or OSError if another process holds one;
    the kernel drops it when the file closes (also when its process is killed)."""
    try:
        import fcntl
    except ImportError:  # Windows: a lock on the file's first byte
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class DirectoryLock:
    """An exclusive lock on a run directory: a lock file holding the owner's pid, locked (flock on
    POSIX, msvcrt.locking on Windows).

    A second run on the same directory gets RunError naming the holder.  The lock ends with the process
    (the kernel drops it when its file closes), so a killed run never leaves a directory locked."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        self.fd: int | None = None
        self.created: str | None = None  # what claim's make_directory created (removed if the run never starts)

    def acquire(self) -> DirectoryLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunError(f"--out {os.path.dirname(self.path)}: cannot write there ({e.strerror or e})") from None
            try:
                _lock(fd)
            except OSError:
                try:
                    os.lseek(fd, 0, os.SEEK_SET)
                    holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                except OSError:  # (Windows: the locked byte cannot be read)
                    holder = "?"
                os.close(fd)
                raise RunError(f"--out {os.path.dirname(self.path)}: another convprop run (pid {holder}) is "
                               "using this directory; wait for it to end or choose another --out") from None
            try:  # the holder we waited for may have removed the file: lock the one on disk
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)  # while still held: a run waiting on the old file retries
            except OSError:  # (Windows: an open file cannot be removed; the next run reuses it)
                pass
            os.close(self.fd)
            self.fd = None


def claim(out: str | None, default: str, resume_path: str | None = None,
          log: Callable[[str], None] = print) -> tuple[str, DirectoryLock]:
    """The directory a run writes to, created and locked: `out`, refused if it holds an earlier run
    (other than the one resumed from resume_path); or, without out, `default`, `default-2`, … the first
    that holds no run and no other run has locked.  Returns (the directory, its lock)."""
    if out is not None:
        created = make_directory(out)
        lock = DirectoryLock(out).acquire()
        lock.created = created
        resuming_here = resume_path and os.path.samefile(os.path.dirname(os.path.abspath(resume_path)), out)
        if holds_run(out) and not resuming_here:
            lock.release()
            raise RunError(f"--out {out}: holds an earlier run; continue it with convprop train --resume "
                           f"{os.path.join(out, CHECKPOINT_NAME)}, or choose another --out")
        return out, lock
    for k in range(1, 10_000):
        path = default if k == 1 else f"{default}-{k}"
        if holds_run(path):
            continue
        created = make_directory(path)
        try:
            lock = DirectoryLock(path).acquire()
        except RunError:
            continue  # another run is starting there
        lock.created = created
        if holds_run(path):
            lock.release()
            continue
        if k > 1:
            log(f"{default} holds an earlier run: this one goes to {path}")
        return path, lock
    raise RunError(f"{default}: 10,000 runs there already; choose an --out")
