"""`convprop train --workers N`: the same command re-run as N MPI ranks on this machine."""

from __future__ import annotations

from .. import distributed
from .._extras import install
from ..functional._schedule import get_num_threads
from ._options import UsageError


def launch_workers(args, argv: list[str], command: bool) -> int | None:
    """`convprop train --workers N` (N > 1, not yet under mpiexec): run the same command as N MPI
    ranks on this machine and return their exit code; None to train in this process.  Without
    --workers: the thread count when run as a command and MPI is installed, else 1 (main(argv)
    called from Python trains in its caller's process)."""
    world = distributed.launched_size()
    if world > 1:
        if args.workers not in (None, world):
            raise UsageError(f"--workers: this run was started by mpiexec with {world} ranks, got --workers "
                             f"{args.workers} (give one or the other)")
        return None
    workers = args.workers or (get_num_threads() if command and distributed.available() else 1)
    if workers == 1:
        return None
    if not distributed.available():
        raise UsageError(f"--workers {workers}: training on several processes needs MPI: "
                         f"{install('mpi')}")
    return distributed.launch(workers, argv)
