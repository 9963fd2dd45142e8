"""Module.summary: torchinfo's table — every layer called, output shape, parameters, multiply-adds, and the
totals and sizes — checked against torchinfo on the torch twins of lenet5, vgg_small, resnet8 and resnet20."""

from __future__ import annotations

import numpy as np
import pytest
from twins import torch_resnet, torch_twin

from convprop import models, nn

torchinfo = pytest.importorskip("torchinfo")


def torch_of(name: str, model):
    return torch_resnet(model) if name.startswith("resnet") else torch_twin(model)


@pytest.mark.parametrize("name, shape", [("lenet5", (1, 1, 28, 28)), ("vgg_small", (1, 1, 28, 28)),
                                         ("resnet8", (1, 1, 28, 28)), ("resnet20", (1, 3, 32, 32)),
                                         ("lenet5", (2, 1, 28, 28))])
def test_numbers_agree_with_torchinfo(name, shape):
    ours = models.build(name, in_channels=shape[1])
    theirs = torchinfo.summary(torch_of(name, ours), input_size=shape, verbose=0, depth=10)
    s = ours.summarize(shape)
    assert (s.total_params, s.trainable_params) == (theirs.total_params, theirs.trainable_params)
    assert s.mult_adds == theirs.total_mult_adds
    assert (s.activation_bytes, s.param_bytes) == (theirs.total_output_bytes, theirs.total_param_bytes)
    # the input's bytes: torchinfo's sys.getsizeof adds the tensor object's few dozen bytes
    assert s.input_bytes == np.prod(shape) * 4 and 0 <= theirs.total_input - s.input_bytes < 1000
    # the layers with parameters, in call order: type, output shape, parameters, multiply-adds
    mine = [(r.kind, r.output_shape, r.params, r.mult_adds) for r in s.rows if r.params]
    ref = [(i.class_name, i.output_size, i.num_params, i.macs) for i in theirs.summary_list
           if i.is_leaf_layer and i.num_params]
    assert mine == ref
    # every call, containers too, at torchinfo's depth (torch's ResNet calls one relu twice, ours two)
    assert [(r.depth, r.output_shape) for r in s.rows if r.kind != "ReLU"] == \
        [(i.depth, i.output_size) for i in theirs.summary_list if i.class_name != "ReLU"]


def test_the_table_and_its_totals():
    text = models.resnet8().summary((1, 1, 28, 28))
    lines = text.splitlines()
    assert lines[1].split()[:2] == ["Layer", "(type)"] and "Output shape" in lines[1] and "Mult-adds" in lines[1]
    assert lines[3].startswith("Sequential ") and "[1, 10]" in lines[3]
    row = next(line for line in lines if "└─conv1 (Conv2d)" in line and line.startswith("│    │"))
    assert row.split()[-3:] == ["28]", "2,304", "1,806,336"]  # layer1.0.conv1: nested two deep
    assert any(line.startswith("│    │    │    └─0 (Conv2d)") for line in lines)  # the shortcut's 1×1 conv
    for words in ("Total params: 77,754", "Trainable params: 77,754", "Non-trainable params: 0",
                  "Total mult-adds (M): 9.35", "Input size (MB): 0.00", "Forward/backward pass size (MB): 1.05",
                  "Params size (MB): 0.31", "Estimated total size (MB): 1.37"):
        assert words in lines, words


def test_summary_leaves_the_model_as_it_was():
    m = models.vgg_small()
    bn = m[1]
    before = {k: v.copy() for k, v in m.state_dict().items()}
    m.train()
    m.summary((2, 1, 28, 28))
    assert m.training and bn.training and bn._cache is None
    assert all(np.array_equal(before[k], v) for k, v in m.state_dict().items())  # running statistics untouched
    m.eval()
    m.summary((1, 1, 28, 28))
    assert not m.training


def test_several_outputs_and_a_graph():
    s = nn.Sequential(nn.MaxPool2d(2, return_indices=True)).summarize((1, 1, 4, 4))
    assert s.rows[1].output_shape == [[1, 1, 2, 2], [1, 1, 2, 2]] and "[1, 1, 2, 2], [1, 1, 2, 2]" in str(s)
    g = nn.Graph([("a", nn.Conv2d(1, 2, 3, padding=1), ["x"]), ("b", nn.ReLU(), ["a"]), ("y", nn.Add(), ["a", "b"])],
                 "x", "y")
    s = g.summarize((1, 1, 5, 5))
    assert [r.kind for r in s.rows] == ["Graph", "Conv2d", "ReLU", "Add"] and s.mult_adds == 20 * 25


@pytest.mark.parametrize("shape, words", [((1, 1, 3, 3), "input_shape [1, 1, 3, 3]: the Sequential does not take it"),
                                          ((1, 28, 28), "input_shape [1, 28, 28]: the Sequential does not take it"),
                                          ((0, 1, 28, 28), "expected (N, C, H, W)"), ((28,), "expected (N, C, H, W)")])
def test_a_shape_the_model_cannot_take_is_one_line(shape, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as e:
        models.lenet5().summary(shape)
    assert "\n" not in str(e.value)

