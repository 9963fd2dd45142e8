"""A real server (uvicorn on an ephemeral loopback port, in a thread) around an engine, for the serve tests."""

from __future__ import annotations

import base64
import io
import json

import numpy as np

from convprop.serve.app import create_app
from convprop.serve.server import Server, bind


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
