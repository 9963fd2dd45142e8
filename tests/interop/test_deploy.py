"""A deployable export: the graph takes raw pixels (float 0–255 or uint8), normalises them itself, and says
what it wants in its metadata; ONNX Runtime on the raw MNIST test images scores exactly what convprop
evaluate does; convprop.onnx.load gives back a model taking the same raw pixels (nn.Normalize first)."""

from __future__ import annotations

import json
import re
from collections import OrderedDict

import numpy as np
import pytest
from runner import run_cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import convprop  # noqa: E402
import convprop.random  # noqa: E402
from convprop import checkpoint, deploy, models, nn, optim  # noqa: E402
from convprop.data import DataLoader, load_mnist, normalize  # noqa: E402
from convprop.train import predict, train_step  # noqa: E402

TEST_IMAGES, TEST_LABELS = load_mnist(train=False)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- nn.Normalize
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_layer_against_torch(dtype):
    """(x·scale − mean)/std per channel, forward and backward, against torch's autograd."""
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 4, 5)).astype(dtype)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    m = nn.Normalize(mean, std, scale=1 / 255, dtype=dtype)
    y = m(x)
    dout = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx = m.backward(dout)
    t = torch.tensor(x, requires_grad=True)
    ref = (t * torch.tensor(np.float64(1 / 255).astype(dtype)) - torch.tensor(np.array(mean, dtype)).view(1, 3, 1, 1)) \
        / torch.tensor(np.array(std, dtype)).view(1, 3, 1, 1)
    ref.backward(torch.tensor(dout))
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-6 if dtype == np.float32 else 1e-12)
    assert list(m.state_dict()) == ["mean", "std"] and not list(m.parameters())


def test_normalize_layer_is_data_normalize_bit_for_bit():
    x = TEST_IMAGES[:50]
    m = nn.Normalize(0.1307, 0.3081, scale=1 / 255)
    assert np.array_equal(m(x[:, None].astype(np.float32)), normalize(x))
    f = np.float32  # convprop's arithmetic since its first release: the bits every trained model has seen
    assert np.array_equal(normalize(x), ((x.astype(f) * f(1 / 255) - f(0.1307)) * (f(1) / f(0.3081)))[:, None])


@pytest.mark.parametrize("kw, words", [
    (dict(mean=[0.1, 0.2], std=[0.1, 0.2, 0.3]), "one value or one per channel"),
    (dict(mean=0.1, std=0.0), "std: expected finite numbers, none zero"),
    (dict(mean=float("nan"), std=1.0), "mean: expected finite numbers"),
    (dict(mean=0.1, std=1.0, scale=[]), "scale: expected finite numbers"),
])
def test_normalize_layer_refuses_bad_constants(kw, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        nn.Normalize(**kw)


def test_normalize_layer_refuses_other_channel_counts_and_integers():
    m = nn.Normalize([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="expected 3 channels"):
        m(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(TypeError, match="floating dtype"):
        m(np.zeros((1, 3, 4, 4), np.uint8))


# --------------------------------------------------------------------------- input_spec
def test_input_spec_falls_back_to_what_convprop_trained_on():
    mnist = deploy.input_spec({"meta": {"model": {"name": "lenet5", "config": {"num_classes": 10}}}})
    expected = {"channels": 1, "size": [28, 28], "range": [0, 255], "mean": [0.1307], "std": [0.3081],
                "classes": [str(i) for i in range(10)]}
    assert {k: mnist.get(k) for k in expected} == expected
    fashion = deploy.input_spec({"meta": {"model": {"name": "lenet5", "config": {}},
                                          "args": {"data": "/data/FashionMNIST/raw"}}})
    assert fashion["classes"][0] == "T-shirt/top"
    cifar = deploy.input_spec({"meta": {"model": {"name": "resnet8", "config": {"in_channels": 3}}}})
    assert cifar["size"] == [32, 32] and cifar["classes"][0] == "airplane" and len(cifar["mean"]) == 3


def test_input_spec_reads_and_checks_the_checkpoints_input():
    saved = {"size": [20, 24], "channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.25] * 3, "range": [0, 255],
             "classes": ["cat", "dog"], "prepare": "resize"}
    meta = {"model": {"name": "lenet5", "config": {"num_classes": 2, "in_channels": 3}}, "input": saved}
    spec = deploy.input_spec({"meta": meta})
    assert spec["size"] == [20, 24] and spec["std"] == [0.25] * 3 and spec["classes"] == ["cat", "dog"]
    for key, value, words in (("std", [0.1, 0.0, 0.1], "mean and std: expected 3 finite numbers each (std > 0)"),
                              ("classes", ["cat"], "classes: expected 2 names"),
                              ("size", [28], "size: expected [height, width]"),
                              ("channels", True, "channels: expected 3 (the model's in_channels)")):
        with pytest.raises(ValueError, match=re.escape(words)):
            deploy.input_spec({"meta": {**meta, "input": {**saved, key: value}}})


def test_with_normalization_keeps_the_layer_names():
    m = models.resnet8()
    d = deploy.with_normalization(m, deploy.input_spec({"meta": {"model": {"name": "resnet8", "config": {}}}}))
    assert list(d.state_dict())[:3] == ["normalize.mean", "normalize.std", "conv1.weight"]
    assert [k for k in d.state_dict() if not k.startswith("normalize.")] == list(m.state_dict())


# --------------------------------------------------------------------------- export and import
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """LeNet-5 after one epoch on the bundled sample (about 95 %: real decisions, not near-ties), saved."""
    convprop.random.manual_seed(0)
    model = models.lenet5()
    images, labels = load_mnist(train=True)
    opt = optim.Adam(model.parameters(), lr=0.005)
    loss = nn.CrossEntropyLoss()
    for x, y in DataLoader(images, labels, 64, shuffle=True, seed=0):
        train_step(model, loss, opt, x, y)
    path = str(tmp_path_factory.mktemp("deploy") / "checkpoint.npz")
    checkpoint.save(path, model.eval(), "lenet5", {"num_classes": 10}, epoch=1)
    return path, model


def _export(model, path, input_dtype=None):
    spec = deploy.input_spec({"meta": {"model": {"name": "lenet5", "config": {"num_classes": 10}}}})
    meta = deploy.metadata(spec, {"name": "lenet5", "config": {}}, dtype=input_dtype or "float32")
    return convprop.onnx.export(deploy.with_normalization(model, spec), str(path), (1, 1, 28, 28), input_name="pixels",
                                input_dtype=input_dtype, metadata=meta)


@pytest.mark.parametrize("input_dtype", [None, "uint8"])
def test_onnx_runtime_on_raw_pixels_scores_as_convprop(trained, tmp_path, input_dtype):
    _, model = trained
    path = _export(model, tmp_path / "m.onnx", input_dtype)
    raw = TEST_IMAGES[:, None] if input_dtype else TEST_IMAGES[:, None].astype(np.float32)
    got = session(path).run(None, {"pixels": raw})[0]
    ours = predict(model, normalize(TEST_IMAGES))  # softmax of the logits
    logits = model(normalize(TEST_IMAGES[:1000]))
    assert np.abs(got[:1000] - logits).max() <= 1e-4 * max(1.0, np.abs(logits).max())
    assert np.array_equal(got.argmax(1), ours.argmax(1))
    assert 0.9 < np.mean(got.argmax(1) == TEST_LABELS)
    # the normalisation in the graph computes convprop's bits: an export of nn.Normalize alone
    alone = convprop.onnx.export(nn.Sequential(nn.Normalize(0.1307, 0.3081, scale=1 / 255)), str(tmp_path / "n.onnx"),
                                 (1, 1, 28, 28), input_name="pixels", input_dtype=input_dtype)
    assert np.array_equal(session(alone).run(None, {"pixels": raw})[0], normalize(TEST_IMAGES))


@pytest.mark.parametrize("input_type", ["float32", "uint8"])
def test_onnx_runtime_on_raw_test_digits_gives_evaluates_accuracy_exactly(trained, tmp_path, input_type):
    """`convprop export` then ONNX Runtime on the 10,000 raw test digits: as many correct as `convprop evaluate`,
    logits within float32 rounding of convprop's."""
    path, model = trained
    r = run_cli("evaluate", path)
    assert r.returncode == 0, r.stderr
    evaluated = re.search(r"accuracy (\d+\.\d\d)% on 10,000 test images", r.stdout)
    r = run_cli("export", path, str(tmp_path / "m.onnx"), "--input-type", input_type)
    assert r.returncode == 0 and "input 'pixels' (batch, 1, 28, 28) of raw pixels 0–255" in r.stdout, r.stderr
    raw = TEST_IMAGES[:, None] if input_type == "uint8" else TEST_IMAGES[:, None].astype(np.float32)
    got = session(tmp_path / "m.onnx").run(None, {"pixels": raw})[0]
    correct = int((got.argmax(1) == TEST_LABELS).sum())
    assert evaluated and round(float(evaluated[1]) * 100) == correct  # 0.01 % of 10,000 is one image
    logits = model(normalize(TEST_IMAGES))
    assert np.abs(got - logits).max() <= 1e-5 * max(1.0, float(np.abs(logits).max()))


def test_metadata_says_what_the_file_wants(trained, tmp_path):
    path = _export(trained[1], tmp_path / "m.onnx", "uint8")
    props = convprop.onnx.metadata(path)
    assert set(props) == set(deploy.METADATA_KEYS)
    info = json.loads(props["convprop.input"])
    expected = {"name": "pixels", "dtype": "uint8", "layout": "NCHW", "channels": 1, "size": [28, 28],
                "range": [0, 255], "mean": [0.1307], "std": [0.3081], "normalization": "in the graph"}
    assert {k: info.get(k) for k in expected} == expected and "(pixels / 255 − mean) / std" in info["formula"]
    assert json.loads(props["convprop.classes"]) == [str(i) for i in range(10)]
    assert json.loads(props["convprop.model"])["name"] == "lenet5"
    assert {p.key: p.value for p in onnx.load(path).metadata_props} == props  # plain ONNX metadata_props
    inp = session(path).get_inputs()[0]
    assert (inp.name, inp.type, inp.shape) == ("pixels", "tensor(uint8)", ["batch", 1, 28, 28])


@pytest.mark.parametrize("input_dtype", [None, "uint8"])
def test_load_gives_back_a_model_taking_raw_pixels(trained, tmp_path, input_dtype):
    _, model = trained
    again = convprop.onnx.load(_export(model, tmp_path / "m.onnx", input_dtype)).eval()
    first = next(iter(again))
    assert isinstance(first, nn.Normalize) and first.num_channels is None
    assert np.allclose(first.mean, 0.1307) and np.allclose(first.std, 0.3081) and np.allclose(first.scale, 1 / 255)
    raw = TEST_IMAGES[:200, None].astype(np.float32)
    assert np.array_equal(again(raw), model(normalize(TEST_IMAGES[:200])))


def _graph(nodes, inits, elem=onnx.TensorProto.FLOAT, c=3):
    h = onnx.helper
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", elem, ["N", c, 4, 4])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", c, 4, 4])],
                     [onnx.numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def test_load_reads_generic_arithmetic_by_constants(tmp_path):
    """Mul/Sub/Add/Div by per-channel constants in other orders: each an nn.Normalize, fused where the
    arithmetic stays the same; the same bits as ONNX Runtime, but for a Div (read as ·(1/c): to rounding)."""
    h = onnx.helper
    cases = {  # name: nodes, layers, exact
        "mul-sub-mul": ([h.make_node("Mul", ["x", "k"], ["a"]), h.make_node("Sub", ["a", "m"], ["b"]),
                         h.make_node("Mul", ["b", "s"], ["y"])], 1, True),
        "add-mul": ([h.make_node("Add", ["m", "x"], ["a"]), h.make_node("Mul", ["a", "s"], ["y"])], 1, True),
        "mul-mul": ([h.make_node("Mul", ["x", "k"], ["a"]), h.make_node("Mul", ["a", "s"], ["y"])], 1, True),
        "sub-mul-sub": ([h.make_node("Sub", ["x", "m"], ["a"]), h.make_node("Mul", ["a", "s"], ["b"]),
                         h.make_node("Sub", ["b", "m"], ["y"])], 2, True),
        "sub-div": ([h.make_node("Sub", ["x", "m"], ["a"]), h.make_node("Div", ["a", "d"], ["y"])], 1, False),
        "div-sub": ([h.make_node("Div", ["x", "d"], ["a"]), h.make_node("Sub", ["a", "m"], ["y"])], 2, False),
    }
    consts = {"m": np.array([10.0, 20.0, 40.0]).reshape(1, 3, 1, 1), "k": np.float32(1 / 255),
              "s": np.reciprocal(np.array([0.2470, 0.2435, 0.2616], np.float32)).reshape(1, 3, 1, 1), "d": 3.0}
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 4, 4)).astype(np.float32)
    for name, (nodes, layers, exact) in cases.items():
        onnx.save(_graph(nodes, consts), tmp_path / f"{name}.onnx")
        model = convprop.onnx.load(str(tmp_path / f"{name}.onnx"))
        assert len(model) == layers and all(isinstance(m, nn.Normalize) for m in model), (name, model)
        want = session(tmp_path / f"{name}.onnx").run(None, {"x": x})[0]
        if exact:
            assert np.array_equal(model(x), want), name
        else:
            np.testing.assert_allclose(model(x), want, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("nodes, inits, words", [
    (lambda h: [h.make_node("Sub", ["m", "x"], ["y"])], {"m": 1.0}, "only data − constant"),
    (lambda h: [h.make_node("Mul", ["x", "m"], ["y"])], {"m": np.ones((1, 1, 4, 1))}, "one value or one per channel"),
    (lambda h: [h.make_node("Div", ["x", "m"], ["y"])], {"m": 0.0}, "std: expected finite numbers, none zero"),
    (lambda h: [h.make_node("Relu", ["x"], ["a"]), h.make_node("Mul", ["x", "a"], ["y"])], {},
     "only Mul of the data by a constant is supported"),
    (lambda h: [h.make_node("Relu", ["x"], ["a"]), h.make_node("Cast", ["a"], ["y"], to=1)], {},
     "only a Cast of the graph's input"),
    (lambda h: [h.make_node("Cast", ["x"], ["y"], to=11)], {}, "attribute 'to' = 11 is not supported"),
])
def test_load_refuses_arithmetic_it_cannot_represent(tmp_path, nodes, inits, words):
    onnx.save(_graph(nodes(onnx.helper), inits), tmp_path / "m.onnx")
    with pytest.raises(convprop.onnx.OnnxError, match=re.escape(words)):
        convprop.onnx.load(str(tmp_path / "m.onnx"))


def test_load_refuses_a_uint8_input_used_as_it_is(tmp_path):
    h = onnx.helper
    proto = _graph([h.make_node("Relu", ["x"], ["y"])], {}, elem=onnx.TensorProto.UINT8)
    onnx.save(proto, tmp_path / "m.onnx")
    with pytest.raises(convprop.onnx.OnnxError, match="is uint8, but the first node is not a Cast"):
        convprop.onnx.load(str(tmp_path / "m.onnx"))


def test_export_refuses_bad_input_arguments(tmp_path):
    m = models.lenet5()
    for kw, words in ((dict(input_dtype="int16"), "input_dtype: expected None, 'float32'"),
                      (dict(input_name="output"), "input_name: expected a non-empty name"),
                      (dict(metadata={"k": 1}), "metadata: expected {key: value} of strings")):
        with pytest.raises(ValueError, match=re.escape(words)):
            convprop.onnx.export(m, str(tmp_path / "m.onnx"), (1, 1, 28, 28), **kw)


def test_a_model_not_sequential_is_wrapped_whole():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.ReLU()

        def forward(self, x):
            return self.inner(x)

    spec = deploy.input_spec({"meta": {"model": {"name": "lenet5", "config": {}}}})
    d = deploy.with_normalization(Twice(), spec)
    assert list(d._modules) == ["normalize", "model"]
    with pytest.raises(ValueError, match="already has a layer named 'normalize'"):
        deploy.with_normalization(nn.Sequential(OrderedDict(normalize=nn.ReLU())), spec)


# --------------------------------------------------------------------------- export_checkpoint (convprop export)
def test_export_checkpoint_writes_both_formats_with_the_metadata(trained, tmp_path):
    st = pytest.importorskip("safetensors")
    path, model = trained
    ckpt = checkpoint.load(path)
    line = deploy.export_checkpoint(ckpt, model, str(tmp_path / "m.onnx"), input_type="uint8")
    assert "input 'pixels' (batch, 1, 28, 28) of raw pixels 0–255 as uint8; 10 classes" in line
    assert json.loads(convprop.onnx.metadata(str(tmp_path / "m.onnx"))["convprop.input"])["dtype"] == "uint8"
    deploy.export_checkpoint(ckpt, model, str(tmp_path / "m.safetensors"))
    with st.safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    assert set(meta) == set(deploy.METADATA_KEYS)
    info = json.loads(meta["convprop.input"])
    assert info["normalization"] == "by the caller" and info["mean"] == [0.1307] and info["size"] == [28, 28]
    assert json.loads(meta["convprop.classes"]) == [str(i) for i in range(10)]
    plain = deploy.export_checkpoint(ckpt, model, str(tmp_path / "n.onnx"), normalize=False)
    assert "input 'input'" in plain and "normalised floats" in plain
    got = session(tmp_path / "n.onnx").run(None, {"input": normalize(TEST_IMAGES[:100])})[0]
    assert np.abs(got - model(normalize(TEST_IMAGES[:100]))).max() < 1e-4


def test_export_checkpoint_uses_the_checkpoints_own_input(tmp_path):
    """A checkpoint whose header describes its input (size, channels, mean, std, classes): the graph is built
    for that size and normalisation, and says so."""
    convprop.random.manual_seed(0)
    model = models.resnet8(num_classes=3, in_channels=3)
    given = {"size": [20, 24], "channels": 3, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "range": [0, 255],
             "classes": ["circle", "square", "triangle"], "prepare": "resize"}
    path = str(tmp_path / "c.npz")
    checkpoint.save(path, model, "resnet8", {"num_classes": 3, "in_channels": 3}, input=given)
    ckpt = checkpoint.load(path)
    deploy.export_checkpoint(ckpt, checkpoint.restore_model(ckpt, path), str(tmp_path / "m.onnx"))
    props = convprop.onnx.metadata(str(tmp_path / "m.onnx"))
    assert json.loads(props["convprop.classes"]) == given["classes"]
    assert json.loads(props["convprop.input"])["size"] == [20, 24]
    assert json.loads(props["convprop.input"])["prepare"] == "resize"
    raw = np.random.default_rng(0).integers(0, 256, (4, 3, 20, 24)).astype(np.uint8)
    got = session(tmp_path / "m.onnx").run(None, {"pixels": raw.astype(np.float32)})[0]
    want = model.eval()(normalize(raw, given["mean"], given["std"]))
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("kw, words", [
    (dict(out="m.txt"), "OUT: expected a file name ending in .onnx or .safetensors"),
    (dict(input_type="int8"), "--input-type: expected float32 or uint8"),
    (dict(input_type="uint8", normalize=False), "--input-type uint8 needs the normalisation in the graph"),
    (dict(input_shape=(3, 28, 28)), "--input-shape 3,28,28: x: expected 1 channels"),
    (dict(input_shape=(1, 3, 3)), "--input-shape 1,3,3: x (height): the output would be 0 pixels"),
])
def test_export_checkpoint_refuses_in_one_line(trained, tmp_path, kw, words):
    path, model = trained
    out = str(tmp_path / kw.pop("out", "m.onnx"))
    with pytest.raises(ValueError, match=re.escape(words)):
        deploy.export_checkpoint(checkpoint.load(path), model, out, **kw)
