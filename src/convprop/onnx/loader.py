"""load(): an ONNX file as an nn.Sequential, or an nn.Graph where it forks and joins."""

from __future__ import annotations

import numpy as np

from .. import nn
from .._files import open_regular
from .errors import OnnxError, one_line, onnx_module
from .indices import feeds_unpool_shape, import_indices, is_iota
from .reader import IMPORTERS, WALKED, Reader, fuse_normalize, import_normalize, load_weights, to_float
from .tensors import FLOATS, MAX_FILE_BYTES, MAX_NODES, MAX_TENSOR_BYTES, MAX_TENSOR_ELEMENTS, Budget, tensor, type_name


def _read(path: str, max_bytes: int) -> bytes:
    f, size = open_regular(path, "an ONNX file", OnnxError, max_bytes)
    try:
        with f:
            return f.read(size)  # its size is checked (read() of a file that grew would allocate more)
    except OSError as e:
        raise OnnxError(f"{path}: cannot read ({e.strerror or e})") from None


def load(path: str, max_bytes: int = MAX_FILE_BYTES, max_tensor_elements: int = MAX_TENSOR_ELEMENTS,
         max_tensor_bytes: int = MAX_TENSOR_BYTES) -> nn.Module:
    """An ONNX file as a convprop model with its weights: an nn.Sequential for a chain of layers, a
    Graph where it forks and joins.  A graph that takes raw pixels (a uint8 input Cast to float, or
    floats) and normalises them (Mul, Sub, Div, Add by per-channel constants: convprop's own exports)
    gives a model whose first layer is an nn.Normalize, taking the same pixel values as floats.
    Raises OnnxError (one line: node, operator, attribute) for what convprop cannot represent or for
    a damaged or hostile file.  Bounded: the file's size, each tensor's elements, all tensors' bytes
    together (inline, external and Constant nodes), the nodes; external data only from regular files
    of the model's own directory."""
    onnx = onnx_module()
    try:
        proto = read_proto(path, max_bytes)
        return _build(onnx, proto, path, Budget(max_tensor_bytes, max_tensor_elements))
    except OnnxError:
        raise
    except MemoryError:
        raise OnnxError(f"{path}: importing it needs more memory than is free") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as e:
        raise OnnxError(f"{path}: cannot import ({one_line(e)})") from None


def read_proto(path: str, max_bytes: int = MAX_FILE_BYTES):
    """The file's ModelProto (its size checked first, its bytes freed once parsed); OnnxError for what is
    not an ONNX model of standard operators, or has more nodes, initializers, … than convprop imports."""
    onnx = onnx_module()
    try:
        proto = onnx.ModelProto.FromString(_read(path, max_bytes))
    except (OnnxError, MemoryError):
        raise
    except Exception as e:  # protobuf's DecodeError, or a recursion limit
        raise OnnxError(f"{path}: not an ONNX model ({one_line(e)})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise OnnxError(f"{path}: not an ONNX model (no graph nodes)")
    for op in proto.opset_import:
        if op.domain not in ("", "ai.onnx"):
            raise OnnxError(f"{path}: operator set {op.domain[:100]!r} is not supported (standard ONNX operators "
                            "only)")
    for what in ("node", "initializer", "input", "output", "value_info"):
        count = len(getattr(proto.graph, what))
        if count > MAX_NODES:
            what = {"node": "nodes", "initializer": "initializers", "input": "graph inputs",
                    "output": "graph outputs"}.get(what, "value_info entries")
            raise OnnxError(f"{path}: {count:,} {what}, more than the {MAX_NODES:,} convprop imports")
    return proto


def _build(onnx, proto, path: str, budget: Budget) -> nn.Module:
    r = Reader(onnx, proto, path, budget)
    g = proto.graph
    data_inputs = [i.name for i in g.input if i.name not in r.raw_consts]
    if len(data_inputs) != 1 or len(g.output) != 1:
        raise OnnxError(f"{path}: expected one data input and one output, got inputs {data_inputs[:5]} and "
                        f"{len(g.output)} outputs (weights must be initializers)")
    elem = g.input[[i.name for i in g.input].index(data_inputs[0])].type.tensor_type.elem_type
    if elem == onnx.TensorProto.UINT8:  # raw pixels: the first node must make them floats
        first = g.node[0]
        to = next((a.i for a in first.attribute if a.name == "to"), None)
        if first.op_type != "Cast" or list(first.input) != data_inputs[:1] or to not in FLOATS:
            raise OnnxError(f"{path}: input {data_inputs[0]!r} is uint8, but the first node is not a Cast of it "
                            "to float32 or float64")
        elem = to
    elif elem not in FLOATS:
        raise OnnxError(f"{path}: input {data_inputs[0]!r} has element type {type_name(elem)}; "
                        "expected float32 or float64 (or uint8 cast to float first)")
    consumers: dict[str, int] = {g.output[0].name: 1}
    made = {i.name for i in g.input} | set(r.raw_consts)
    for node in g.node:
        for i in node.input:
            consumers[i] = consumers.get(i, 0) + 1
        if not node.output or not node.output[0]:
            raise OnnxError(f"{r.where(node)}: it has no output")
        for o in node.output:
            if o and o in made:
                raise OnnxError(f"{r.where(node)}: its output {o[:100]!r} is computed twice (or is a graph input "
                                "or an initializer)")
            made.add(o)
    r.consumers = consumers
    kinds: dict[str, tuple[str, str]] = {}  # index tensors and shapes: name -> (kind, the pool's input)
    alias = {data_inputs[0]: data_inputs[0]}  # tensor name -> the step output that holds it
    steps: list[tuple[str, nn.Module, list[str]]] = []
    fused: set[int] = set()
    nodes = list(g.node)
    for k, node in enumerate(nodes):
        if k in fused:
            continue
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise OnnxError(f"{r.where(node)}: operator domain {node.domain!r} is not supported")
        if op == "Constant":
            at = r.attrs(node, dict(value=None, value_ints=None))
            if at["value"] is None and at["value_ints"] is None:
                raise OnnxError(f"{r.where(node)}: only the 'value' and 'value_ints' attributes are supported")
            r.consts[node.output[0]] = (tensor(at["value"], f"{r.where(node)}: attribute 'value'", budget)
                                        if at["value"] is not None else np.array(at["value_ints"], np.int64))
            continue
        data = [i for i in node.input if i and not r.is_const(i)]
        if op == "Identity" and not data:  # a constant under another name (torch's shared weights)
            r.attrs(node, {})
            r.consts[node.output[0]] = r.const(node, 0, "input")
            continue
        for i in data:
            if i not in alias:
                raise OnnxError(f"{r.where(node)}: input {i!r} is not computed before this node "
                                "(the graph is not topologically sorted or names a missing tensor)")
        ins = [alias[i] for i in data]
        if op == "Identity":
            r.attrs(node, {})
            alias[node.output[0]] = ins[0]
            kinds.update({node.output[0]: kinds[data[0]]} if data[0] in kinds else {})
            continue
        if op == "MaxUnpool" or any(i in kinds for i in data) or (op == "Shape" and feeds_unpool_shape(node, nodes)):
            step = import_indices(r, node, data, ins, kinds)
            if isinstance(step, tuple):
                steps.append(step)
                alias[node.output[0]] = node.output[0]
            else:
                alias[node.output[0]] = step  # the same convprop tensor under another ONNX name
            continue
        if op == "Cast" and data == data_inputs[:1]:  # uint8 → float (checked above), or float → float
            at = r.attrs(node, dict(to=elem, saturate=1))
            if at["to"] != elem:
                raise r.refuse(node, "to", at["to"], f"the input is cast to the model's {type_name(elem)} only")
            alias[node.output[0]] = ins[0]
            continue
        if op in ("Mul", "Sub", "Div", "Add") and len(data) == 1:  # by a constant: an input normalisation
            m = import_normalize(r, node, data[0])
            prev = steps[-1] if steps else None
            if prev is not None and isinstance(prev[1], nn.Normalize) and prev[0] == ins[0] and \
                    consumers.get(prev[0]) == 1 and prev[0] != alias.get(data_inputs[0]):
                both = fuse_normalize(prev[1], m)
                if both is not None:  # (x·scale − mean)·(1/std) in one layer, the same arithmetic
                    steps[-1] = (node.output[0], both, prev[2])
                    alias[node.output[0]] = node.output[0]
                    continue
        elif op == "Add" and len(data) == 2:
            r.attrs(node, {})
            m = nn.Add()
        elif op == "MatMul":
            m, k2 = _import_matmul(r, node, nodes, k, consumers)
            if k2 is not None:
                fused.add(k2)
                node = nodes[k2]
        elif op in IMPORTERS:
            if len(data) != 1:
                raise OnnxError(f"{r.where(node)}: expected one data input, got {len(data)}")
            m = IMPORTERS[op](r, node)
            if getattr(m, "return_indices", False):  # MaxPool's (Y, Indices): see import_indices
                kinds[node.output[1]] = ("iota" if is_iota(node) else "whole", ins[0])
                alias[node.output[1]] = node.output[1]
                if is_iota(node) and not r.consumers.get(node.output[0]):
                    continue  # only its indices are used (for the plane offsets): no step
                outs = (node.output[0], node.output[1])
        elif op == "Cast":
            raise OnnxError(f"{r.where(node)}: only a Cast of the graph's input (to its float type) is supported")
        elif op in ("Mul", "Sub", "Div"):
            raise OnnxError(f"{r.where(node)}: only {op} of the data by a constant is supported")
        else:
            raise OnnxError(f"{r.where(node)}: operator {op!r} is not supported (supported: "
                            f"{', '.join(sorted([*IMPORTERS, *WALKED]))})")
        steps.append((outs if getattr(m, "return_indices", False) else node.output[0], m, ins))
        alias[node.output[0]] = node.output[0]
    out = g.output[0].name
    if out not in alias:
        raise OnnxError(f"{path}: the graph output {out!r} is not computed by any node")
    if out in kinds:
        raise OnnxError(f"{path}: the graph output {out!r} is MaxPool's Indices (or a shape); convprop imports "
                        "Indices only as the indices of a MaxUnpool")
    dtypes = {m.dtype for _, m, _ in steps if any(True for _ in m.parameters())}
    if len(dtypes) > 1:
        raise OnnxError(f"{path}: the weights mix dtypes {sorted(d.name for d in dtypes)}")
    model = _assemble(steps, data_inputs[0], alias[out])
    if dtypes and dtypes.pop() != FLOATS[elem]:
        model.to(FLOATS[elem])
    return model


def _import_matmul(r: Reader, node, nodes, k: int, consumers) -> tuple[nn.Module, int | None]:
    """MatMul by a constant (in, out) matrix is Linear without bias; a following Add of a constant
    (out,) vector is its bias (torch's Linear on inputs of more than two dimensions)."""
    r.attrs(node, {})
    if r.is_const(node.input[0]) or not r.is_const(node.input[1]):
        raise OnnxError(f"{r.where(node)}: only data × constant weight is supported")
    w = to_float(r, node, r.const(node, 1, "weight"), "the weight")
    if w.ndim != 2:
        raise OnnxError(f"{r.where(node)}: weight of shape {w.shape}; expected 2-D")
    nxt = next((j for j in range(k + 1, len(nodes)) if node.output[0] in nodes[j].input), None)
    bias, fused = None, None
    if nxt is not None and consumers.get(node.output[0]) == 1 and nodes[nxt].op_type == "Add":
        other = [i for i in nodes[nxt].input if i != node.output[0]]
        if len(other) == 1 and r.is_const(other[0]):
            b = r.const(nodes[nxt], list(nodes[nxt].input).index(other[0]), "bias")
            if b.shape == (w.shape[1],):
                bias, fused = b.astype(w.dtype), nxt
    m = nn.Linear(w.shape[0], w.shape[1], bias=bias is not None, dtype=w.dtype)
    return load_weights(m, weight=w.T, bias=bias), fused


def _assemble(steps, input: str, output: str) -> nn.Module:
    """A Sequential where each step takes the previous one's output, else a Graph."""
    chain, prev = True, input
    for out, m, ins in steps:
        if isinstance(m, nn.Add) or ins != [prev] or not isinstance(out, str):
            chain = False
            break
        prev = out
    if chain and prev == output:
        return nn.Sequential(*[m for _, m, _ in steps])
    used = _needed(steps, output)
    return nn.Graph([s for s in steps if any(o in used for o in _names(s[0]))], input, output)


def _names(out: str | tuple[str, ...]) -> tuple[str, ...]:
    return out if isinstance(out, tuple) else (out,)


def _needed(steps, output: str) -> set[str]:
    need, producers = {output}, {o: ins for out, _, ins in steps for o in _names(out)}
    stack = [output]
    while stack:
        for i in producers.get(stack.pop(), []):
            if i not in need:
                need.add(i)
                stack.append(i)
    return need

