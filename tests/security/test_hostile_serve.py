"""A hostile set for `convprop serve`, each case a raw request over a socket (nothing normalised by a
client library) to the real command in its own process, its address space capped at 1.5 GiB: huge and
many headers, bodies that never end or trickle, slowloris connections, JSON with NaN/Infinity/1e400,
deep nesting, duplicate keys, a wrong type in every field of every endpoint, path traversal on the
static files (plain and encoded), every method on every route, CORS preflights from another origin,
and Host names with another port, IPv6, a trailing dot, capitals.  Each has the answer it must get;
none may be mishandled, the server stays up, its log holds no traceback."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from serve_helpers import ServeProcess, lenet_checkpoint, raw_request  # noqa: E402

from convprop.serve.inputs import BODY_SECONDS, MAX_BODY  # noqa: E402

CAP = 3 << 29  # 1.5 GiB
PIXELS = np.zeros((28, 28), int).tolist()
ENDPOINTS = {"/api/predict": ("image", "pixels"), "/api/forward": ("image", "pixels", "format", "class"),
             "/api/backward": ("image", "pixels", "format", "class"), "/api/train/start": ("lr", "reset"),
             "/api/train/stop": (), "/api/train/restore": ()}
GET_ROUTES = ["/", "/favicon.ico", "/api/model", "/api/filters", "/api/train/status", "/static/main.js"]
WRONG = [None, True, False, 0, 1, -1, 1.5, 1e308, "", "s", "png", [], [1], [[1]], {}, {"a": 1}]
VALID = {("class", None), ("class", 0), ("class", 1), ("lr", 1), ("reset", True), ("reset", False), ("format", "png")}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    p = ServeProcess(lenet_checkpoint(tmp_path_factory.mktemp("hostile")), cap=CAP)
    yield p
    p.stop()


def http(port, method, path, body=b"", host=None, headers=(), timeout=20.0) -> tuple[int, bytes]:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}", "Connection: close", *headers]
    if body or method in ("POST", "PUT", "PATCH", "DELETE"):
        head.append(f"Content-Length: {len(body)}")
    return raw_request(port, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body, timeout)


def post(port, path, body, origin=True, content_type="application/json", **kw):
    headers = [f"Content-Type: {content_type}"] + ([f"Origin: http://127.0.0.1:{port}"] if origin else [])
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http(port, "POST", path, data, headers=headers, **kw)


class Tally:
    """The cases run and the mishandled ones (name, what came back)."""

    def __init__(self) -> None:
        self.run, self.bad = 0, []

    def check(self, name: str, got: tuple[int, bytes], ok) -> None:
        self.run += 1
        status, raw = got
        if not (ok(status) if callable(ok) else status in ok) or b"Traceback" in raw:
            self.bad.append(f"{name}: {status} {raw[:300]!r}")

    def done(self, srv) -> None:
        print(f"{self.run} hostile cases, {len(self.bad)} mishandled")
        assert not self.bad, f"{len(self.bad)} of {self.run} mishandled:\n" + "\n".join(self.bad[:20])
        assert srv.alive(), srv.log()
        assert http(srv.port, "GET", "/api/model")[0] == 200
        log = srv.log()
        assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def client_error(status: int) -> bool:
    return 400 <= status < 500


def test_hostile_headers_and_hosts(srv):
    p, t = srv.port, Tally()
    # h11 holds at most 64 KiB of a head not yet whole (what arrives whole in one read may be a little more);
    # httptools took a head of any size, every byte held
    t.check("a 100 KB header", http(p, "GET", "/api/model", headers=["X-Big: " + "a" * 100_000]),
            lambda s: s == 200 or client_error(s) or s == 0)
    t.check("a 10 MB header", http(p, "GET", "/api/model", headers=["X-Big: " + "a" * 10_000_000]),
            lambda s: client_error(s) or s == 0)
    t.check("10,000 headers", http(p, "GET", "/api/model", headers=[f"X-{i}: {i}" for i in range(10_000)]),
            lambda s: client_error(s) or s == 0)
    t.check("300 small headers", http(p, "GET", "/api/model", headers=[f"X-{i}: {i}" for i in range(300)]), {200})
    t.check("a 60 KB path", http(p, "GET", "/api/" + "a" * 60_000), lambda s: client_error(s) or s == 0)
    t.check("a header name with a space", http(p, "GET", "/api/model", headers=["X Y: 1"]), client_error)
    t.check("a request line of garbage", raw_request(p, b"\x00\xff GARBAGE\r\n\r\n"),
            lambda s: client_error(s) or s == 0)
    t.check("HTTP/2 preface", raw_request(p, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), lambda s: client_error(s) or s == 0)
    for host, ok in [(f"127.0.0.1:{p + 1}", {403}), (f"localhost:{p - 1}", {403}), (f"[::1]:{p}", {200}),
                     (f"[::2]:{p}", {403}), (f"[::ffff:127.0.0.1]:{p}", {403}), (f"[::1]:{p + 1}", {403}),
                     (f"::1:{p}", {403}), (f"localhost.:{p}", {403}), (f"127.0.0.1.:{p}", {403}),
                     (f"LOCALHOST:{p}", {200}), (f"LocalHost:{p}", {200}), (f"localhost:{p}/x", {403}),
                     (f"user@localhost:{p}", {403}), (f"localhost: {p}", {403}), (f"evil.example:{p}", {403}),
                     (f"127.0.0.1:{p}.", {403}), (f"127.1:{p}", {403}), (f"2130706433:{p}", {403}),
                     (f"0x7f.0.0.1:{p}", {403}), (f"localhost:{p + 65536}", {403})]:
        t.check(f"Host {host}", http(p, "GET", "/api/model", host=host), ok)
        t.check(f"Host {host} on a POST", http(p, "POST", "/api/predict", json.dumps({"pixels": PIXELS}).encode(),
                                               host=host, headers=["Content-Type: application/json"]), ok)
    t.check("absolute-form target of another host",
            raw_request(p, f"GET http://evil.example/api/model HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nConnection: close"
                           "\r\n\r\n".encode()), lambda s: s < 500)
    t.done(srv)


def test_hostile_bodies(srv):
    p, t = srv.port, Tally()
    for path, fields in ENDPOINTS.items():
        base = {"pixels": PIXELS} if "pixels" in fields else {}
        for field in fields:
            for v in WRONG:
                if any(field == f and type(v) is type(w) and v == w for f, w in VALID):
                    continue
                body = {"image": v} if field == "image" else {**base, field: v}
                t.check(f"{path} {field}={v!r}", post(p, path, body), {400})
        for raw in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1" * 5000):
            for field in fields:
                if field not in ("image",):
                    body = (b'{"pixels": ' + json.dumps(PIXELS).encode() + b", " if base else b"{") + \
                        f'"{field}": '.encode() + raw + b"}"
                    t.check(f"{path} {field}={raw[:10]!r}", post(p, path, body), {400})
        for body, words in [(b"[" * 200_000, b"nested"), (b'{"a":' * 100_000, b"nested"),
                            (b'{"pixels": [], "pixels": []}', b"twice"), (b"[]", b"JSON object"),
                            (b"1", b"JSON object"), (b"null", b"JSON object"), (b'"s"', b"JSON object"),
                            (b"{", b"not valid JSON"), (b"\xff", b"not valid JSON"), (b'{"zz": 1}', b"unknown field"),
                            (b'{"__proto__": {}}', b"unknown field")]:
            t.check(f"{path} {body[:20]!r}", post(p, path, body), lambda s: s == 400)
            got = post(p, path, body)
            if words not in got[1]:
                t.bad.append(f"{path} {body[:20]!r}: expected {words!r} in {got[1][-300:]!r}")
        t.check(f"{path} over the limit, declared", post(p, path, b"{" + b" " * (MAX_BODY + 10) + b"}"), {413})
        t.check(f"{path} text/plain from the page", post(p, path, {}, content_type="text/plain"), {415})
        t.check(f"{path} form from the page", post(p, path, b"a=1", content_type="application/x-www-form-urlencoded"),
                {415})
        t.check(f"{path} text/plain, no Origin", post(p, path, {}, origin=False, content_type="text/plain"), {403})
        t.check(f"{path} from another origin",
                http(p, "POST", path, b"{}", headers=["Content-Type: application/json",
                                                      "Origin: http://evil.example"]), {403})
    assert "false" in http(p, "GET", "/api/train/status")[1].decode().split('"running":')[1][:7]
    t.done(srv)


def test_hostile_paths_and_methods(srv):
    p, t = srv.port, Tally()
    for path in ["/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd",
                 "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/static/..%2f..%2f..%2fetc%2fpasswd",
                 "/static/....//....//etc/passwd", "/static/%252e%252e/app.py", "/static/..\\..\\app.py",
                 "/static/..%5c..%5capp.py", "/static//etc/passwd", "/../../etc/passwd", "/static/%00../app.py",
                 "/static/main.js/..%2f..%2fapp.py", "/static/../app.py", "/static/%2e%2e/app.py",
                 "/static/.%2e/.%2e/engine.py", "/static/%c0%ae%c0%ae/app.py", "/static/" + "../" * 50 + "etc/passwd",
                 "/%2e%2e/%2e%2e/etc/passwd", "/static/..;/app.py", "/static/main.js%00"]:
        got = http(p, "GET", path)
        t.check(f"GET {path}", got, lambda s: s in (400, 404))
        if b"root:" in got[1] or b"create_app" in got[1] or b"import" in got[1]:
            t.bad.append(f"GET {path}: a file outside static/ came back")
    own = [f"Origin: http://127.0.0.1:{p}", "Content-Type: application/json"]
    for path in [*ENDPOINTS, *GET_ROUTES, "/api/train/events"]:
        posts = path in ENDPOINTS
        for method in ("PUT", "DELETE", "PATCH"):
            t.check(f"{method} {path}", http(p, method, path, b"{}", headers=own), {405})
            t.check(f"{method} {path} from another origin",
                    http(p, method, path, b"{}",
                         headers=["Origin: http://evil.example", "Content-Type: application/json"]), {403})
            t.check(f"{method} {path} no Origin, text/plain",
                    http(p, method, path, b"{}", headers=["Content-Type: text/plain"]), {403})
        t.check(f"OPTIONS {path}", http(p, "OPTIONS", path), {405})
        pre = http(p, "OPTIONS", path, headers=["Origin: http://evil.example", "Access-Control-Request-Method: POST",
                                                "Access-Control-Request-Headers: content-type"])
        t.check(f"CORS preflight {path}", pre, {403, 405})
        if b"access-control" in pre[1].lower():
            t.bad.append(f"CORS preflight {path}: granted {pre[1][:300]!r}")
        head = http(p, "HEAD", path, timeout=3 if path.endswith("events") else 20)
        t.check(f"HEAD {path}", head, {405} if posts else {200, 204})
        if not posts and head[1].partition(b"\r\n\r\n")[2]:
            t.bad.append(f"HEAD {path}: a body came back")
        if not posts:
            t.check(f"POST {path}", http(p, "POST", path, b"{}", headers=own), {405})
    t.done(srv)


def test_bodies_that_never_end_trickle_or_never_come(srv):
    """A chunked body that never ends is cut at the limit (413); one that trickles is cut after BODY_SECONDS
    (408); 100 slowloris connections (headers never finished) and a trickling body do not stop the server
    answering others meanwhile."""
    p, t = srv.port, Tally()
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", p), timeout=30) as s:
        s.sendall(head)
        got, sent = b"", 0
        try:
            while sent < 4 * MAX_BODY:  # a body that never ends, as fast as it can go
                s.sendall(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
                sent += 0x10000
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    t.check("a chunked body that never ends", (int(got.split(b" ")[1]) if got else 0, got), {413})

    slow = [socket.create_connection(("127.0.0.1", p), timeout=5) for _ in range(100)]
    for s in slow:
        s.sendall(f"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nX-Slow: ".encode())
    trickle_result = {}

    def trickle():
        with socket.create_connection(("127.0.0.1", p), timeout=BODY_SECONDS + 30) as s:
            s.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nContent-Type: application/json\r\n"
                      "Content-Length: 1000000\r\nConnection: close\r\n\r\n".encode())
            start = time.monotonic()
            got = b""
            s.settimeout(0.5)
            while time.monotonic() - start < BODY_SECONDS + 20:
                try:
                    s.sendall(b" ")
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                    if b"\r\n\r\n" in got:
                        break
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
            trickle_result["got"] = got
            trickle_result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=trickle)
    thread.start()
    for _ in range(3):
        t.check("a request while 100 slowloris connections and a trickle are open",
                post(p, "/api/predict", {"pixels": PIXELS}), {200})
        for s in slow:
            s.sendall(b"a")
        time.sleep(0.5)
    thread.join(BODY_SECONDS + 40)
    got = trickle_result.get("got", b"")
    t.check(f"a body trickling in for {trickle_result.get('seconds', 0):.0f} s",
            (int(got.split(b" ")[1]) if got.startswith(b"HTTP/") else 0, got), {408})
    for s in slow:
        s.close()
    t.done(srv)
