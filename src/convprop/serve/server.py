"""`convprop serve` the command: the engine for a checkpoint (or a first training run), a listening
socket, and uvicorn serving the app on it."""

from __future__ import annotations

import glob
import os
import socket
import sys

from .app import create_app, require
from .engine import Engine

MAX_HEAD = 64 * 1024  # bytes of a request line and headers
HEAD_TIMEOUT = 10.0  # seconds a connection may take to send a request's line and headers (slowloris)
MAX_CONNECTIONS = 256  # open at once; one more is closed as soon as it is accepted


def last_run_checkpoint(root: str = "runs") -> str | None:
    """The checkpoint of the most recent `convprop train` run under root (by its checkpoint.npz's modification
    time): its checkpoint.npz (the last epoch's, the one a default run tests), as every command reads a run
    directory."""
    found = glob.glob(os.path.join(root, "*", "checkpoint.npz"))
    return max(found, key=os.path.getmtime) if found else None


def _test_accuracy(ckpt_path: str, history: list) -> float | None:
    """The run's test accuracy where its metrics.json says it was measured on this checkpoint (a run tests
    once, at the end); else the last epoch's test score of a run from before the validation split."""
    import json

    try:
        with open(os.path.join(os.path.dirname(ckpt_path), "metrics.json"), "rb") as f:
            m = json.loads(f.read(1 << 24))
        tested = m.get("test_checkpoint")
        if isinstance(tested, str) and os.path.samefile(tested, ckpt_path) and \
                isinstance(m.get("test_accuracy"), (int, float)):
            return float(m["test_accuracy"])
    except (OSError, ValueError, AttributeError):
        pass
    return history[-1].get("test_acc") if history and isinstance(history[-1], dict) else None


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
            run = run_training(train_settings or Settings(), log=log)
            ckpt_path = run.ckpt_path
        else:
            log(f"convprop serve: using the last training run's checkpoint, {ckpt_path}")
    ckpt = checkpoint.load(ckpt_path)
    model = checkpoint.restore_model(ckpt, ckpt_path)
    meta = ckpt["meta"]
    history = meta.get("history") or []
    return Engine(model, ckpt_path, {"model": meta["model"]["name"], "config": meta["model"].get("config", {}),
                                     "epoch": meta.get("epoch"),
                                     "test_accuracy": _test_accuracy(ckpt_path, history)},
                  checkpoint.input_spec(meta))


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


def _guarded_protocol():
    """uvicorn's h11 protocol, whose parser holds at most MAX_HEAD bytes of a request's head (httptools holds
    any size), with the two limits it lacks: a connection that has not sent a whole request head within
    HEAD_TIMEOUT of connecting (or of its last response) is closed, however slowly its bytes trickle in; and
    at most MAX_CONNECTIONS are open at once.  (A body is bounded in time and size by inputs.json_body.)"""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Guarded(H11Protocol):
        head_timer = None

        def _arm(self) -> None:
            self._disarm()
            self.head_timer = self.loop.call_later(HEAD_TIMEOUT, self._too_slow)

        def _disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _too_slow(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > MAX_CONNECTIONS:
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is in: the request runs on its own limits
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # (the next request's head)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Guarded


class Server:
    """uvicorn serving an app on a bound socket, in this thread (`run`) or another (`start`/`stop`)."""

    def __init__(self, app, sock: socket.socket) -> None:
        import uvicorn

        self.app, self.sock = app, sock
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="off",
                                http=_guarded_protocol(), h11_max_incomplete_event_size=MAX_HEAD)
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
        self.app.state.trainer.stop()
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        self.sock.close()


def serve(ckpt_path: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          allow_hosts: tuple[str, ...] | list[str] = ()) -> int:
    """`convprop serve`: load (or train) a model and serve the page until Ctrl-C.  It answers requests
    that name it (Host) as localhost, 127.0.0.1, [::1], the address they reached, `host` or one of
    `allow_hosts`, and only its own page's requests that change something (`guard`)."""
    require()
    if not 0 <= port <= 65535:
        raise ValueError(f"--port: expected 0..65535, got {port}")
    from .guard import host_name

    for name in allow_hosts:
        if host_name(name) is None:
            raise ValueError(f"--allow-host: expected a host name or IP address (no port), got {name!r}")
    names = (*allow_hosts, host) if host_name(host) is not None else tuple(allow_hosts)
    sock = bind(host, port)  # before loading or training: a busy port fails at once
    try:
        engine = load_engine(ckpt_path)
    except BaseException:
        sock.close()
        raise
    server = Server(create_app(engine, names), sock)
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
