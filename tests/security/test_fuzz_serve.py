"""Fuzzing `convprop serve`'s endpoints: generated methods, paths, headers, content types and bodies.

Two layers, each seeded (a failure names the seed and the request):

- in this process, through Starlette's TestClient, for volume: 1,200 requests in CI;
- against the real command in its own process, its address space capped at 1.5 GiB (as
  `ulimit -v 1572864`), over real HTTP: 300 requests in CI.

Every answer must be a 2xx or 4xx (never a 5xx), the server must be alive at the end, and its log
must hold no traceback.  The generator mixes valid requests (the page's own: right Host, Origin and
Content-Type, a digit as pixels or a PNG) with mutations of each part: the Host, Origin and Referer
headers (other names, ports, schemes, garbage), the content type, the method, the path (known routes,
static files, traversal), the JSON (values of every type in every field, unknown and duplicate keys,
nesting, NaN/Infinity/huge numbers, truncation, byte flips) and the images (byte flips in a valid PNG,
lying headers).  A dedicated run: CONVPROP_FUZZ_EXAMPLES=20000 python -m pytest tests/security/test_fuzz_serve.py
(20,000 in process and 5,000 against the real server).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
import h11  # noqa: E402
import httpx  # noqa: E402
from serve_helpers import ServeProcess, lenet_checkpoint  # noqa: E402

import convprop.random as R  # noqa: E402
from convprop import models  # noqa: E402

SCALE = int(os.environ.get("CONVPROP_FUZZ_EXAMPLES", "0"))
IN_PROCESS = SCALE or 1200
REAL = SCALE // 4 if SCALE else 300
CAP = 3 << 29  # 1.5 GiB

POSTS = ["/api/predict", "/api/forward", "/api/backward", "/api/train/start", "/api/train/stop",
         "/api/train/restore"]
GETS = ["/", "/api/model", "/api/filters", "/api/train/status", "/static/main.js", "/static/style.css",
        "/favicon.ico"]
ODD_PATHS = ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2f..%2fetc/passwd", "/static/",
             "/static", "/api", "/api/", "/api/predict/", "//api/model", "/static/%00", "/static/main.js%00.png",
             "/%2e%2e/%2e%2e/etc/passwd", "/static/" + "a" * 3000, "/api/train", "/nowhere", "/static/\\..\\x"]
METHODS = ["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"]
FIELDS = ["image", "pixels", "format", "class", "lr", "reset"]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "application/jsonx",
                 "application/json;;;", "json", "\x00"]


def png(rng: np.random.Generator, size: int = 28) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def lying_png(rng: np.random.Generator) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    w, h = (int(v) for v in rng.choice([0, 1, 28, 3000, 65535, 2**31 - 1], 2))
    depth, color = int(rng.choice([1, 8, 16, 3])), int(rng.choice([0, 2, 3, 4, 6, 7]))
    body = zlib.compress(bytes(int(rng.integers(0, 5000))))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)) +
            chunk(b"IDAT", body) + chunk(b"IEND", b""))


def flip(rng: np.random.Generator, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 8))):
        kind = rng.integers(4)
        if not b:
            break
        i = int(rng.integers(len(b)))
        if kind == 0:
            b[i] = int(rng.integers(256))
        elif kind == 1:
            del b[i:i + int(rng.integers(1, 64))]
        elif kind == 2:
            b[i:i] = bytes(rng.integers(0, 256, int(rng.integers(1, 32)), dtype=np.uint8))
        else:
            b = b[:i]
    return bytes(b)


def value(rng: np.random.Generator, depth: int = 0):
    """A JSON value of any type, sometimes an awkward one."""
    choices = [lambda: None, lambda: True, lambda: False, lambda: int(rng.integers(-10, 300)),
               lambda: float(rng.normal() * 10.0 ** int(rng.integers(-3, 5))), lambda: "", lambda: "png",
               lambda: "x" * int(rng.integers(1, 100)), lambda: np.zeros((28, 28), int).tolist(),
               lambda: rng.integers(-5, 300, (28, int(rng.choice([27, 28, 29])))).tolist(),
               lambda: [value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))],
               lambda: {str(rng.integers(9)): value(rng, depth + 1)}]
    return choices[int(rng.integers(len(choices) if depth < 3 else len(choices) - 2))]()


def body(rng: np.random.Generator) -> bytes:
    """A request body: a valid one, or a mutation of one."""
    doc: dict = {}
    if rng.random() < 0.5:
        doc["pixels"] = rng.integers(0, 256, (28, 28)).tolist()
    elif rng.random() < 0.7:
        doc["image"] = ("data:image/png;base64," * int(rng.integers(2))) + base64.b64encode(
            png(rng, int(rng.choice([28, 70, 140]))) if rng.random() < 0.5 else
            (lying_png(rng) if rng.random() < 0.5 else flip(rng, png(rng)))).decode()
    for name in FIELDS:
        if rng.random() < 0.25:
            doc[name] = value(rng)
    if rng.random() < 0.1:
        doc[str(value(rng))[:20]] = value(rng)
    text = json.dumps(doc).encode()
    r = rng.random()
    if r < 0.45:
        return text
    if r < 0.6:
        return flip(rng, text)
    if r < 0.7:
        n = int(rng.integers(1, 5000))
        return rng.choice([b"[" * n, b"{\"a\":" * n + b"1" + b"}" * n, b"[" * n + b"]" * n])
    if r < 0.8:
        swap = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" * 400, b"-0", b"1e-400"])
        return text.replace(b"0", swap, int(rng.integers(1, 3))) if b"0" in text else b'{"lr": ' + swap + b"}"
    if r < 0.87:
        return text[:-1] + b', "' + (text[2:8] if len(text) > 8 else b"lr") + b'": 1}'  # a duplicate key, maybe
    if r < 0.93:
        return bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
    return rng.choice([b"", b"null", b"[]", b"1", b'"s"', b"{}", b"\xef\xbb\xbf{}", b"{\"pixels\": [[", b" " * 100])


def request(rng: np.random.Generator, host: str) -> tuple[str, str, dict, bytes]:
    """(method, path, headers, body), most of them near the page's own requests."""
    r = rng.random()
    if r < 0.6:
        path, method = str(rng.choice(POSTS)), "POST"
    elif r < 0.85:
        path, method = str(rng.choice(GETS)), "GET"
    else:
        path, method = str(rng.choice(ODD_PATHS + POSTS + GETS)), str(rng.choice(METHODS))
    if path == "/api/filters" and rng.random() < 0.5:
        path += "?" + rng.choice(["format=png", "format=list", "format=x", "x=1", "format=png&format=list", "%zz"])
    if rng.random() < 0.1:
        method = str(rng.choice(METHODS))
    own = f"http://{host}"
    headers = {"Content-Type": "application/json", "Origin": own}
    if rng.random() < 0.15:
        headers["Host"] = str(rng.choice(["evil.example", host.upper(), host + ".", host.split(":")[0],
                                          host + "0", "[::1]:1", "", "a" * 300, "localhost:99999"]))
    if rng.random() < 0.2:
        headers["Origin"] = str(rng.choice(["null", "http://evil.example", own + "/", "https://" + host, "",
                                            own.upper(), "http://" + host.split(":")[0], "file://", "\x7f"]))
    if rng.random() < 0.1:
        del headers["Origin"]
        if rng.random() < 0.5:
            headers["Referer"] = str(rng.choice([own + "/", "http://evil.example/", "garbage", own + "@evil"]))
    if rng.random() < 0.2:
        headers["Content-Type"] = str(rng.choice(CONTENT_TYPES))
    if rng.random() < 0.05:
        headers["Content-Length"] = str(rng.choice(["-1", "abc", "99999999999999999999", "1e3", " 5"]))
    if rng.random() < 0.05:
        headers[str(rng.choice(["X-" + "a" * 200, "Transfer-Encoding", "Expect", "Connection"]))] = \
            str(rng.choice(["chunked", "100-continue", "close", "x" * 1000, "gzip"]))
    data = body(rng) if method in ("POST", "PUT", "PATCH", "DELETE") or rng.random() < 0.05 else b""
    return method, path, headers, data


def send(client, req) -> tuple[int, str] | None:
    """(status, body) of a generated request, or None for one the client itself will not send (a header httpx
    refuses); the server's own refusals (a dropped connection) are the caller's to judge."""
    method, path, headers, data = req
    try:
        r = client.request(method, path, headers=headers, content=data)
    except (httpx.InvalidURL, httpx.LocalProtocolError, h11.LocalProtocolError, ValueError, UnicodeEncodeError):
        return None
    return r.status_code, r.text


def describe(seed: int, k: int, req) -> str:
    method, path, headers, data = req
    return f"seed {seed}, request {k}: {method} {path} {headers} {data[:200]!r}"


def _engine():
    from convprop.serve.engine import Engine

    R.manual_seed(0)
    return Engine(models.lenet5(), "a LeNet-5 with random weights")


def test_the_endpoints_answer_generated_requests_with_2xx_or_4xx_in_process():
    from starlette.testclient import TestClient

    from convprop.serve.app import create_app

    app = create_app(_engine(), allow_hosts=["testserver"])
    trainer = app.state.trainer
    started = []
    trainer.start = lambda lr, reset: started.append((lr, reset))  # checked, not run: the fuzzing stays fast
    seed = 20_260_101
    rng = np.random.default_rng(seed)
    bad, counts = [], {}
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        for k in range(IN_PROCESS):
            req = request(rng, "testserver")
            answer = send(client, req)
            if answer is None:
                continue
            status, text = answer
            counts[status] = counts.get(status, 0) + 1
            if not (200 <= status < 300 or 400 <= status < 500):
                bad.append(describe(seed, k, req) + f" → {status} {text[:300]}")
    assert not bad, "\n".join(bad[:10])
    assert sum(counts.values()) >= 0.9 * IN_PROCESS and counts.get(200, 0) > 50 and counts.get(400, 0) > 50, counts
    assert {403, 415, 404, 405} <= counts.keys() and started, counts


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory):
    srv = ServeProcess(lenet_checkpoint(tmp_path_factory.mktemp("fuzz")), cap=CAP)
    yield srv
    srv.stop()


def test_the_real_server_answers_generated_requests_under_a_1_5_gib_cap(capped_server):
    srv = capped_server
    host = f"127.0.0.1:{srv.port}"
    seed = 20_260_102
    rng = np.random.default_rng(seed)
    bad, counts = [], {}
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        for k in range(REAL):
            req = request(rng, host)
            try:
                answer = send(client, req)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:  # a request uvicorn refuses
                answer = (0, "")
                if not srv.alive():
                    bad.append(describe(seed, k, req) + f" → the server died ({e})")
                    break
            if answer is None:
                continue
            status, text = answer
            counts[status] = counts.get(status, 0) + 1
            if not (status == 0 or 200 <= status < 300 or 400 <= status < 500):
                bad.append(describe(seed, k, req) + f" → {status} {text[:300]}")
            if req[1] == "/api/train/start" and status == 200:
                client.post("/api/train/stop", json={})
        client.post("/api/train/stop", json={})
    log = srv.log()
    assert not bad, "\n".join(bad[:10])
    assert srv.alive() and client is not None
    assert httpx.get(srv.url + "/api/model", timeout=60).status_code == 200
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]
    assert sum(counts.values()) >= 0.9 * REAL and counts.get(200, 0) > 10 and counts.get(400, 0) > 10, counts
