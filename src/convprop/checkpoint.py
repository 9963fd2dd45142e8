"""Checkpoints without pickle: one .npz of plain arrays plus a JSON header, written atomically.

Layout: 'meta' (UTF-8 JSON as uint8: format version, model name and config, epoch, optimizer and
scheduler hyper-parameters, RNG state, history, run arguments), 'model/<state_dict key>' arrays,
'optim/<param index>/<name>' optimizer state arrays.  Loading uses allow_pickle=False, so a file
can carry data only, never code.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from . import models, optim
from . import random as _random
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
    then renamed over `path` — the previous checkpoint stays whole until the new one is."""
    arrays = {f"model/{k}": np.asarray(v) for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "epoch": epoch,
                            "model": {"name": model_name, "config": model_config or {},
                                      "dtype": model.dtype.name},
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
    _remove_stale_temporaries(directory)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as every other file of a run (mkstemp would make it 0600)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


TMP_PREFIX = ".ckpt-"


def _umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale_temporaries(directory: str) -> None:
    """Half-written files that a killed save left behind: `.ckpt-<pid>-….tmp` of processes that no
    longer run.  Never the checkpoint, and never the temporary of a save still under way elsewhere."""
    for name in os.listdir(directory):
        if not (name.startswith(TMP_PREFIX) and name.endswith(".tmp")):
            continue
        pid = name[len(TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


def load(path: str) -> dict[str, Any]:
    """The checkpoint's parts: {'meta': dict, 'model': state_dict, 'optim': {index: {name: array}}}.
    Raises FileNotFoundError or CheckpointError with a one-line reason; never unpickles."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: expected a checkpoint file, got a directory")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    if not zipfile.is_zipfile(path):  # np.load would otherwise take it for a pickle and suggest unpickling it
        raise CheckpointError(f"{path}: not a checkpoint (expected an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise CheckpointError(f"{path}: not a convprop checkpoint (no 'meta' entry)")
            data = {k: z[k] for k in z.files}
    except CheckpointError:
        raise
    except ValueError as e:  # includes object arrays, which allow_pickle=False refuses
        raise CheckpointError(f"{path}: not a valid checkpoint ({e})") from None
    except Exception as e:  # a damaged archive can fail anywhere in zipfile or the .npy header parser
        raise CheckpointError(f"{path}: truncated or not a checkpoint ({type(e).__name__}: {e})") from None
    for k, v in data.items():
        if not isinstance(v, np.ndarray):  # NpzFile hands back a member without the .npy header as bytes
            raise CheckpointError(f"{path}: entry {k!r} is not a NumPy array")
    meta = data.pop("meta")
    if meta.dtype != np.uint8 or meta.ndim != 1:
        raise CheckpointError(f"{path}: corrupt checkpoint header (dtype {meta.dtype}, shape {meta.shape})")
    try:
        meta = json.loads(meta.tobytes().decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint header ({e})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: not a convprop checkpoint (format {fmt!r}, expected {FORMAT!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r} is newer than this "
                              f"convprop reads ({VERSION}); upgrade convprop")
    if not isinstance(meta.get("model"), dict) or "name" not in meta["model"]:
        raise CheckpointError(f"{path}: checkpoint header names no model")
    model_sd = {k[len("model/"):]: v for k, v in data.items() if k.startswith("model/")}
    optim_state: dict[int, dict] = {}
    for k, v in data.items():
        if k.startswith("optim/"):
            _, i, name = k.split("/", 2)
            optim_state.setdefault(int(i), {})[name] = v
    return {"meta": meta, "model": model_sd, "optim": optim_state}


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


def restore_training(ckpt: dict, model: Module, optimizer: optim.Optimizer | None,
                     scheduler: optim.LRScheduler | None, path: str = "checkpoint") -> None:
    """Load optimizer, scheduler and RNG state into freshly built objects of the same kind."""
    meta = ckpt["meta"]
    if optimizer is not None and "optimizer" in meta:
        o = meta["optimizer"]
        if o["class"] != type(optimizer).__name__:
            raise CheckpointError(f"{path}: optimizer {o['class']} does not match {type(optimizer).__name__}")
        state = {int(i): dict(s) for i, s in ckpt["optim"].items()}
        for i, scalars in o.get("scalars", {}).items():
            state.setdefault(int(i), {}).update(scalars)
        optimizer.load_state_dict({"state": state, "param_groups": o["param_groups"]})
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(meta["scheduler"]["state"])
    if "rng" in meta:
        _random.set_state(meta["rng"])
