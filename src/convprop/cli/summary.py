"""`convprop summary CKPT|RUN_DIR|MODEL`: every layer of a model with its output shape, parameters and
multiply-adds, and the totals (torchinfo's table, from one forward pass on zeros)."""

from __future__ import annotations

import os

from .. import checkpoint, models
from ..deploy import checkpoint_shape, input_spec
from ..run import CHECKPOINT_NAME
from ._options import input_shape, run_paths


def add_parser(sub) -> None:
    s = sub.add_parser("summary", help="each layer's output shape, parameters and multiply-adds, and the totals",
                       description="The table torchinfo and Keras print: every layer a forward pass calls (nested "
                                   "containers indented), its output shape, parameters and multiply-adds; total "
                                   "parameters, multiply-adds and sizes in MB. Of a checkpoint, of the run in a "
                                   f"directory (its {CHECKPOINT_NAME}), or of a model by name "
                                   f"({', '.join(models.MODELS)}).")
    s.add_argument("target", metavar="CKPT|RUN_DIR|MODEL",
                   help=f"a checkpoint, a run directory, or a model name ({', '.join(models.MODELS)})")
    s.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="one input's shape (default: the checkpoint's input, e.g. 1,28,28; 1,28,28 for a model "
                        "name); a model by name takes C as its in_channels")
    s.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="the batch the multiply-adds and sizes are counted for (default: 1)")


def run(args) -> int:
    target = args.target
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    given = input_shape(args.input_shape)
    if os.path.isdir(target):
        target = run_paths(target)[1]
    if os.path.exists(target) or os.sep in target or target.endswith(".npz"):
        ckpt = checkpoint.load(target)
        model = checkpoint.restore_model(ckpt, target)
        shape = given or checkpoint_shape(input_spec(ckpt))
        title = f"{target}: {ckpt['meta']['model']['name']}, epoch {ckpt['meta'].get('epoch')}"
    elif target in models.MODELS:
        shape = given or (1, 28, 28)
        model = models.build(target, **({"in_channels": shape[0]} if len(shape) == 3 else {}))
        title = f"{target} (new, untrained)"
    else:
        raise FileNotFoundError(f"{target}: no such checkpoint or run directory, and not a model name (models: "
                                f"{', '.join(models.MODELS)})")
    try:
        table = model.summary((args.batch_size, *shape))
    except ValueError as e:
        raise ValueError(f"{'--input-shape ' + args.input_shape if given else args.target}: {e}") from None
    print(f"{title}; input (N, {', '.join(map(str, shape))}) with N = {args.batch_size}")
    print(table)
    return 0
