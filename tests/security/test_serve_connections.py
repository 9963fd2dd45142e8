"""The server's connection limits, in process (limits shortened): a connection that trickles its request
head is closed after HEAD_TIMEOUT however often it sends a byte; one past MAX_CONNECTIONS is closed at once;
others are answered meanwhile and afterwards."""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("starlette")
import httpx  # noqa: E402
from serve_helpers import start  # noqa: E402

import convprop.random as R  # noqa: E402
from convprop import models  # noqa: E402
from convprop.serve import server  # noqa: E402
from convprop.serve.engine import Engine  # noqa: E402


@pytest.fixture
def srv(monkeypatch):
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 1.5)
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 20)
    R.manual_seed(0)
    s = start(Engine(models.lenet5(), "a LeNet-5 with random weights"))
    yield s
    s.close()


def closed(sock: socket.socket) -> bool:
    """Whether the server closed this connection (no answer: EOF or a reset)."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_trickled_head_is_cut_after_the_timeout(srv):
    port = int(srv.url.rsplit(":", 1)[1])
    slow = [socket.create_connection(("127.0.0.1", port), timeout=0.2) for _ in range(5)]
    for s in slow:
        s.sendall(f"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())
    start, cut = time.monotonic(), {}
    while len(cut) < len(slow) and time.monotonic() - start < 10:
        assert httpx.get(srv.url + "/api/model").status_code == 200  # others are answered meanwhile
        for i, s in enumerate(slow):
            if i not in cut:
                try:
                    s.sendall(b"a")  # a byte now and then: no keep-alive timer would ever fire
                except (BrokenPipeError, ConnectionResetError):
                    cut[i] = time.monotonic() - start
                    continue
                if closed(s):
                    cut[i] = time.monotonic() - start
    assert len(cut) == len(slow) and all(1.4 < t < 4 for t in cut.values()), cut
    for s in slow:
        s.close()


def test_a_connection_past_the_cap_is_closed_and_the_server_recovers(srv):
    port = int(srv.url.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(20)]
    time.sleep(0.3)
    extra = socket.create_connection(("127.0.0.1", port), timeout=2)
    extra.sendall(f"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert closed(extra)
    for s in held + [extra]:
        s.close()
    time.sleep(0.3)
    assert httpx.get(srv.url + "/api/model").status_code == 200


def test_a_kept_alive_connection_gets_the_head_timeout_again_after_each_response(srv):
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)
        s.sendall(f"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())
        s.settimeout(0.2)
        start = time.monotonic()
        while not closed(s) and time.monotonic() - start < 8:
            s.sendall(b"a")
        assert 1.4 < time.monotonic() - start + 0.5 < 4.5
