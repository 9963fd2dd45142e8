"""Forks and joins: the residual block and ResNets against torch, and gradcheck catching wrong backwards."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, torch
from runner import DOCS
from twins import batch, to_torch_state, torch_resnet

from convprop import models, nn
from convprop.gradcheck import GradcheckError, gradcheck

tnn = torch.nn


@pytest.mark.parametrize("depth, c, hw", [(8, 1, 28), (8, 3, 32), (14, 1, 9)])
def test_resnet_forward_backward_and_state_match_torch(depth, c, hw):
    ours = models.resnet(depth, in_channels=c).to(np.float64)
    theirs = torch_resnet(ours).double()
    assert list(theirs.state_dict()) == list(ours.state_dict())  # torchvision's keys
    theirs.load_state_dict(to_torch_state(ours.state_dict()))
    x, y = batch(4, c, hw, seed=depth)
    for train in (True, True, False):  # twice in training: the running statistics must stay equal
        ours.train(train), theirs.train(train)
        ours.zero_grad(), theirs.zero_grad()
        logits = ours(x)
        xt = torch.tensor(x, requires_grad=True)
        ref = theirs(xt)
        assert_close(logits, ref, np.float64, "logits")
        loss, dlogits = nn.CrossEntropyLoss()(logits, y)
        tnn.functional.cross_entropy(ref, torch.tensor(y)).backward()
        assert_close(ours.backward(dlogits), xt.grad, np.float64, "input gradient")
        tparams = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            assert_close(p.grad, tparams[name].grad, np.float64, f"grad of {name}")
        tstate = theirs.state_dict()
        for name, v in ours.state_dict().items():
            assert_close(np.asarray(v, np.float64), tstate[name].double(), np.float64, f"state {name}")


def test_resnet_shapes_names_and_sizes():
    assert sum(p.data.size for p in models.resnet20(in_channels=3).parameters()) == 272_474
    keys = list(models.resnet8().state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"] and "layer1.0.conv1.weight" in keys
    assert "layer2.0.downsample.0.weight" in keys and "layer1.0.downsample.0.weight" not in keys
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert len([k for k in models.resnet20().state_dict() if k.endswith("conv2.weight")]) == 9
    m = models.resnet8()
    for shape in [(2, 1, 28, 28), (2, 1, 5, 5)]:
        assert m(np.zeros(shape, np.float32)).shape == (2, 10)
    assert models.resnet8(in_channels=3)(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    with pytest.raises(ValueError, match="depth: expected 6n"):
        models.resnet(10)


def test_gradcheck_passes_for_resnet_in_train_and_eval_mode():
    m = models.resnet8().to(np.float64)
    x = np.random.default_rng(0).standard_normal((3, 1, 7, 7))
    before = {k: v.copy() for k, v in m.state_dict().items()}
    assert gradcheck(m, x)
    assert gradcheck(m.eval(), x)
    for k, v in m.state_dict().items():  # the running statistics are as they were
        np.testing.assert_array_equal(v, before[k])


class ForgetsTheShortcut(nn.BasicBlock):
    def backward(self, dout, input_grad=True):
        ds = self.relu2.backward(dout)
        d = self.bn1.backward(self.relu1.backward(self.conv2.backward(self.bn2.backward(ds))))
        return self.conv1.backward(d, input_grad=input_grad)  # wrong: the fork's second ∂x is not added


class GradientBeforeTheActivation(nn.BasicBlock):
    def backward(self, dout, input_grad=True):
        self.relu2.backward(dout)
        d = self.bn1.backward(self.relu1.backward(self.conv2.backward(self.bn2.backward(dout))))  # wrong: not ∂s
        return self.conv1.backward(d, input_grad=input_grad) + dout


@pytest.mark.parametrize("block, stride, message", [
    (ForgetsTheShortcut, 1, "x (the input gradient)"),
    (ForgetsTheShortcut, 2, "downsample.0.weight: backward left it None"),
    (GradientBeforeTheActivation, 1, "gradient of"),
])
def test_gradcheck_names_what_a_wrong_backward_got_wrong(block, stride, message):
    m = block(2, 2 * stride, stride).to(np.float64)
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 5))
    with pytest.raises(GradcheckError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gradcheck(m, x)
    assert gradcheck(nn.BasicBlock(2, 2 * stride, stride).to(np.float64), x)  # the right one passes


class TwoBranches(nn.Module):
    """The documented pattern on an Inception-like fork: x -> (3×3 conv, 1×1 conv) -> concat -> + x."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 2, 3, padding=1), nn.Conv2d(4, 2, 1)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(np.concatenate([self.a(x), self.b(x)], axis=1) + x)

    def backward(self, dout, input_grad=True):
        ds = self.act.backward(dout)  # join 1 (a sum): ∂s to the concat and to x
        da, db = ds[:, :2], ds[:, 2:]  # join 2 (a concat): each branch gets its slice
        return self.a.backward(da) + self.b.backward(db) + ds  # the fork: x's three uses add


def test_the_pattern_on_a_model_of_ones_own():
    x = np.random.default_rng(2).standard_normal((2, 4, 5, 5))
    assert gradcheck(TwoBranches().to(np.float64), x)


def test_gradcheck_refuses_float32_and_random_forwards():
    with pytest.raises(TypeError, match="model.to"):
        gradcheck(models.resnet8(), np.zeros((1, 1, 5, 5)))
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).to(np.float64)
    with pytest.raises(GradcheckError, match="not deterministic"):
        gradcheck(net, np.ones((4, 3)))


def test_no_grad_forwards_keep_no_caches_and_give_the_same_output():
    m = models.resnet8().eval()
    x = np.random.default_rng(3).standard_normal((2, 1, 12, 12)).astype(np.float32)
    out = m(x)
    assert m.layer1[0].conv1._cache is not None
    with nn.no_grad():
        assert not nn.is_grad_enabled()
        again = m(x)
    assert nn.is_grad_enabled()
    np.testing.assert_array_equal(out, again)
    assert all(getattr(layer, "_cache", None) is None for layer in m.modules())
    with pytest.raises(RuntimeError, match="no_grad"):
        m.backward(np.ones_like(out))
    pool = nn.MaxPool2d(2, return_indices=True)
    with nn.no_grad():
        assert pool(x)[1].shape == (2, 1, 6, 6)


@pytest.mark.parametrize("options", [{}, {"size": 5, "kernel": 2, "seed": 3}, {"size": 6, "kernel": 5, "seed": 1}])
def test_explain_residual_shows_the_join_and_the_fork_on_numbers(options):
    from convprop.explain import explain, render_text

    e = explain("residual", **options)
    assert e.ok and len(e.checks) == 3 and not e.checks[2].agree  # forgetting the fork's sum must differ
    fork = next(s for s in e.steps if "fork adds" in s.title).arrays
    np.testing.assert_array_equal(fork["∂x"], fork["∂x|_f"] + fork["∂x|_shortcut"])
    join = next(s for s in e.steps if "join hands" in s.title).arrays
    np.testing.assert_array_equal(join["∂f"], join["∂(shortcut)"])
    assert max(len(line) for line in render_text(e).splitlines()) <= 80


def test_the_docs_examples_run():
    import re

    doc = (DOCS / "residual.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 2
    exec(compile("\n".join(blocks), "residual.md", "exec"), {})
