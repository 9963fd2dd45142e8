"""Checkpoints without pickle: one .npz of plain arrays plus a JSON header, written atomically.

Layout: 'meta' (UTF-8 JSON as uint8: format version, model name and config, epoch, optimizer and
scheduler hyper-parameters, RNG state, history, run arguments, and the model's `input` — see
input_spec), 'model/<state_dict key>' arrays,
'optim/<param index>/<name>' optimizer state arrays.  Loading uses allow_pickle=False, so a file
can carry data only, never code.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from typing import Any

import numpy as np

from . import models, optim, safe_json
from . import random as _random
from ._files import atomic_write, remove_stale_temporaries
from .nn import Module

FORMAT, VERSION = "convprop-checkpoint", 1


class CheckpointError(ValueError):
    """A file that is not a loadable convprop checkpoint (the message says why)."""


def _to_json(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def save(path: str, model: Module, model_name: str, model_config: dict | None = None,
         optimizer: optim.Optimizer | None = None, scheduler: optim.LRScheduler | None = None, epoch: int = 0,
         **extra: Any) -> str:
    """Write a checkpoint atomically: a temporary file in the same directory, flushed, fsync'ed,
    then renamed over `path` — the previous checkpoint stays whole until the new one is.

    `model_config`: the arguments `models.MODELS[model_name]` was built with; a "dtype" among them
    (any spelling NumPy takes) must be the model's and is kept as the header's model dtype.  A config
    that `load` would refuse is a ValueError here, before anything is written."""
    config = _saved_config(model, model_name, model_config)
    arrays = {f"model/{k}": np.asarray(v) for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "epoch": epoch,
                            "model": {"name": model_name, "config": config, "dtype": model.dtype.name},
                            "rng": _random.get_state(), **extra}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, dict] = {}
        for i, s in sd["state"].items():
            for name, v in s.items():
                if isinstance(v, np.ndarray):
                    arrays[f"optim/{i}/{name}"] = v
                else:
                    scalars.setdefault(str(i), {})[name] = v
        meta["optimizer"] = {"class": type(optimizer).__name__, "param_groups": sd["param_groups"],
                             "scalars": scalars}
    if scheduler is not None:
        meta["scheduler"] = {"class": type(scheduler).__name__, "state": scheduler.state_dict()}
    arrays["meta"] = np.frombuffer(json.dumps(meta, default=_to_json).encode(), np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(directory, TMP_PREFIX)
    return atomic_write(path, lambda f: np.savez(f, **arrays), prefix=TMP_PREFIX)


TMP_PREFIX = ".ckpt-"
DTYPES = ("float32", "float64")


def _saved_config(model: Module, model_name: str, model_config: dict | None) -> dict:
    """The config as a checkpoint holds it: JSON values (NumPy scalars unwrapped), no dtype (the header
    has the model's), and one that load accepts."""
    config = {k: v.item() if isinstance(v, np.generic) else v for k, v in (model_config or {}).items()}
    if "dtype" in config:
        given = config.pop("dtype")
        try:
            dtype = np.dtype(given)
        except TypeError:
            raise ValueError(f"config: dtype: expected one of {', '.join(DTYPES)}, got {given!r}") from None
        if dtype != model.dtype:
            raise ValueError(f"config: dtype {dtype.name}, but the model's is {model.dtype.name}")
    if model.dtype.name not in DTYPES:
        raise ValueError(f"model dtype: expected one of {', '.join(DTYPES)}, got {model.dtype.name}")
    models.check_config(model_name, config)
    return config


MAX_HEADER_BYTES, MAX_MEMBERS, MAX_EPOCH = 16 << 20, 4096, 10**6
_OPTIM_KEY = re.compile(r"optim/(0|[1-9][0-9]{0,3})/([A-Za-z_][A-Za-z0-9_]{0,63})")


def load(path: str) -> dict[str, Any]:
    """The checkpoint's parts: {'meta': dict, 'model': state_dict, 'optim': {index: {name: array}}}.
    Raises FileNotFoundError or CheckpointError with a one-line reason; never unpickles.

    Memory stays bounded whatever the file holds: only the members the format names are read (an
    unknown one is refused); the header first, bounded in size and JSON nesting, its values checked;
    then each array member only after its .npy header has declared exactly the shape and dtype the
    header's model gives it, and its size in the archive agrees."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: expected a checkpoint file, got a directory")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if not zipfile.is_zipfile(path):  # np.load would otherwise take it for a pickle and suggest unpickling it
        raise CheckpointError(f"{path}: not a checkpoint (expected an .npz archive)")
    try:
        with zipfile.ZipFile(path) as z:
            return _load(z, path)
    except (CheckpointError, MemoryError):
        raise
    except Exception as e:  # a damaged archive can fail anywhere in zipfile, zlib or the .npy header parser
        raise CheckpointError(f"{path}: truncated or not a checkpoint ({type(e).__name__}: {e})") from None


def _load(z: zipfile.ZipFile, path: str) -> dict[str, Any]:
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CheckpointError(f"{path}: {len(infos)} entries, more than a checkpoint has ({MAX_MEMBERS})")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        key = info.filename[:-4] if info.filename.endswith(".npy") else None
        if key is None or not (key == "meta" or key.startswith("model/") or _OPTIM_KEY.fullmatch(key)):
            raise CheckpointError(f"{path}: unknown entry {info.filename!r} (a checkpoint holds meta.npy, "
                                  "model/<key>.npy and optim/<index>/<name>.npy only)")
        if key in members:
            raise CheckpointError(f"{path}: entry {info.filename!r} appears twice")
        members[key] = info
    if "meta" not in members:
        raise CheckpointError(f"{path}: not a convprop checkpoint (no 'meta' entry)")
    size = members["meta"].file_size
    if size > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: a header of {size:,} bytes, more than a checkpoint's ({MAX_HEADER_BYTES:,})")
    raw = _read_npy(z, members.pop("meta"), path, "meta", None, np.dtype(np.uint8))
    try:
        meta = safe_json.loads(raw.tobytes(), "header")
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupt checkpoint {e}") from None
    _check_meta(meta, path)
    m = meta["model"]
    try:
        skeleton = models.build(m["name"], **m.get("config", {})).to(m.get("dtype", "float32"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build model {m['name']!r}: {e}") from None
    expected = skeleton.state_dict()
    params = list(skeleton.parameters())
    model_sd: dict[str, np.ndarray] = {}
    optim_state: dict[int, dict] = {}
    for key, info in members.items():
        if key.startswith("model/"):
            name = key[len("model/"):]
            if name not in expected:
                raise CheckpointError(f"{path}: weights do not fit {m['name']}: unexpected key {name!r}")
            want = np.asarray(expected[name])
            model_sd[name] = _read_npy(z, info, path, key, want.shape, want.dtype, m["name"])
        else:
            i, name = _OPTIM_KEY.fullmatch(key).groups()
            if int(i) >= len(params):
                raise CheckpointError(f"{path}: optimizer state {key!r} for parameter {i}, but {m['name']} has "
                                      f"{len(params)}")
            p = params[int(i)].data
            optim_state.setdefault(int(i), {})[name] = _read_npy(z, info, path, key, p.shape, p.dtype, m["name"])
    missing = [k for k in expected if k not in model_sd]
    if missing:
        raise CheckpointError(f"{path}: weights do not fit {m['name']}: missing {', '.join(missing[:3])}")
    return {"meta": meta, "model": model_sd, "optim": optim_state}


def _read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, key: str, shape: tuple | None,
              dtype: np.dtype, model: str = "") -> np.ndarray:
    """One .npy member, read only once its header declares `shape` (None: any 1-D) and `dtype` and the
    archive's size for it agrees; never an object array."""
    fmt = np.lib.format
    with z.open(info) as f:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise CheckpointError(f"{path}: entry {key!r}: unknown .npy version {version}")
        header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        got_shape, fortran, got_dtype = header(f, max_header_size=10_000)
        if got_dtype.hasobject:
            raise CheckpointError(f"{path}: entry {key!r} holds Python objects, which a checkpoint never does")
        fits = got_shape == shape if shape is not None else len(got_shape) == 1
        if not fits or got_dtype != dtype:
            what = f"weights do not fit {model}: " if key.startswith("model/") else ""
            want = f"shape {shape}" if shape is not None else "1 dimension"
            raise CheckpointError(f"{path}: {what}entry {key!r} has shape {got_shape} and dtype {got_dtype}, "
                                  f"expected {want} and dtype {dtype}")
        nbytes = int(np.prod(got_shape, dtype=object)) * got_dtype.itemsize
        if info.file_size != f.tell() + nbytes:
            raise CheckpointError(f"{path}: entry {key!r} is {info.file_size:,} bytes, but its header declares "
                                  f"{f.tell() + nbytes:,}")
        out = np.empty(got_shape[::-1] if fortran else got_shape, got_dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < nbytes:
            n = f.readinto(view[done:done + (1 << 20)])
            if not n:
                raise CheckpointError(f"{path}: entry {key!r} is truncated")
            done += n
    return out.T if fortran else out


def _whole(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _check_meta(meta: Any, path: str) -> None:
    """The header's values, each of the type and within the bounds the format gives it."""
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: not a convprop checkpoint (format {fmt!r}, expected {FORMAT!r})")
    if not _whole(meta.get("version"), 1, 10**6):
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r} is not one this "
                              f"convprop reads ({VERSION})")
    if meta["version"] > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r} is newer than this "
                              f"convprop reads ({VERSION}); upgrade convprop")
    m = meta.get("model")
    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        raise CheckpointError(f"{path}: checkpoint header names no model")
    if m.get("dtype", "float32") not in DTYPES:
        raise CheckpointError(f"{path}: model dtype: expected 'float32' or 'float64', got {m.get('dtype')!r}")
    try:
        models.check_config(m["name"], m.get("config", {}))
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot build model {m['name']!r}: {e}") from None
    if not _whole(meta.get("epoch", 0), 0, MAX_EPOCH):
        raise CheckpointError(f"{path}: epoch: expected an integer from 0 to {MAX_EPOCH:,}, got {meta.get('epoch')!r}")
    for key, kind in (("history", list), ("args", dict), ("optimizer", dict), ("scheduler", dict), ("rng", dict)):
        if key in meta and not isinstance(meta[key], kind):
            raise CheckpointError(f"{path}: {key}: expected a JSON {'array' if kind is list else 'object'}, got "
                                  f"{type(meta[key]).__name__}")
    if not all(isinstance(h, dict) for h in meta.get("history", [])):
        raise CheckpointError(f"{path}: history: expected one object per epoch")
    if "input" in meta:
        problem = input_problem(meta["input"], m.get("config", {}))
        if problem:
            raise CheckpointError(f"{path}: input: {problem}")


PREPARE = ("digit", "resize")


def input_problem(spec: Any, config: dict) -> str | None:
    """What is wrong with a header's "input" (see input_spec), or None."""
    if not isinstance(spec, dict):
        return f"expected a JSON object, got {type(spec).__name__}"
    c, k = config.get("in_channels", 1), config.get("num_classes", 10)

    def numbers(v, n, positive=False):
        return isinstance(v, list) and len(v) == n and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
            for x in v)

    size = spec.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_whole(v, 1, 4096) for v in size)):
        return f"size: expected [height, width] from 1 to 4096, got {size!r}"
    if spec.get("channels") != c:
        return f"channels: expected {c} (the model's in_channels), got {spec.get('channels')!r}"
    if not numbers(spec.get("mean"), c) or not numbers(spec.get("std"), c, positive=True):
        return f"mean and std: expected {c} finite numbers each (std > 0)"
    if spec.get("range") != [0, 255]:
        return f"range: expected [0, 255], got {spec.get('range')!r}"
    names = spec.get("classes")
    if not (isinstance(names, list) and len(names) == k and all(isinstance(n, str) and len(n) <= 256 for n in names)):
        return f"classes: expected {k} names (the model's num_classes), up to 256 characters each"
    if spec.get("prepare") not in PREPARE:
        return f"prepare: expected one of {list(PREPARE)}, got {spec.get('prepare')!r}"
    return None


def input_spec(meta: dict) -> dict:
    """What the checkpoint's model takes, as its header's "input" records it:

        {"size": [H, W], "channels": C, "mean": [C numbers], "std": [C numbers], "range": [0, 255],
         "classes": [num_classes names], "prepare": "digit" | "resize"}

    The input is N×C×H×W of (pixel / 255 − mean[c]) / std[c] for pixels in range; classes name the
    outputs; prepare says how an arbitrary image file becomes one: "digit", MNIST's digit preparation
    (data/images.py); "resize", the whole image in C channels resized to H×W.  A checkpoint written
    before "input" existed gets the one its model implies: MNIST's 28×28 grey digits, or CIFAR-10's."""
    if isinstance(meta.get("input"), dict):
        return dict(meta["input"])
    from .data import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD
    from .data.images import class_names

    config = meta.get("model", {}).get("config", {})
    c, k = config.get("in_channels", 1), config.get("num_classes", 10)
    args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
    grey = c == 1
    mean = [MNIST_MEAN] if grey else list(CIFAR10_MEAN) if c == 3 else [0.5] * c
    std = [MNIST_STD] if grey else list(CIFAR10_STD) if c == 3 else [0.25] * c
    side = 28 if grey or meta.get("model", {}).get("name") == "lenet5" else 32  # (LeNet-5's Linear fixes 28×28)
    return {"size": [side, side], "channels": c, "mean": mean, "std": std, "range": [0, 255],
            "classes": class_names(args.get("data"), k, c), "prepare": "digit" if grey else "resize"}


def restore_model(ckpt: dict, path: str = "checkpoint") -> Module:
    """Build the checkpoint's architecture and load its weights (mismatches name the key and shapes)."""
    m = ckpt["meta"]["model"]
    try:
        model = models.build(m["name"], **m.get("config", {})).to(m.get("dtype", "float32"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build model {m.get('name')!r}: {e}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not fit {m['name']}: {e}") from None
    return model


def _same_kind(ours: Any, saved: Any) -> bool:
    """saved has the structure of ours: the same keys, lengths and types, numbers finite."""
    if isinstance(ours, bool) or ours is None or isinstance(ours, str):
        return type(saved) is type(ours)
    if isinstance(ours, (int, float, np.number)):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved) and \
            (isinstance(saved, int) or not isinstance(ours, (int, np.integer)))
    if isinstance(ours, (list, tuple)):
        return isinstance(saved, list) and len(saved) == len(ours) and all(map(_same_kind, ours, saved))
    if isinstance(ours, dict):
        return isinstance(saved, dict) and saved.keys() == {str(k) for k in ours} and \
            all(_same_kind(v, saved[str(k)]) for k, v in ours.items())
    return False


def restore_training(ckpt: dict, model: Module, optimizer: optim.Optimizer | None,
                     scheduler: optim.LRScheduler | None, path: str = "checkpoint") -> None:
    """Load optimizer, scheduler and RNG state into freshly built objects of the same kind; every saved
    value must have the kind of the one it replaces (else CheckpointError naming it)."""
    meta = ckpt["meta"]
    if optimizer is not None and "optimizer" in meta:
        o = meta["optimizer"]
        if o.get("class") != type(optimizer).__name__:
            raise CheckpointError(f"{path}: optimizer {o.get('class')!r} does not match {type(optimizer).__name__}")
        groups = optimizer.state_dict()["param_groups"]
        if not _same_kind(groups, o.get("param_groups")):
            raise CheckpointError(f"{path}: optimizer param_groups: expected the hyper-parameters of "
                                  f"{type(optimizer).__name__} ({len(groups)} groups), got something else")
        scalars = o.get("scalars", {})
        n = sum(len(g["params"]) for g in groups)
        if not isinstance(scalars, dict) or not all(
                isinstance(i, str) and i.isdigit() and int(i) < n and isinstance(s, dict) and
                all(isinstance(k, str) and _same_kind(0.0, v) for k, v in s.items()) for i, s in scalars.items()):
            raise CheckpointError(f"{path}: optimizer scalars: expected {{parameter index: {{name: number}}}}")
        state = {int(i): dict(s) for i, s in ckpt["optim"].items()}
        for i, sc in scalars.items():
            state.setdefault(int(i), {}).update(sc)
        try:
            optimizer.load_state_dict({"state": state, "param_groups": o["param_groups"]})
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit: {e}") from None
    if scheduler is not None and "scheduler" in meta:
        sched = meta["scheduler"]
        ours = scheduler.state_dict()
        if sched.get("class") != type(scheduler).__name__ or not _same_kind(ours, sched.get("state")):
            raise CheckpointError(f"{path}: scheduler state: expected the state of {type(scheduler).__name__} "
                                  f"({', '.join(ours)}), got something else")
        scheduler.load_state_dict(sched["state"])
    if "rng" in meta:
        try:
            _random.set_state(meta["rng"])
        except Exception as e:  # NumPy's bit generator checks the state itself, in its own words
            raise CheckpointError(f"{path}: rng: not a random generator state ({type(e).__name__}: {e})") from None
