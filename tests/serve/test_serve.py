"""`convprop serve`'s JSON endpoints, against a real server on an ephemeral port: every number equals
convprop's own forward and backward on the same input (and torch's autograd on the same weights);
bad requests get one-line 4xx answers and the server stays up; training streams its curves."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
import httpx  # noqa: E402
from helpers import torch  # noqa: E402
from runner import ROOT  # noqa: E402
from serve_helpers import png_data_url, sse_events, start  # noqa: E402
from twins import to_torch_state, torch_twin  # noqa: E402

import convprop.random as R  # noqa: E402
from convprop import checkpoint, models, nn  # noqa: E402
from convprop.data import load_mnist, normalize  # noqa: E402
from convprop.data.images import load_digit  # noqa: E402
from convprop.serve.engine import Engine  # noqa: E402
from convprop.serve.inputs import MAX_BODY  # noqa: E402
from convprop.serve.server import last_run_checkpoint, load_engine  # noqa: E402

TF = torch.nn.functional


@pytest.fixture(scope="module")
def server():
    R.manual_seed(0)
    engine = Engine(models.lenet5(), "a LeNet-5 with random weights")
    srv = start(engine)
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        yield srv, engine, client
    srv.close()


@pytest.fixture(scope="module")
def digits():
    x, y = load_mnist(train=False)
    return x[:3], y[:3]


def arr(enc) -> np.ndarray:
    return np.asarray(enc["data"], dtype=np.float32).reshape(enc["shape"])


def our_passes(model: nn.Sequential, x: np.ndarray, target: int):
    """convprop's own forward (layer outputs) and Sequential.backward (∂x and every parameter's .grad)."""
    model.eval()
    outs, h = [], x
    for layer in model:
        h = layer(h)
        outs.append(h)
    loss, dlogits = nn.CrossEntropyLoss()(h, np.array([target]))
    model.zero_grad()
    dx = model.backward(dlogits, input_grad=True)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    model.zero_grad()
    return outs, loss, dx, grads


def torch_passes(model: nn.Sequential, x: np.ndarray, target: int):
    """torch's autograd on the same weights: every layer's output gradient, ∂x, every parameter gradient."""
    theirs = torch_twin(model).eval()
    theirs.load_state_dict(to_torch_state(model.state_dict()))
    xt = torch.tensor(x, requires_grad=True)
    h, outs = xt, []
    for layer in theirs:
        h = layer(h)
        h.retain_grad()
        outs.append(h)
    loss = TF.cross_entropy(h, torch.tensor([target]))
    loss.backward()
    return loss.item(), [o.grad.numpy()[0] for o in outs], xt.grad.numpy()[0], \
        {n: p.grad.numpy() for n, p in theirs.named_parameters()}


def test_model_describes_every_layer(server):
    _, engine, client = server
    m = client.get("/api/model").json()
    assert [layer["type"] for layer in m["layers"]] == [type(layer).__name__ for layer in engine.model]
    assert m["layers"][0]["output_shape"] == [6, 28, 28] and m["layers"][0]["parameters"]["weight"] == [6, 1, 5, 5]
    assert m["layers"][2]["label"] == "2: MaxPool2d 2×2" and m["layers"][-1]["output_shape"] == [10]
    from convprop.explain import EQUATIONS, LAYER_RULES

    assert m["layers"][0]["equation"] == LAYER_RULES["Conv2d"] and m["equations"]["loss"] == EQUATIONS["loss"]


def test_predict_and_forward_equal_convprops_forward(server, digits):
    _, engine, client = server
    for digit in digits[0]:
        x = normalize(digit[None])
        outs, *_ = our_passes(engine.model, x, 0)
        probs = np.exp(outs[-1] - outs[-1].max()) / np.exp(outs[-1] - outs[-1].max()).sum()
        p = client.post("/api/predict", json={"pixels": digit.tolist()}).json()
        np.testing.assert_allclose(p["probs"], probs[0], rtol=1e-5, atol=1e-7)
        assert p["predicted"] == int(outs[-1].argmax()) and p["digit"] == digit.tolist()
        f = client.post("/api/forward", json={"pixels": digit.tolist()}).json()
        np.testing.assert_array_equal(arr(f["input"]), x[0])
        assert len(f["layers"]) == len(outs) == 12
        for layer, ours in zip(f["layers"], outs):
            np.testing.assert_array_equal(arr(layer["output"]), ours[0], err_msg=layer["label"])


@pytest.mark.parametrize("target", [None, 3])
def test_backward_equals_convprops_backward_and_torchs_autograd(server, digits, target):
    _, engine, client = server
    digit = digits[0][1]
    x = normalize(digit[None])
    body = {"pixels": digit.tolist(), **({} if target is None else {"class": target})}
    b = client.post("/api/backward", json=body).json()
    outs, loss, dx, grads = our_passes(engine.model, x, 0)
    cls = int(np.argsort(-outs[-1][0], kind="stable")[1]) if target is None else target  # default: the runner-up
    assert b["class"] == cls and b["predicted"] == int(outs[-1].argmax())
    outs, loss, dx, grads = our_passes(engine.model, x, cls)
    assert b["loss"] == pytest.approx(loss, rel=1e-6)
    np.testing.assert_array_equal(arr(b["input_grad"]), dx[0])  # exactly Sequential.backward's ∂x
    np.testing.assert_array_equal(arr(b["saliency"]), np.abs(dx[0]).max(axis=0))
    t_loss, t_outs, t_dx, t_grads = torch_passes(engine.model, x, cls)
    assert b["loss"] == pytest.approx(t_loss, rel=1e-5)
    scale = np.abs(t_dx).max()
    np.testing.assert_allclose(arr(b["saliency"]), np.abs(t_dx).max(axis=0), rtol=1e-4, atol=1e-6 * scale)
    for k, layer in enumerate(b["layers"]):
        assert layer["index"] == k
        g = arr(layer["grad_output"])  # ∂L/∂(output of k) = ∂L/∂(input of k+1)
        np.testing.assert_allclose(g, t_outs[k], rtol=1e-4, atol=1e-6 * np.abs(t_outs[k]).max(),
                                   err_msg=layer["label"])
        if k + 1 < len(b["layers"]):
            np.testing.assert_array_equal(arr(b["layers"][k + 1]["grad_input"]), arr(layer["grad_output"]))
        for name, p in layer["parameters"].items():
            key = f"{k}.{name}"
            np.testing.assert_array_equal(arr(p["grad"]), grads[key], err_msg=key)  # exactly .grad of backward
            np.testing.assert_allclose(arr(p["grad"]), t_grads[key], rtol=1e-4,
                                       atol=1e-6 * np.abs(t_grads[key]).max(), err_msg=key)
            np.testing.assert_array_equal(arr(p["value"]), engine.model.state_dict()[key])
    np.testing.assert_array_equal(arr(b["layers"][0]["grad_input"]), dx[0])


def test_pooling_routes_and_conv_pieces(server, digits):
    """Max pooling: the mask is where each window's maximum is (torch: ∂ Σ maxpool(a) / ∂a); conv: every
    K ⋆ᵀ ∂Z piece equals torch's conv_transpose2d, every patch product A_patch·∂Z_ij, and they sum to ∂W_o."""
    _, engine, client = server
    digit = digits[0][2]
    x = normalize(digit[None])
    b = client.post("/api/backward", json={"pixels": digit.tolist(), "class": 5}).json()
    f = client.post("/api/forward", json={"pixels": digit.tolist()}).json()
    outs = [arr(layer["output"]) for layer in f["layers"]]
    for k in (2, 5):
        a = torch.tensor(outs[k - 1][None], requires_grad=True)
        TF.max_pool2d(a, 2).sum().backward()
        np.testing.assert_array_equal(arr(b["layers"][k]["routing"]), a.grad.numpy()[0])
        assert b["layers"][k]["routing_equation"].startswith("mask = 0")
    for k, inputs in ((0, x[0]), (3, outs[2])):
        layer, module = b["layers"][k], engine.model[k]
        pc = layer["pieces"]
        assert pc["sum_check"] < 1e-6 and pc["transposed_equation"].startswith("∂A = K ⋆ᵀ ∂Z")
        dz = arr(layer["grad_output"])
        energies = np.abs(dz).sum(axis=(1, 2))
        assert [t["channel"] for t in pc["transposed"]] == list(np.argsort(-energies, kind="stable")[:4])
        for t in pc["transposed"]:
            o = t["channel"]
            ref = TF.conv_transpose2d(torch.tensor(dz[None, o:o + 1]), torch.tensor(module.weight.data[o:o + 1]),
                                      padding=module.padding)
            np.testing.assert_allclose(arr(t["contribution"]), ref.numpy()[0], rtol=1e-5, atol=1e-9)
        o, p = pc["channel"], module.padding
        padded = np.pad(inputs, ((0, 0), (p, p), (p, p)))
        for q in pc["patches"]:
            i, j = q["position"]
            np.testing.assert_array_equal(arr(q["patch"]), padded[:, i:i + 5, j:j + 5])
            assert q["dz"] == dz[o, i, j]
            np.testing.assert_allclose(arr(q["product"]), padded[:, i:i + 5, j:j + 5] * dz[o, i, j], rtol=1e-6)


def test_average_pooling_spreads_evenly():
    """An average-pooling LeNet-5: the routing is ∂ Σ avgpool(a) / ∂a = 1/r on every cell (torch's autograd)."""
    R.manual_seed(2)
    engine = Engine(models.lenet5(pool="avg"), "avg")
    srv = start(engine)
    try:
        digit = load_mnist(train=False)[0][0]
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            b = client.post("/api/backward", json={"pixels": digit.tolist()}).json()
            outs = [arr(layer["output"]) for layer in
                    client.post("/api/forward", json={"pixels": digit.tolist()}).json()["layers"]]
        for k in (2, 5):
            a = torch.tensor(outs[k - 1][None], requires_grad=True)
            TF.avg_pool2d(a, 2).sum().backward()
            np.testing.assert_array_equal(arr(b["layers"][k]["routing"]), a.grad.numpy()[0])
            assert b["layers"][k]["routing_equation"] == "window ij gets ∂Z_ij / r in each of its cells"
        _, _, t_dx, _ = torch_passes(engine.model, normalize(digit[None]), b["class"])
        np.testing.assert_allclose(arr(b["input_grad"]), t_dx, rtol=1e-4, atol=1e-6 * np.abs(t_dx).max())
    finally:
        srv.close()


def test_png_format_has_the_shapes_and_pictures(server, digits):
    from PIL import Image

    _, _, client = server
    b = client.post("/api/backward", json={"pixels": digits[0][0].tolist(), "format": "png", "class": 1}).json()
    conv = b["layers"][0]
    for enc, shape, size in ((conv["grad_output"], [6, 28, 28], [28, 6 * 29 - 1]),
                             (conv["parameters"]["weight"]["grad"], [6, 1, 5, 5], [5, 6 * 6 - 1]),
                             (b["layers"][9]["parameters"]["weight"]["grad"], [84, 120], [84, 120]),
                             (b["saliency"], [28, 28], [28, 28])):
        assert enc["shape"] == shape and enc["size"] == size
        im = np.asarray(Image.open(io.BytesIO(base64.b64decode(enc["png"]))).convert("RGBA"))
        assert im.shape == (*size, 4)
        assert im[..., :3][im[..., 3] > 0].std() > 5  # not blank
    assert conv["grad_output"]["cmap"] == "signed" and conv["grad_output"]["min"] == -conv["grad_output"]["max"]
    assert b["saliency"]["cmap"] == "hot"


def test_an_image_is_prepared_as_convprop_predict_prepares_it(server, digits, tmp_path):
    _, engine, client = server
    url = png_data_url(digits[0][0])
    path = tmp_path / "d.png"
    path.write_bytes(base64.b64decode(url.partition(",")[2]))
    p = client.post("/api/predict", json={"image": url}).json()
    assert p["digit"] == load_digit(str(path)).tolist()
    assert p["predicted"] == int(engine.predict(engine.input(load_digit(str(path)))).argmax())


BAD = [  # (body, status, the start of the one-line message)
    (b"{", 400, "body: not valid JSON"),
    (b"[1, 2]", 400, "body: expected a JSON object, got list"),
    (b'{"pixels": [[1, 2], [3, 4]]}', 400, "pixels: expected shape (28, 28), got (2, 2)"),
    (b'{"pixels": [[1, 2], [3]]}', 400, "pixels: expected a 28×28 array"),
    (b'{"pixels": "x"}', 400, "pixels: expected a 28×28 array"),
    (b'{"image": "/etc/passwd"}', 400, "image: not valid base64"),
    (b'{"image": "aGVsbG8gd29ybGQh"}', 400, "image: not an image convprop can read"),
    (b'{"image": 5}', 400, "image: expected a base64 string"),
    (b"{}", 400, 'body: expected exactly one of "image"'),
    (b'{"format": "jpeg", "pixels": [[0]]}', 400, "format: expected one of"),
]


@pytest.mark.parametrize("path", ["/api/predict", "/api/forward", "/api/backward"])
def test_bad_requests_get_one_line_4xx_and_the_server_stays_up(server, digits, path):
    _, _, client = server
    cases = BAD + [(b'{"pixels": ' + str(digits[0][0].tolist()).encode() + b', "class": 10}', 400,
                    "class: expected an integer class in 0..9, got 10")] * (path == "/api/backward")
    for body, status, message in cases:
        if path == "/api/predict" and message.startswith("format"):
            continue  # predict has no format
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert error.startswith(message) and "\n" not in error, (body, error)
    assert client.get("/api/model").status_code == 200


def test_limits_bodies_and_images_and_unknown_routes(server):
    from PIL import Image

    _, _, client = server
    json_type = {"Content-Type": "application/json"}
    r = client.post("/api/predict", content=b" " * (MAX_BODY + 1), headers=json_type)
    assert r.status_code == 413 and r.json()["error"].startswith("body: expected at most")

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(MAX_BODY // 65536 + 2):
            yield b" " * 65536

    r = client.post("/api/predict", content=chunks(), headers=json_type)
    assert r.status_code == 413
    buf = io.BytesIO()
    Image.new("L", (2500, 2000)).save(buf, "PNG")  # 5 Mpx in a few kB: refused before it is decoded
    r = client.post("/api/predict", json={"image": base64.b64encode(buf.getvalue()).decode()})
    assert r.status_code == 400
    assert "image: 2500×2000 = 5,000,000 pixels, over the limit of 4,000,000" in r.json()["error"]
    assert client.get("/etc/passwd").status_code == 404 and client.get("/../README.md").status_code == 404
    assert client.get("/api/predict").status_code == 405
    assert client.get("/").text.startswith("<!doctype html>")
    assert client.get("/api/model").status_code == 200


def test_the_page_is_es_modules_served_as_javascript(server):
    """index.html loads main.js as a module; every module it imports, and theirs, is served as JavaScript (a
    browser refuses a module of another MIME type) from the package's static folder, and nothing outside it."""
    import re

    _, _, client = server
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="static/main.js">' in page.text
    seen, todo = set(), ["main.js"]
    while todo:
        name = todo.pop()
        seen.add(name)
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), (name, r.headers)
        assert r.headers["cache-control"] == "no-cache"
        todo += [m for m in re.findall(r'^import .* from "\./([\w-]+\.js)";$', r.text, re.M) if m not in seen]
    assert {"main.js", "api.js", "draw.js", "layers.js", "train.js"} <= seen
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/missing.js", "/app.js"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"].endswith("no such endpoint"), path
    assert client.post("/static/main.js", headers={"Content-Type": "application/json"}).status_code == 405


def test_the_server_imports_the_equations_of_explain_alone():
    """convprop serve shows explain's equations; it must not load the topics (their examples and checks)."""
    code = ("import sys, convprop.serve.app, convprop.serve.server; "
            "assert 'convprop.explain.equations' in sys.modules; "
            "loaded = [m for m in ('convprop.explain.topics', 'convprop.explain.render') if m in sys.modules]; "
            "assert not loaded, loaded")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_training_streams_curves_and_filters_and_stops(server):
    _, engine, client = server
    before = engine.model[0].weight.data.copy()
    r = client.post("/api/train/start", json={"reset": True, "lr": 0.002})
    assert r.status_code == 200 and r.json()["running"]
    assert client.post("/api/train/start", json={}).status_code == 409
    assert client.post("/api/train/restore", json={}).status_code == 409
    events = sse_events(client, "/api/train/events", lambda ev: sum(len(e["points"]) for e in ev) >= 30)
    points = [p for e in events for p in e["points"]]
    assert [p[0] for p in points] == list(range(1, len(points) + 1))  # every step once, in order
    assert all(np.isfinite(p[1]) and 0 <= p[2] <= 1 for p in points)
    assert events[-1]["filters"]["shape"] == [6, 1, 5, 5] and "png" in events[-1]["filters"]
    s = client.post("/api/train/stop", json={}).json()
    assert not s["running"] and s["step"] >= 30 and s["error"] is None
    *whole, last = s["epochs"]  # the epoch stopped in is a row too, evaluated, marked partial
    assert last["step"] == s["step"] and 0 <= last["test_acc"] <= 1 and not any(e["partial"] for e in whole)
    if not whole:  # stopped in the first epoch: a share of it, never "1 epochs done"
        assert s["progress"] == f"0 epochs + {int(100 * s['step'] / 79)} % of epoch 1", s["progress"]
    assert not np.array_equal(engine.model[0].weight.data, before)
    assert client.post("/api/train/start", json={"lr": "fast"}).status_code == 400
    assert client.post("/api/train/restore", json={}).status_code == 200
    np.testing.assert_array_equal(engine.model[0].weight.data, before)
    np.testing.assert_array_equal(arr(client.get("/api/filters").json()), before)


def test_last_run_and_training_first(tmp_path, monkeypatch):
    """Without CKPT: the newest run's checkpoint.npz (what a default run tests); without one, a `convprop
    train` run (its Run) first."""
    from convprop.run import Settings

    monkeypatch.chdir(tmp_path)
    assert last_run_checkpoint() is None
    small = Settings(epochs=1, train_size=256, test_size=100)  # the default run, made small for the test
    engine = load_engine(None, log=lambda _: None, train_settings=small)
    assert engine.source == os.path.join("runs", "lenet5-seed0", "checkpoint.npz") and engine.meta["epoch"] == 1
    metrics = json.loads(open(os.path.join("runs", "lenet5-seed0", "metrics.json")).read())
    assert engine.meta["test_accuracy"] == metrics["test_accuracy"] is not None  # measured on that checkpoint
    assert last_run_checkpoint() == engine.source
    R.manual_seed(1)
    checkpoint.save("runs/newer/checkpoint.npz", models.lenet5(), "lenet5", {"num_classes": 10})
    assert last_run_checkpoint() == os.path.join("runs", "newer", "checkpoint.npz")
    assert load_engine(None, log=lambda _: None).source == last_run_checkpoint()


def test_cli_serve_on_a_public_host_says_so_and_stops_on_ctrl_c(tmp_path):
    R.manual_seed(0)
    ckpt = checkpoint.save(str(tmp_path / "c.npz"), models.lenet5(), "lenet5", {"num_classes": 10})
    proc = subprocess.Popen([sys.executable, "-m", "convprop", "serve", ckpt, "--host", "0.0.0.0", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        url = lines[1].split("open ")[1].split()[0]
        port = url.rsplit(":", 1)[1].strip("/")
        assert lines[0].startswith("convprop serve: lenet5 from ")
        m = httpx.get(f"http://127.0.0.1:{port}/api/model", timeout=30).json()
        assert m["source"] == ckpt and len(m["layers"]) == 12
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "not only this machine's loopback (--host 0.0.0.0)" in err and "Traceback" not in err


def test_cli_serve_user_errors_are_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args, message in ((["--port", "70000"], "--port: expected 0..65535, got 70000"),
                              (["--port", str(port)], f"--port {port}: cannot listen on 127.0.0.1:{port}"),
                              ([str(tmp_path / "missing.npz"), "--port", "0"], "no such checkpoint file")):
            r = subprocess.run([sys.executable, "-m", "convprop", "serve", *args], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 2 and r.stderr.startswith("convprop: error: ") and message in r.stderr, r.stderr
            assert r.stderr.count("\n") == 1


def test_requests_wait_for_a_training_step_not_for_training(server, digits):
    """Predictions while training is running: answered between steps."""
    _, _, client = server
    client.post("/api/train/start", json={"reset": False})
    try:
        t = time.perf_counter()
        for _ in range(5):
            assert client.post("/api/predict", json={"pixels": digits[0][0].tolist()}).status_code == 200
        assert time.perf_counter() - t < 30
        assert client.get("/api/train/status").json()["running"]
    finally:
        client.post("/api/train/stop", json={})
        client.post("/api/train/restore", json={})


def test_load_benchmark_runs_at_smoke_size():
    """benchmarks.serve at smoke size: every request answered (no timing asserted: machines are noisy)."""

    r = subprocess.run([sys.executable, "-m", "benchmarks.serve", "--smoke"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "40/40 ok from 4 concurrent clients" in r.stdout and "p95" in r.stdout, r.stdout


def test_the_listening_socket_is_tcp_so_connections_get_nodelay():
    """asyncio sets TCP_NODELAY only on sockets made with proto IPPROTO_TCP; without it every response's body
    waited ~40 ms for the client's delayed ACK of its headers."""
    import socket

    from convprop.serve.server import bind

    with bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
