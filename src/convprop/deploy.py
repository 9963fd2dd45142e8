"""What a trained model expects as input, carried with it when it leaves convprop.

    spec = convprop.deploy.input_spec(ckpt)                 # size, channels, range, mean, std, classes
    model = convprop.deploy.with_normalization(net, spec)   # takes raw pixels 0–255
    convprop.onnx.export(model, "net.onnx", (1, *checkpoint_shape(spec)), input_name="pixels",
                         metadata=convprop.deploy.metadata(spec, ckpt["meta"]["model"]))
    convprop.deploy.export_checkpoint(ckpt, net, "net.onnx")   # all that: `convprop export`

An exported file says what it wants: ONNX metadata_props and safetensors' `__metadata__` hold JSON
strings under the keys below (METADATA_KEYS):

    convprop.input    {"name", "dtype", "layout": "NCHW", "channels", "size": [H, W], "range": [0, 255],
                       "mean": [per channel, of pixels/255], "std": [...], "normalization": "in the graph" |
                       "by the caller", "formula", and where the checkpoint says, "prepare": "digit" |
                       "resize"} — in the graph: the file computes (pixels/255 − mean)/std itself
    convprop.classes  the class names, in the order of the output's columns
    convprop.model    {"name", "config"}: the convprop architecture
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from . import checkpoint, nn

__all__ = ["input_spec", "with_normalization", "metadata", "checkpoint_shape", "export_checkpoint", "METADATA_KEYS"]

METADATA_KEYS = ("convprop.input", "convprop.classes", "convprop.model")


def input_spec(ckpt: dict) -> dict[str, Any]:
    """The checkpoint's input (checkpoint.input_spec: {"size", "channels", "range", "mean", "std", "classes",
    "prepare"}), checked: ValueError in one line for an "input" that is not of that form."""
    meta = ckpt["meta"]
    if "input" in meta:
        problem = checkpoint.input_problem(meta["input"], meta["model"].get("config", {}))
        if problem:
            raise ValueError(f"checkpoint input description: {problem}")
    return checkpoint.input_spec(meta)


def with_normalization(model: nn.Module, spec: dict[str, Any]) -> nn.Sequential:
    """The model with its input normalisation first: nn.Normalize(mean·range, std·range) for raw pixels
    of spec's range (0–255: y = (pixels·(1/255) − mean)/std, convprop.data.normalize's arithmetic).  A
    Sequential's layers keep their names (state_dict keys), behind a first layer "normalize"."""
    low, high = spec["range"]
    if low != 0:
        raise ValueError(f"range: expected pixels from 0, got {spec['range']}")
    norm = nn.Normalize(spec["mean"], spec["std"], scale=1.0 / high, dtype=model.dtype)
    layers = list(model._modules.items()) if type(model) is nn.Sequential else [("model", model)]
    if any(name == "normalize" for name, _ in layers):
        raise ValueError("model: it already has a layer named 'normalize'")
    return nn.Sequential(OrderedDict([("normalize", norm), *layers]))


def metadata(spec: dict[str, Any], model: dict | None = None, *, name: str = "pixels", dtype: str = "float32",
             normalized: bool = True) -> dict[str, str]:
    """The METADATA_KEYS as JSON strings, for ONNX metadata_props or safetensors' __metadata__: the input
    tensor `name` of `dtype` (N, C, H, W) that the file takes — raw pixels in spec's range where the
    normalisation is in the graph, else already normalised by the caller — and the class names."""
    info = {"name": name, "dtype": dtype, "layout": "NCHW", "channels": spec["channels"], "size": spec["size"],
            "range": spec["range"], "mean": spec["mean"], "std": spec["std"],
            "normalization": "in the graph" if normalized else "by the caller"}
    if "prepare" in spec:
        info["prepare"] = spec["prepare"]
    high = f"{spec['range'][1]:g}"
    info["formula"] = (f"the file computes (pixels / {high} − mean) / std itself" if normalized else
                       f"give (pixels / {high} − mean) / std, per channel")
    out = {"convprop.input": json.dumps(info), "convprop.classes": json.dumps(spec["classes"])}
    if model is not None:
        out["convprop.model"] = json.dumps({"name": model.get("name"), "config": model.get("config", {})})
    return out


def checkpoint_shape(spec: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of one input, from input_spec."""
    return (spec["channels"], *spec["size"])


def export_checkpoint(ckpt: dict, model: nn.Module, out: str, *, opset: int | None = None,
                      input_shape: tuple[int, ...] | None = None, input_type: str = "float32",
                      normalize: bool = True) -> str:
    """`convprop export`: the checkpoint's model as ONNX (out *.onnx) or its weights as safetensors
    (*.safetensors), each with the METADATA_KEYS.  ONNX takes raw pixels 0–255 as `input_type` (float32 or
    uint8) under the name "pixels" and normalises them itself; normalize=False writes the model alone,
    input "input" of normalised floats (as convprop.data.normalize makes).  input_shape: one input's
    (C, H, W) (default: the checkpoint's).  Returns a one-line description of what was written."""
    spec = input_spec(ckpt)
    info = ckpt["meta"]["model"]
    name = info["name"]
    if out.endswith(".safetensors"):
        from .weights import save_weights

        save_weights(model, out, metadata=metadata(spec, info, name="input", dtype=model.dtype.name,
                                                   normalized=False))
        return f"{out}: {name} weights ({len(model.state_dict())} tensors, torch's state_dict keys)"
    if not out.endswith(".onnx"):
        raise ValueError(f"OUT: expected a file name ending in .onnx or .safetensors, got {out!r}")
    from . import onnx as conv_onnx

    if input_type not in ("float32", "uint8"):
        raise ValueError(f"--input-type: expected float32 or uint8, got {input_type!r}")
    if not normalize and input_type == "uint8":
        raise ValueError("--input-type uint8 needs the normalisation in the graph (drop --no-normalize)")
    shape = tuple(input_shape) if input_shape is not None else checkpoint_shape(spec)
    if len(shape) == 3:
        spec = {**spec, "channels": shape[0], "size": list(shape[1:])}
    if normalize and len(shape) == 3 and len(spec["mean"]) not in (1, shape[0]):
        raise ValueError(f"--input-shape: {shape[0]} channels, but the checkpoint normalises {len(spec['mean'])}")
    opset = conv_onnx.DEFAULT_OPSET if opset is None else opset
    dtype = input_type if normalize else model.dtype.name
    name_in = "pixels" if normalize else "input"
    low, high = spec["range"]
    doc = (f"raw pixels {low:g}–{high:g}, {dtype}, (N, C, H, W); the graph normalises them" if normalize else
           "(pixels/255 − mean)/std per channel, (N, C, H, W): see metadata convprop.input")
    try:
        conv_onnx.export(with_normalization(model, spec) if normalize else model, out, (1, *shape), opset,
                         input_name=name_in, input_dtype="uint8" if dtype == "uint8" else None, input_doc=doc,
                         metadata=metadata(spec, info, name=name_in, dtype=dtype, normalized=normalize))
    except conv_onnx.OnnxError:
        raise
    except ValueError as e:  # the model's own one line for an input it cannot take
        if input_shape is None:
            raise
        raise ValueError(f"--input-shape {','.join(map(str, shape))}: {e}") from None
    what = f"raw pixels {low:g}–{high:g} as {dtype}" if normalize else "normalised floats"
    return (f"{out}: {name} as ONNX (opset {opset}, input {name_in!r} (batch, {', '.join(map(str, shape))}) of "
            f"{what}; {len(spec['classes'])} classes)")
