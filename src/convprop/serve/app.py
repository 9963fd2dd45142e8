"""`convprop serve`: the page and its JSON endpoints (documented in docs/serve.md), on Starlette + uvicorn.

Requests are bounded (MAX_BODY bytes, MAX_IMAGE_PIXELS pixels); every bad request gets HTTP 4xx and a
one-line {"error": …}; no endpoint opens a path the client names (the page's three files are read
from the package once, at start).
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import socket
import sys
from importlib.resources import files

import numpy as np

from .._extras import install
from .arrays import FORMATS, encode
from .engine import Busy, Engine, InputError, describe_layer

MAX_BODY = 2 * 1024 * 1024
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _imports():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ImportError(f"convprop serve needs Starlette and uvicorn: {install('serve')}") from None


async def _body(request) -> dict:
    """The request's JSON object, read up to MAX_BODY bytes (413 beyond, 400 if it is not JSON)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise HTTPError(413, f"body: expected at most {MAX_BODY:,} bytes, got {length}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPError(413, f"body: expected at most {MAX_BODY:,} bytes, got more")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"body: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(body, dict):
        raise HTTPError(400, f"body: expected a JSON object, got {type(body).__name__}")
    return body


def _format(body: dict) -> str:
    fmt = body.get("format", "list")
    if fmt not in FORMATS:
        raise InputError(f"format: expected one of {', '.join(map(repr, FORMATS))}, got {fmt!r}")
    return fmt


def _floats(a) -> list:
    return [float(v) for v in np.asarray(a).ravel()]


def create_app(engine: Engine):
    """The ASGI app for one engine (its model, lock and trainer)."""
    _imports()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    pages = {route: ((files(__package__) / "static" / name).read_bytes(), kind)
             for route, (name, kind) in STATIC.items()}

    def static(request):
        content, kind = pages[request.url.path]
        return Response(content, media_type=kind, headers={"Cache-Control": "no-cache"})

    def endpoint(fn, needs_body=True):
        """fn(body) run in a worker thread; InputError → 400, HTTPError → its status, one line each."""
        async def handler(request):
            try:
                body = await _body(request) if needs_body else dict(request.query_params)
                result = await run_in_threadpool(fn, body)
            except HTTPError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            except InputError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            except Busy as e:  # the trainer's state forbids it now (already running, …)
                return JSONResponse({"error": str(e)}, status_code=409)
            return JSONResponse(result)
        return handler

    def model_info(_):
        return engine.describe()

    def predict(body):
        digit = _digit(body)
        probs = engine.predict(engine.input(digit))
        return {"probs": _floats(probs), "predicted": int(probs.argmax()), "digit": digit.tolist()}

    def forward(body):
        fmt, digit = _format(body), _digit(body)
        x = engine.input(digit)
        outs, probs = engine.forward(x)
        return {"probs": _floats(probs), "predicted": int(probs.argmax()), "digit": digit.tolist(),
                "input": encode(x[0], fmt, "gray"),
                "layers": [{"index": k, "type": type(layer).__name__, "label": describe_layer(k, layer),
                            "output": encode(o[0], fmt)} for (k, layer), o in zip(enumerate(engine.model), outs)]}

    def backward(body):
        fmt, digit = _format(body), _digit(body)
        target = body.get("class")
        r = engine.backward(engine.input(digit), target)
        dx = r["input_grad"][0]
        layers = []
        for e in r["layers"]:
            entry = {k: e[k] for k in ("index", "type", "label", "equation")}
            entry["grad_output"] = encode(e["grad_output"][0], fmt)
            entry["grad_input"] = encode(e["grad_input"][0], fmt)
            entry["parameters"] = {n: {"value": encode(p["value"], fmt), "grad": encode(p["grad"], fmt, "signed")}
                                   for n, p in e["parameters"].items()}
            if "routing" in e:
                entry["routing"] = encode(e["routing"][0], fmt, "gray")
                entry["routing_equation"] = e["routing_equation"]
            if "pieces" in e:
                pc = e["pieces"]
                entry["pieces"] = {
                    "transposed_equation": pc["transposed_equation"], "patch_equation": pc["patch_equation"],
                    "bias_equation": pc["bias_equation"], "channel": pc["channel"], "sum_check": pc["sum_check"],
                    "transposed": [{"channel": t["channel"], "dz": encode(t["dz"], fmt, "signed"),
                                    "kernel": encode(t["kernel"], fmt, "signed"),
                                    "contribution": encode(t["contribution"], fmt, "signed")}
                                   for t in pc["transposed"]],
                    "patches": [{"position": q["position"], "dz": q["dz"], "patch": encode(q["patch"], fmt),
                                 "product": encode(q["product"], fmt, "signed")} for q in pc["patches"]]}
            layers.append(entry)
        return {"class": r["class"], "loss": r["loss"], "probs": _floats(r["probs"]), "predicted": r["predicted"],
                "digit": digit.tolist(), "input": encode(engine.input(digit)[0], fmt, "gray"),
                "input_grad": encode(dx, fmt, "signed"), "saliency": encode(np.abs(dx).max(axis=0), fmt, "hot"),
                "layers": layers}

    def filters(body):
        fmt = _format(body)
        return _filters(engine, fmt)

    def train_start(body):
        lr = body.get("lr", 1e-3)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 1:
            raise InputError(f"lr: expected a number in (0, 1], got {lr!r}")
        reset = body.get("reset", False)
        if not isinstance(reset, bool):
            raise InputError(f"reset: expected true or false, got {reset!r}")
        engine.trainer.start(float(lr), reset)
        return engine.trainer.state()

    def train_stop(_):
        engine.trainer.stop()
        return engine.trainer.state()

    def train_restore(_):
        engine.trainer.restore()
        return engine.trainer.state()

    def train_status(_):
        return engine.trainer.state()

    async def train_events(request):
        """Server-sent events: every 0.25 s while anything changed, {state since the last event, filters}."""
        async def stream():
            since, last, run = 0, None, None
            while not app.state.closing:
                if engine.trainer.run != run:  # a reset: send the new curves from their start
                    since, run = 0, engine.trainer.run
                s = engine.trainer.state(since)
                key = (s["run"], s["step"], s["running"], s["epoch"], s["error"])
                if key != last:
                    s["filters"] = await run_in_threadpool(_filters, engine, "png")
                    since, last = s["next"], key
                    yield f"data: {json.dumps(s)}\n\n"
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.25)
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    routes = [Route(path, static) for path in STATIC] + [Route("/favicon.ico", lambda _: Response(status_code=204))]
    routes += [Route("/api/model", endpoint(model_info, False)),
               Route("/api/predict", endpoint(predict), methods=["POST"]),
               Route("/api/forward", endpoint(forward), methods=["POST"]),
               Route("/api/backward", endpoint(backward), methods=["POST"]),
               Route("/api/filters", endpoint(filters, False)),
               Route("/api/train/start", endpoint(train_start), methods=["POST"]),
               Route("/api/train/stop", endpoint(train_stop), methods=["POST"]),
               Route("/api/train/restore", endpoint(train_restore), methods=["POST"]),
               Route("/api/train/status", endpoint(train_status, False)),
               Route("/api/train/events", train_events)]

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        return JSONResponse({"error": f"{request.method} {request.url.path}: "
                                      f"{'no such endpoint' if status == 404 else 'not allowed'}"},
                            status_code=status)

    async def server_error(request, exc):
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 500: server_error})
    app.state.closing = False
    app.state.engine = engine
    return app


def _digit(body: dict) -> np.ndarray:
    from .engine import digit_from_request

    return digit_from_request(body)


def _filters(engine: Engine, fmt: str) -> dict:
    from .. import nn

    for layer in engine.model:
        if isinstance(layer, nn.Conv2d):
            engine._acquire()
            try:
                w = layer.weight.data.copy()
            finally:
                engine.lock.release()
            return encode(w, fmt, "signed")
    raise InputError("model: has no Conv2d layer to show filters of")


# --------------------------------------------------------------------------- the command
def last_run_checkpoint(root: str = "runs") -> str | None:
    """The checkpoint.npz of the most recent `convprop train` run under root (by modification time)."""
    found = glob.glob(os.path.join(root, "*", "checkpoint.npz"))
    return max(found, key=os.path.getmtime) if found else None


def load_engine(ckpt_path: str | None, log=print, train_settings=None) -> Engine:
    """The engine for CKPT; without one, the last `convprop train` run's, or train first: the default run
    (LeNet-5, `convprop train`'s Run, with its progress bar), or one of `train_settings` (a run.Settings)."""
    from .. import checkpoint

    if ckpt_path is None:
        ckpt_path = last_run_checkpoint()
        if ckpt_path is None:
            from ..run import Settings, run_training

            log("convprop serve: no checkpoint given and no runs/*/checkpoint.npz here: training the default "
                "LeNet-5 first, as convprop train does")
            ckpt_path = run_training(train_settings or Settings(), log=log).ckpt_path
        else:
            log(f"convprop serve: using the last training run's checkpoint, {ckpt_path}")
    ckpt = checkpoint.load(ckpt_path)
    model = checkpoint.restore_model(ckpt, ckpt_path)
    meta = ckpt["meta"]
    history = meta.get("history") or []
    return Engine(model, ckpt_path, {"model": meta["model"]["name"], "config": meta["model"].get("config", {}),
                                     "epoch": meta.get("epoch"),
                                     "test_accuracy": history[-1].get("test_acc") if history else None})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one); a one-line error if it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"--host {host!r}: cannot resolve ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    # proto IPPROTO_TCP, so that asyncio sets TCP_NODELAY on each connection: without it a response's body
    # waits for the client's (delayed, ~40 ms) ACK of its headers
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(128)
    return sock


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """uvicorn serving an app on a bound socket, in this thread (`run`) or another (`start`/`stop`)."""

    def __init__(self, app, sock: socket.socket) -> None:
        import uvicorn

        self.app, self.sock = app, sock
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.close()

    def start(self) -> Server:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def close(self) -> None:
        self.app.state.closing = True
        self.app.state.engine.trainer.stop()
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        self.sock.close()


def serve(ckpt_path: str | None = None, host: str = "127.0.0.1", port: int = 8000) -> int:
    """`convprop serve`: load (or train) a model and serve the page until Ctrl-C."""
    _imports()
    if not 0 <= port <= 65535:
        raise ValueError(f"--port: expected 0..65535, got {port}")
    sock = bind(host, port)  # before loading or training: a busy port fails at once
    try:
        engine = load_engine(ckpt_path)
    except BaseException:
        sock.close()
        raise
    server = Server(create_app(engine), sock)
    model = engine.meta.get("model", "model")
    acc = engine.meta.get("test_accuracy")
    print(f"convprop serve: {model} from {engine.source}" + (f" (test accuracy {acc:.2%})" if acc else ""))
    if not is_loopback(host):
        print(f"convprop serve: listening on {host}, not only this machine's loopback (--host {host}): anyone who "
              "can reach this address can use the page and start training", file=sys.stderr)
    print(f"convprop serve: open {server.url}/ (Ctrl-C to stop)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn stops on Ctrl-C, then raises it again
        pass
    print("convprop serve: stopped")
    return 0
