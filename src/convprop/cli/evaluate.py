"""`convprop evaluate CKPT`: accuracy, per-class accuracy and confusion matrix of a checkpoint."""

from __future__ import annotations

import numpy as np

from .. import checkpoint
from ..data import normalize
from ..run.data import evaluation_data
from ..train import confusion_matrix, predict
from ._options import CKPT_HELP, UsageError, run_paths


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of a checkpoint")
    e.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    e.add_argument("--data", metavar="DIR", default=None,
                   help="IDX or CIFAR-10 directory (its test split), or a folder of class folders of images (its "
                        "test/ or val/ where it is split, else all of it) (default: the bundled sample)")


def run(args) -> int:
    args.checkpoint = run_paths(args.checkpoint)[1]
    ckpt = checkpoint.load(args.checkpoint)
    model = checkpoint.restore_model(ckpt, args.checkpoint)
    spec = checkpoint.input_spec(ckpt["meta"])
    images, labels, what = evaluation_data(args.data, spec)
    if len(labels) == 0:
        raise UsageError(f"--data {args.data}: the test set has no images")
    probs = predict(model, normalize(images, spec["mean"], spec["std"], dtype=model.dtype))
    pred = probs.argmax(axis=1)
    k = max(probs.shape[1], int(labels.max(initial=-1)) + 1)  # a model of fewer classes than the data: still k×k
    confusion = confusion_matrix(labels, pred, k)
    print(f"{args.checkpoint}: {ckpt['meta']['model']['name']}, epoch {ckpt['meta'].get('epoch')}")
    print(f"accuracy {np.mean(pred == labels):.2%} on {len(labels):,} {what}")
    names = list(spec["classes"]) + [str(c) for c in range(len(spec["classes"]), k)]
    print("per-class accuracy: " + "  ".join(
        f"{names[c]}: {confusion[c, c] / max(confusion[c].sum(), 1):.1%}" for c in range(k)))
    print("confusion matrix (rows: true class, columns: predicted):")
    print("      " + "".join(f"{c:>6}" for c in range(k)))
    for c in range(k):
        print(f"{c:>6}" + "".join(f"{v:>6}" for v in confusion[c]))
    if names != [str(c) for c in range(k)]:
        print("classes: " + "  ".join(f"{c}: {n}" for c, n in enumerate(names)))
    return 0
