"""Starting ranks: `convprop train --workers N` re-runs the command as N MPI ranks under the mpiexec
next to this Python (on this machine, or on the hosts Hydra's settings name), which dies with its
parent, and turns what Hydra and ssh say when the run fails (a rank that died, a host lost or out of
reach, a proxy that ended) into one line naming the rank or the host."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

from .._extras import install
from ..errors import MPIError


def find_mpiexec() -> str | None:
    """The mpiexec next to this Python (where the mpi extra puts MPICH's), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def available() -> bool:
    """Whether this Python can run ranks: mpi4py installed and an mpiexec found."""
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None and find_mpiexec() is not None


def _die_with_parent() -> None:
    """(In the child, before exec.)  Linux: SIGKILL this process when its parent dies, so that
    killing `convprop train` kills its mpiexec, and mpiexec's end ends the ranks."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except Exception:
        pass


_BANNER_PID = re.compile(r"^=\s+PID (\d+) RUNNING AT (\S+)")
_BANNER_EXIT = re.compile(r"^(?:YOUR APPLICATION TERMINATED WITH THE EXIT STRING: (.*)|=\s+EXIT CODE: (\d+))$")
_HYDRA = re.compile(r"^\[(?:mpiexec|proxy:[^@\]]*)@[^\]]*\] ")  # Hydra's own diagnostics: [mpiexec@host1] …
# ssh (Hydra's launcher to other hosts) on a host it cannot reach or has lost: (what, host)
_SSH = [(re.compile(r"^ssh: connect to host (\S+) port \d+: "), "could not reach"),
        (re.compile(r"^ssh: Could not resolve hostname (\S+?): "), "could not reach"),
        (re.compile(r"^(?:\S+@)?(\S+): Permission denied"), "could not log in to"),
        (re.compile(r"^Connection closed by (\S+) port \d+"), "could not reach"),
        (re.compile(r"^Connection to (\S+) closed by remote host"), "lost the connection to"),
        (re.compile(r"^Timeout, server (\S+) not responding"), "lost the connection to")]


def _phrase(ranks: list[int]) -> str:
    return (f"rank {ranks[0]}" if len(ranks) == 1
            else "ranks " + ", ".join(map(str, ranks[:-1])) + f" and {ranks[-1]}")


def _lost_proxy(peers: list) -> str:
    """Whose Hydra proxy ended, from the ranks' (host, pid, parent pid): a dead parent on this machine,
    else one on another host (which this machine cannot see)."""
    proxies: dict[tuple[str, int], list[int]] = {}
    for r, (host, _, parent) in enumerate(peers):
        proxies.setdefault((host, parent), []).append(r)
    here = socket.gethostname()
    dead = [key for key in proxies if key[0] == here and not os.path.exists(f"/proc/{key[1]}")]
    elsewhere = [key for key in proxies if key[0] != here]
    found = dead or (elsewhere if len(elsewhere) == 1 else [])
    if not found:
        hosts = " or ".join(sorted({h for h, _ in elsewhere})) or here
        return f"an MPI proxy (hydra_pmi_proxy) on {hosts} ended: its ranks stopped, and so did every other"
    return "; ".join(f"the MPI proxy (hydra_pmi_proxy, pid {pid}) of {_phrase(proxies[host, pid])} on {host} ended"
                     for host, pid in found) + ": its ranks stopped, and so did every other"


def launch(n: int, args: list[str]) -> int:
    """Run `python -m convprop ARGS` as n ranks under mpiexec (on this machine, or where Hydra's own
    settings say: HYDRA_HOST_FILE and the like); return its exit code.

    Rank 0's output passes through, and every rank's error line, without MPICH's own notes ("[mpiexec@host]
    Sending Ctrl-C …": on Ctrl-C rank 0 alone says what happened, in one line).  When the run fails, what
    Hydra and ssh say about it (a dozen lines) becomes one line: the rank that died (MPICH's Hydra then stops
    the others), the host ssh could not reach or lost, or the proxy (Hydra's agent on a host) that ended."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise MPIError(f"no mpiexec found next to this Python or on PATH: {install('mpi')}")
    with tempfile.TemporaryDirectory(prefix="convprop-ranks-") as tmp:
        ranks_file = os.path.join(tmp, "ranks.json")
        env = {**os.environ, "CONVPROP_RANKS_FILE": ranks_file, "PYTHONUNBUFFERED": "1"}
        if sys.stderr.isatty():  # mpiexec forwards the ranks' stderr through a pipe: tell them it ends on a terminal
            env.update(CONVPROP_STDERR_TTY="1", COLUMNS=str(shutil.get_terminal_size().columns))
        proc = subprocess.Popen([mpiexec, "-n", str(n), sys.executable, "-m", "convprop", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=_die_with_parent)
        seen = {"said": False, "ssh": None, "proxy": False, "hydra": None}

        def errors() -> None:  # mpiexec's stderr: the ranks' (passed on) and Hydra's and ssh's (held back)
            for raw in iter(proc.stderr.readline, b""):
                line = raw.decode(errors="replace").rstrip("\r\n")  # (ssh ends its lines with \r\n)
                if _HYDRA.match(line):
                    seen["proxy"] |= "control_cb" in line and "assert (!closed)" in line
                    seen["hydra"] = seen["hydra"] or _HYDRA.sub("", line).split("): ", 1)[-1]
                    continue
                ssh = next(((what, m.group(1), line) for rx, what in _SSH if (m := rx.match(line))), None)
                if ssh:
                    seen["ssh"] = seen["ssh"] or ssh
                    continue
                seen["said"] |= line.startswith("convprop")
                sys.stderr.write(line + "\n")
                sys.stderr.flush()

        reader = threading.Thread(target=errors, daemon=True)
        reader.start()
        banner, pid, host, how, held = False, None, None, None, b""

        def pump() -> None:
            nonlocal banner, pid, host, how, held
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith("[mpiexec@"):  # MPICH's own notes, e.g. on Ctrl-C
                    continue
                if line.startswith("=" * 20) and not banner:
                    banner, held = True, b""
                if banner:
                    m = _BANNER_PID.match(line)
                    pid, host = (int(m.group(1)), m.group(2)) if m else (pid, host)
                    m = _BANNER_EXIT.match(line)
                    how = (m.group(1) or f"exit code {m.group(2)}") if m else how
                    continue
                if not line.strip():  # (the banner starts with a blank line: hold blank lines back)
                    held += raw
                    continue
                sys.stdout.buffer.write(held + raw)
                sys.stdout.flush()
                held = b""

        try:
            pump()
        except KeyboardInterrupt:  # Ctrl-C reached mpiexec and the ranks too: rank 0 says it; let them end quietly
            pump()
        code = proc.wait()
        reader.join(timeout=2)  # (an ssh to a lost host may hold mpiexec's stderr open a while longer)
        try:
            with open(ranks_file) as f:
                peers = json.load(f)
        except (OSError, ValueError):
            peers = []
        message = None
        if seen["said"] or code == 0:
            pass  # a rank said what went wrong
        elif banner:
            rank = [r for r, (h, p, _) in enumerate(peers) if p == pid and (h == host or h.split(".")[0] == host)]
            who = (f"rank {rank[0]} of {n} (pid {pid} on {host})" if rank
                   else f"a rank (pid {pid} on {host})" if pid else "a rank")
            message = f"{who} ended abnormally: {how or f'exit code {code}'}; every rank was stopped"
        elif seen["ssh"]:
            what, host, line = seen["ssh"]
            message = f"{what} {host} ({line.rstrip('.')}); every rank was stopped"
        elif seen["proxy"]:
            message = _lost_proxy(peers)
        elif seen["hydra"]:
            message = f"mpiexec failed: {seen['hydra']}"
        if message:
            print(f"convprop: error: {message}", file=sys.stderr, flush=True)
        return code
