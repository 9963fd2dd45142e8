"""The `convprop` command: train, evaluate, predict.

User errors print one line `convprop: error: …` and exit with code 2 (--debug shows the traceback);
a diverging run exits with code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from . import checkpoint, distributed, models, nn, optim
from . import random as _random
from .data import DataLoader, IDXError, load_mnist, normalize
from .functional._parallel import get_num_threads, set_num_threads
from .train import Divergence, confusion_matrix, fit, predict

DEFAULTS = dict(model="lenet5", epochs=15, batch_size=64, lr=5e-3, optimizer="adam", shift=2, seed=0)
CHECKPOINT_NAME = "checkpoint.npz"


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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convprop", description="CNNs with hand-written backward passes, in NumPy.")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads (cores) for convprop's kernels (default: OMP_NUM_THREADS or OPENBLAS_NUM_THREADS "
                        "if set, else the CPUs available)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model (default: LeNet-5 on the bundled MNIST sample)",
                       description="Train a CNN. With no arguments: LeNet-5, Adam with a one-cycle schedule, "
                                   "±2 px random shifts, 15 epochs on the bundled 5,000-image MNIST sample, "
                                   "tested on the official 10,000 test images.")
    t.add_argument("--model", choices=sorted(models.MODELS), default=DEFAULTS["model"],
                   help="architecture (default: %(default)s)")
    t.add_argument("--data", metavar="DIR", default=None,
                   help="directory of MNIST / Fashion-MNIST IDX files, .gz or raw, also torchvision's "
                        "MNIST/raw layout (default: the bundled sample)")
    t.add_argument("--epochs", type=_positive_int, default=DEFAULTS["epochs"],
                   help="number of epochs (default: %(default)s)")
    t.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"],
                   help="training batch size (default: %(default)s)")
    t.add_argument("--lr", type=_positive_float, default=DEFAULTS["lr"],
                   help="peak learning rate of the one-cycle schedule (default: %(default)s)")
    t.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=DEFAULTS["optimizer"],
                   help="optimizer; sgd uses Nesterov momentum 0.9 (default: %(default)s)")
    t.add_argument("--shift", type=int, choices=range(0, 5), default=DEFAULTS["shift"], metavar="PX",
                   help="random shift augmentation in pixels, 0 to 4 (default: %(default)s)")
    t.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="random seed (default: %(default)s)")
    t.add_argument("--train-size", type=_positive_int, default=None, metavar="N",
                   help="train on a random subset of N images (default: all)")
    t.add_argument("--test-size", type=_positive_int, default=None, metavar="N",
                   help="test on a random subset of N images (default: all)")
    t.add_argument("--out", metavar="DIR", default=None,
                   help="where metrics.json, checkpoint.npz and training-curves.png go "
                        "(default: runs/<model>-seed<seed>, or the resumed checkpoint's directory)")
    t.add_argument("--resume", metavar="CKPT", default=None,
                   help="continue the run saved in CKPT with its own settings, up to its --epochs")
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
                       description="Print each equation of the seed's backward pass with the tensors it "
                                   "produces, then check the gradients against central differences.")
    x.add_argument("topic", choices=[*explain_topics(), "all"], help="what to explain")
    x.add_argument("--size", type=_positive_int, default=None, metavar="N",
                   help="input height and width (topic defaults: tiny)")
    x.add_argument("--kernel", type=_positive_int, default=None, metavar="K", help="kernel size")
    x.add_argument("--stride", type=_positive_int, default=None, metavar="S", help="stride")
    x.add_argument("--padding", type=int, default=None, metavar="P", help="padding")
    x.add_argument("--seed", type=int, default=0, help="random seed of the example numbers (default: 0)")
    x.add_argument("--format", choices=["text", "markdown"], default="text", help="output format (default: text)")

    r = sub.add_parser("predict", help="classify PNG/JPEG images of digits with a checkpoint")
    r.add_argument("checkpoint", metavar="CKPT", help="a checkpoint.npz written by convprop train")
    r.add_argument("images", metavar="IMAGE", nargs="+", help="image files (any size; converted as MNIST)")
    return p


# --------------------------------------------------------------------------- train
def _subset(images, labels, n, seed):
    if n is None or n >= len(labels):
        return images, labels
    idx = np.sort(np.random.default_rng([seed, 1234]).permutation(len(labels))[:n])
    return images[idx], labels[idx]


def _make_optimizer(name: str, params, lr: float) -> optim.Optimizer:
    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    return (optim.AdamW if name == "adamw" else optim.Adam)(params, lr=lr)


def cmd_train(args) -> int:
    from .allocator import keep_freed_memory

    keep_freed_memory()  # each step's temporaries reuse the last step's pages (see allocator.py)
    rank, world = distributed.init()  # (0, 1) unless started by mpiexec: then every rank runs this
    threads = get_num_threads()
    if world > 1:  # the machine's cores shared among this machine's ranks; rank 0 alone prints
        set_num_threads(max(1, threads // int(os.environ.get("MPI_LOCALNRANKS", world))))
        if rank != 0:
            import warnings

            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of this process)
            warnings.simplefilter("ignore")  # (NumPy's warnings: rank 0 shows its own)
    with distributed.together("loading the data and the model"):
        (args, out, ckpt, model, optimizer, scheduler, loss_fn, config, images, labels, test_images, test_labels,
         train_loader, test_loader, start_epoch, history) = _setup_train(args, rank, world)
    return _run_train(args, out, ckpt, model, optimizer, scheduler, loss_fn, config, labels, test_images,
                      test_labels, train_loader, test_loader, start_epoch, history, rank, world, threads)


def _setup_train(args, rank: int, world: int):
    ckpt, resume_path = None, args.resume
    if args.resume:
        ckpt = checkpoint.load(args.resume)
        saved = ckpt["meta"].get("args")
        if not isinstance(saved, dict):
            raise checkpoint.CheckpointError(f"{args.resume}: holds no training arguments to resume from")
        out = args.out or os.path.dirname(os.path.abspath(args.resume))
        progress, anomaly = not args.no_progress, args.detect_anomaly
        args = argparse.Namespace(**saved)
        args.out, args.no_progress, args.detect_anomaly = out, not progress, anomaly
    out = args.out or os.path.join("runs", f"{args.model}-seed{args.seed}")
    if rank == 0:
        os.makedirs(out, exist_ok=True)

    images, labels = load_mnist(args.data, train=True)
    test_images, test_labels = load_mnist(args.data, train=False)
    images, labels = _subset(images, labels, args.train_size, args.seed)
    test_images, test_labels = _subset(test_images, test_labels, args.test_size, args.seed)
    # every rank draws the same order and shifts and takes its shard of each batch (DistributedSampler)
    train_loader = DataLoader(images, labels, args.batch_size, shuffle=True, seed=args.seed, max_shift=args.shift,
                              num_replicas=world, rank=rank)
    test_loader = DataLoader(test_images, test_labels, 1000)  # (distributed.evaluate shards each batch)

    _random.manual_seed(args.seed)
    config = {"num_classes": 10}
    model = models.build(args.model, **config) if ckpt is None else checkpoint.restore_model(ckpt, resume_path)
    optimizer = _make_optimizer(args.optimizer, model.parameters(), args.lr)
    scheduler = optim.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=len(train_loader))
    loss_fn = nn.CrossEntropyLoss()
    start_epoch, history = 0, []
    if ckpt is not None:
        checkpoint.restore_training(ckpt, model, optimizer, scheduler)
        start_epoch, history = int(ckpt["meta"]["epoch"]), ckpt["meta"].get("history", [])
        train_loader.epoch = start_epoch
        print(f"resuming {args.model} from epoch {start_epoch} of {args.epochs}")
    return (args, out, ckpt, model, optimizer, scheduler, loss_fn, config, images, labels, test_images, test_labels,
            train_loader, test_loader, start_epoch, history)


def _run_train(args, out, ckpt, model, optimizer, scheduler, loss_fn, config, labels, test_images, test_labels,
               train_loader, test_loader, start_epoch, history, rank: int, world: int, threads: int) -> int:
    nn.detect_anomaly(args.detect_anomaly)
    ckpt_path = os.path.join(out, CHECKPOINT_NAME)
    saved_args = {k: v for k, v in vars(args).items()  # (how many ranks ran it is not part of the run)
                  if k not in ("debug", "resume", "command", "detect_anomaly", "no_progress", "workers")}

    def on_epoch_end(epoch, hist):
        if rank == 0:  # every rank holds the same model: rank 0 alone writes it
            checkpoint.save(ckpt_path, model, args.model, config, optimizer, scheduler, epoch,
                            history=hist, args=saved_args)

    n_params = sum(p.data.size for p in model.parameters())
    print(f"training {args.model} ({n_params:,} parameters) on {len(labels):,} images, testing on "
          f"{len(test_labels):,}; {args.epochs} epochs, batch {args.batch_size}, {args.optimizer} "
          f"one-cycle lr {args.lr:g}, ±{args.shift} px shifts" + (f"; {world} MPI ranks" if world > 1 else ""))
    start = time.perf_counter()
    history = fit(model, loss_fn, optimizer, train_loader, args.epochs, test_loader, scheduler,
                  start_epoch=start_epoch, history=history, progress=not args.no_progress,
                  on_epoch_end=on_epoch_end)
    seconds = time.perf_counter() - start
    if rank != 0:
        return 0
    set_num_threads(threads)  # the other ranks are done: the pictures get every core
    metrics = {"model": args.model, "args": saved_args, "epochs": history,
               "test_accuracy": history[-1]["test_acc"] if history else None,
               "test_loss": history[-1]["test_loss"] if history else None, "seconds": seconds}
    metrics_path = os.path.join(out, "metrics.json")
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"test accuracy {metrics['test_accuracy']:.2%} after {len(history)} epochs ({seconds:.1f} s this run)")
    print(f"metrics:    {metrics_path}")
    print(f"checkpoint: {ckpt_path}")
    _pictures(out, model, history, test_images, test_labels)
    return 0


def _pictures(out: str, model, history, test_images, test_labels) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("(matplotlib is not installed: no pictures; pip install 'convprop[train]')")
        return
    from . import plots

    paths = plots.plot_run(out, model, history, normalize(test_images), test_labels)
    print("pictures:   " + "\n            ".join(paths))


# --------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    ckpt = checkpoint.load(args.checkpoint)
    model = checkpoint.restore_model(ckpt, args.checkpoint)
    images, labels = load_mnist(args.data, train=False)
    probs = predict(model, normalize(images))
    pred = probs.argmax(axis=1)
    k = probs.shape[1]
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


# --------------------------------------------------------------------------- predict
def load_digit(path: str) -> np.ndarray:
    """An image file as a 28×28 uint8 MNIST digit: grayscale, white ink on black (inverted if the
    background is light), the ink's bounding box scaled into 20×20 and centred by its centre of mass."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UsageError("predict needs Pillow: pip install 'convprop[train]'") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            g = np.asarray(im.convert("L"), dtype=np.float64)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UsageError(f"{path}: not an image Pillow can read ({e})") from None
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    if border.mean() > 127:  # dark ink on light paper: invert to MNIST's white on black
        g, border = 255 - g, 255 - border
    g = np.clip(g - np.median(border), 0, 255)  # the background to 0
    ys, xs = np.nonzero(g > 0.2 * g.max()) if g.max() > 0 else (np.array([0]), np.array([0]))
    g = g[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = g.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(g.astype(np.uint8)).resize(size, Image.LANCZOS), dtype=np.float64)
    canvas = np.zeros((28, 28))
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
    if canvas.sum() > 0:  # shift the centre of mass to the centre, as MNIST was made
        cy, cx = (np.indices(canvas.shape) * canvas).reshape(2, -1).sum(1) / canvas.sum()
        dy, dx = int(round(14.0 - cy)), int(round(14.0 - cx))  # MNIST put the centre of mass at (14, 14)
        canvas = np.roll(canvas, (dy, dx), axis=(0, 1))
    return np.clip(canvas, 0, 255).astype(np.uint8)


def explain_topics():
    from .explain import TOPICS

    return TOPICS


def cmd_explain(args) -> int:
    from .explain import TOPICS, explain, render_markdown, render_text

    render = render_markdown if args.format == "markdown" else render_text
    options = dict(size=args.size, kernel=args.kernel, stride=args.stride, padding=args.padding, seed=args.seed)
    topics = TOPICS if args.topic == "all" else [args.topic]
    if args.format == "markdown" and args.topic == "all":
        print("# convprop explain: every equation of the seed on small numbers\n\n"
              "Generated by `convprop explain all --format markdown`; each check compares the hand-written "
              "gradient with central differences.\n")
    ok = True
    for topic in topics:
        try:
            e = explain(topic, **options)
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
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(f"{metrics_path}: no metrics.json (is {run} a convprop train --out directory?)")
    try:
        with open(metrics_path) as f:
            metrics = json.load(f)
        history = metrics["epochs"]
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{metrics_path}: not a convprop metrics file ({e})") from None
    ckpt = checkpoint.load(ckpt_path)
    model = checkpoint.restore_model(ckpt, ckpt_path)
    saved = metrics.get("args") or {}
    images, labels = load_mnist(args.data or saved.get("data"), train=False)
    images, labels = _subset(images, labels, saved.get("test_size"), saved.get("seed", 0))
    _pictures(run, model, history, images, labels)
    return 0


def cmd_predict(args) -> int:
    ckpt = checkpoint.load(args.checkpoint)
    model = checkpoint.restore_model(ckpt, args.checkpoint)
    digits = np.stack([load_digit(p) for p in args.images])
    probs = predict(model, normalize(digits))
    for path, p in zip(args.images, probs):
        print(f"{path}: {int(p.argmax())}  (p = {p.max():.3f})")
        print("    " + "  ".join(f"{c}:{v:.3f}" for c, v in enumerate(p)))
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "plot": cmd_plot,
            "explain": cmd_explain}


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
    args = parser.parse_args(argv)
    if args.threads is not None:
        set_num_threads(args.threads)
    try:
        if args.command == "train" and (code := _launch_workers(args, argv, command)) is not None:
            return code
        return COMMANDS[args.command](args)
    except Exception as e:
        if distributed.is_initialized() and not getattr(e, "every_rank", False):
            if args.debug:
                import traceback

                traceback.print_exc()
            distributed.abort(f"{type(e).__name__}: {e}" if not isinstance(e, _EXPECTED) else str(e), 1)
        if distributed.launched_rank() != 0:  # the same error on every rank: rank 0 says it
            return 1 if isinstance(e, (Divergence, nn.AnomalyError)) else 2
        if isinstance(e, (Divergence, nn.AnomalyError)):
            print(f"convprop: {e}; the last good checkpoint is kept", file=sys.stderr)
            if args.debug:
                raise
            return 1
        if isinstance(e, _EXPECTED):
            if args.debug:
                raise
            print(f"convprop: error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        if distributed.launched_rank() == 0:
            print("convprop: interrupted", file=sys.stderr)
        return 130


_EXPECTED = (UsageError, checkpoint.CheckpointError, IDXError, FileNotFoundError, PermissionError,
             IsADirectoryError, ValueError, TypeError, distributed.MPIError)


if __name__ == "__main__":
    sys.exit(main())
