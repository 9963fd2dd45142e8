"""`convprop train`: the flags become one run (run.Run), on this process or on every MPI rank."""

from __future__ import annotations

import os
import signal
import sys

from .. import distributed, models
from ..functional import use_reference
from ..functional._schedule import get_num_threads, set_num_threads
from ..run import DEFAULT_LR, OPTIMIZERS, Run, Settings
from ..run.settings import RECIPES
from ._options import positive_int, run_paths, setting


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model (default: LeNet-5 on the bundled MNIST sample)",
                       description="Train a CNN. With no arguments: LeNet-5, Adam with a one-cycle schedule, "
                                   "±2 px random shifts, 15 epochs on the bundled 5,000-image MNIST sample, "
                                   "tested on the official 10,000 test images.")
    d = Settings()
    t.add_argument("--model", choices=sorted(models.MODELS), default=None,
                   help=f"architecture (default: {d.model}); " + "; ".join(
                       f"{m}'s own defaults: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in r.items())
                       for m, r in RECIPES.items()))
    t.add_argument("--data", metavar="DIR", default=None,
                   help="directory of MNIST / Fashion-MNIST IDX files, .gz or raw, also torchvision's "
                        "MNIST/raw layout; or of CIFAR-10's binary batches (data_batch_*.bin, test_batch.bin); or "
                        "of images, one folder per class (DIR/<class>/*.png|jpg|…), or already split "
                        "(DIR/train/<class>/…, DIR/val/<class>/… and/or DIR/test/<class>/…) "
                        "(default: the bundled MNIST sample)")
    t.add_argument("--val-split", type=setting("val_split", float), default=None, metavar="F",
                   help=f"fraction of the training images held out for validation, stratified per class and "
                        f"seeded (default: {d.val_split:g}; 0: none; a folder's own val/ replaces it)")
    t.add_argument("--final", choices=["best", "last"], default=None,
                   help="the checkpoint the test set is evaluated on at the end: the best validation epoch's "
                        f"(checkpoint-best.npz) or the last (checkpoint.npz) (default: {d.final})")
    t.add_argument("--epochs", type=setting("epochs", int), default=None,
                   help=f"number of epochs (default: {d.epochs}; resnet8: {RECIPES['resnet8']['epochs']})")
    t.add_argument("--batch-size", type=setting("batch_size", int), default=None,
                   help=f"training batch size (default: {d.batch_size}; resnet8: {RECIPES['resnet8']['batch_size']})")
    t.add_argument("--lr", type=setting("lr", float), default=None,
                   help="peak learning rate of the one-cycle schedule (default: "
                        + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items())
                        + f"; resnet8 with adam: {RECIPES['resnet8']['lr']:g})")
    t.add_argument("--optimizer", choices=list(OPTIMIZERS), default=None,
                   help=f"optimizer; sgd uses Nesterov momentum 0.9 (default: {d.optimizer})")
    t.add_argument("--shift", type=setting("shift", int), default=None, metavar="PX",
                   help=f"random shift augmentation in pixels, 0 to 4 (default: {d.shift})")
    t.add_argument("--rotate", type=setting("rotate", float), default=None, metavar="DEG",
                   help=f"random rotation augmentation, ± degrees, 0 to 45 (default: {d.rotate:g})")
    t.add_argument("--scale", type=setting("scale", float), default=None, metavar="F",
                   help=f"random scaling augmentation, ± fraction, 0 to 0.5 (default: {d.scale:g})")
    t.add_argument("--seed", type=setting("seed", int), default=None,
                   help=f"random seed, a non-negative integer (default: {d.seed})")
    t.add_argument("--train-size", type=setting("train_size", int), default=None, metavar="N",
                   help="train on a random subset of N images (default: all)")
    t.add_argument("--test-size", type=setting("test_size", int), default=None, metavar="N",
                   help="test on a random subset of N images (default: all)")
    t.add_argument("--out", metavar="DIR", default=None,
                   help="where metrics.json, checkpoint.npz (the last epoch's), checkpoint-best.npz (the best "
                        "validation epoch's) and the pictures go; it must not hold another run "
                        "(default: runs/<model>-seed<seed>, numbered -2, -3, … if that holds one; or the "
                        "resumed checkpoint's directory)")
    t.add_argument("--init", metavar="WEIGHTS", default=None,
                   help="start from the weights in a safetensors file with torch's state_dict keys (one written "
                        "by torch, or by convprop export)")
    t.add_argument("--resume", metavar="CKPT", default=None,
                   help="continue the run saved in CKPT (or in the run directory CKPT) with its own settings, up "
                        "to its epochs (the settings flags are refused with it; --data may point at the same data "
                        "moved)")
    t.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="train on N MPI ranks on this machine, each batch split over them (re-runs itself under "
                        "mpiexec; default: the thread count if mpi4py is installed, else 1); see docs/distributed.md")
    t.add_argument("--no-progress", action="store_true", help="no progress bar, only the per-epoch lines")
    t.add_argument("--detect-anomaly", action="store_true",
                   help="check every layer's output and gradients; name the first that is not finite")
    t.add_argument("--reference", action="store_true",
                   help="compute convolutions and pooling with the plain loops of convprop.functional.reference "
                        "instead of the fast kernels (slow: to check them on a whole run; see docs/math.md)")


# --------------------------------------------------------------------------- train
SETTINGS_FLAGS = ("model", "epochs", "batch_size", "lr", "optimizer", "shift", "seed", "train_size", "test_size",
                  "init", "val_split", "final", "rotate", "scale")


def run(args) -> int:
    """Everything a run does is the Run's (convprop/run/); here only the flags are turned into one."""
    from ..allocator import keep_freed_memory

    keep_freed_memory()  # each step's temporaries reuse the last step's pages (see allocator.py)
    rank, world = distributed.init()  # (0, 1) unless started by mpiexec: then every rank runs this
    threads = get_num_threads()
    if world > 1:  # the machine's cores shared among this machine's ranks; rank 0 alone prints
        set_num_threads(max(1, threads // int(os.environ.get("MPI_LOCALNRANKS", world))))
        if rank != 0:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the rest of this process)
            # Ctrl-C is rank 0's to handle (it keeps the last checkpoint and says so, in one line); this rank
            # trains on until rank 0 has ended, and mpiexec then ends it (had it stopped first, mpiexec could
            # end rank 0 before it spoke)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    given = {k: getattr(args, k) for k in SETTINGS_FLAGS if getattr(args, k) is not None}
    options = dict(progress=not args.no_progress, detect_anomaly=args.detect_anomaly)
    with distributed.together("setting up the run"):  # (an error on any rank: said once, every rank stops)
        if args.resume:
            run = Run.resume(run_paths(args.resume, last=True)[1], args.out, given=given, data=args.data, **options)
        else:
            run = Run(Settings.recipe(data=args.data, **given), args.out, **options)
    with run:
        with use_reference(args.reference):  # the training and its tests on the loop kernels, not the pictures
            run.train()
        if rank == 0:
            set_num_threads(threads)  # the other ranks are done: the pictures get every core
            run.finish()
    return 0
