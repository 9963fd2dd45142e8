"""Starting ranks: `convprop train --workers N` re-runs the command as N MPI ranks on this machine
under the mpiexec next to this Python, which dies with its parent, and turns Hydra's report of a
rank that died into one line naming the rank."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from ..errors import MPIError


def find_mpiexec() -> str | None:
    """The mpiexec next to this Python (where pip install 'convprop[mpi]' puts MPICH's), else on PATH."""
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
_BANNER_EXIT = re.compile(r"^YOUR APPLICATION TERMINATED WITH THE EXIT STRING: (.*)$")


def launch(n: int, args: list[str]) -> int:
    """Run `python -m convprop ARGS` as n ranks on this machine under mpiexec; return its exit code.

    Rank 0's output passes through.  When a rank dies (killed, say), mpiexec (MPICH's Hydra) stops
    the others and prints a dozen lines naming a pid; those become one line naming the rank."""
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise MPIError("no mpiexec found next to this Python or on PATH: pip install 'convprop[mpi]'")
    with tempfile.TemporaryDirectory(prefix="convprop-ranks-") as tmp:
        ranks_file = os.path.join(tmp, "ranks.json")
        env = {**os.environ, "CONVPROP_RANKS_FILE": ranks_file, "PYTHONUNBUFFERED": "1"}
        if sys.stderr.isatty():  # mpiexec forwards the ranks' stderr through a pipe: tell them it ends on a terminal
            env.update(CONVPROP_STDERR_TTY="1", COLUMNS=str(shutil.get_terminal_size().columns))
        proc = subprocess.Popen([mpiexec, "-n", str(n), sys.executable, "-m", "convprop", *args],
                                stdout=subprocess.PIPE, env=env, preexec_fn=_die_with_parent)
        banner, pid, host, how, held = False, None, None, None, b""
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith("=" * 20) and not banner:
                    banner, held = True, b""
                if banner:
                    m = _BANNER_PID.match(line)
                    pid, host = (int(m.group(1)), m.group(2)) if m else (pid, host)
                    m = _BANNER_EXIT.match(line)
                    how = m.group(1) if m else how
                    continue
                if not line.strip():  # (the banner starts with a blank line: hold blank lines back)
                    held += raw
                    continue
                sys.stdout.buffer.write(held + raw)
                sys.stdout.flush()
                held = b""
            code = proc.wait()
        except KeyboardInterrupt:  # mpiexec passes Ctrl-C on to the ranks; let them end
            code = proc.wait()
            raise
        if banner:
            try:
                with open(ranks_file) as f:
                    ranks = json.load(f)
            except (OSError, ValueError):
                ranks = {}
            who = (f"rank {ranks[str(pid)]} of {n} (pid {pid})" if str(pid) in ranks
                   else f"a rank (pid {pid})" if pid else "a rank")
            print(f"convprop: error: {who} ended abnormally: {how or f'exit code {code}'}; every rank was stopped",
                  file=sys.stderr, flush=True)
        return code
