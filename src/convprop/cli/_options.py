"""What every command of the `convprop` command line shares: its parser (one-line errors), the
global options, UsageError, and the option types."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from .. import distributed
from ..run import CHECKPOINT_NAME
from ..run.settings import problem


class UsageError(ValueError):
    """A bad value on the command line."""


def run_paths(path: str, last: bool = False) -> tuple[str, str]:
    """(run directory, checkpoint) from either: every command takes both, a run directory meaning its
    checkpoint.npz (the last epoch's: the one a default run tests and --resume continues; its best
    validation epoch's, checkpoint-best.npz, is named as a file) and a checkpoint the directory it lies in.
    (last: kept for --resume's callers; a directory always means checkpoint.npz.)"""
    if os.path.isdir(path):
        return path, os.path.join(path, CHECKPOINT_NAME)
    return os.path.dirname(path) or ".", path


CKPT_HELP = ("a checkpoint written by convprop train (checkpoint.npz, or checkpoint-best.npz), or the run directory "
             "that holds it (meaning its checkpoint.npz)")


def input_shape(text: str | None) -> tuple[int, ...] | None:
    """--input-shape "C,H,W" (or "F" for a model that takes features) as a tuple; None where not given."""
    if text is None:
        return None
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) not in (1, 3) or min(dims) < 1:
        raise ValueError(f"--input-shape: expected C,H,W (or F) of positive integers, got {text!r}")
    return dims


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def setting(name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """The argparse type of the flag of run setting `name`: parsed by `parse`, checked by the same
    rule that checks the setting everywhere else (run.settings.problem)."""

    def convert(text: str) -> Any:
        try:
            v = parse(text)
        except ValueError:
            v = text  # (fails every rule of a number)
        expected = problem(name, v)
        if expected is not None:
            raise argparse.ArgumentTypeError(f"expected {expected.removesuffix(' or None')}, got {v!r}")
        return v

    convert.__name__ = name  # (argparse names the type in its messages)
    return convert


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`convprop: error: …`, exit code 2), like every other error."""

    def error(self, message: str):
        # under mpiexec every rank parses the same command line: rank 0 alone says what is wrong
        self.exit(2, f"convprop: error: {message} (see {self.prog} --help)\n" if distributed.launched_rank() == 0
                  else None)


def global_options(p: argparse.ArgumentParser, default) -> None:
    """--debug and --threads: before the command, or after it (there they default to 'not given', so that
    `convprop --threads 2 train` keeps its 2)."""
    p.add_argument("--debug", action="store_true", default=False if default is None else default,
                   help="show the full traceback on errors")
    p.add_argument("--threads", type=positive_int, default=default, metavar="N",
                   help="threads (cores) for convprop's kernels (default: OMP_NUM_THREADS or OPENBLAS_NUM_THREADS "
                        "if set, else the CPUs available)")
