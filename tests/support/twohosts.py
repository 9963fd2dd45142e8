"""Two hosts on one Linux machine, for MPI tests across a real network stack: docs/two-hosts.sh's
network namespaces (host1, host2) joined by a veth link, an sshd on host2 with a key made for the
run, a hostfile naming both, MPICH set to TCP over the link.  A context manager: everything it made
(namespaces, processes, files) is gone when it ends, also when the test in it fails.

    with TwoHosts(tmp) as hosts:
        proc = hosts.popen(sys.executable, "-m", "convprop", "train", "--workers", "2", ...)
        hosts.pids(2)                 # the processes on host2 (its sshd, the Hydra proxy, the rank)
        hosts.link(False)             # cut the link (a partition)
    assert not hosts.leftovers()      # nothing of it is left
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from runner import DOCS

SCRIPT = str(DOCS / "two-hosts.sh")


def unavailable() -> str | None:
    """Why two hosts cannot be made here (None when they can): root, `ip netns`, sshd and unshare are needed."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "two-host tests need root (network namespaces)"
    for tool in ("ip", "unshare", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"two-host tests need {tool}"
    if not os.path.exists("/usr/sbin/sshd"):
        return "two-host tests need sshd (apt-get install openssh-server)"
    name = f"cpprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    if made.returncode != 0:
        return f"this machine cannot create network namespaces ({made.stderr.strip()})"
    return None


class TwoHosts:
    def __init__(self, parent: str | os.PathLike | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="two-hosts-", dir=parent)
        self.name = ""
        self._procs: list[subprocess.Popen] = []
        self._inodes: set[int] = set()  # of the two network namespaces: a process in one is on that host

    def _script(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=60, **kw)

    def __enter__(self) -> TwoHosts:
        try:
            r = self._script("up", self.dir)
            assert r.returncode == 0, f"two-hosts.sh up failed: {r.stdout}{r.stderr}"
            with open(os.path.join(self.dir, "name")) as f:
                self.name = f.read().strip()
            self._inodes = {os.stat(f"/run/netns/{self.namespace(h)}").st_ino for h in (1, 2)}
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in self._procs:  # (their processes in the namespaces are killed by `down`)
            if proc.poll() is None:
                proc.kill()
        r = self._script("down", self.dir)
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        assert r.returncode == 0, f"two-hosts.sh down failed: {r.stdout}{r.stderr}"

    # ------------------------------------------------------------------ running
    def command(self, *argv: str) -> list[str]:
        """argv run on host1, mpiexec (or `convprop train --workers`) in it placing ranks on both hosts."""
        return ["bash", SCRIPT, "run", self.dir, *argv]

    def popen(self, *argv: str, env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(self.command(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})})
        self._procs.append(proc)
        return proc

    def run(self, *argv: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        proc = self.popen(*argv, env=env)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            for pid in self.pids(1) + self.pids(2):  # (mpiexec and its ranks hold the pipes open)
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            out, err = proc.communicate(timeout=30)
            raise AssertionError(f"{argv} still running after {timeout} s:\n{out}{err}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # ------------------------------------------------------------------ looking and breaking
    @property
    def device(self) -> str:
        return self.name + "v"

    def namespace(self, host: int) -> str:
        return f"{self.name}-{host}"

    def pids(self, host: int) -> list[int]:
        r = subprocess.run(["ip", "netns", "pids", self.namespace(host)], capture_output=True, text=True)
        return [int(p) for p in r.stdout.split()]

    def link(self, up: bool) -> None:
        r = self._script("link", self.dir, "up" if up else "down")
        assert r.returncode == 0, r.stderr

    def link_bytes(self) -> int:
        """Bytes host1 has sent and received on the link so far."""
        r = subprocess.run(["ip", "netns", "exec", self.namespace(1), "cat",
                            f"/sys/class/net/{self.device}/statistics/tx_bytes",
                            f"/sys/class/net/{self.device}/statistics/rx_bytes"], capture_output=True, text=True)
        return sum(int(v) for v in r.stdout.split())

    def sshd_pid(self) -> int:
        with open(os.path.join(self.dir, "sshd.pid")) as f:
            return int(f.read())

    def leftovers(self) -> list[str]:
        """What of this harness is still there (after it ended: nothing)."""
        left = []
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        left += [f"namespace {line.split()[0]}" for line in names.splitlines() if line.startswith(self.name + "-")]
        left += [path for path in (self.dir, f"/etc/netns/{self.name}-1", f"/etc/netns/{self.name}-2")
                 if os.path.exists(path)]
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                on_a_host = os.stat(f"/proc/{pid}/ns/net").st_ino in self._inodes
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:  # (ended meanwhile)
                continue
            if cmdline and (on_a_host or self.dir in cmdline):  # (a zombie has no cmdline)
                left.append(f"process {pid}: {cmdline}")
        return left
