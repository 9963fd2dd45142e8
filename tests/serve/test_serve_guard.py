"""`convprop serve` as a local web server people can trust (as Jupyter): Host and Origin checks, JSON
only, bounded bodies, unknown fields refused, bad images 4xx, clients that leave mid-body routine —
each against the real command in its own process, with real HTTP requests, and its log kept clean."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
import httpx  # noqa: E402
from serve_helpers import ServeProcess, lenet_checkpoint, raw_request  # noqa: E402

from convprop.serve.inputs import MAX_BODY  # noqa: E402

JSON = {"Content-Type": "application/json"}
PIXELS = {"pixels": np.zeros((28, 28), int).tolist()}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return lenet_checkpoint(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def srv(ckpt):
    p = ServeProcess(ckpt, "--allow-host", "Example.TEST", "--allow-host", "10.1.2.3")
    yield p
    log = p.stop()
    assert "Traceback" not in log and "Exception" not in log, log


def get(srv, path, host=None, **kw):
    headers = kw.pop("headers", {})
    if host is not None:
        headers["Host"] = host
    return httpx.get(srv.url + path, headers=headers, timeout=30, **kw)


def post(srv, path, body=None, headers=None, content=None):
    content = json.dumps(body).encode() if content is None else content
    return httpx.post(srv.url + path, content=content, headers=headers or {}, timeout=30)


def one_line_error(r, status, words=""):
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert "\n" not in error and words in error, error
    return error


# ----------------------------------------------------------------------------- Host
def test_the_names_of_this_server_are_answered(srv):
    p = srv.port
    for host in (f"localhost:{p}", f"127.0.0.1:{p}", f"[::1]:{p}", f"LOCALHOST:{p}", f"[0:0:0:0:0:0:0:1]:{p}",
                 f"example.test:{p}", f"EXAMPLE.test:{p}", f"10.1.2.3:{p}"):
        assert get(srv, "/api/model", host).status_code == 200, host


@pytest.mark.parametrize("path", ["/", "/api/model", "/static/main.js", "/api/train/events", "/api/train/status",
                                  "/nowhere"])
def test_other_names_are_refused_everywhere(srv, path):
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends Host: evil.example."""
    p = srv.port
    for host in ("evil.example", f"evil.example:{p}", f"localhost:{p + 1}", "localhost", f"localhost.:{p}",
                 f"127.0.0.1.:{p}", f"localhost:{p}:{p}", f"[::1:{p}", f"::1:{p}", f"localhost:+{p}",
                 f"localhost:0{p}0", f"example.test.evil.example:{p}", f"127.0.0.2:{p}", f"local host:{p}",
                 f"localhost@evil.example:{p}", ""):
        one_line_error(get(srv, path, host), 403, "not this server" if host else "")


def test_a_missing_or_second_host_header_is_refused(srv):
    p = srv.port
    status, got = raw_request(p, b"GET /api/model HTTP/1.0\r\n\r\n")
    assert status == 403 and b"Host: missing" in got
    status, got = raw_request(p, f"GET /api/model HTTP/1.1\r\nHost: localhost:{p}\r\nHost: evil.example\r\n"
                                 "Connection: close\r\n\r\n".encode())
    assert status in (400, 403), got  # uvicorn's parser or our check


# ----------------------------------------------------------------------------- Origin
def test_another_sites_page_cannot_start_training(srv):
    """Before: a form or fetch() of any site could POST text/plain to /api/train/start and train."""
    p = srv.port
    plain = {"Content-Type": "text/plain"}
    cases = [({**plain, "Origin": "http://evil.example"}, 403, "Origin"),
             ({**JSON, "Origin": "http://evil.example"}, 403, "Origin"),
             ({**JSON, "Origin": "null"}, 403, "Origin"),
             ({**JSON, "Origin": f"https://localhost:{p}"}, 403, "Origin"),
             ({**JSON, "Origin": f"http://localhost:{p + 1}"}, 403, "Origin"),
             ({**JSON, "Origin": f"http://localhost:{p}/x"}, 403, "Origin"),
             ({**JSON, "Origin": f"http://evil.example@localhost:{p}"}, 403, "Origin"),
             ({**JSON, "Referer": "http://evil.example/page"}, 403, "Referer"),
             ({**JSON, "Referer": f"http://localhost:{p}.evil.example/"}, 403, "Referer"),
             (plain, 403, "Content-Type: application/json"),
             ({}, 403, "Content-Type: application/json"),
             ({**plain, "Origin": f"http://localhost:{p}"}, 415, "Content-Type: expected application/json"),
             ({**plain, "Referer": f"http://127.0.0.1:{p}/"}, 415, "Content-Type: expected application/json")]
    for path in ("/api/train/start", "/api/train/stop", "/api/train/restore"):
        for headers, status, words in cases:
            one_line_error(post(srv, path, {"lr": 0.001}, headers), status, words)
    assert get(srv, "/api/train/status").json()["running"] is False


def test_the_servers_own_page_and_scripts_are_answered(srv):
    p = srv.port
    for headers in ({**JSON, "Origin": f"http://localhost:{p}"}, {**JSON, "Origin": f"http://[::1]:{p}"},
                    {"Content-Type": "Application/JSON; charset=utf-8", "Origin": f"http://127.0.0.1:{p}"},
                    {**JSON, "Referer": f"http://localhost:{p}/?x=1"}, JSON):
        r = post(srv, "/api/predict", PIXELS, headers)
        assert r.status_code == 200 and len(r.json()["probs"]) == 10, (headers, r.text)


def test_a_cors_preflight_from_another_origin_is_not_granted(srv):
    for path in ("/api/train/start", "/api/predict", "/api/model"):
        r = httpx.options(srv.url + path, headers={"Origin": "http://evil.example",
                                                   "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "content-type"})
        assert r.status_code in (403, 405) and not any(k.lower().startswith("access-control") for k in r.headers)


# ----------------------------------------------------------------------------- bodies
def test_bodies_are_json_objects_of_known_fields_read_within_bounds(srv):
    one_line_error(post(srv, "/api/predict", content=b"[" * 200_000, headers=JSON), 400, "nested")
    one_line_error(post(srv, "/api/predict", content=b"{" * 1000, headers=JSON), 400, "nested")
    one_line_error(post(srv, "/api/predict", content=b'"' + b'\\"' * 500_000, headers=JSON), 400, "not valid JSON")
    one_line_error(post(srv, "/api/predict", {**PIXELS, "pixel": 1}, JSON), 400, "unknown field 'pixel'")
    one_line_error(post(srv, "/api/predict", {**PIXELS, "format": "png"}, JSON), 400, "unknown field 'format'")
    for path in ("/api/forward", "/api/backward"):  # the page sends both passes one body
        assert post(srv, path, {**PIXELS, "format": "png", "class": 3}, JSON).status_code == 200
    one_line_error(post(srv, "/api/train/stop", {"now": True}, JSON), 400, "unknown field 'now' (takes none)")
    one_line_error(post(srv, "/api/train/start", {"lr": 0.1, "epochs": 3}, JSON), 400, "unknown field 'epochs'")
    one_line_error(post(srv, "/api/predict", content=b'{"pixels": 1, "pixels": 2}', headers=JSON), 400,
                   "'pixels' appears twice")
    one_line_error(get(srv, "/api/filters?format=png&x=1"), 400, "query: unknown field 'x'")
    one_line_error(get(srv, "/api/model?x=1"), 400, "query: unknown field 'x' (takes none)")
    assert get(srv, "/api/filters?format=png").status_code == 200
    for body in (b'{"lr": NaN}', b'{"lr": Infinity}', b'{"lr": 1e400}', b'{"lr": -Infinity}'):
        one_line_error(post(srv, "/api/train/start", content=body, headers=JSON), 400, "lr")
    one_line_error(post(srv, "/api/predict", content=b"\xff\xfe{}", headers=JSON), 400, "body")
    one_line_error(post(srv, "/api/predict", content=b'{"pixels": [[' + b"1" * 400 + b"]]}", headers=JSON), 400,
                   "pixels")  # (an int too large for a float: a 500 before)
    assert get(srv, "/api/train/status").json()["running"] is False


def test_a_body_over_the_limit_is_413_before_it_is_read(srv):
    """A Content-Length of 1 TB is refused from the header; without one, counted as it arrives."""
    p = srv.port
    head = (f"POST /api/predict HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10**12}\r\n\r\n").encode()
    status, got = raw_request(p, head + b"{")
    assert status == 413 and b"expected at most" in got

    def chunks():
        for _ in range(MAX_BODY // 65536 + 2):
            yield b" " * 65536

    one_line_error(httpx.post(srv.url + "/api/predict", content=chunks(), headers=JSON, timeout=30), 413,
                   "expected at most")


def test_a_client_that_leaves_mid_body_is_routine(srv):
    """No traceback in the log (checked when the server stops), and the server answers the next request."""
    import socket

    p = srv.port
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", p)) as s:
            s.sendall(f"POST /api/predict HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: 100000\r\n\r\n{{\"pixels\": [".encode())
            time.sleep(0.2)
    time.sleep(0.5)
    assert post(srv, "/api/predict", PIXELS, JSON).status_code == 200
    log = srv.log()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log


# ----------------------------------------------------------------------------- images
def _png(size=(28, 28), mode="L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def _bad_images() -> dict[str, bytes]:
    import struct
    import zlib

    good = _png()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = lambda w, h: chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))  # noqa: E731
    sig = b"\x89PNG\r\n\x1a\n"
    return {
        "garbage": b"hello world!",
        "empty": b"",
        "truncated PNG": good[:len(good) // 2],
        "PNG signature only": sig,
        "PNG 0×0": sig + ihdr(0, 0) + chunk(b"IEND", b""),
        "PNG 100000×100000 in a few bytes": sig + ihdr(100_000, 100_000) + chunk(b"IDAT", zlib.compress(b"")) +
                                            chunk(b"IEND", b""),
        "PNG 2000×2000 of which no pixel data": sig + ihdr(2000, 2000) + chunk(b"IEND", b""),
        "PNG bad CRC": good[:20] + b"\0\0\0\0" + good[24:],
        "PNG 30 MB zlib text chunk": good[:33] + chunk(b"zTXt", b"k\0\0" + zlib.compress(bytes(30 << 20))) +
                                     good[33:],
        "JPEG header only": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        "GIF 65535×65535": b"GIF89a\xff\xff\xff\xff\x00\x00\x00;",
        "BMP huge": b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 60000, 60000, 1,
                                                                             24, 0, 0, 0, 0, 0, 0),
        "TIFF garbage IFD": b"II*\x00\x08\x00\x00\x00\xff\xff" + bytes(20),
        "SVG": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    }


def test_every_bad_image_is_a_one_line_4xx(srv):
    for name, data in _bad_images().items():
        text = base64.b64encode(data).decode()
        for image in (text, "data:image/png;base64," + text):
            r = post(srv, "/api/predict", {"image": image}, JSON)
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
            assert "\n" not in r.json()["error"], name
    for image in ("data:", "data:image/png;base64,@@@", "=" * 10, 5, None, [], {"a": 1}):
        one_line_error(post(srv, "/api/predict", {"image": image}, JSON), 400, "image")
    assert post(srv, "/api/predict", {"image": base64.b64encode(_png()).decode()}, JSON).status_code == 200


def test_bad_images_at_once_are_decoded_a_few_at_a_time(srv):
    """20 clients each sending a 4-megapixel PNG at the same time: all answered, the server alive."""
    from concurrent.futures import ThreadPoolExecutor

    big = base64.b64encode(_png((2000, 2000), "RGBA")).decode()
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda _: post(srv, "/api/predict", {"image": big}, JSON).status_code, range(20)))
    assert all(c in (200, 400) for c in codes), codes
    assert srv.alive() and get(srv, "/api/model").status_code == 200


# ----------------------------------------------------------------------------- the command
def test_allow_host_is_checked(ckpt):
    import subprocess
    import sys

    for name in ("evil.example:80", "local host", "", "a..b", "name."):
        r = subprocess.run([sys.executable, "-m", "convprop", "serve", str(ckpt), "--port", "0",
                            "--allow-host", name], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, (name, r.stderr)
        assert "--allow-host" in r.stderr
