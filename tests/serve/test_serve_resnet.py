"""The page's passes of a ResNet: every residual block opened into its layers with a fork and a join, every
step's numbers the model's own; and the default class of the backward pass, whose gradients a learner can see."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("starlette")
import httpx  # noqa: E402
from serve_helpers import start  # noqa: E402

import convprop.random as R  # noqa: E402
from convprop import models, nn, optim, steps  # noqa: E402
from convprop.data import DataLoader, load_mnist, normalize  # noqa: E402
from convprop.serve.engine import Engine  # noqa: E402
from convprop.train import fit  # noqa: E402


def arr(enc) -> np.ndarray:
    return np.asarray(enc["data"], dtype=np.float32).reshape(enc["shape"])


@pytest.fixture(scope="module")
def resnet():
    R.manual_seed(0)
    model = models.resnet8()
    model.eval()
    return model


def test_steps_open_every_block_with_its_fork_and_join(resnet):
    x = normalize(load_mnist(train=False)[0][:1])
    walk, out = steps.forward(resnet, x)
    np.testing.assert_array_equal(out, resnet(x))
    blocks = [p for p, m in resnet.named_modules() if isinstance(m, nn.BasicBlock)]
    assert [s.path for s in walk if s.kind == "fork"] == blocks == [s.path for s in walk if s.kind == "join"]
    assert not [s for s in walk if isinstance(s.module, nn.Sequential)], "a Sequential drawn as one opaque step"
    leaves = [p for p, m in resnet.named_modules() if not m._modules]
    assert [s.path for s in walk if s.kind == "layer"] == leaves
    for s in walk:
        if s.kind == "join":  # s = f(x) + shortcut(x)
            np.testing.assert_allclose(s.output, s.parts[0] + s.parts[1], rtol=1e-6, atol=1e-6)
    d = np.zeros_like(out)
    d[0, 3] = 1.0
    resnet.zero_grad()
    dx = steps.backward(resnet, walk, d)
    ours = {n: p.grad.copy() for n, p in resnet.named_parameters()}
    resnet.zero_grad()
    resnet(x)
    np.testing.assert_array_equal(dx, resnet.backward(d))  # the model's own backward, unchanged
    for n, p in resnet.named_parameters():
        np.testing.assert_array_equal(ours[n], p.grad, err_msg=n)
    resnet.zero_grad()
    for k, s in enumerate(walk):
        assert "backward" not in vars(s.module)  # the watchers are gone
        if s.kind == "fork":  # ∂x = ∂x|_f + ∂x|_shortcut
            np.testing.assert_allclose(s.grad_input, s.grad_parts[0] + s.grad_parts[1], rtol=1e-5, atol=1e-7)
        elif k + 1 < len(walk):  # every step's ∂(output) is the next step's ∂(input)
            nxt = walk[k + 1]
            if nxt.kind == "layer" and nxt.block == s.block and s.kind == "layer" and s.branch == nxt.branch:
                np.testing.assert_array_equal(nxt.grad_input, s.grad_output, err_msg=s.path)


def test_the_page_gets_every_block_of_a_resnet(resnet):
    srv = start(Engine(resnet, "a ResNet-8 with random weights", {"model": "resnet8"}))
    try:
        digit = load_mnist(train=False)[0][0]
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            m = client.get("/api/model").json()
            f = client.post("/api/forward", json={"pixels": digit.tolist()}).json()
            b = client.post("/api/backward", json={"pixels": digit.tolist(), "class": 2}).json()
    finally:
        srv.close()
    types = [layer["type"] for layer in f["layers"]]
    assert types.count("fork") == types.count("join") == 3 and "Sequential" not in types and "BasicBlock" not in types
    assert [layer["type"] for layer in m["layers"]] == types == [layer["type"] for layer in b["layers"]]
    join = next(layer for layer in f["layers"] if layer["type"] == "join")
    np.testing.assert_allclose(arr(join["output"]), arr(join["parts"][0]) + arr(join["parts"][1]), rtol=1e-5, atol=1e-6)
    fork = next(layer for layer in b["layers"] if layer["type"] == "fork" and layer["label"].startswith("layer2"))
    assert [layer["branch"] for layer in b["layers"] if layer["block"] == "layer2.0"].count("shortcut") == 2
    np.testing.assert_allclose(arr(fork["grad_input"]), arr(fork["grad_parts"][0]) + arr(fork["grad_parts"][1]),
                               rtol=1e-5, atol=1e-7)
    assert fork["equation"].startswith("∂x = ∂x|_f + ∂x|_shortcut")


def test_the_default_class_has_gradients_a_learner_can_see():
    """A trained LeNet-5 is sure of a test digit (p > 0.99): the predicted class's ∂L/∂x is ~1e-6 and draws as
    speckle; the default class is the runner-up, whose gradient is orders of magnitude larger."""
    R.manual_seed(0)
    model = models.lenet5()
    images, labels = load_mnist(train=True)
    fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=3e-3),
        DataLoader(images[:2000], labels[:2000], 64, shuffle=True), 2, progress=False, log=None)
    engine = Engine(model, "trained")
    test_x, _ = load_mnist(train=False)
    x = next(engine.input(d) for d in test_x[:50] if engine.predict(engine.input(d)).max() > 0.99)
    probs = engine.predict(x)
    default = engine.backward(x)
    predicted = engine.backward(x, int(probs.argmax()))
    assert default["class"] == int(np.argsort(-probs)[1]) != default["predicted"]
    assert np.abs(default["input_grad"]).max() > 100 * np.abs(predicted["input_grad"]).max()


def test_the_training_tab_counts_whole_epochs_and_the_share_of_the_one_stopped_in():
    from convprop.serve.trainer import epochs_done, progress_text

    rows = [{"step": 79 * k, "partial": False} for k in range(1, 7)] + [{"step": 6 * 79 + 32, "partial": True}]
    assert progress_text(epochs_done(rows, 79)) == "6 epochs + 40 % of epoch 7"
    assert progress_text(epochs_done(rows[:6], 79)) == "6 epochs"
    assert progress_text(epochs_done(rows[:1], 79)) == "1 epoch"
    assert progress_text(epochs_done([], 79)) == "0 epochs"
    # stopped twice in the first epoch, then one whole epoch: 10 + 20 steps of 79 are 37 % of one
    rows = [{"step": 10, "partial": True}, {"step": 30, "partial": True}, {"step": 109, "partial": False}]
    assert progress_text(epochs_done(rows, 79)) == "1 epoch + 37 % of epoch 2"
