"""ONNX export and import: convprop → onnxruntime for every layer kind and every model; ONNX graphs
(built with onnx.helper, from ONNX's own operator test cases, and from torch.onnx.export) → convprop."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import convprop.random  # noqa: E402
from convprop import models, nn  # noqa: E402
from convprop import onnx as conv_onnx  # noqa: E402
from convprop.nn import Graph  # noqa: E402
from convprop.onnx import OnnxError  # noqa: E402

TOL = 1e-5


def run_ort(path: str, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def assert_close(ours: np.ndarray, ref: np.ndarray, what: str, tol: float = TOL) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max()) / scale
    assert err <= tol, f"{what}: error {err:.3g} > {tol:g}"


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm's running statistics and affine parameters away from their 1/0 defaults."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean[...] = rng.standard_normal(c)
            m.running_var[...] = rng.uniform(0.5, 2.0, c)
            if m.weight is not None:
                m.weight.data[...] = rng.uniform(0.5, 1.5, c)
                m.bias.data[...] = rng.standard_normal(c)
    return model.eval()


S = nn.Sequential
LAYERS = {  # name: (model, input shape)
    "conv": (lambda: S(nn.Conv2d(3, 4, 3)), (2, 3, 9, 9)),
    "conv-stride-pad-dilation": (lambda: S(nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=2)),
                                 (2, 3, 11, 10)),
    "conv-groups-nobias": (lambda: S(nn.Conv2d(4, 6, 3, groups=2, bias=False, padding=1)), (2, 4, 7, 7)),
    "conv-depthwise": (lambda: S(nn.Conv2d(4, 4, 3, groups=4)), (2, 4, 7, 7)),
    "convtranspose": (lambda: S(nn.ConvTranspose2d(3, 4, 3)), (2, 3, 5, 5)),
    "convtranspose-stride-pad-outpad": (lambda: S(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1,
                                                                     groups=2)), (2, 4, 5, 6)),
    "convtranspose-dilation": (lambda: S(nn.ConvTranspose2d(2, 3, 3, stride=3, dilation=2, bias=False)),
                               (1, 2, 4, 4)),
    "maxpool": (lambda: S(nn.MaxPool2d(2)), (2, 3, 8, 8)),
    "maxpool-stride-pad-dilation": (lambda: S(nn.MaxPool2d(3, stride=2, padding=1, dilation=2)), (2, 3, 11, 10)),
    "maxpool-ceil": (lambda: S(nn.MaxPool2d(3, stride=2, ceil_mode=True)), (2, 3, 10, 8)),
    "maxpool-ceil-pad": (lambda: S(nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)), (2, 3, 10, 11)),
    "avgpool": (lambda: S(nn.AvgPool2d(2)), (2, 3, 8, 8)),
    "avgpool-pad-include": (lambda: S(nn.AvgPool2d(3, stride=2, padding=1)), (2, 3, 9, 8)),
    "avgpool-pad-exclude": (lambda: S(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)), (2, 3, 9, 8)),
    "avgpool-ceil": (lambda: S(nn.AvgPool2d(3, stride=2, ceil_mode=True)), (2, 3, 10, 8)),
    "avgpool-ceil-pad-include": (lambda: S(nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)), (2, 3, 10, 11)),
    "avgpool-ceil-pad-exclude": (lambda: S(nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                                        count_include_pad=False)), (2, 3, 10, 11)),
    "adaptive-avgpool-1": (lambda: S(nn.AdaptiveAvgPool2d(1)), (2, 3, 7, 5)),
    "adaptive-avgpool-2x3": (lambda: S(nn.AdaptiveAvgPool2d((2, 3))), (2, 3, 8, 9)),
    "linear": (lambda: S(nn.Linear(7, 5)), (3, 7)),
    "linear-nobias": (lambda: S(nn.Linear(7, 5, bias=False)), (3, 7)),
    "linear-3d": (lambda: S(nn.Linear(7, 5)), (3, 4, 7)),
    "flatten": (lambda: S(nn.Flatten(), nn.Linear(48, 3)), (2, 3, 4, 4)),
    "flatten-2-3": (lambda: S(nn.Flatten(2, 3)), (2, 3, 4, 4)),
    "relu": (lambda: S(nn.ReLU()), (2, 3, 4, 4)),
    "leaky-relu": (lambda: S(nn.LeakyReLU(0.2)), (2, 3, 4, 4)),
    "sigmoid": (lambda: S(nn.Sigmoid()), (2, 3, 4, 4)),
    "tanh": (lambda: S(nn.Tanh()), (2, 3, 4, 4)),
    "dropout": (lambda: S(nn.Linear(6, 6), nn.Dropout(0.3)), (4, 6)),
    "dropout-only": (lambda: S(nn.Dropout(0.3)), (4, 6)),
    "batchnorm2d": (lambda: S(nn.BatchNorm2d(3)), (2, 3, 5, 5)),
    "batchnorm2d-no-affine": (lambda: S(nn.BatchNorm2d(3, affine=False, eps=1e-3)), (2, 3, 5, 5)),
    "batchnorm1d": (lambda: S(nn.Linear(5, 4), nn.BatchNorm1d(4)), (3, 5)),
}


if hasattr(nn, "Conv1d"):  # the 1-D layers, adaptive max pooling and softmax layers
    LAYERS.update({
        "conv1d": (lambda: S(nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2)), (2, 3, 17)),
        "conv1d-groups-same": (lambda: S(nn.Conv1d(4, 4, 3, groups=2, padding="same", bias=False)), (2, 4, 9)),
        "maxpool1d": (lambda: S(nn.MaxPool1d(3, stride=2, padding=1, ceil_mode=True)), (2, 3, 10)),
        "avgpool1d": (lambda: S(nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False)), (2, 3, 10)),
        "adaptive-maxpool-1": (lambda: S(nn.AdaptiveMaxPool2d(1)), (2, 3, 7, 5)),
        "adaptive-maxpool-2x4": (lambda: S(nn.AdaptiveMaxPool2d((2, 4))), (2, 3, 8, 8)),
        "softmax": (lambda: S(nn.Linear(5, 4), nn.Softmax(dim=1)), (3, 5)),
        "log-softmax-channels": (lambda: S(nn.LogSoftmax(dim=1)), (2, 3, 4, 4)),
    })


def _input(shape, seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_export_every_layer_kind_matches_onnxruntime(name, tmp_path):
    make, shape = LAYERS[name]
    convprop.random.manual_seed(0)
    model = randomized(make())
    path = conv_onnx.export(model, str(tmp_path / "m.onnx"), shape)
    for batch in (shape[0], 5):  # the batch dimension is dynamic
        x = _input((batch, *shape[1:]))
        assert_close(run_ort(path, x), model(x), name)
    back = conv_onnx.load(path)  # and back: the same layers, the same numbers
    x = _input(shape, seed=2)
    assert_close(back.eval()(x), model(x), f"{name} round trip", 1e-6)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_export_every_model_matches_onnxruntime(name, tmp_path):
    convprop.random.manual_seed(0)
    model = randomized(models.build(name))
    path = conv_onnx.export(model, str(tmp_path / f"{name}.onnx"), (1, 1, 28, 28), opset=13)
    assert onnx.load(path).opset_import[0].version == 13
    x = _input((6, 1, 28, 28))
    assert_close(run_ort(path, x), model(x), name)
    weights = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(t.name for t in onnx.load(path).graph.initializer) == sorted(weights)  # torch's names
    back = conv_onnx.load(path)
    if all(not m._modules for m in model.children()):  # a chain of layers comes back as one, keys and all
        assert type(back) is type(model) and list(back.state_dict()) == list(model.state_dict())
    else:  # forks and joins come back as a Graph: the same weights in the same order
        assert isinstance(back, Graph)
    got = [v for k, v in back.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(got) == len(weights)
    for k, b in zip(weights, got):
        np.testing.assert_array_equal(model.state_dict()[k], b, err_msg=k)
    assert_close(back.eval()(x), model(x), f"{name} round trip", 1e-6)


def test_export_float64_and_refusals(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).to(np.float64)  # onnxruntime has no float64 Conv
    path = conv_onnx.export(model, str(tmp_path / "f64.onnx"), (1, 4))
    x = _input((2, 4), dtype=np.float64)
    assert_close(run_ort(path, x), model(x), "float64", 1e-12)
    assert conv_onnx.load(path).dtype == np.float64

    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(OnnxError, match=r"^1 \(Custom\): no ONNX export for this layer \(exported: .*MaxUnpool1d"):
        conv_onnx.export(nn.Sequential(nn.ReLU(), Custom()), str(tmp_path / "c.onnx"), (1, 3))
    with pytest.raises(OnnxError, match=r"^model \(Sequential\): it returns the indices of a MaxPool2d; ONNX's"):
        conv_onnx.export(nn.Sequential(nn.MaxPool2d(2, return_indices=True)), str(tmp_path / "c.onnx"), (1, 1, 4, 4))
    with pytest.raises(OnnxError, match=r"^0 \(Conv2d\): export needs batched \(N, C, H, W\) inputs"):
        conv_onnx.export(nn.Sequential(nn.Conv2d(2, 3, 3)), str(tmp_path / "c.onnx"), (2, 6, 6))  # unbatched
    with pytest.raises(ValueError, match=r"^opset: expected an int from 13"):
        conv_onnx.export(model, str(tmp_path / "c.onnx"), (1, 4), opset=7)
    with pytest.raises(ValueError, match=r"^input_shape: expected"):
        conv_onnx.export(model, str(tmp_path / "c.onnx"), (0, 4))


def test_graph_residual_forward_backward_export(tmp_path):
    """A Graph with a fork and a join: backward adds the branches' gradients (checked against torch),
    and the export runs in onnxruntime."""
    torch = pytest.importorskip("torch")
    convprop.random.manual_seed(0)
    conv1, conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
    g = Graph([("a", conv1, ["x"]), ("b", nn.ReLU(), ["a"]), ("c", conv2, ["b"]), ("d", nn.Add(), ["c", "x"]),
               ("y", nn.Tanh(), ["d"])], "x", "y")
    x = _input((2, 2, 5, 5)).astype(np.float64)
    g.to(np.float64)
    out = g(x)
    dout = np.random.default_rng(3).standard_normal(out.shape)
    dx = g.backward(dout)
    tx = torch.tensor(x, requires_grad=True)
    w1, b1, w2, b2 = (torch.tensor(a, requires_grad=True) for a in (conv1.weight.data, conv1.bias.data,
                                                                     conv2.weight.data, conv2.bias.data))
    tc = torch.nn.functional.conv2d
    ref = torch.tanh(tc(torch.relu(tc(tx, w1, b1, padding=1)), w2, b2, padding=1) + tx)
    ref.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(conv1.weight.grad, w1.grad.numpy(), rtol=1e-10, atol=1e-12)
    g.to(np.float32)
    x = x.astype(np.float32)
    path = conv_onnx.export(g, str(tmp_path / "res.onnx"), (1, 2, 5, 5))
    assert_close(run_ort(path, x), g(x), "residual graph")
    back = conv_onnx.load(path)
    assert isinstance(back, Graph)
    np.testing.assert_array_equal(back(x), g(x))


# --------------------------------------------------------------------------- import
def torch_models():
    torch = pytest.importorskip("torch")
    t = torch.nn
    torch.manual_seed(0)
    lenet = t.Sequential(t.Conv2d(1, 6, 5, padding=2), t.ReLU(), t.MaxPool2d(2), t.Conv2d(6, 16, 5), t.Tanh(),
                         t.AvgPool2d(2, ceil_mode=True), t.Flatten(), t.Linear(400, 120), t.LeakyReLU(0.1),
                         t.Dropout(0.2), t.Linear(120, 10))
    bn = t.Sequential(t.Conv2d(1, 4, 3, stride=2, bias=False), t.BatchNorm2d(4), t.ReLU(), t.ConvTranspose2d(
        4, 3, 3, stride=2, padding=1, output_padding=1), t.Sigmoid(), t.AdaptiveAvgPool2d(1), t.Flatten(),
        t.Linear(3, 5), t.BatchNorm1d(5))
    for m in bn.modules():
        if isinstance(m, (t.BatchNorm1d, t.BatchNorm2d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return torch, {"lenet": lenet.eval(), "batchnorm-convtranspose": bn.eval()}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_load_graphs_torch_onnx_export_writes(dynamo, tmp_path):
    torch, nets = torch_models()
    if dynamo:
        pytest.importorskip("onnxscript")
    x = torch.tensor(_input((3, 1, 28, 28)))
    for name, net in nets.items():
        path = str(tmp_path / f"{name}.onnx")
        if dynamo:
            torch.onnx.export(net, (x,), path, dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(net, (x,), path, dynamo=False, dynamic_axes={"input": {0: "batch"}},
                              input_names=["input"])
        model = conv_onnx.load(path).eval()
        with torch.no_grad():
            assert_close(model(x.numpy()), net(x).numpy(), f"{name} from torch.onnx.export")
        # fine-tune with convprop's backward, then export again
        model.train()
        out = model(x.numpy())
        model.backward(np.ones_like(out))
        assert all(p.grad is not None for p in model.parameters())
        again = conv_onnx.export(model.eval(), str(tmp_path / f"{name}-again.onnx"), (1, 1, 28, 28))
        assert_close(run_ort(again, x.numpy()), model(x.numpy()), f"{name} re-exported")


def make_model(nodes, initializers, in_shape, out_rank=None, opset=18):
    h, rank = onnx.helper, out_rank or len(in_shape)
    graph = h.make_graph(nodes, "t", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", *in_shape[1:]])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None] * rank)],
                         [onnx.numpy_helper.from_array(a, n) for n, a in initializers.items()])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _w(*shape, seed=4):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


N = onnx.helper.make_node
HELPER_CASES = {  # one model per supported operator and attribute: (nodes, initializers, input shape)
    "Conv": ([N("Conv", ["x", "W", "B"], ["y"], strides=[2, 1], pads=[1, 2, 1, 2], dilations=[1, 2], group=2)],
             {"W": _w(4, 1, 3, 3), "B": _w(4)}, (2, 2, 9, 9)),
    "Conv-auto-pad-same": ([N("Conv", ["x", "W"], ["y"], auto_pad="SAME_UPPER", kernel_shape=[3, 3])],
                           {"W": _w(3, 2, 3, 3)}, (2, 2, 6, 6)),
    "ConvTranspose": ([N("ConvTranspose", ["x", "W", "B"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1],
                         output_padding=[1, 0])], {"W": _w(2, 3, 3, 3), "B": _w(3)}, (2, 2, 4, 5)),
    "MaxPool": ([N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)],
                {}, (2, 3, 10, 9)),
    "MaxPool-dilations": ([N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])], {}, (2, 3, 7, 7)),
    "AveragePool": ([N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                       count_include_pad=1)], {}, (2, 3, 9, 8)),
    "AveragePool-exclude-ceil": ([N("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1,
                                    pads=[1, 1, 1, 1])], {}, (2, 3, 9, 8)),
    "GlobalAveragePool": ([N("GlobalAveragePool", ["x"], ["y"])], {}, (2, 3, 5, 4)),
    "ReduceMean": ([N("ReduceMean", ["x", "axes"], ["y"], keepdims=1)], {"axes": np.array([2, 3], np.int64)},
                   (2, 3, 5, 4)),
    "Gemm": ([N("Gemm", ["x", "W", "B"], ["y"], alpha=0.5, beta=2.0)], {"W": _w(6, 4), "B": _w(4)}, (3, 6)),
    "Gemm-transB": ([N("Gemm", ["x", "W"], ["y"], transB=1)], {"W": _w(4, 6)}, (3, 6)),
    "MatMul-Add": ([N("MatMul", ["x", "W"], ["h"]), N("Add", ["h", "B"], ["y"])], {"W": _w(6, 4), "B": _w(4)},
                   (3, 5, 6)),
    "Flatten": ([N("Flatten", ["x"], ["y"], axis=1)], {}, (2, 3, 4, 5)),
    "Reshape": ([N("Reshape", ["x", "s"], ["y"])], {"s": np.array([0, -1], np.int64)}, (2, 3, 4, 5)),
    "Relu": ([N("Relu", ["x"], ["y"])], {}, (2, 3)),
    "LeakyRelu": ([N("LeakyRelu", ["x"], ["y"], alpha=0.3)], {}, (2, 3)),
    "Sigmoid": ([N("Sigmoid", ["x"], ["y"])], {}, (2, 3)),
    "Tanh": ([N("Tanh", ["x"], ["y"])], {}, (2, 3)),
    "Dropout-Identity": ([N("Dropout", ["x"], ["h"]), N("Identity", ["h"], ["y"])], {}, (2, 3)),
    "BatchNormalization": ([N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
                           {"s": _w(3), "b": _w(3), "m": _w(3), "v": np.abs(_w(3)) + 0.5}, (2, 3, 4, 4)),
    "Add-residual": ([N("Relu", ["x"], ["h"]), N("Conv", ["h", "W"], ["c"], pads=[1, 1, 1, 1]),
                      N("Add", ["c", "x"], ["y"])], {"W": _w(2, 2, 3, 3)}, (2, 2, 5, 5)),
    **({"Conv-1d": ([N("Conv", ["x", "W"], ["y"], pads=[1, 1], strides=[2])], {"W": _w(4, 3, 3)}, (2, 3, 9)),
        "MaxPool-1d": ([N("MaxPool", ["x"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 1])], {}, (2, 3, 9)),
        "GlobalMaxPool": ([N("GlobalMaxPool", ["x"], ["y"])], {}, (2, 3, 5, 4)),
        "Softmax": ([N("Softmax", ["x"], ["y"], axis=1)], {}, (2, 5)),
        "LogSoftmax": ([N("LogSoftmax", ["x"], ["y"], axis=1)], {}, (2, 3, 4))}
       if hasattr(nn, "Conv1d") else {}),
    "Constant": ([N("Constant", [], ["s"], value=onnx.numpy_helper.from_array(np.array([0, -1], np.int64))),
                  N("Reshape", ["x", "s"], ["y"])], {}, (2, 3, 4)),
    "MaxPool-Indices-MaxUnpool": ([N("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
                                   N("Tanh", ["p"], ["t"]),
                                   N("MaxUnpool", ["t", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                                  {}, (2, 3, 6, 8)),
    "MaxUnpool-output_shape": ([N("MaxPool", ["x"], ["p", "i"], kernel_shape=[3, 2], strides=[3, 2], pads=[1, 0, 1, 0]),
                                N("MaxUnpool", ["p", "i", "s"], ["y"], kernel_shape=[3, 2], strides=[3, 2],
                                  pads=[1, 0, 1, 0])], {"s": np.array([2, 3, 7, 5], np.int64)}, (2, 3, 7, 5)),
    "MaxPool-1d-Indices-MaxUnpool": ([N("MaxPool", ["x"], ["p", "i"], kernel_shape=[3], strides=[3], pads=[1, 1]),
                                      N("MaxUnpool", ["p", "i", "s"], ["y"], kernel_shape=[3], strides=[3],
                                        pads=[1, 1])], {"s": np.array([2, 3, 8], np.int64)}, (2, 3, 8)),
}


@pytest.mark.parametrize("name", sorted(HELPER_CASES))
def test_load_every_supported_operator_matches_onnxruntime(name, tmp_path):
    nodes, inits, shape = HELPER_CASES[name]
    proto = make_model(nodes, inits, shape, 2 if nodes[-1].op_type in ("Gemm", "Flatten", "Reshape") else None)
    onnx.checker.check_model(proto, full_check=True)
    path = str(tmp_path / "m.onnx")
    onnx.save(proto, path)
    model = conv_onnx.load(path).eval()
    x = _input(shape)
    assert_close(model(x), run_ort(path, x), name)


def test_load_onnx_operator_test_cases(tmp_path):
    """ONNX's own test cases of every supported operator (onnx.backend.test): each loads and matches
    the expected output, or is refused in one line naming the node and operator."""
    import warnings

    from onnx.backend.test.case import node as cases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        all_cases = cases.collect_testcases()
    ops = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "Flatten", "Relu",
           "LeakyRelu", "Sigmoid", "Tanh", "BatchNormalization", "Dropout", "Reshape", "ReduceMean",
           *(("Softmax", "LogSoftmax", "GlobalMaxPool") if hasattr(nn, "Softmax") else ())}
    loaded, refused = [], []
    for case in all_cases:
        if case.kind != "node" or case.model.graph.node[0].op_type not in ops:
            continue
        proto, (inputs, outputs) = onnx.ModelProto(), case.data_sets[0]
        proto.CopyFrom(case.model)
        g = proto.graph
        for vi, value in list(zip(g.input, inputs))[1:]:  # the weights: initializers, as in a real model
            g.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), vi.name))
        path = str(tmp_path / f"{case.name}.onnx")
        onnx.save(proto, path)
        try:
            model = conv_onnx.load(path).eval()
        except OnnxError as e:
            msg = str(e)
            assert "\n" not in msg and msg.startswith(path), msg  # one line, about this file
            refused.append(case.name)
            continue
        x = np.asarray(inputs[0])
        if x.dtype != np.float32:
            continue
        try:
            got = model(x)
        except ValueError:  # e.g. ONNX's 1-D or 3-D pooling, which convprop's 2-D layers refuse
            refused.append(case.name)
            continue
        # ONNX's backend test runner's tolerances (some expected outputs are rounded to 4 digits)
        np.testing.assert_allclose(got, np.asarray(outputs[0]), rtol=1e-3, atol=1e-7, err_msg=case.name)
        loaded.append(case.name)
    must = {"test_" + n for n in """
        basic_conv_with_padding conv_with_strides_and_asymmetric_padding conv_with_strides_padding
        convtranspose convtranspose_pads convtranspose_dilations convtranspose_group_2
        maxpool_2d_precomputed_pads maxpool_2d_ceil maxpool_2d_dilations maxpool_2d_strides
        averagepool_2d_precomputed_pads averagepool_2d_precomputed_pads_count_include_pad
        averagepool_2d_ceil averagepool_2d_ceil_last_window_starts_on_pad globalaveragepool
        gemm_default_vector_bias gemm_transposeB gemm_alpha flatten_axis1 relu leakyrelu sigmoid tanh batchnorm_example
        batchnorm_epsilon dropout_default
    """.split()}
    assert must <= set(loaded), sorted(must - set(loaded))
    assert {"test_maxpool_2d_same_lower", "test_batchnorm_example_training_mode",
            "test_maxpool_2d_pads", "test_gemm_transposeA"} <= set(refused)  # unlike torch: padding > kernel/2


# --------------------------------------------------------------------------- refusals, hostile files
def _saved(tmp_path, proto, name="m.onnx") -> str:
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path


def test_unsupported_operator_and_attribute_name_node_operator_attribute(tmp_path):
    p = _saved(tmp_path, make_model([N("Transpose", ["x"], ["y"], name="swap", perm=[1, 0])], {}, (2, 3)))
    with pytest.raises(OnnxError, match=r"node 'swap' \(Transpose\): operator 'Transpose' is not supported \(.*MaxUnp"):
        conv_onnx.load(p)
    p = _saved(tmp_path, make_model([N("Conv", ["x", "W"], ["y"], name="c1", pads=[0, 0, 1, 1])],
                                    {"W": _w(2, 1, 3, 3)}, (1, 1, 5, 5)))
    with pytest.raises(OnnxError, match=r"node 'c1' \(Conv\): attribute 'pads' = \[0, 0, 1, 1\] is not supported"):
        conv_onnx.load(p)
    p = _saved(tmp_path, make_model([N("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], storage_order=1)],
                                    {}, (1, 1, 4, 4)))
    with pytest.raises(OnnxError, match=r"node 'mp' \(MaxPool\): attribute 'storage_order' = 1"):
        conv_onnx.load(p)
    p = _saved(tmp_path, make_model([N("Relu", ["x"], ["y"], name="r", bogus=3)], {}, (1, 3)))
    with pytest.raises(OnnxError, match=r"node 'r' \(Relu\): attribute 'bogus' is not supported"):
        conv_onnx.load(p)


def _conv_proto(weight: onnx.TensorProto):
    h = onnx.helper
    graph = h.make_graph([N("Conv", ["x", "W"], ["y"], name="c")], "t",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 5, 5])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2, 3, 3])], [weight])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_hostile_tensors_are_refused_before_allocating(tmp_path):
    huge = onnx.TensorProto(name="W", data_type=onnx.TensorProto.FLOAT, dims=[10**6, 10**6, 3, 3],
                            raw_data=b"\0" * 16)
    with pytest.raises(OnnxError, match=r"tensor 'W' declares shape \[1000000, 1000000, 3, 3\] .* over the limit"):
        conv_onnx.load(_saved(tmp_path, _conv_proto(huge)))
    short = onnx.TensorProto(name="W", data_type=onnx.TensorProto.FLOAT, dims=[2, 1, 3, 3], raw_data=b"\0" * 7)
    with pytest.raises(OnnxError, match=r"declares shape \[2, 1, 3, 3\] \(72 bytes\) but holds 7 bytes"):
        conv_onnx.load(_saved(tmp_path, _conv_proto(short)))
    ints = onnx.helper.make_tensor("W", onnx.TensorProto.INT8, [2, 1, 3, 3], [1] * 18)
    with pytest.raises(OnnxError, match=r"data type INT8"):
        conv_onnx.load(_saved(tmp_path, _conv_proto(ints)))
    outside = onnx.TensorProto(name="W", data_type=onnx.TensorProto.FLOAT, dims=[2, 1, 3, 3],
                               data_location=onnx.TensorProto.EXTERNAL)
    outside.external_data.add(key="location", value="../../etc/passwd")
    with pytest.raises(OnnxError, match=r"only a file beside the model, named without a path"):
        conv_onnx.load(_saved(tmp_path, _conv_proto(outside)))
    good = _saved(tmp_path, _conv_proto(onnx.numpy_helper.from_array(_w(2, 1, 3, 3), "W")), "good.onnx")
    data = open(good, "rb").read()
    for cut in (1, 10, len(data) // 2, len(data) - 3):
        bad = tmp_path / f"cut{cut}.onnx"
        bad.write_bytes(data[:cut])
        with pytest.raises(OnnxError) as e:
            conv_onnx.load(str(bad))
        assert "\n" not in str(e.value)
    with pytest.raises(OnnxError, match="over the limit"):
        conv_onnx.load(good, max_bytes=100)


class Residual(nn.Module):
    """The forward/backward pattern for forks and joins: y = relu(bn(conv2(relu(conv1(x)))) + shortcut(x))."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.bn = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out)) \
            if stride != 1 or c_in != c_out else None
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn(self.conv2(self.relu1(self.conv1(x))))
        return self.relu2(out + (x if self.shortcut is None else self.shortcut(x)))


def test_export_modules_whose_forward_forks_and_joins(tmp_path):
    convprop.random.manual_seed(0)
    model = randomized(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Residual(4, 4), Residual(4, 8, stride=2),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)))
    path = conv_onnx.export(model, str(tmp_path / "res.onnx"), (1, 1, 9, 9))
    x = _input((3, 1, 9, 9))
    assert_close(run_ort(path, x), model(x), "residual blocks")
    assert [n.op_type for n in onnx.load(path).graph.node].count("Add") == 2
    back = conv_onnx.load(path)  # a Graph with the same numbers, and a backward
    assert isinstance(back, Graph)
    assert_close(back.eval()(x), model(x), "residual blocks imported", 1e-6)

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x * 2.0)

    with pytest.raises(OnnxError, match=r"^fc \(Linear\): its input is computed by code other than layers"):
        conv_onnx.export(Scaled(), str(tmp_path / "s.onnx"), (1, 3))
    assert nn.module._call_hook.get() is None  # the tracing is undone after an error too


# --------------------------------------------------------------------------- MaxPool's indices and MaxUnpool
class EncoderDecoder(nn.Module):
    """conv → pool, keeping the indices → conv → unpool at those indices → conv (SegNet's pattern)."""

    def __init__(self, pool, unpool, output_size: bool, conv=nn.Conv2d, call=None):
        super().__init__()
        self.conv1, self.act1, self.pool = conv(2, 3, 3, padding=1), nn.Tanh(), pool
        self.conv2, self.act2, self.unpool = conv(3, 3, 3, padding=1), nn.Tanh(), unpool
        self.conv3, self.output_size = conv(3, 2, 3, padding=1), output_size
        self.call = call or (lambda unpool, y, i, size: unpool(y, i, output_size=size))

    def forward(self, x):
        h = self.act1(self.conv1(x))
        p, indices = self.pool(h)
        y = self.act2(self.conv2(p))
        return self.conv3(self.call(self.unpool, y, indices, h.shape if self.output_size else None))


UNPOOL_CASES = {  # name: (pool, unpool, output_size given, input shape[, how the unpool is called])
    "maxpool2d": (lambda: nn.MaxPool2d(2, return_indices=True), lambda: nn.MaxUnpool2d(2), False, (2, 2, 6, 8)),
    "maxpool2d-odd-output-size": (lambda: nn.MaxPool2d(2, return_indices=True), lambda: nn.MaxUnpool2d(2), True,
                                  (2, 2, 7, 5)),
    "maxpool2d-stride-pad": (lambda: nn.MaxPool2d(3, padding=1, return_indices=True),
                             lambda: nn.MaxUnpool2d(3, padding=1), True, (2, 2, 9, 8)),
    "adaptive-maxpool2d": (lambda: nn.AdaptiveMaxPool2d((2, 3), return_indices=True), lambda: nn.MaxUnpool2d(3),
                           False, (2, 2, 6, 9)),
    "maxpool1d": (lambda: nn.MaxPool1d(2, return_indices=True), lambda: nn.MaxUnpool1d(2), False, (2, 2, 8)),
    "maxpool1d-stride-pad-output-size": (lambda: nn.MaxPool1d(3, padding=1, return_indices=True),
                                         lambda: nn.MaxUnpool1d(3, padding=1), True, (2, 2, 9)),
    "indices-by-keyword": (lambda: nn.MaxPool2d(2, return_indices=True), lambda: nn.MaxUnpool2d(2), False, (2, 2, 6, 8),
                           lambda unpool, y, i, size: unpool(y, indices=i)),
    "all-by-keyword": (lambda: nn.MaxPool1d(2, return_indices=True), lambda: nn.MaxUnpool1d(2), True, (2, 2, 7),
                       lambda unpool, y, i, size: unpool(x=y, indices=i, output_size=size)),
}


@pytest.mark.parametrize("name", sorted(UNPOOL_CASES))
def test_export_maxpool_indices_into_maxunpool_matches_onnxruntime(name, tmp_path):
    pool, unpool, output_size, shape, *call = UNPOOL_CASES[name]
    convprop.random.manual_seed(0)
    model = EncoderDecoder(pool(), unpool(), output_size, nn.Conv1d if len(shape) == 3 else nn.Conv2d, *call).eval()
    path = conv_onnx.export(model, str(tmp_path / "ed.onnx"), shape)
    assert [n.op_type for n in onnx.load(path).graph.node].count("MaxUnpool") == 1
    for batch in (shape[0], 3):  # whole-tensor indices and output_shape follow the dynamic batch
        x = _input((batch, *shape[1:]))
        assert_close(run_ort(path, x), model(x), name)
    back = conv_onnx.load(path)  # a Graph whose MaxPool returns (out, indices)
    assert isinstance(back, Graph)
    x = _input(shape, seed=2)
    assert_close(back.eval()(x), model(x), f"{name} round trip", 1e-6)
    again = conv_onnx.export(back, str(tmp_path / "again.onnx"), shape)  # and out again
    assert_close(run_ort(again, x), model(x), f"{name} re-exported")


class Misuse(nn.Module):
    """A pool with return_indices and what `use(m, x, p, i)` does with its (p, i): not an exportable unpool."""

    def __init__(self, pool, unpool, use):
        super().__init__()
        self.pool, self.unpool, self.relu, self.use = pool, unpool, nn.ReLU(), use

    def forward(self, x):
        p, i = self.pool(x)
        return self.use(self, x, p, i)


def _p(d, *args, **kw):
    return getattr(nn, f"MaxPool{d}d")(*args, return_indices=True, **kw)


MISUSE_CASES = [  # (pool, unpool, use, input shape, message)
    (_p(2, 2), nn.MaxUnpool2d(2), lambda m, x, p, i: m.relu(i), (1, 1, 5, 5),
     r"^relu \(ReLU\): its input is the indices of a MaxPool2d; ONNX's MaxPool counts"),
    (_p(2, 2), nn.MaxUnpool2d(2), lambda m, x, p, i: m.unpool(p, i + 0), (1, 1, 5, 5),
     r"^unpool \(MaxUnpool2d\): indices must be those a MaxPool2d"),
    (_p(2, 2), nn.MaxUnpool2d(2), lambda m, x, p, i: m.unpool(p, i), (1, 1, 5, 5),
     r"^unpool \(MaxUnpool2d\): output 4×4 differs from its pooled input 5×5"),
    (_p(2, 2, ceil_mode=True), nn.MaxUnpool2d(2), lambda m, x, p, i: m.unpool(p, i, output_size=x.shape), (1, 1, 7, 7),
     r"^unpool \(MaxUnpool2d\): its pooled input 7×7 is smaller than the default output 8×8 .* at least that size$"),
    (_p(2, 2), nn.MaxUnpool2d(3, 2), lambda m, x, p, i: m.unpool(p, i, x.shape[2:]), (1, 1, 6, 6),
     r"^unpool \(MaxUnpool2d\): its pooled input 6×6 is smaller than the default output 7×7"),
    (_p(1, 2), nn.MaxUnpool1d(2), lambda m, x, p, i: m.relu(i), (1, 1, 6),
     r"^relu \(ReLU\): its input is the indices of a MaxPool1d; .* whole \(N, C, L\) .* of a MaxUnpool1d$"),
    (_p(1, 2), nn.MaxUnpool1d(2), lambda m, x, p, i: m.unpool(p, i + 0), (1, 1, 6),
     r"^unpool \(MaxUnpool1d\): indices must be those a MaxPool1d\(return_indices=True\)"),
    (_p(1, 2), nn.MaxUnpool1d(2), lambda m, x, p, i: i, (1, 1, 6),
     r"^model \(Misuse\): it returns the indices of a MaxPool1d"),
    (_p(1, 2), nn.MaxUnpool2d(2), lambda m, x, p, i: m.unpool(p, i), (1, 2, 6),
     r"^unpool \(MaxUnpool2d\): its indices are a MaxPool1d's of a 1-D input"),
    (_p(2, 2), nn.MaxUnpool2d(2), lambda m, x, p, i: m.unpool(p, i), (2, 6, 6),
     r"^pool \(MaxPool2d\): export needs batched \(N, C, H, W\) inputs"),
]


@pytest.mark.parametrize("case", range(len(MISUSE_CASES)))
def test_export_maxpool_indices_used_otherwise_is_refused(case, tmp_path):
    pool, unpool, use, shape, message = MISUSE_CASES[case]
    with pytest.raises(OnnxError, match=message):
        conv_onnx.export(Misuse(pool, unpool, use), str(tmp_path / "m.onnx"), shape)


def test_load_torch_encoder_decoder_forward_and_gradients_match_autograd(tmp_path):
    """torch.onnx.export writes MaxPool's Indices converted to torch's per-plane form (a Sub of each
    plane's offset, from a second MaxPool of kernel 1); it has no MaxUnpool, so the test registers the
    symbolic a user would: Add the offsets back, MaxUnpool to the pooled input's Shape."""
    torch = pytest.importorskip("torch")
    t = torch.nn

    class TorchEncoderDecoder(t.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.pool = t.Conv2d(2, 3, 3, padding=1), t.MaxPool2d(2, return_indices=True)
            self.conv2, self.unpool = t.Conv2d(3, 3, 3, padding=1), t.MaxUnpool2d(2)
            self.conv3 = t.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            h = torch.tanh(self.conv1(x))
            p, indices = self.pool(h)
            return self.conv3(self.unpool(torch.tanh(self.conv2(p)), indices, output_size=(7, 5)))

    def max_unpool2d(g, x, indices, output_size):
        offsets = indices.node().inputsAt(1)  # indices = Sub(MaxPool's Indices, offsets)
        pool = indices.node().inputsAt(0).node()
        pooled_input = offsets.node().inputsAt(0).node().inputsAt(0)  # Slice(MaxPool(kernel 1)(pooled input))
        return g.op("MaxUnpool", x, g.op("Add", indices, offsets), g.op("Shape", pooled_input),
                    **{f"{a}_i": getattr(pool, "is")(a) for a in ("kernel_shape", "strides", "pads")})

    torch.manual_seed(0)
    net, x = TorchEncoderDecoder().eval(), torch.tensor(_input((3, 2, 7, 5)))
    path = str(tmp_path / "ed.onnx")
    torch.onnx.register_custom_op_symbolic("aten::max_unpool2d", max_unpool2d, 13)
    try:
        torch.onnx.export(net, (x,), path, dynamo=False, dynamic_axes={"input": {0: "batch"}}, input_names=["input"])
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::max_unpool2d", 13)
    assert {"Sub", "Slice", "MaxUnpool"} <= {n.op_type for n in onnx.load(path).graph.node}
    model = conv_onnx.load(path)
    with torch.no_grad():
        assert_close(model(x.numpy()), net(x).numpy(), "encoder-decoder from torch.onnx.export")
    assert_close(model(x.numpy()), run_ort(path, x.numpy()), "encoder-decoder in onnxruntime")
    model.to(np.float64)  # gradients in float64: ∂x and every parameter's, against autograd
    net.double()
    x64 = torch.tensor(_input((3, 2, 7, 5), seed=5).astype(np.float64), requires_grad=True)
    ref = net(x64)
    dout = np.random.default_rng(6).standard_normal(ref.shape)
    ref.backward(torch.tensor(dout))
    out = model(x64.detach().numpy())
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.backward(dout), x64.grad.numpy(), rtol=1e-10, atol=1e-12)
    grads = [p.grad for p in model.parameters()]
    assert len(grads) == 6
    for ours, (name, p) in zip(grads, net.named_parameters()):
        np.testing.assert_allclose(ours, p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_load_maxpool_indices_used_otherwise_is_refused(tmp_path):
    as_output = make_model([N("MaxPool", ["x"], ["p", "y"], name="mp", kernel_shape=[2, 2])], {}, (1, 1, 4, 4))
    with pytest.raises(OnnxError, match=r"the graph output 'y' is MaxPool's Indices"):
        conv_onnx.load(_saved(tmp_path, as_output))
    into_relu = make_model([N("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2]), N("Relu", ["i"], ["y"], name="r")],
                           {}, (1, 1, 4, 4))
    with pytest.raises(OnnxError, match=r"node 'r' \(Relu\): MaxPool's Indices are imported only as the indices"):
        conv_onnx.load(_saved(tmp_path, into_relu))
    smaller = make_model([N("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
                          N("MaxUnpool", ["p", "i"], ["y"], name="u", kernel_shape=[2, 2], strides=[2, 2])], {},
                         (1, 1, 5, 5))
    with pytest.raises(OnnxError, match=r"node 'u' \(MaxUnpool\): output size \(4, 4\) must be .* \(5, 5\)"):
        conv_onnx.load(_saved(tmp_path, smaller))


def _unpool_to(shape, in_shape=(1, 3, 6, 6), **pool):
    """MaxPool (kernel 2, `pool`'s attributes) → MaxUnpool of the same to the constant output_shape `shape`."""
    nodes = [N("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], **pool),
             N("MaxUnpool", ["p", "i", "s"], ["y"], name="u", kernel_shape=[2, 2], strides=pool.get("strides", [1, 1]))]
    return make_model(nodes, {"s": np.array(shape, np.int64)}, in_shape)


LOAD_REFUSED = [  # (model, message)
    (make_model([N("Shape", ["x"], ["s"], name="sh"), N("Reshape", ["x", "s"], ["y"])], {}, (2, 3)),
     r"node 'sh' \(Shape\): operator 'Shape' is not supported"),
    (_unpool_to([2, 3, 6, 6], strides=[1, 1], dilations=[2, 2]),
     r"node 'u' \(MaxUnpool\): output_shape: expected H strictly between 4 and 6 .*, got 6"),
    (_unpool_to([2, 4, 6, 6], strides=[1, 1]),
     r"node 'u' \(MaxUnpool\): output_shape \[2, 4, 6, 6\] must be 4 sizes, N and C those of its input"),
]


@pytest.mark.parametrize("case", range(len(LOAD_REFUSED)))
def test_load_refuses_what_convprop_or_onnxruntime_cannot_run(case, tmp_path):
    model, message = LOAD_REFUSED[case]
    with pytest.raises(OnnxError, match=message):
        conv_onnx.load(_saved(tmp_path, model))
