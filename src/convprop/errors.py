"""The errors that several parts of convprop raise or catch (training, runs, MPI, the command line),
in a module that imports nothing of convprop's, so that any part can use them without importing another."""

from __future__ import annotations


class Divergence(RuntimeError):
    """The loss became NaN or infinite."""


class MPIError(RuntimeError):
    """MPI is needed but not there (mpi4py or mpiexec missing)."""


class RunError(ValueError):
    """A run that cannot start or go on, for a reason the user can fix (the message says which)."""


class RunDiverged(RuntimeError):
    """The loss or the weights stopped being finite; the message says what was kept."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C: the message says what was saved and how to continue."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def mark_every_rank(e: BaseException) -> BaseException:
    """Mark an error that every rank of an MPI job raises at the same point (after a collective): the
    job can end in order, rank 0 reporting it, rather than abort."""
    e.every_rank = True
    return e
