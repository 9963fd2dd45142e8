"""The `convprop` command: one module per command (train, evaluate, predict, export, summary, explain,
plot, serve), each with its add_parser(sub) and run(args); here the parser is assembled and every error
becomes one line.

User errors print one line `convprop: error: …` and exit with code 2 (--debug shows the traceback);
a diverging run exits with code 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__, checkpoint, distributed, nn
from ..data import IDXError
from ..functional._schedule import set_num_threads
from ..run import RunDiverged, RunError, RunInterrupted
from ..train import Divergence
from . import evaluate, explain, export, plot, predict, serve, summary, train
from ._options import Parser, UsageError, global_options, positive_int, setting
from ._workers import launch_workers

__all__ = ["main", "build_parser", "UsageError", "positive_int", "setting", "COMMANDS"]

COMMANDS = {"train": train, "evaluate": evaluate, "predict": predict, "plot": plot, "explain": explain,
            "serve": serve, "export": export, "summary": summary}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="convprop", description="CNNs with hand-written backward passes, in NumPy.")
    p.add_argument("--version", action="version", version=f"convprop {__version__}",
                   help="print convprop's version and exit")
    global_options(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in ("train", "evaluate", "plot", "explain", "predict", "export", "summary", "serve"):  # --help order
        COMMANDS[name].add_parser(sub)
    for command in sub.choices.values():  # every command (keep this last): --debug/--threads after it too
        global_options(command, argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if code == 130 and distributed.is_initialized():  # a rank stopped by Ctrl-C: its line is said; MPI's
        sys.stdout.flush()  # finalisation would add its own about the collectives cut short, so end here
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    command, argv = argv is None, sys.argv[1:] if argv is None else list(argv)
    if not argv:  # bare `convprop`: no command given, a usage error (as git's, pip's): what it can do, on stderr
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.threads is not None:
        set_num_threads(args.threads)
    try:
        try:
            if args.command == "train" and (code := launch_workers(args, argv, command)) is not None:
                return code
            return COMMANDS[args.command].run(args)
        except BaseException as e:
            # under mpiexec: an error of every rank (before MPI starts, an error of the command line's) is
            # rank 0's to say; one of this rank's alone stops every rank, naming this one
            if (not distributed.is_initialized() or isinstance(e, (KeyboardInterrupt, SystemExit))
                    or getattr(e, "every_rank", False)):
                if distributed.launched_rank() != 0:
                    return 130 if isinstance(e, KeyboardInterrupt) else 1 if isinstance(e, _DIVERGED) else 2
                raise
            if args.debug:  # this rank's alone: say it, naming the rank, and stop every rank
                import traceback

                traceback.print_exc()
            distributed.abort(str(e) if isinstance(e, _EXPECTED) else f"{type(e).__name__}: {e}",
                              1 if isinstance(e, _DIVERGED) else 2 if isinstance(e, _EXPECTED) else 1)
    except _DIVERGED as e:
        if args.debug:
            raise
        print(f"convprop: {e}", file=sys.stderr)
        return 1
    except _EXPECTED as e:
        if args.debug:
            raise
        print(f"convprop: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `convprop … | head`: the reader left; say nothing more
        _silence_stdout()
        return 141
    except RunInterrupted as e:
        print(f"convprop: {e.message}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("convprop: interrupted", file=sys.stderr)
        return 130


_DIVERGED = (Divergence, nn.AnomalyError, RunDiverged)
_EXPECTED = (UsageError, RunError, checkpoint.CheckpointError, IDXError, FileNotFoundError, PermissionError,
             IsADirectoryError, ValueError, TypeError, ImportError, distributed.MPIError)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit cannot raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
