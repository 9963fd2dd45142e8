"""`convprop train --workers N`: the same command re-run as N MPI ranks on this machine."""

from __future__ import annotations

import os

from .. import distributed
from .._extras import install
from ..functional._schedule import available_cpus, get_num_threads
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
    # N ranks on fewer CPUs only wait for each other: at most one per CPU this process may use, unless Hydra's
    # host file spreads them over other machines
    cpus = None if os.environ.get("HYDRA_HOST_FILE") else available_cpus()
    if cpus is not None and args.workers is not None and args.workers > cpus:
        raise UsageError(f"--workers {args.workers}: this process may use {cpus} CPU{'s' * (cpus > 1)} "
                         f"(its affinity), so at most --workers {cpus}")
    workers = args.workers or min(get_num_threads() if command and distributed.available() else 1, cpus or 1 << 30)
    if workers == 1:
        return None
    if not distributed.available():
        raise UsageError(f"--workers {workers}: training on several processes needs MPI: "
                         f"{install('mpi')}")
    return distributed.launch(workers, argv)
