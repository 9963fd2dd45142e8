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
from convprop.onnx import Graph, OnnxError  # noqa: E402

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
    back = conv_onnx.load(path)
    assert type(back) is type(model) and list(back.state_dict()) == list(model.state_dict())
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        if k.endswith("num_batches_tracked"):
            continue
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_export_float64_and_refusals(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh()).to(np.float64)  # onnxruntime has no float64 Conv
    path = conv_onnx.export(model, str(tmp_path / "f64.onnx"), (1, 4))
    x = _input((2, 4), dtype=np.float64)
    assert_close(run_ort(path, x), model(x), "float64", 1e-12)
    assert conv_onnx.load(path).dtype == np.float64

    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(OnnxError, match=r"^1 \(Custom\): no ONNX export for this layer"):
        conv_onnx.export(nn.Sequential(nn.ReLU(), Custom()), str(tmp_path / "c.onnx"), (1, 3))
    with pytest.raises(OnnxError, match=r"return_indices=True"):
        conv_onnx.export(nn.Sequential(nn.MaxPool2d(2, return_indices=True)), str(tmp_path / "c.onnx"), (1, 1, 4, 4))
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
    g = Graph([("a", conv1, ["x"]), ("b", nn.ReLU(), ["a"]), ("c", conv2, ["b"]), ("d", conv_onnx.Add(), ["c", "x"]),
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
