"""`convprop export CKPT OUT.onnx|OUT.safetensors`: a checkpoint's model for ONNX Runtime — taking raw
pixels and normalising them itself, its metadata saying what it wants — or its weights for torch
(torch's state_dict keys and layouts)."""

from __future__ import annotations

import contextlib

from .. import checkpoint
from ..deploy import export_checkpoint
from ._options import CKPT_HELP, UsageError, input_shape, run_paths


def add_parser(sub) -> None:
    e = sub.add_parser("export", help="write a checkpoint's model as ONNX or its weights as safetensors",
                       description="OUT.onnx: the model for ONNX Runtime and other ONNX tools (eval mode, dynamic "
                                   "batch), taking raw pixels 0-255 (N, C, H, W) under the name 'pixels' and "
                                   "normalising them as training did; its metadata_props convprop.input, "
                                   "convprop.classes and convprop.model (JSON) say what it takes and answers. "
                                   "OUT.safetensors: the weights under torch's state_dict names, for "
                                   "torch_model.load_state_dict(safetensors.torch.load_file(OUT)), with the "
                                   "same metadata.")
    e.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    e.add_argument("out", metavar="OUT", help="the file to write: *.onnx or *.safetensors")
    e.add_argument("--opset", type=int, default=None, metavar="N",
                   help="ONNX operator set version (default: 17; 13 up to the onnx package's newest)")
    e.add_argument("--input-shape", default=None, metavar="C,H,W",
                   help="one input's shape for ONNX (default: the checkpoint's channels and size, e.g. 1,28,28)")
    e.add_argument("--input-type", default=None, choices=("float32", "uint8"),
                   help="the ONNX input's element type: float32 pixel values 0-255 (default) or uint8 bytes")
    e.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="leave the normalisation out: the ONNX input 'input' must be (pixels/255 - mean)/std, "
                        "as convprop's own (the mean and std are in the metadata)")


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
    onnx_only = [f for f, v in (("--opset", args.opset), ("--input-shape", args.input_shape),
                                ("--input-type", args.input_type), ("--no-normalize", not args.normalize or None))
                 if v is not None]
    if args.out.endswith(".safetensors") and onnx_only:
        raise ValueError(f"{', '.join(onnx_only)}: for .onnx files; safetensors holds the weights only")
    args.checkpoint = run_paths(args.checkpoint)[1]
    ckpt = checkpoint.load(args.checkpoint)
    model = checkpoint.restore_model(ckpt, args.checkpoint)
    with _writing(args.out):
        line = export_checkpoint(ckpt, model, args.out, opset=args.opset, input_shape=input_shape(args.input_shape),
                                 input_type=args.input_type or "float32", normalize=args.normalize)
    print(line)
    return 0
