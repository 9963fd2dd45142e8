"""A real server (uvicorn on an ephemeral loopback port, in a thread) around an engine, for the serve tests."""

from __future__ import annotations

import base64
import io
import json

import numpy as np

from convprop.serve.app import create_app
from convprop.serve.server import Server, bind


def lenet_checkpoint(directory):
    """directory/checkpoint.npz: a LeNet-5 of random weights (seed 0), as `convprop serve` reads one."""
    import convprop.random as R
    from convprop import checkpoint, models

    R.manual_seed(0)
    path = directory / "checkpoint.npz"
    checkpoint.save(str(path), models.lenet5(), "lenet5", {"num_classes": 10})
    return path


def start(engine) -> Server:
    return Server(create_app(engine), bind("127.0.0.1", 0)).start()  # port 0: a free port, never a fixed one


def png_data_url(digit: np.ndarray, size: int = 140, invert: bool = True) -> str:
    """A digit as a browser would send it: a bigger PNG (dark ink on white paper if invert), as a data: URL."""
    from PIL import Image

    im = Image.fromarray((255 - digit) if invert else digit).resize((size, size))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sse_events(client, url: str, until, timeout: float = 60.0) -> list[dict]:
    """The server-sent events of url, parsed, until until(events) is true (or the timeout)."""
    events = []
    with client.stream("GET", url, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
                if until(events):
                    break
    return events


class ServeProcess:
    """`convprop serve CKPT --port 0 *args` in its own process (address space capped at `cap` bytes if given);
    `url`, `port`, `log()` (its stderr so far), `alive()`, `stop()`."""

    def __init__(self, ckpt, *args: str, cap: int | None = None, cwd=None) -> None:
        import os
        import re
        import resource
        import subprocess
        import sys
        import tempfile

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

        self.err = tempfile.TemporaryFile()
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "convprop", "serve", str(ckpt), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=self.err, text=True, cwd=cwd, env=env,
                                     preexec_fn=limit if cap else None)
        for line in self.proc.stdout:
            m = re.search(r"open (http://\S+)/ ", line)
            if m:
                self.url = m.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                return
        self.proc.wait(10)
        raise RuntimeError(f"convprop serve did not start: {self.log()}")

    def log(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        """Ctrl-C, then its stderr."""
        import signal

        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        return self.log()


def raw_request(port: int, data: bytes, timeout: float = 10.0, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send raw bytes to the server and read its answer until it closes or times out: (status or 0, bytes)."""
    import socket

    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed before all was sent
            pass
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
                if b"\r\n\r\n" in got and b"content-length:" in got.lower():
                    head, _, rest = got.partition(b"\r\n\r\n")
                    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    if len(rest) >= n:
                        break
        except (TimeoutError, ConnectionResetError):
            pass
    status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.") else 0
    return status, got
