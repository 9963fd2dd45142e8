"""MaxPool's Indices into MaxUnpool, both ways.

ONNX's MaxPool counts its Indices over the whole (N, C, H, W) tensor, torch's and convprop's within
each (H, W) plane: the two agree only as the indices of a MaxUnpool back to the pooled input's size.
Export writes MaxPool's Indices only into a MaxUnpool; import follows them (and the Slice/Sub/Add/Shape
torch.onnx.export writes around them) into convprop's MaxUnpool layers.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from ..functional.pool import unpool_default, unpool_extent
from .errors import LAYOUT, OnnxError, one_line
from .reader import Reader, ints1, pads2, spatial
from .rules import Builder, one, pair


# --------------------------------------------------------------------------- export
def indices_only_unpool(pool: str) -> str:
    """Why a `pool`'s indices go nowhere but into a MaxUnpool of its kind."""
    d = 1 if pool.endswith("1d") else 2
    return (f"ONNX's MaxPool counts them over the whole {LAYOUT[d]} tensor, torch and convprop within each "
            f"{'(L) row' if d == 1 else '(H, W) plane'}, so they are exported only as the indices of a MaxUnpool{d}d")


def _size(shape) -> str:
    return "×".join(map(str, shape))


def unpool(b: Builder, m, label: str, x, indices, out: np.ndarray) -> str:
    """MaxUnpool2d / MaxUnpool1d as ONNX MaxUnpool, its indices MaxPool's own Indices (whole-tensor flat),
    its output_shape the shape of the pool's input — the one shape at which whole-tensor and per-plane
    indices name the same cells, so the unpooled output must have the pooled input's H × W."""
    name = type(m).__name__
    d = 1 if isinstance(m, nn.MaxUnpool1d) else 2
    pools = "MaxPool1d" if d == 1 else "MaxPool2d or AdaptiveMaxPool2d"
    if getattr(x, "onnx_name", None) is None or getattr(x, "pooled", None) is not None:
        raise OnnxError(f"{label} ({name}): its input x is computed by code other than layers and sums of "
                        "their outputs, which cannot be exported")
    if getattr(indices, "pooled", None) is None:
        raise OnnxError(f"{label} ({name}): indices must be those a {pools}(return_indices=True) of this "
                        "model returned, unchanged")
    source, shape, pool = indices.pooled
    if len(shape) != d + 2 or out.ndim != d + 2:  # the pool's input is batched (see _batched)
        raise OnnxError(f"{label} ({name}): its indices are a {pool}'s of a {len(shape) - 2}-D input {shape}, its "
                        f"output {out.shape}; a {name} unpools the indices of a {pools} only, to its input's shape")
    if out.shape[2:] != shape[2:]:
        raise OnnxError(f"{label} ({name}): output {_size(out.shape[2:])} differs from its "
                        f"pooled input {_size(shape[2:])}; ONNX's whole-tensor indices match torch's "
                        "per-plane ones only at the pooled input's size (pass output_size=x.shape)")
    k, p = (pair(m.kernel_size), pair(m.padding)) if d == 2 else ([one(m.kernel_size)], [one(m.padding)])
    s = k if m.stride is None else pair(m.stride) if d == 2 else [one(m.stride)]
    least = [unpool_default(*a) for a in zip(x.shape[2:], k, s, p)]
    if any(o < lo for o, lo in zip(out.shape[2:], least)):
        raise OnnxError(f"{label} ({name}): its pooled input {_size(shape[2:])} is smaller than the default "
                        f"output {_size(least)} ((in − 1)·stride − 2·padding + kernel), and ONNX's MaxUnpool "
                        "needs an output_shape of at least that size")
    return b.node("MaxUnpool", [x.onnx_name, indices.onnx_name, b.node("Shape", [source], f"{label}.shape")], label,
                  kernel_shape=k, strides=s, pads=p + p)


# --------------------------------------------------------------------------- import
class _MaxUnpoolTo(nn.MaxUnpool2d):
    """MaxUnpool2d to a fixed output (H, W) — ONNX MaxUnpool's output_shape — or, with None, the default."""

    def __init__(self, kernel_size, stride=None, padding=0, output_size: tuple[int, int] | None = None) -> None:
        super().__init__(kernel_size, stride, padding)
        self.output_size = output_size

    def forward(self, x: np.ndarray, indices: np.ndarray, output_size=None) -> np.ndarray:
        return super().forward(x, indices, self.output_size if output_size is None else output_size)


class _MaxUnpool1dTo(_MaxUnpoolTo, nn.MaxUnpool1d):
    """MaxUnpool1d to a fixed output (L,), or with None the default."""


def is_iota(node) -> bool:
    """A MaxPool of kernel 1, stride 1, no padding: its Indices number every element of its input
    (torch's exporter takes the first of each plane as the plane's offset)."""
    at = {a.name: list(a.ints) for a in node.attribute}
    k = at.get("kernel_shape", [])
    return bool(k) and set(k) == {1} and set(at.get("strides", [1])) == {1} and not any(at.get("pads", [0]))


def feeds_unpool_shape(node, nodes) -> bool:
    """Whether a Shape node's output is only ever a MaxUnpool's output_shape (its third input)."""
    readers = [(n, i) for n in nodes for i, name in enumerate(n.input) if name == node.output[0]]
    return bool(readers) and all(n.op_type == "MaxUnpool" and i == 2 for n, i in readers)


def import_indices(r: Reader, node, data: list[str], ins: list[str], kinds: dict) -> tuple | str:
    """The nodes around MaxPool's Indices: a step (MaxUnpool), or the convprop tensor the node's output
    names under another ONNX name (kinds records what the ONNX tensor holds).

    ONNX's Indices count over the whole (N, C, H, W) input, torch's and convprop's within each (H, W)
    plane; convprop holds only the latter and tracks which form each ONNX tensor would hold:
      whole  = MaxPool's Indices;   iota = the Indices of a MaxPool of kernel 1 (every element's own);
      offsets = Slice(iota)[…, :1, :1], each plane's first index;   plane = Sub(whole, offsets);
      Add(plane, offsets) = whole again (torch's exporter writes the Sub, a MaxUnpool needs the whole);
      shape = Shape(t), for MaxUnpool's output_shape.
    A MaxUnpool takes whole indices and gives the pooled input's H × W — where the two forms agree."""
    op, where, out = node.op_type, r.where(node), node.output[0]
    kind = [kinds.get(i, ("data", a))[0] for i, a in zip(data, ins)]
    src = [kinds.get(i, ("data", a))[1] for i, a in zip(data, ins)]
    if op == "Shape" and len(data) == 1 and kind == ["data"]:
        r.attrs(node, {})
        kinds[out] = ("shape", data[0])  # its ONNX name: the static shape is looked up by it
        return ins[0]
    if op == "Slice" and kind[:1] == ["iota"] and len(data) == 1:
        r.attrs(node, {})
        starts, ends = (r.const(node, i, what).reshape(-1).tolist() for i, what in ((1, "starts"), (2, "ends")))
        axes = r.optional_const(node, 3, "axes")
        steps = r.optional_const(node, 4, "steps")
        rank = len(r.shapes.get(src[0]) or [None] * 4)
        axes = [a % rank for a in (range(len(starts)) if axes is None else axes.reshape(-1).tolist())]
        if sorted(zip(axes, starts, ends)) == [(a, 0, 1) for a in range(2, rank)] and \
                (steps is None or set(steps.flat) == {1}):
            kinds[out] = ("offsets", src[0])
            return ins[0]
    if op in ("Sub", "Add") and len(data) == 2 and src[0] == src[1]:
        r.attrs(node, {})
        if op == "Sub" and kind == ["whole", "offsets"]:
            kinds[out] = ("plane", src[0])  # convprop's own indices
            return ins[0]
        if op == "Add" and sorted(kind) == ["offsets", "plane"]:
            kinds[out] = ("whole", src[0])
            return ins[kind.index("plane")]
    if op == "MaxUnpool" and len(data) in (2, 3) and kind[:2] == ["data", "whole"] and kind[2:] in ([], ["shape"]):
        at = r.attrs(node, dict(kernel_shape=None, pads=None, strides=None))
        d = len(at["kernel_shape"] or [])
        if d == 1:  # (N, C, L)
            kernel, stride = (ints1(r, node, at, "kernel_shape", [1]),), (ints1(r, node, at, "strides", [1]),)
            pads = (ints1(r, node, at, "pads", [0, 0]),)
        elif d == 2:
            kernel = spatial(r, node, at, "kernel_shape", [1, 1])
            stride = spatial(r, node, at, "strides", [1, 1])  # ONNX's default, unlike torch's (the kernel)
            pads = pads2(r, node, at["pads"])
        else:
            raise r.refuse(node, "kernel_shape", at["kernel_shape"], "1-D and 2-D MaxUnpool are imported")
        x, pooled, given = r.shapes.get(data[0]) or [], r.shapes.get(src[1]) or [], None
        if len(x) != d + 2 or None in x[2:]:
            raise OnnxError(f"{where}: its input's shape {x or 'unknown'} must be a known {LAYOUT[d]}")
        if len(node.input) > 2 and node.input[2]:
            given = r.shapes.get(src[2]) if kind[2:] == ["shape"] else \
                [int(v) for v in r.const(node, 2, "output_shape").reshape(-1)]
            if not given or len(given) != d + 2 or None in given[2:] or \
                    any(g is not None and n is not None and g != n for g, n in zip(given[:2], x[:2])):
                raise OnnxError(f"{where}: output_shape {given} must be {d + 2} sizes, N and C those of its input "
                                f"{x}")
        try:  # ONNX's default (in − 1)·stride − pads + kernel, as torch's; output_shape within torch's bounds
            size = tuple(unpool_extent(x[2 + i], kernel[i], stride[i], pads[i], None if given is None else given[2 + i],
                                       "L" if d == 1 else "HW"[i]) for i in range(d))
        except ValueError as e:
            raise OnnxError(f"{where}: {one_line(e).replace('ValueError: output_size', 'output_shape')}") from None
        if len(pooled) != d + 2 or None in pooled[2:] or size != tuple(pooled[2:]):
            raise OnnxError(f"{where}: output size {size} must be its indices' MaxPool input's "
                            f"{tuple(pooled[2:]) or 'unknown'} (only there do ONNX's whole-tensor indices equal "
                            "convprop's per-plane ones)")
        size = size if given is not None else None
        m = _MaxUnpoolTo(kernel, stride, pads, size) if d == 2 else _MaxUnpool1dTo(kernel[0], stride[0], pads[0], size)
        return out, m, ins[:2]
    raise OnnxError(f"{where}: MaxPool's Indices are imported only as the indices of a MaxUnpool (and in torch's "
                    f"Sub/Add of each plane's offset); got inputs {list(zip(data, kind))}")
