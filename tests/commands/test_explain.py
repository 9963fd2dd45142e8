"""`convprop explain`: the numbers it prints are the gradients (checked on values, not on text)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import torch
from runner import DOCS

from convprop.explain import TOPICS, explain, render_markdown, render_text

VARIANTS = [dict(), dict(stride=2, size=5, kernel=3, padding=1), dict(seed=3, size=5, kernel=3),
            dict(stride=3, size=7, kernel=2)]


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_every_topic_checks_itself_against_central_differences(topic, variant):
    opts = VARIANTS[variant]
    if topic in ("linear", "network"):
        opts = {k: v for k, v in opts.items() if k in ("seed",)}
    if topic == "maxpool" and opts.get("padding"):
        opts = {**opts, "padding": 1}
    e = explain(topic, **opts)
    assert e.checks
    for c in e.checks:
        err = float(np.abs(np.asarray(c.analytic) - np.asarray(c.reference)).max())
        assert (err < 1e-6 * max(1.0, c.scale)) == c.agree and c.ok, (c.name, err)
    text = render_text(e)
    assert max(len(line) for line in text.splitlines()) <= 80  # fits an 80-column terminal
    assert "MISMATCH" not in text and "MISMATCH" not in render_markdown(e)


def _step(e, title_part):
    return next(s for s in e.steps if title_part in s.title)


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_conv_explanation_equals_torch_and_shows_the_double_flip_is_wrong(variant):
    opts = VARIANTS[variant]
    e = explain("conv", **opts)
    fwd = _step(e, "Forward").arrays
    K, Z = fwd["K"], fwd["Z"]
    dZ = _step(e, "Upstream").arrays["∂Z"]
    s, p = opts.get("stride", 1), opts.get("padding", 0)
    A = next(v for k, v in fwd.items() if k.startswith("A^(l-1)"))
    A = A[p: A.shape[0] - p, p: A.shape[1] - p] if p else A
    at, kt = torch.tensor(A[None, None], requires_grad=True), torch.tensor(K, requires_grad=True)
    zt = torch.nn.functional.conv2d(at, kt, torch.tensor(fwd["B"]), stride=s, padding=p)
    np.testing.assert_allclose(zt.detach().numpy(), Z)
    zt.backward(torch.tensor(dZ))
    grads = _step(e, "transposed convolution").arrays
    np.testing.assert_allclose(grads["∂A (K ⋆ᵀ ∂Z)"][0, 0], at.grad.numpy()[0, 0], atol=1e-12)
    np.testing.assert_allclose(grads["∂A (corr. route)"][0, 0], at.grad.numpy()[0, 0], atol=1e-12)
    np.testing.assert_allclose(_step(e, "∂W").arrays["Σ = ∂W"], kt.grad.numpy(), atol=1e-12)
    wrong = _step(e, "literally").arrays["(K^F) ⋆ᵀ ∂Z"]
    assert np.abs(wrong - at.grad.numpy()).max() > 0.5


def test_maxpool_explanation_shows_indices_mask_and_unpooling():
    e = explain("maxpool")
    fwd = _step(e, "Forward").arrays
    Zp, A = fwd["Z^(l-1)"], fwd["A^(l-1)"]
    idx = _step(e, "argmax").arrays["indices"]
    at = torch.tensor(A)
    _, tidx = torch.nn.functional.max_pool2d(at, 2, return_indices=True)
    np.testing.assert_array_equal(idx, tidx.numpy())
    unpool = _step(e, "Max-unpool").arrays
    assert not unpool["zero mask"].any()
    last = _step(e, "activation").arrays
    np.testing.assert_array_equal(last["act'(Z^(l-1))"], (Zp > 0).astype(float))
    np.testing.assert_array_equal(last["∂Z^(l-1)"], unpool["max-unpooled"] * (Zp > 0))


def test_avgpool_explanation_spreads_and_sums_overlaps():
    e = explain("avgpool")  # 2×2 windows, stride 1: overlapping
    spreads = _step(e, "Spread").arrays
    total = sum(spreads.values())
    np.testing.assert_allclose(total, _step(e, "overlap").arrays["∂A"][0, 0])
    assert _step(e, "overlap").arrays["windows per cell"].max() == 4


def test_cli_explain_runs_every_topic_and_exits_0():
    r = subprocess.run([sys.executable, "-m", "convprop", "explain", "all"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("-- checks") == len(TOPICS) and "agrees" in r.stdout


def test_docs_explain_md_is_generated_from_the_command():
    doc = DOCS / "explain.md"
    r = subprocess.run([sys.executable, "-m", "convprop", "explain", "all", "--format", "markdown"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0
    assert doc.read_text() == r.stdout, "regenerate: convprop explain all --format markdown > docs/explain.md"


# --------------------------------------------------------------------------- bounded, honest checks
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "convprop", "explain", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, flag", [
    (["conv", "--size", "100000"], "--size"), (["conv", "--size", "2000"], "--size"),
    (["maxpool", "--kernel", "999"], "--kernel"), (["conv", "--padding", "1000000000"], "--padding"),
    (["network", "--stride", "2"], "--stride"), (["linear", "--kernel", "3"], "--kernel")])
def test_sizes_are_bounded_and_unused_flags_refused_in_one_line(args, flag):
    r = _cli(*args)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("convprop: error:") and flag in r.stderr, r.stderr
    if flag != "--stride" and "linear" not in args:
        assert "16" in r.stderr  # the limit


def test_all_applies_each_flag_to_the_topics_that_take_it():
    r = _cli("all", "--stride", "2", "--size", "6")
    assert r.returncode == 0 and "MISMATCH" not in r.stdout, r.stdout[-2000:]


@pytest.mark.parametrize("topic", TOPICS)
@pytest.mark.parametrize("size", [8, 12, 16])
def test_large_examples_check_real_gradients(topic, size):
    """At sizes >= 8 the network used to saturate: every gradient ~1e-14, and the checks said "agrees"."""
    e = explain(topic, size=size, seed=size)
    assert e.ok, [(c.name, c.max_error, c.verdict) for c in e.checks if not c.ok]
    assert all(c.scale > 1e-3 for c in e.checks if c.agree)  # no check of (near-)zeros


def test_a_check_scales_its_tolerance_and_refuses_to_compare_only_zeros():
    from convprop.explain import Check

    big = np.full(3, 8000.0)
    assert Check("sum of many terms", big + 8e-6, big).ok  # float round-off of large values: agrees
    assert not Check("wrong", big + 1.0, big).ok
    zeros = Check("dead", np.zeros(3), np.full(3, 1e-14))
    assert not zeros.ok and "only zeros" in zeros.verdict
