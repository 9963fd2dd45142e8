"""`convprop export CKPT OUT.onnx|OUT.safetensors`: a checkpoint's model for ONNX Runtime, or its
weights for torch (torch's state_dict keys and layouts)."""

from __future__ import annotations

import contextlib

from .. import checkpoint
from ._options import CKPT_HELP, UsageError, run_paths


def add_parser(sub) -> None:
    e = sub.add_parser("export", help="write a checkpoint's model as ONNX or its weights as safetensors",
                       description="OUT.onnx: the model for ONNX Runtime and other ONNX tools (eval mode, dynamic "
                                   "batch). OUT.safetensors: the weights under torch's state_dict names, for "
                                   "torch_model.load_state_dict(safetensors.torch.load_file(OUT)).")
    e.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    e.add_argument("out", metavar="OUT", help="the file to write: *.onnx or *.safetensors")
    e.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX operator set version (default: 17; 13 up to the onnx package's newest)")
    e.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="one input's shape for ONNX (default: the model's channels, 28×28)")


def _input_shape(text: str | None, model) -> tuple[int, ...]:
    if text is None:
        first = next((m for m in model.modules() if hasattr(m, "in_channels")), None)
        return (1, getattr(first, "in_channels", 1), 28, 28)
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) not in (1, 3) or min(dims) < 1:
        raise ValueError(f"--input-shape: expected C,H,W (or F) of positive integers, got {text!r}")
    return (1, *dims)


@contextlib.contextmanager
def _writing(out: str):
    """An OSError while OUT is written (a directory in the way, no such directory, a read-only one, a full
    disk) as one line: OUT is not written, no temporary is left (atomic_write removes it), and an older
    file of that name stays whole."""
    try:
        yield
    except OSError as e:
        raise UsageError(f"{out}: cannot write it ({e.strerror or e})") from None


def run(args) -> int:
    args.checkpoint = run_paths(args.checkpoint)[1]
    ckpt = checkpoint.load(args.checkpoint)
    model = checkpoint.restore_model(ckpt, args.checkpoint)
    name = ckpt["meta"]["model"]["name"]
    out = args.out
    if out.endswith(".safetensors"):
        if args.opset is not None or args.input_shape is not None:
            raise ValueError("--opset and --input-shape are for .onnx files; safetensors holds the weights only")
        from ..weights import save_weights

        with _writing(out):
            save_weights(model, out, metadata={"convprop_model": ckpt["meta"]["model"]})
        print(f"{out}: {name} weights ({len(model.state_dict())} tensors, torch's state_dict keys)")
    elif out.endswith(".onnx"):
        from .. import onnx as conv_onnx

        shape = _input_shape(args.input_shape, model)
        with _writing(out):
            conv_onnx.export(model, out, shape, opset=args.opset or conv_onnx.DEFAULT_OPSET)
        print(f"{out}: {name} as ONNX (opset {args.opset or conv_onnx.DEFAULT_OPSET}, input (batch, "
              f"{', '.join(map(str, shape[1:]))}))")
    else:
        raise ValueError(f"OUT: expected a file name ending in .onnx or .safetensors, got {out!r}")
    return 0
