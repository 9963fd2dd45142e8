"""The `convprop` command: train, evaluate, predict.

User errors print one line `convprop: error: …` and exit with code 2 (--debug shows the traceback);
a diverging run exits with code 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from . import __version__, checkpoint, cli_export, cli_predict, distributed, models, nn
from .data import IDXError, load_images, normalize
from .functional._schedule import get_num_threads, set_num_threads
from .run import (
    CHECKPOINT_NAME,
    DEFAULT_LR,
    Run,
    RunDiverged,
    RunError,
    RunInterrupted,
    Settings,
    _subset,
    pictures,
    read_metrics,
)
from .train import Divergence, confusion_matrix, predict


class UsageError(ValueError):
    """A bad value on the command line."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if not 0 <= v < 2**63:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer below 2**63, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or not np.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`convprop: error: …`, exit code 2), like every other error."""

    def error(self, message: str):
        # under mpiexec every rank parses the same command line: rank 0 alone says what is wrong
        self.exit(2, f"convprop: error: {message} (see {self.prog} --help)\n" if distributed.launched_rank() == 0
                  else None)


def _global_options(p: argparse.ArgumentParser, default) -> None:
    """--debug and --threads: before the command, or after it (there they default to 'not given', so that
    `convprop --threads 2 train` keeps its 2)."""
    p.add_argument("--debug", action="store_true", default=False if default is None else default,
                   help="show the full traceback on errors")
    p.add_argument("--threads", type=_positive_int, default=default, metavar="N",
                   help="threads (cores) for convprop's kernels (default: OMP_NUM_THREADS or OPENBLAS_NUM_THREADS "
                        "if set, else the CPUs available)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convprop", description="CNNs with hand-written backward passes, in NumPy.")
    p.add_argument("--version", action="version", version=f"convprop {__version__}",
                   help="print convprop's version and exit")
    _global_options(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (default: LeNet-5 on the bundled MNIST sample)",
                       description="Train a CNN. With no arguments: LeNet-5, Adam with a one-cycle schedule, "
                                   "±2 px random shifts, 15 epochs on the bundled 5,000-image MNIST sample, "
                                   "tested on the official 10,000 test images.")
    d = Settings()
    t.add_argument("--model", choices=sorted(models.MODELS), default=None,
                   help=f"architecture (default: {d.model})")
    t.add_argument("--data", metavar="DIR", default=None,
                   help="directory of MNIST / Fashion-MNIST IDX files, .gz or raw, also torchvision's "
                        "MNIST/raw layout; or of CIFAR-10's binary batches (data_batch_*.bin, test_batch.bin) "
                        "(default: the bundled MNIST sample)")
    t.add_argument("--epochs", type=_positive_int, default=None, help=f"number of epochs (default: {d.epochs})")
    t.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"training batch size (default: {d.batch_size})")
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="peak learning rate of the one-cycle schedule (default: "
                        + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()) + ")")
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=None,
                   help=f"optimizer; sgd uses Nesterov momentum 0.9 (default: {d.optimizer})")
    t.add_argument("--shift", type=int, choices=range(0, 5), default=None, metavar="PX",
                   help=f"random shift augmentation in pixels, 0 to 4 (default: {d.shift})")
    t.add_argument("--seed", type=_seed, default=None, help=f"random seed, a non-negative integer (default: {d.seed})")
    t.add_argument("--train-size", type=_positive_int, default=None, metavar="N",
                   help="train on a random subset of N images (default: all)")
    t.add_argument("--test-size", type=_positive_int, default=None, metavar="N",
                   help="test on a random subset of N images (default: all)")
    t.add_argument("--out", metavar="DIR", default=None,
                   help="where metrics.json, checkpoint.npz and the pictures go; it must not hold another run "
                        "(default: runs/<model>-seed<seed>, numbered -2, -3, … if that holds one; or the "
                        "resumed checkpoint's directory)")
    t.add_argument("--init", metavar="WEIGHTS", default=None,
                   help="start from the weights in a safetensors file with torch's state_dict keys (one written "
                        "by torch, or by convprop export)")
    t.add_argument("--resume", metavar="CKPT", default=None,
                   help="continue the run saved in CKPT with its own settings, up to its epochs (the settings "
                        "flags are refused with it; --data may point at the same data moved)")
    t.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="train on N MPI ranks on this machine, each batch split over them (re-runs itself under "
                        "mpiexec; default: the thread count if mpi4py is installed, else 1); see docs/distributed.md")
    t.add_argument("--no-progress", action="store_true", help="no progress bar, only the per-epoch lines")
    t.add_argument("--detect-anomaly", action="store_true",
                   help="check every layer's output and gradients; name the first that is not finite")

    e = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of a checkpoint")
    e.add_argument("checkpoint", metavar="CKPT", help="a checkpoint.npz written by convprop train")
    e.add_argument("--data", metavar="DIR", default=None, help="IDX directory (default: the bundled sample)")

    pl = sub.add_parser("plot", help="draw the five pictures of a training run into its directory",
                        description="Training curves, first-layer filters, feature maps, saliency maps and the "
                                    "confusion matrix of the run in RUN_DIR (its metrics.json and checkpoint.npz).")
    pl.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of convprop train")
    pl.add_argument("--data", metavar="DIR", default=None,
                    help="IDX directory for the test images (default: the run's own, else the bundled sample)")

    x = sub.add_parser("explain", help="work every equation of backprop on small numbers, and check it",
                       description="Print each equation of backprop for a CNN (docs/math.md) with the tensors it "
                                   "produces, then check the gradients against central differences.")
    x.add_argument("topic", choices=[*explain_topics(), "all"], help="what to explain")
    x.add_argument("--size", type=_positive_int, default=None, metavar="N",
                   help="input height and width (topic defaults: tiny)")
    x.add_argument("--kernel", type=_positive_int, default=None, metavar="K", help="kernel size")
    x.add_argument("--stride", type=_positive_int, default=None, metavar="S", help="stride")
    x.add_argument("--padding", type=int, default=None, metavar="P", help="padding")
    x.add_argument("--seed", type=_seed, default=0, help="random seed of the example numbers (default: 0)")
    x.add_argument("--format", choices=["text", "markdown"], default="text", help="output format (default: text)")

    cli_predict.add_parser(sub)
    cli_export.add_parser(sub)

    v = sub.add_parser("serve", help="a web page: draw a digit, watch its forward and backward pass, train live",
                       description="Serve a page (the `serve` extra) that draws every layer's output and gradient "
                                   "for a digit you draw, and trains the model live. JSON endpoints: docs/serve.md.")
    v.add_argument("checkpoint", metavar="CKPT", nargs="?", default=None,
                   help="a checkpoint.npz (default: the last convprop train run's, else train LeNet-5 first)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    v.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free port)")

    for command in sub.choices.values():  # every command (keep this last): --debug/--threads after it too
        _global_options(command, argparse.SUPPRESS)
    return p


# --------------------------------------------------------------------------- train
SETTINGS_FLAGS = ("model", "epochs", "batch_size", "lr", "optimizer", "shift", "seed", "train_size", "test_size",
                  "init")


def cmd_train(args) -> int:
    """Everything a run does is the Run's (convprop/run.py); here only the flags are turned into one."""
    from .allocator import keep_freed_memory

    keep_freed_memory()  # each step's temporaries reuse the last step's pages (see allocator.py)
    rank, world = distributed.init()  # (0, 1) unless started by mpiexec: then every rank runs this
    threads = get_num_threads()
    if world > 1:  # the machine's cores shared among this machine's ranks; rank 0 alone prints
        set_num_threads(max(1, threads // int(os.environ.get("MPI_LOCALNRANKS", world))))
        if rank != 0:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of this process)
    given = {k: getattr(args, k) for k in SETTINGS_FLAGS if getattr(args, k) is not None}
    options = dict(progress=not args.no_progress, detect_anomaly=args.detect_anomaly)
    with distributed.together("setting up the run"):  # (an error on any rank: said once, every rank stops)
        if args.resume:
            run = Run.resume(args.resume, args.out, given=given, data=args.data, **options)
        else:
            run = Run(Settings(data=args.data, **given), args.out, **options)
    with run:
        run.train()
        if rank == 0:
            set_num_threads(threads)  # the other ranks are done: the pictures get every core
            run.finish()
    return 0


# --------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    ckpt = checkpoint.load(args.checkpoint)
    model = checkpoint.restore_model(ckpt, args.checkpoint)
    images, labels = load_images(args.data, train=False)
    if len(labels) == 0:
        raise UsageError(f"--data {args.data}: the test set has no images")
    probs = predict(model, normalize(images, dtype=model.dtype))
    pred = probs.argmax(axis=1)
    k = max(probs.shape[1], int(labels.max(initial=-1)) + 1)  # a model of fewer classes than the data: still k×k
    confusion = confusion_matrix(labels, pred, k)
    print(f"{args.checkpoint}: {ckpt['meta']['model']['name']}, epoch {ckpt['meta'].get('epoch')}")
    print(f"accuracy {np.mean(pred == labels):.2%} on {len(labels):,} test images")
    print("per-class accuracy: " + "  ".join(
        f"{c}: {confusion[c, c] / max(confusion[c].sum(), 1):.1%}" for c in range(k)))
    print("confusion matrix (rows: true class, columns: predicted):")
    print("      " + "".join(f"{c:>6}" for c in range(k)))
    for c in range(k):
        print(f"{c:>6}" + "".join(f"{v:>6}" for v in confusion[c]))
    return 0


def explain_topics():
    from .explain import TOPICS

    return TOPICS


def cmd_explain(args) -> int:
    from .explain import TOPICS, accepted, explain, render_markdown, render_text

    render = render_markdown if args.format == "markdown" else render_text
    options = dict(size=args.size, kernel=args.kernel, stride=args.stride, padding=args.padding, seed=args.seed)
    topics = TOPICS if args.topic == "all" else [args.topic]
    if args.format == "markdown" and args.topic == "all":
        print("# convprop explain: every equation of backprop on small numbers\n\n"
              "Generated by `convprop explain all --format markdown`; each check compares the hand-written "
              "gradient with central differences.\n")
    ok = True
    for topic in topics:
        try:
            e = explain(topic, **(accepted(topic, options) if args.topic == "all" else options))
        except ValueError as err:
            raise UsageError(f"{topic}: {err}") from None
        ok &= e.ok
        print(render(e))
    return 0 if ok else 1


def cmd_plot(args) -> int:
    run = args.run_dir
    metrics_path, ckpt_path = os.path.join(run, "metrics.json"), os.path.join(run, CHECKPOINT_NAME)
    if not os.path.isdir(run):
        raise FileNotFoundError(f"{run}: no such run directory")
    history, saved = read_metrics(metrics_path)
    ckpt = checkpoint.load(ckpt_path)
    model = checkpoint.restore_model(ckpt, ckpt_path)
    images, labels = load_images(args.data or saved.data, train=False)
    images, labels = _subset(images, labels, saved.test_size, saved.seed)
    if len(labels) == 0:
        raise UsageError(f"--data {args.data or saved.data}: the test set has no images")
    pictures(run, model, history, images, labels)
    return 0


def cmd_serve(args) -> int:
    try:
        from .serve.app import serve
    except ImportError:
        raise UsageError("serve needs Starlette and uvicorn: pip install 'convprop[serve]'") from None
    return serve(args.checkpoint, args.host, args.port)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cli_predict.run, "plot": cmd_plot,
            "explain": cmd_explain, "serve": cmd_serve, "export": cli_export.run}


def _launch_workers(args, argv: list[str], command: bool) -> int | None:
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
                         "pip install 'convprop[mpi]'")
    return distributed.launch(workers, argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    command, argv = argv is None, sys.argv[1:] if argv is None else list(argv)
    if not argv:  # bare `convprop`: what it can do, not an error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.threads is not None:
        set_num_threads(args.threads)
    try:
        try:
            if args.command == "train" and (code := _launch_workers(args, argv, command)) is not None:
                return code
            return COMMANDS[args.command](args)
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
