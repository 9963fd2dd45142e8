"""The page in a real headless browser (Debian's chromium, driven by Playwright): draw a stroke, see the
prediction, every layer's forward and gradient pictures non-blank, switch the class, train and watch the
curve grow.  Screenshots go to the test's directory; with CONVPROP_UPDATE_SCREENSHOTS=1 also to docs/
(the README's picture is made this way)."""

from __future__ import annotations

import base64
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("starlette")
from runner import DOCS  # noqa: E402
from serve_helpers import png_data_url, start  # noqa: E402

import convprop.random as R  # noqa: E402
from convprop import checkpoint, models, nn, optim  # noqa: E402
from convprop.data import DataLoader, load_mnist  # noqa: E402
from convprop.serve.engine import Engine  # noqa: E402
from convprop.serve.server import load_engine  # noqa: E402
from convprop.train import fit  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# the non-blank check of every picture: drawn into a canvas, its pixels' standard deviation
BLANK_JS = """imgs => imgs.map(img => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0, s = 0, s2 = 0;
  for (let i = 0; i < d.length; i += 4)
    if (d[i + 3]) { const v = d[i] + 2 * d[i + 1] + d[i + 2]; n++; s += v; s2 += v * v; }
  return {caption: img.nextSibling ? img.nextSibling.textContent : '', complete: img.complete && img.naturalWidth > 0,
          std: n ? Math.sqrt(Math.max(s2 / n - (s / n) ** 2, 0)) : 0};
})"""


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:  # CI installs it (.ci/run): there a failure; elsewhere a skip that says what to install
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "no chromium on PATH: the browser tests need it (Debian/Ubuntu: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """LeNet-5 trained for 2 epochs on the bundled sample, saved as a `convprop train` run would be."""
    root = tmp_path_factory.mktemp("serve")
    R.manual_seed(0)
    model = models.lenet5()
    images, labels = load_mnist(train=True)
    opt = optim.Adam(model.parameters(), lr=3e-3)
    history = fit(model, nn.CrossEntropyLoss(), opt, DataLoader(images, labels, 64, shuffle=True, max_shift=1), 2,
                  DataLoader(*(a[:1000] for a in load_mnist(train=False)), 1000), progress=False, log=None)
    cwd = os.getcwd()
    os.chdir(root)  # so that the page names the checkpoint as a run's: runs/lenet5-seed0/checkpoint.npz
    try:
        checkpoint.save("runs/lenet5-seed0/checkpoint.npz", model, "lenet5", {"num_classes": 10}, opt, epoch=2,
                        history=history)
        engine = load_engine(None, log=lambda _: None)
    finally:
        os.chdir(cwd)
    srv = start(engine)
    yield srv
    srv.close()


def watch_errors(page) -> list[str]:
    """The page's uncaught exceptions and console errors (a module that fails to load, a failed request), as
    they happen."""
    errors = []
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.on("console", lambda m: errors.append(f"console: {m.text} at {m.location}") if m.type == "error" else None)
    return errors


def non_blank(page, selector: str) -> list[dict]:
    pictures = page.eval_on_selector_all(selector, BLANK_JS)
    assert pictures, f"no pictures match {selector}"
    blank = [p["caption"] for p in pictures if not (p["complete"] and p["std"] > 1)]
    assert not blank, f"blank pictures: {blank}"
    return pictures


# every picture and caption of a layer's row inside its own column: [what spills over] (empty: none)
SPILL_JS = """() => { const bad = [];
  for (const cols of document.querySelectorAll('#layers .cols')) {
    const [f, b] = cols.children, fr = f.getBoundingClientRect(), br = b.getBoundingClientRect();
    for (const e of f.querySelectorAll('img, figcaption')) if (e.getBoundingClientRect().right > fr.right + 1)
      bad.push('forward ' + cols.parentElement.querySelector('h3').textContent);
    for (const e of b.querySelectorAll('img, figcaption')) if (e.getBoundingClientRect().right > br.right + 1)
      bad.push('backward ' + cols.parentElement.querySelector('h3').textContent);
  } return bad; }"""


def no_overlap(page) -> None:
    """The layer rows' forward pictures stay out of the backward column, at the widths people use."""
    for width in (1400, 1920):
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(100)
        spills = page.evaluate(SPILL_JS)
        assert not spills, f"at {width} px: {spills[:3]}"
    page.set_viewport_size({"width": 1400, "height": 1000})


def draw_seven(page) -> None:
    box = page.locator("#pad").bounding_box()
    points = [(80, 70), (200, 70), (190, 110), (150, 180), (130, 232)]
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=6)
    page.mouse.up()


def screenshot(page, name: str, tmp_path) -> None:
    page.screenshot(path=str(tmp_path / name))
    if os.environ.get("CONVPROP_UPDATE_SCREENSHOTS") == "1":
        page.screenshot(path=str(DOCS / name))


def test_draw_see_every_layer_switch_class_and_train(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = watch_errors(page)
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelector('#model-info').textContent.includes('lenet5')")
    assert "runs/lenet5-seed0/checkpoint.npz" in page.text_content("#model-info")

    # draw: the prediction while drawing, then both passes when the stroke ends
    draw_seven(page)
    page.wait_for_selector("#layers[data-state=ready]", timeout=60_000)
    assert page.locator("#bars .bar").count() == 10
    predicted = int(page.get_attribute("#bars", "data-predicted"))
    assert predicted == 7, "a drawn 7 after two epochs of training"
    shown = [float(t[:-1]) for t in page.locator("#bars .bar .p").all_text_contents()]  # "15.4%" per class
    cls = int(page.get_attribute("#layers", "data-class"))  # the default class: the runner-up
    assert cls != predicted and shown[cls] == max(p for k, p in enumerate(shown) if k != predicted)
    assert page.locator("#bars .bar.selected").get_attribute("data-k") == str(cls)
    assert "not the predicted class" in page.text_content("#layers .layer h3")
    layers = page.locator("#layers .layer[data-type]")
    assert layers.count() == 12
    titles = page.locator("#layers .layer h3").all_text_contents()
    assert any(t.startswith("0: Conv2d 1→6, 5×5, pad 2") and "(6, 28, 28)" in t for t in titles)
    assert any(t.startswith("2: MaxPool2d 2×2") and "(6, 14, 14)" in t for t in titles)
    non_blank(page, "#layers .layer .col:first-child figure.panel img")  # forward: every layer's output
    grads = non_blank(page, "#layers .panels.grad figure.panel img")  # backward: ∂L/∂A, ∂W, routing
    assert len(grads) >= 12 + 5 * 2 + 2  # every layer's ∂L/∂(output), 5 layers' ∂W and ∂b, 2 pooling masks
    non_blank(page, "#layers .pieces figure.panel img")  # K ⋆ᵀ ∂Z by channel, patch ⊙ ∂Z_ij
    captions = " ".join(p["caption"] for p in grads)
    assert "argmax mask" in captions and "∂L/∂weight" in captions
    text = page.text_content("#layers")
    for eq in ("∂A = K ⋆ᵀ ∂Z", "O_ij = A_patch_ij ⊙ ∂Z_ij", "mask = 0;  mask[indices] += ∂Z^l", "∂Z = ∂A ⊙ [Z > 0]"):
        assert eq in text
    assert "black 0 0" not in text and "black 0 … white" in text  # captions say what the colours mean
    assert "the largest |∂L/∂x| is" in page.text_content("#layers .layer h3")  # the gradient's scale
    no_overlap(page)
    saliency_before = page.get_attribute("#layers figure.panel img >> nth=2", "src")

    # switch the class of the backward pass: click the bar of another digit
    analyses = int(page.get_attribute("body", "data-analyses"))
    page.click("#bars .bar[data-k='3']")
    page.wait_for_function(f"document.body.dataset.analyses > {analyses}")
    page.wait_for_selector("#layers[data-class='3']")
    assert page.locator("#bars .bar.selected").get_attribute("data-k") == "3"
    assert "for class 3" in page.text_content("#layers .layer h3")
    assert page.get_attribute("#layers figure.panel img >> nth=2", "src") != saliency_before
    non_blank(page, "#layers .panels.grad figure.panel img")
    screenshot(page, "serve.png", tmp_path)

    # training: start from random weights, watch the loss curve grow, stop
    page.click("nav .tab[data-tab=train]")
    page.wait_for_selector("#filters img")
    filters_before = page.get_attribute("#filters img", "src")
    page.click("#train-start")
    page.wait_for_function("Number(document.querySelector('#loss-chart').dataset.points) >= 40", timeout=120_000)
    grown = int(page.get_attribute("#loss-chart", "data-points"))
    page.wait_for_function(f"Number(document.querySelector('#loss-chart').dataset.points) > {grown}")
    screenshot(page, "serve-training.png", tmp_path)
    page.click("#train-stop")
    page.wait_for_function("document.querySelector('#train-status').textContent.startsWith('Not training')")
    assert page.get_attribute("#filters img", "src") != filters_before  # the first-layer filters changed
    non_blank(page, "#filters img")
    chart = page.eval_on_selector("#loss-chart", "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, "
                                                 "c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) "
                                                 "if (d[i] < 100 && d[i + 2] > 150) n++; return n; }")
    assert chart > 50, "the loss curve is drawn"
    stopped = int(page.get_attribute("#loss-chart", "data-points"))
    page.wait_for_timeout(800)
    assert int(page.get_attribute("#loss-chart", "data-points")) == stopped  # stopped means stopped
    analyses = int(page.get_attribute("body", "data-analyses"))
    page.click("#train-restore")
    page.wait_for_function(f"document.body.dataset.analyses > {analyses}")  # the digit redrawn, restored weights
    assert not errors, errors
    page.close()


def test_touch_drawing_and_a_dropped_image(browser, server):
    """A finger on a touch screen draws as the mouse does; an image file given to the page is classified."""
    context = browser.new_context(viewport={"width": 800, "height": 900}, has_touch=True)
    page = context.new_page()
    errors = watch_errors(page)
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelector('#model-info').textContent.includes('lenet5')")
    box = page.locator("#pad").bounding_box()
    cdp = context.new_cdp_session(page)
    points = [(140, 50), (140, 100), (140, 160), (140, 230)]  # a "1", as touch events
    for k, (x, y) in enumerate(points):
        kind = "touchStart" if k == 0 else "touchMove"
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": box["x"] + x, "y": box["y"] + y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.wait_for_selector("#layers[data-state=ready]", timeout=60_000)
    assert page.get_attribute("#bars", "data-predicted") == "1"

    x, y = load_mnist(train=False)
    png = base64.b64decode(png_data_url(x[1], 200).partition(",")[2])  # a 2, dark ink on white paper
    analyses = int(page.get_attribute("body", "data-analyses"))
    page.set_input_files("#file", files=[{"name": "two.png", "mimeType": "image/png", "buffer": png}])
    page.wait_for_function(f"document.body.dataset.analyses > {analyses}", timeout=60_000)
    assert page.get_attribute("#bars", "data-predicted") == str(y[1])
    digit = page.eval_on_selector("#digit", "c => Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data)")
    assert np.asarray(digit).reshape(28, 28, 4)[..., 0].max() > 200  # what the model sees, drawn

    # dragged and dropped onto the pad: a 0
    png = base64.b64decode(png_data_url(x[3], 120).partition(",")[2])
    analyses = int(page.get_attribute("body", "data-analyses"))
    drop = page.evaluate_handle("""bytes => { const t = new DataTransfer();
        t.items.add(new File([new Uint8Array(bytes)], 'zero.png', {type: 'image/png'})); return t; }""", list(png))
    page.dispatch_event("#pad", "drop", {"dataTransfer": drop})
    page.wait_for_function(f"document.body.dataset.analyses > {analyses}", timeout=60_000)
    assert y[3] == 0 and page.get_attribute("#bars", "data-predicted") == "0"
    assert not errors, errors
    context.close()


@pytest.fixture(scope="module")
def resnet_server():
    """A ResNet-8, trained briefly (300 steps' worth would take minutes: 40 steps on the bundled sample)."""
    R.manual_seed(0)
    model = models.resnet8()
    images, labels = load_mnist(train=True)
    fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=3e-3),
        DataLoader(images[:1280], labels[:1280], 32, shuffle=True), 1, progress=False, log=None)
    srv = start(Engine(model, "a ResNet-8 trained for 40 steps", {"model": "resnet8"}))
    yield srv
    srv.close()


def test_a_resnet_is_drawn_block_by_block_with_its_forks_and_joins(browser, resnet_server, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = watch_errors(page)
    page.goto(resnet_server.url + "/")
    page.wait_for_function("document.querySelector('#model-info').textContent.includes('resnet8')")
    draw_seven(page)
    page.wait_for_selector("#layers[data-state=ready]", timeout=120_000)
    blocks = page.locator("#layers .block")
    assert blocks.count() == 3
    assert [blocks.nth(i).get_attribute("data-block") for i in range(3)] == ["layer1.0", "layer2.0", "layer3.0"]
    for i in range(3):  # each block: its fork, its join, both lanes named
        block = blocks.nth(i)
        assert block.locator(".layer.fork[data-type=fork]").count() == 1
        assert block.locator(".layer.join[data-type=join]").count() == 1
        assert block.locator(".diagram .lane-f").text_content().startswith("branch f: conv1 → bn1 → relu1")
    assert "identity" in blocks.nth(0).locator(".diagram .lane-s").text_content()
    assert blocks.nth(1).locator(".layer.branch-shortcut").count() == 2  # downsample.0, downsample.1
    assert page.locator("#layers .layer[data-type=Sequential], #layers .layer[data-type=BasicBlock]").count() == 0
    non_blank(page, "#layers .layer.fork .panels.grad figure.panel img")  # ∂x via f, via the shortcut, the sum
    non_blank(page, "#layers .layer.join .col:first-child figure.panel img")  # f(x), shortcut(x), s
    text = page.text_content("#layers")
    assert "∂x = ∂x|_f + ∂x|_shortcut" in text and "∂f(x) = ∂shortcut(x) = ∂s" in text
    no_overlap(page)
    page.locator("#layers .block[data-block='layer2.0']").scroll_into_view_if_needed()
    page.evaluate("document.querySelector(\"#layers .block[data-block='layer2.0']\").scrollIntoView()")
    screenshot(page, "serve-resnet.png", tmp_path)
    assert not errors, errors
    page.close()
