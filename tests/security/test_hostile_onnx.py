"""Hostile ONNX models for convprop.onnx.load: external data that escapes the model's directory or is no
regular file, tensors whose sizes lie or add up past the limit, attributes of the wrong type, broken
graphs, huge and deeply nested ones.  Each is refused by one OnnxError line naming the file (and the
node and attribute where there is one), under a 1 GiB address-space cap; nothing else is read."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hostile import raised_within, run_many_capped, sparse_file

onnx = pytest.importorskip("onnx")
from convprop.onnx import OnnxError, load  # noqa: E402

H = onnx.helper
T = onnx.TensorProto
W = np.arange(18, dtype=np.float32).reshape(2, 1, 3, 3) / 10


def model(nodes=None, inits=None, elem=T.FLOAT) -> onnx.ModelProto:
    """x (N, 1, 5, 5) → Conv 'c' (W, B) → LeakyRelu 'r' → y, unless nodes and initializers are given."""
    nodes = nodes if nodes is not None else [H.make_node("Conv", ["x", "W", "B"], ["h"], name="c"),
                                             H.make_node("LeakyRelu", ["h"], ["y"], name="r", alpha=0.1)]
    inits = inits if inits is not None else [onnx.numpy_helper.from_array(W, "W"),
                                             onnx.numpy_helper.from_array(np.ones(2, np.float32), "B")]
    g = H.make_graph(nodes, "g", [H.make_tensor_value_info("x", elem, ["N", 1, 5, 5])],
                     [H.make_tensor_value_info("y", T.FLOAT, None)], inits)
    return H.make_model(g, opset_imports=[H.make_opsetid("", 17)])


def external(location="w.bin", **keys) -> T:
    """W as external data at `location` (the bytes are written by the case)."""
    t = T(name="W", data_type=T.FLOAT, dims=[2, 1, 3, 3], data_location=T.EXTERNAL)
    for k, v in {"location": location, **keys}.items():
        for value in (v if isinstance(v, list) else [v]):
            t.external_data.add(key=k, value=str(value))
    return t


def with_w(t) -> onnx.ModelProto:
    return model(inits=[t, onnx.numpy_helper.from_array(np.ones(2, np.float32), "B")])


def attr(node_edit):
    m = model()
    node_edit(m.graph.node)
    return m


def set_attr(i, a):
    def edit(nodes):
        keep = [x for x in nodes[i].attribute if x.name != a.name]
        del nodes[i].attribute[:]
        nodes[i].attribute.extend(keep + [a])
    return edit


def _sub():
    return H.make_graph([H.make_node("Relu", ["a"], ["b"])], "sub", [H.make_tensor_value_info("a", T.FLOAT, [1])],
                        [H.make_tensor_value_info("b", T.FLOAT, [1])])


def constant_w(a) -> onnx.ModelProto:
    """W given by a Constant node whose attribute is `a`."""
    c = H.make_node("Constant", [], ["W"], name="k")
    c.attribute.extend([a])
    return model([c, H.make_node("Conv", ["x", "W"], ["y"], name="c")], [])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested(depth: int) -> bytes:
    """A model whose one node has a GRAPH attribute holding a node with a GRAPH attribute … depth deep
    (written by hand: the protobuf package itself would recurse)."""
    graph = _field(1, _field(4, b"Relu"))  # GraphProto{node: NodeProto{op_type: Relu}}
    for _ in range(depth):  # NodeProto{op_type, attribute: AttributeProto{name, g, type=GRAPH}}
        a = _field(1, b"then_branch") + _field(6, graph) + _varint(20 << 3) + _varint(5)
        graph = _field(1, _field(4, b"If") + _field(5, a))
    return _field(7, graph) + _field(8, _varint(2 << 3) + _varint(17))  # opset_import {version: 17}


def many_nodes(n: int) -> bytes:
    """model() and n more Relu nodes (a second graph field: protobuf merges it into the first)."""
    relu = H.make_node("Relu", ["y"], ["y"])
    return model().SerializeToString() + _field(7, _field(1, relu.SerializeToString()) * n)


def write(d, name: str, data: bytes) -> None:
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def _files(**made):
    """A case's other files: name -> bytes, or a callable(path)."""
    def make(d):
        for name, what in made.items():
            p = os.path.join(d, name)
            what(p) if callable(what) else write(d, name, what)
    return make


WB = W.tobytes()


def _non_finite(a: np.ndarray) -> list:
    """(where, the model, its files) of weights `a` held inline, in the typed field, as external data, by a Constant."""
    return [("inline", with_w(onnx.numpy_helper.from_array(a, "W")), None),
            ("typed-field", with_w(H.make_tensor("W", T.FLOAT, [2, 1, 3, 3], a.ravel().tolist())), None),
            ("external", with_w(external()), _files(**{"w.bin": a.tobytes()})),
            ("Constant", constant_w(H.make_attribute("value", onnx.numpy_helper.from_array(a, "W"))), None)]


CASES = {  # name: (the model (a proto or bytes), make(dir) for other files, words; load's keyword arguments)
    # ---------------------------------------------------------------- external data
    "external: a link to /etc/passwd": (with_w(external("link")), _files(link=lambda p: os.symlink("/etc/passwd", p)),
                                        "outside the model's directory"),
    "external: a link to a file one level up": (with_w(external("up")), _files(
        up=lambda p: (write(os.path.dirname(os.path.dirname(p)), "w-up.bin", WB),
                      os.symlink("../w-up.bin", p))), "outside the model's directory"),
    "external: ../../x": (with_w(external("../../x")), None, "named without a path"),
    "external: ..": (with_w(external("..")), None, "named without a path"),
    "external: an absolute path": (with_w(external("/etc/passwd")), None, "named without a path"),
    "external: a path into a subdirectory": (with_w(external("sub/w.bin")), _files(
        sub=lambda p: (os.mkdir(p), write(p, "w.bin", WB))), "named without a path"),
    "external: a NUL in the name": (with_w(external("w.bin\0../../etc/passwd")), _files(**{"w.bin": WB}),
                                    "named without a path"),
    "external: empty location": (with_w(external("")), None, "names external data ''"),
    "external: no location": (with_w(T(name="W", data_type=T.FLOAT, dims=[2, 1, 3, 3], data_location=T.EXTERNAL)),
                              None, "names external data ''"),
    "external: a fifo": (with_w(external("fifo")), _files(fifo=os.mkfifo), "not a regular file"),
    "external: /dev/zero": (with_w(external("zero")), _files(zero=lambda p: os.symlink("/dev/zero", p)),
                            "outside the model's directory"),
    "external: /proc/self/mem": (with_w(external("mem")), _files(mem=lambda p: os.symlink("/proc/self/mem", p)),
                                 "outside the model's directory"),
    "external: a directory": (with_w(external("dir")), _files(dir=os.mkdir), "not a regular file"),
    "external: a symlink loop": (with_w(external("loop")), _files(loop=lambda p: os.symlink(p, p)), "cannot open"),
    "external: missing": (with_w(external("gone.bin")), None, "No such file"),
    "external: offset -1": (with_w(external(offset=-1)), _files(**{"w.bin": WB}), "expected whole numbers"),
    "external: offset 1e3": (with_w(external(offset="1e3")), _files(**{"w.bin": WB}), "expected whole numbers"),
    "external: offset 1_0": (with_w(external(offset="1_0")), _files(**{"w.bin": WB}), "expected whole numbers"),
    "external: offset ' 5'": (with_w(external(offset=" 5")), _files(**{"w.bin": WB}), "expected whole numbers"),
    "external: offset 2^64": (with_w(external(offset=2**64)), _files(**{"w.bin": WB}), "expected whole numbers"),
    "external: offset of 4,000 digits": (with_w(external(offset="9" * 4000)), _files(**{"w.bin": WB}),
                                         "expected whole numbers"),
    "external: length a lie": (with_w(external(length=8)), _files(**{"w.bin": WB}), "needs 72 bytes"),
    "external: past the end": (with_w(external(offset=8)), _files(**{"w.bin": WB}), "needs 72 bytes at offset 8"),
    "external: file truncated": (with_w(external()), _files(**{"w.bin": WB[:40]}), "(40 bytes; length 72)"),
    "external: location twice": (with_w(external(["w.bin", "/etc/passwd"])), _files(**{"w.bin": WB}),
                                 "at most once"),
    "external: an unknown key": (with_w(external(basepath="/etc")), _files(**{"w.bin": WB}), "external data keys"),
    "external and raw_data both": (with_w((lambda t: (t.__setattr__("raw_data", WB), t)[1])(external())),
                                   _files(**{"w.bin": WB}), "more than one place"),
    "external in a Constant node": (constant_w(H.make_attribute("value", external())), _files(**{"w.bin": WB}),
                                    "names external data"),
    # ---------------------------------------------------------------- values
    **{f"values: {where} weights holding {bad}": (proto, files, "not finite")
       for bad in ("nan", "inf", "-inf")
       for where, proto, files in _non_finite(np.where(np.arange(18).reshape(2, 1, 3, 3) == 7, np.float32(bad), W))},
    # ---------------------------------------------------------------- sizes
    "dims overflowing int64": (with_w(T(name="W", data_type=T.FLOAT, dims=[2**62, 2**62, 4], raw_data=WB)), None,
                               "over the limit"),
    "huge dims, small data": (with_w(T(name="W", data_type=T.FLOAT, dims=[10**6, 10**6, 3, 3], raw_data=WB)), None,
                              "over the limit"),
    "negative dims": (with_w(T(name="W", data_type=T.FLOAT, dims=[-2, 1, -3, 3], raw_data=WB)), None,
                      "invalid shape [-2, 1, -3, 3]"),
    "9 dims": (with_w(T(name="W", data_type=T.FLOAT, dims=[1] * 9, raw_data=WB[:4])), None, "invalid shape"),
    "10^6 dims": (with_w(T(name="W", data_type=T.FLOAT, dims=[1] * 10**6, raw_data=WB[:4])), None, "invalid shape"),
    "raw data short": (with_w(T(name="W", data_type=T.FLOAT, dims=[2, 1, 3, 3], raw_data=WB[:7])), None,
                       "(72 bytes) but holds 7 bytes"),
    "DOUBLE declared, FLOAT bytes": (with_w(T(name="W", data_type=T.DOUBLE, dims=[2, 1, 3, 3], raw_data=WB)), None,
                                     "(144 bytes) but holds 72 bytes"),
    "INT8 weights": (with_w(H.make_tensor("W", T.INT8, [2, 1, 3, 3], [1] * 18)), None, "data type INT8"),
    "data type 999": (with_w(T(name="W", data_type=999, dims=[2, 1, 3, 3], raw_data=WB)), None, "data type 999"),
    "float_data count a lie": (with_w(T(name="W", data_type=T.FLOAT, dims=[2, 1, 3, 3], float_data=[1.0] * 5)), None,
                               "(18 values) but holds 5"),
    "total over the limit": (model(), None, "its 2 initializers declare 80 bytes in all, over the limit of 50",
                             dict(max_tensor_bytes=50)),
    "three 200 MB external tensors, 600 MB in all": (None, _files(**{"big.bin": lambda p: sparse_file(
        p, b"", 3 * 200 * 2**20)}), "initializers declare 629,145,576 bytes in all, over the limit of 536,870,912"),
    # (the model: made by make_case)
    "a Constant of 2^40 elements": (constant_w(H.make_attribute("value", T(name="v", data_type=T.FLOAT, dims=[2**40],
                                                                           raw_data=b"\0" * 8))), None,
                                    "over the limit"),
    "value_ints over the limit": (constant_w(H.make_attribute("value_ints", list(range(200)))), None,
                                  "attribute 'value_ints' (1,600 bytes) takes the model's tensors over the limit of "
                                  "1,000", dict(max_tensor_bytes=1000)),
    # ---------------------------------------------------------------- attribute types
    "Constant value a graph": (constant_w(H.make_attribute("value", _sub())), None,
                               "node 'k' (Constant): attribute 'value': expected TENSOR, got GRAPH"),
    "Constant value an int": (constant_w(H.make_attribute("value", 7)), None,
                              "node 'k' (Constant): attribute 'value': expected TENSOR, got INT"),
    "Constant value tensors": (constant_w(H.make_attribute("value", [T(name="t", data_type=1, dims=[1],
                                                                        float_data=[1.0])], attr_type=9)), None,
                               "expected TENSOR, got TENSORS"),
    "Constant value_ints one int": (constant_w(onnx.AttributeProto(name="value_ints", type=2, i=3)), None,
                                    "attribute 'value_ints': expected INTS, got INT"),
    "Constant value_float": (constant_w(H.make_attribute("value_float", 1.0)), None,
                             "attribute 'value_float' is not supported"),
    "Constant sparse_value": (constant_w(onnx.AttributeProto(name="sparse_value", type=11)), None,
                              "attribute 'sparse_value' is not supported"),
    "kernel_shape a graph": (attr(set_attr(0, H.make_attribute("kernel_shape", _sub()))), None,
                             "node 'c' (Conv): attribute 'kernel_shape': expected INTS, got GRAPH"),
    "group a list": (attr(set_attr(0, H.make_attribute("group", [1, 1]))), None,
                     "attribute 'group': expected INT, got INTS"),
    "pads floats": (attr(set_attr(0, H.make_attribute("pads", [0.5, 0.5, 0.5, 0.5]))), None,
                    "attribute 'pads': expected INTS, got FLOATS"),
    "pads of 10^6": (attr(set_attr(0, H.make_attribute("pads", [0] * 10**6))), None, "1,000,000 values"),
    "strides a tensor": (attr(set_attr(0, H.make_attribute("strides", T(name="s", data_type=7, dims=[2],
                                                                        int64_data=[1, 1])))), None,
                         "expected INTS, got TENSOR"),
    "alpha an int": (attr(set_attr(1, H.make_attribute("alpha", 1))), None,
                     "node 'r' (LeakyRelu): attribute 'alpha': expected FLOAT, got INT"),
    "alpha ints": (attr(set_attr(1, H.make_attribute("alpha", [1, 2]))), None, "expected FLOAT, got INTS"),
    "alpha NaN": (attr(set_attr(1, H.make_attribute("alpha", float("nan")))), None, "expected a finite number"),
    "alpha inf": (attr(set_attr(1, H.make_attribute("alpha", float("inf")))), None, "expected a finite number"),
    "alpha of no type": (attr(set_attr(1, onnx.AttributeProto(name="alpha", f=0.2))), None,
                         "expected FLOAT, got UNDEFINED"),
    "auto_pad not UTF-8": (attr(set_attr(0, onnx.AttributeProto(name="auto_pad", type=3, s=b"\xff\xfe"))), None,
                           "not UTF-8"),
    "auto_pad strings": (attr(set_attr(0, H.make_attribute("auto_pad", [b"VALID"], attr_type=8))), None,
                         "expected STRING, got STRINGS"),
    "an attribute twice": (attr(lambda nodes: nodes[1].attribute.extend([H.make_attribute("alpha", 0.3)])), None,
                           "attribute 'alpha' is given twice"),
    "an unknown attribute, a graph": (attr(set_attr(1, H.make_attribute("body", _sub()))), None,
                                      "attribute 'body' is not supported"),
    # ---------------------------------------------------------------- graphs
    "duplicate initializers": (model(inits=[onnx.numpy_helper.from_array(W, "W"),
                                            onnx.numpy_helper.from_array(W[:1], "W"),
                                            onnx.numpy_helper.from_array(np.ones(2, np.float32), "B")]), None,
                               "initializer 'W' appears twice"),
    "a cycle": (model([H.make_node("Conv", ["x2", "W"], ["h"], name="c"), H.make_node("Relu", ["h"], ["x2"], name="r"),
                       H.make_node("Relu", ["h"], ["y"], name="o")]), None,
                "input 'x2' is not computed before this node"),
    "a node's own output as its input": (model([H.make_node("Relu", ["y"], ["y"], name="self")]), None,
                                         "input 'y' is not computed before"),
    "an undefined input": (model([H.make_node("Conv", ["nowhere", "W"], ["y"], name="c")]), None,
                           "input 'nowhere' is not computed before this node"),
    "an output computed twice": (model([H.make_node("Conv", ["x", "W"], ["h"], name="c"),
                                        H.make_node("Relu", ["h"], ["h"], name="again"),
                                        H.make_node("Relu", ["h"], ["y"], name="o")]), None,
                                 "node 'again' (Relu): its output 'h' is computed twice"),
    "an output naming an initializer": (model([H.make_node("Relu", ["x"], ["W"], name="w"),
                                               H.make_node("Relu", ["W"], ["y"], name="o")]), None,
                                        "its output 'W' is computed twice"),
    "a node without outputs": (model([H.make_node("Relu", ["x"], [], name="none"),
                                      H.make_node("Relu", ["x"], ["y"], name="o")]), None, "it has no output"),
    "10^6 nodes": (many_nodes(10**6), None, "1,000,002 nodes, more than the 100,000"),
    "200,000 graph inputs": (model().SerializeToString() + _field(7, _field(11, H.make_tensor_value_info(
        "i", T.FLOAT, [1]).SerializeToString()) * 200_000), None, "200,001 graph inputs, more than the 100,000"),
    "subgraphs nested 10^4 deep": (nested(10_000), None, "not an ONNX model"),
    "subgraphs nested 20 deep": (nested(20), None, "expected one data input"),
    "a custom domain": ((lambda m: (m.opset_import.add(domain="evil.ops", version=1), m)[1])(model()), None,
                        "operator set 'evil.ops' is not supported"),
    "an int input": (model(elem=T.INT64), None, "has element type INT64"),
    "the output computed by no node": (model([H.make_node("Relu", ["x"], ["h"], name="r")]), None,
                                       "the graph output 'y' is not computed by any node"),
    # ---------------------------------------------------------------- the file itself
    "empty file": (b"", None, "no graph nodes"),
    "noise": (bytes(range(256)) * 4, None, "not an ONNX model"),
    "a directory": (None, lambda d: os.mkdir(os.path.join(d, "m.onnx")), "got a directory or device"),
    "a fifo": (None, lambda d: os.mkfifo(os.path.join(d, "m.onnx")), "got a directory or device"),
    "/dev/zero": (None, lambda d: os.symlink("/dev/zero", os.path.join(d, "m.onnx")), "got a directory or device"),
    "sparse 600 MB": (None, lambda d: sparse_file(os.path.join(d, "m.onnx"), b"\x08\x07", 600 * 2**20),
                      "over the limit of 536,870,912"),
}


def _ext_big(i: int) -> T:
    n = 200 * 2**20 // 4
    t = T(name=f"W{i}", data_type=T.FLOAT, dims=[n // 9, 1, 3, 3], data_location=T.EXTERNAL)
    for k, v in (("location", "big.bin"), ("offset", str(i * (n // 9) * 36)), ("length", str((n // 9) * 36))):
        t.external_data.add(key=k, value=v)
    return t


def make_case(tmp_path, case) -> str:
    d = tmp_path / case.replace(" ", "_").replace("/", "_").replace("'", "")
    d.mkdir()
    proto, files, *_ = CASES[case]
    if case == "three 200 MB external tensors, 600 MB in all":
        proto = model([H.make_node("Conv", ["x", f"W{i}"], [f"h{i}"], name=f"c{i}") for i in range(3)]
                      + [H.make_node("Add", ["h0", "h1"], ["s"], name="a"),
                         H.make_node("Add", ["s", "h2"], ["y"], name="b")], [_ext_big(i) for i in range(3)])
    if files is not None:
        files(str(d))
    if proto is not None:
        write(str(d), "m.onnx", proto if isinstance(proto, bytes) else proto.SerializeToString())
    return str(d / "m.onnx")


def _has_words(case, msg: str) -> bool:
    words = CASES[case][2]
    return any(w in msg for w in (words if isinstance(words, tuple) else (words,)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_hostile_model_is_one_onnx_error_line_naming_the_file(tmp_path, case):
    path = make_case(tmp_path, case)
    kwargs = CASES[case][3] if len(CASES[case]) > 3 else {}
    with pytest.raises(OnnxError) as e:
        load(path, **kwargs)
    msg = str(e.value)
    assert msg.startswith(path) and "\n" not in msg and _has_words(case, msg), msg


def test_every_hostile_model_is_one_line_under_1_gib(tmp_path):
    cases = [c for c in sorted(CASES) if len(CASES[c]) == 3]
    paths = [make_case(tmp_path, c) for c in cases]
    results = run_many_capped([["onnx-load", p] for p in paths], tmp_path, readers=True)
    bad = [(c, r) for c, r in zip(cases, results)
           if r["escaped"] or r["outcome"] != "error" or "\n" in r["message"] or not _has_words(c, r["message"])]
    assert not bad, f"{len(bad)} of {len(cases)} mishandled: {bad[:3]}"


def test_a_link_to_a_file_of_the_models_own_directory_is_read(tmp_path):
    write(str(tmp_path), "w.bin", WB)
    os.symlink("w.bin", tmp_path / "alias.bin")
    write(str(tmp_path), "m.onnx", with_w(external("alias.bin")).SerializeToString())
    m = load(str(tmp_path / "m.onnx"))
    np.testing.assert_array_equal(m[0].weight.data, W)


def test_inline_tensors_are_not_copied_twice(tmp_path, monkeypatch):
    """np.frombuffer on the proto's bytes, then no copy on a little-endian machine: the array the layer
    gets its weight from is a view of the bytes protobuf handed out."""
    import convprop.onnx.tensors as tensors

    seen = []
    real = tensors.tensor
    monkeypatch.setattr(tensors, "tensor", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    import convprop.onnx.reader as reader
    monkeypatch.setattr(reader, "tensor", tensors.tensor)
    write(str(tmp_path), "m.onnx", model().SerializeToString())
    load(str(tmp_path / "m.onnx"))
    assert seen and all(not a.flags.owndata and isinstance(a.base, (bytes, np.ndarray)) for a in seen)


def test_a_name_swapped_for_a_fifo_after_the_look_is_refused_not_waited_on(tmp_path, monkeypatch):
    import convprop._files as files

    fifo = str(tmp_path / "m.onnx")
    os.mkfifo(fifo)
    monkeypatch.setattr(files, "checked_size", lambda *a: 0)
    e = raised_within(lambda: load(fifo))
    assert isinstance(e, OnnxError) and "got a special file" in str(e), e


def test_shape_inference_gets_no_second_copy_of_the_weights(tmp_path, monkeypatch):
    """onnx.shape_inference copies the model it is given (into C++ and back): given the weights' names,
    types and dims only, and small integer tensors (a Reshape's shape), it infers the same shapes."""
    import onnx.shape_inference

    given = []
    real = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda m, **k: given.append(m) or real(m, **k))
    big = np.ones((64, 1, 3, 3), np.float32)
    shape = onnx.numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    m = model([H.make_node("Conv", ["x", "W"], ["h"], name="c"),
               H.make_node("Reshape", ["h", "shape"], ["f"], name="s"), H.make_node("Relu", ["f"], ["y"], name="r")],
              [onnx.numpy_helper.from_array(big, "W"), shape])
    write(str(tmp_path), "m.onnx", m.SerializeToString())
    loaded = load(str(tmp_path / "m.onnx"))
    inits = {t.name: t for t in given[0].graph.initializer}
    assert len(inits["W"].raw_data) == 0 and list(inits["W"].dims) == [64, 1, 3, 3]
    assert inits["shape"].raw_data == shape.raw_data
    assert loaded(np.zeros((2, 1, 5, 5), np.float32)).shape == (2, 64 * 9)
