"""What a trained model expects as input, carried with it when it leaves convprop.

    spec = convprop.deploy.input_spec(ckpt)          # size, channels, range, mean, std, classes
    model = convprop.deploy.with_normalization(net, spec)   # takes raw pixels 0–255
    convprop.onnx.export(model, "net.onnx", (1, *spec_shape(spec)), metadata=metadata(spec, ...))

An exported file says what it wants: ONNX metadata_props and safetensors' `__metadata__` hold JSON
strings under the keys below (METADATA_KEYS):

    convprop.input    {"name", "dtype", "layout": "NCHW", "channels", "size": [H, W], "range": [0, 255],
                       "mean": [per channel, of pixels/255], "std": [...], "normalization": "in the graph" |
                       "by the caller"} — in the graph: the file computes (pixels/255 − mean)/std itself
    convprop.classes  the class names, in the order of the output's columns
    convprop.model    {"name", "config"}: the convprop architecture
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any

from . import nn
from .data.images import class_names
from .data.loader import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD

__all__ = ["input_spec", "with_normalization", "metadata", "METADATA_KEYS", "CIFAR10_CLASSES"]

METADATA_KEYS = ("convprop.input", "convprop.classes", "convprop.model")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def input_spec(ckpt: dict) -> dict[str, Any]:
    """The checkpoint's input: {"channels": C, "size": [H, W], "range": [0, 255], "mean": [C floats],
    "std": [C floats], "classes": [names]}; mean and std are of pixels/255, as convprop.data.normalize.

    From the header's "input" object where training wrote one; else what convprop trained such a model on
    (MNIST's 28×28 grey digits, CIFAR-10's 32×32 colour images for three channels) and the class names of
    its training data (Fashion-MNIST's, CIFAR-10's, or the class numbers).  ValueError (one line) for an
    "input" that is not of that form."""
    meta = ckpt["meta"]
    config = meta["model"].get("config", {})
    saved = meta.get("input")
    if saved is not None:
        return _checked(saved, config.get("num_classes"))
    c, k = int(config.get("in_channels", 1)), int(config.get("num_classes", 10))
    colour = c == 3
    args = meta.get("args")
    classes = list(CIFAR10_CLASSES) if colour and k == 10 else \
        class_names(args.get("data") if isinstance(args, dict) else None, k)
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if colour else ((MNIST_MEAN,) * c, (MNIST_STD,) * c)
    side = 32 if colour else 28
    return {"channels": c, "size": [side, side], "range": [0, 255], "mean": list(mean), "std": list(std),
            "classes": classes}


def _checked(saved: Any, num_classes: int | None) -> dict[str, Any]:
    def bad(what: str) -> ValueError:
        return ValueError(f"checkpoint input description: {what}")

    if not isinstance(saved, dict):
        raise bad(f"expected a JSON object, got {type(saved).__name__}")
    c = saved.get("channels")
    if not isinstance(c, int) or isinstance(c, bool) or not 1 <= c <= 64:
        raise bad(f"channels: expected an integer from 1 to 64, got {c!r}")
    size = saved.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and 1 <= s <= 4096 for s in size)):
        raise bad(f"size: expected [height, width] of integers from 1 to 4096, got {size!r}")
    out: dict[str, Any] = {"channels": c, "size": list(size)}
    rng = saved.get("range", [0, 255])
    if not (isinstance(rng, list) and len(rng) == 2 and all(_number(v) for v in rng) and rng[0] < rng[1]):
        raise bad(f"range: expected [low, high] numbers, got {rng!r}")
    out["range"] = list(rng)
    for key in ("mean", "std"):
        v = saved.get(key)
        v = [v] * c if _number(v) else v
        if not (isinstance(v, list) and len(v) in (1, c) and all(_number(x) for x in v)) or \
                (key == "std" and min(v) <= 0):
            raise bad(f"{key}: expected {c} {'positive ' if key == 'std' else ''}numbers, got {saved.get(key)!r}")
        out[key] = [float(x) for x in v] * (c if len(v) == 1 else 1)
    classes = saved.get("classes")
    if classes is None and num_classes is not None:
        classes = [str(i) for i in range(num_classes)]
    if not (isinstance(classes, list) and all(isinstance(n, str) for n in classes)) or \
            (num_classes is not None and len(classes) != num_classes):
        raise bad(f"classes: expected {num_classes} names, got {classes!r:.80}")
    out["classes"] = classes
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
    high = f"{spec['range'][1]:g}"
    info["formula"] = (f"the file computes (pixels / {high} − mean) / std itself" if normalized else
                       f"give (pixels / {high} − mean) / std, per channel")
    out = {"convprop.input": json.dumps(info), "convprop.classes": json.dumps(spec["classes"])}
    if model is not None:
        out["convprop.model"] = json.dumps({"name": model.get("name"), "config": model.get("config", {})})
    return out
