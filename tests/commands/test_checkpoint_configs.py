"""A checkpoint that `checkpoint.save` writes with any config the model builders accept loads again
everywhere: checkpoint.load, `convprop evaluate`, `predict`, `export` and the server's loader (which
refuses, in one line, a model of other than 1×28×28 inputs) — a property test over the builders'
arguments; a config a checkpoint could not hold is refused when saving, in one line, not when loading."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convprop import checkpoint, cli, models
from convprop.data import load_mnist

DTYPES = st.sampled_from([None, np.float32, np.float64, "float32", "float64", np.dtype("float64")])


@st.composite
def configs(draw):
    """(name, config): a builder and arguments it accepts, dtype in any of the spellings it takes."""
    name = draw(st.sampled_from(sorted(models.MODELS)))
    takes = inspect.signature(models.MODELS[name]).parameters
    config = {}
    if draw(st.booleans()):
        config["num_classes"] = draw(st.sampled_from([1, 2, 10, 17]) | st.integers(1, 10_000))
    if draw(st.booleans()):
        config["in_channels"] = draw(st.integers(1, 4))
    if "width" in takes and draw(st.booleans()):
        config["width"] = draw(st.integers(1, 8))
    for key, choices in models.CONFIG_CHOICES.items():
        if key in takes and draw(st.booleans()):
            config[key] = draw(st.sampled_from(sorted(choices)))
    dtype = draw(DTYPES)
    if dtype is not None:
        config["dtype"] = dtype
    if draw(st.booleans()):  # as a config read back from JSON or computed with NumPy
        config = {k: np.int64(v) if isinstance(v, int) else v for k, v in config.items()}
    return name, config


def _fits_mnist(config) -> bool:
    return int(config.get("in_channels", 1)) == 1 and int(config.get("num_classes", 10)) >= 10


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """(a digit's PNG, a directory of 20 test digits as MNIST's IDX files): evaluation kept small."""
    from datafiles import write_idx
    from PIL import Image

    root = tmp_path_factory.mktemp("img")
    x, y = load_mnist(train=False)
    Image.fromarray(x[0]).save(root / "digit.png")
    for split in ("train", "t10k"):
        write_idx(root / f"{split}-images-idx3-ubyte", x[:20])
        write_idx(root / f"{split}-labels-idx1-ubyte", y[:20].astype(np.uint8))
    return root / "digit.png", root


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(configs())
def test_a_saved_checkpoint_of_any_builder_config_loads_everywhere(tmp_path_factory, image, case):
    from convprop.serve.server import load_engine

    name, config = case
    model = models.MODELS[name](**config)
    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint.npz")
    checkpoint.save(path, model, name, config)
    ckpt = checkpoint.load(path)
    again = checkpoint.restore_model(ckpt, path)
    assert again.dtype == model.dtype
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and np.array_equal(a, b)
    if int(config.get("in_channels", 1)) == 1:  # what the page draws: 1×28×28
        engine = load_engine(path, log=lambda *_: None)
        assert engine.model.dtype == model.dtype
    else:  # refused in one line naming the input it takes
        with pytest.raises(ValueError, match=rf"takes {int(config['in_channels'])}×\d+×\d+ images"):
            load_engine(path, log=lambda *_: None)
    out = tmp_path_factory.mktemp("out")
    assert cli.main(["export", path, str(out / "w.safetensors")]) == 0
    if _fits_mnist(config):  # data of this shape and these classes at hand: the bundled MNIST sample
        assert cli.main(["evaluate", path, "--data", str(image[1])]) == 0
        assert cli.main(["predict", path, str(image[0])]) == 0
        assert cli.main(["export", path, str(out / "m.onnx")]) == 0


@pytest.mark.parametrize("config, words", [({"width": 300}, "width: expected an integer from 1 to 256"),
                                            ({"dtype": np.float16}, "dtype"),
                                            ({"dtype": np.float32}, "dtype float32, but the model's is float64"),
                                            ({"depth": 8}, "config: vgg_small takes")])
def test_a_config_no_checkpoint_can_hold_is_refused_when_saving(tmp_path, config, words):
    model = models.vgg_small(dtype=np.float64)
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        checkpoint.save(str(tmp_path / "c.npz"), model, "vgg_small", config)
    assert not (tmp_path / "c.npz").exists()
