"""`convprop plot RUN`: the five pictures of a training run, drawn again into its directory."""

from __future__ import annotations

import os

from .. import checkpoint
from ..plots import pictures
from ..run import METRICS_NAME, _subset, read_metrics
from ..run.data import evaluation_data
from ._options import UsageError, run_paths


def add_parser(sub) -> None:
    pl = sub.add_parser("plot", help="draw the five pictures of a training run into its directory",
                        description="Training curves, first-layer filters, feature maps, saliency maps and the "
                                    "confusion matrix of the run in RUN_DIR (its metrics.json and checkpoint.npz).")
    pl.add_argument("run_dir", metavar="RUN", help="the --out directory of convprop train, or its checkpoint.npz")
    pl.add_argument("--data", metavar="DIR", default=None,
                    help="IDX directory for the test images (default: the run's own, else the bundled sample)")


def run(args) -> int:
    run, ckpt_path = run_paths(args.run_dir)
    metrics_path = os.path.join(run, METRICS_NAME)
    if not os.path.isdir(run):
        raise FileNotFoundError(f"{args.run_dir}: no such run directory or checkpoint")
    history, saved = read_metrics(metrics_path)  # (first: the run's own record, then the checkpoint it names)
    ckpt = checkpoint.load(ckpt_path)
    model = checkpoint.restore_model(ckpt, ckpt_path)
    spec = checkpoint.input_spec(ckpt["meta"])
    images, labels, _ = evaluation_data(args.data or saved.data, spec)
    images, labels = _subset(images, labels, saved.test_size, saved.seed)
    if len(labels) == 0:
        raise UsageError(f"--data {args.data or saved.data}: the test set has no images")
    pictures(run, model, history, images, labels, mean=spec["mean"], std=spec["std"])
    return 0
