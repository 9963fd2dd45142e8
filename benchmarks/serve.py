"""Load on `convprop serve`: N prediction requests from C concurrent clients on loopback, LeNet-5.

    python -m benchmarks.serve [--requests 200] [--clients 8] [--smoke]

The server runs as `convprop serve` in its own process; the clients are threads of this one.
Each request is what the page sends while you draw: POST /api/predict with the canvas as a PNG
(the 280×280 drawing at 140×140), which the server decodes, prepares as MNIST and classifies.
Prints the CPU, every latency quantile, errors; exits 1 if any request failed or p95 ≥ 100 ms.
Bounded: at most --requests requests, each with a 10 s timeout, the whole run at most 120 s.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from .timing import cpu_name

TARGET_P95_MS = 100.0
SENT = 140  # the page sends its 280×280 canvas at half size


def canvas_png(digit: np.ndarray) -> str:
    """A test digit as the page sends its canvas (white ink on black, SENT×SENT), as a data: URL."""
    from PIL import Image

    im = Image.fromarray(digit).resize((SENT, SENT), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def run(requests: int = 200, clients: int = 8, limit_s: float = 120.0) -> dict:
    import httpx

    import convprop.random as R
    from convprop import checkpoint, models
    from convprop.data import load_mnist

    R.manual_seed(0)
    tmp = tempfile.mkdtemp(prefix="convprop-bench-serve-")
    ckpt = checkpoint.save(os.path.join(tmp, "lenet5.npz"), models.lenet5(), "lenet5", {"num_classes": 10})
    # the server in its own process, as `convprop serve` runs (the clients here must not share its GIL)
    proc = subprocess.Popen([sys.executable, "-m", "convprop", "serve", ckpt, "--port", "0"], stdout=subprocess.PIPE,
                            text=True)
    url = None
    for line in proc.stdout:
        if " open " in line:
            url = line.split(" open ")[1].split()[0].rstrip("/")
            break
    if url is None:
        proc.kill()
        raise RuntimeError("convprop serve did not start")
    images, _ = load_mnist(train=False)
    bodies = [{"image": canvas_png(images[k])} for k in range(16)]
    latencies, errors, lock = [], [], threading.Lock()
    deadline = time.monotonic() + limit_s
    counter = iter(range(requests))

    def client(c: int) -> None:
        # TCP_NODELAY as browsers set it: else the body's write waits for the ACK of the headers' (Nagle's
        # algorithm against delayed ACKs: ~40 ms a request on Linux loopback)
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        with httpx.Client(base_url=url, timeout=10, transport=transport) as http:
            http.get("/api/model")  # connect once, as a page does
            for k in counter:  # shared: `requests` in all
                if time.monotonic() > deadline:
                    with lock:
                        errors.append("the run's time limit")
                    return
                t = time.perf_counter()
                try:
                    r = http.post("/api/predict", json=bodies[k % len(bodies)])
                    ok = r.status_code == 200 and len(r.json()["probs"]) == 10
                    why = None if ok else f"HTTP {r.status_code}: {r.text[:80]}"
                except httpx.HTTPError as e:
                    why = f"{type(e).__name__}: {e}"
                ms = 1e3 * (time.perf_counter() - t)
                with lock:
                    (errors.append(why) if why else latencies.append(ms))

    start = time.perf_counter()
    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - start
    lat = np.array(latencies)
    q = {f"p{p}": float(np.percentile(lat, p)) if lat.size else float("nan") for p in (50, 90, 95, 99)}
    return {"requests": requests, "clients": clients, "ok": int(lat.size), "errors": errors, "wall_s": wall,
            "per_s": lat.size / wall, "max_ms": float(lat.max()) if lat.size else float("nan"), **q}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--smoke", action="store_true", help="40 requests from 4 clients (a check that it runs)")
    args = p.parse_args(argv)
    requests, clients = (40, 4) if args.smoke else (args.requests, args.clients)
    load = os.getloadavg()
    r = run(requests, clients)
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs; 1-minute load average {load[0]:.1f} before the run)")
    print(f"convprop serve, LeNet-5, POST /api/predict with a {SENT}×{SENT} PNG: {r['ok']}/{r['requests']} ok from "
          f"{r['clients']} concurrent clients in {r['wall_s']:.1f} s ({r['per_s']:.0f} requests/s)")
    print(f"latency ms: p50 {r['p50']:.1f}  p90 {r['p90']:.1f}  p95 {r['p95']:.1f}  p99 {r['p99']:.1f}  "
          f"max {r['max_ms']:.1f}  (target: p95 < {TARGET_P95_MS:.0f})")
    if r["errors"]:
        print(f"{len(r['errors'])} errors, first: {r['errors'][0]}")
    ok = not r["errors"] and r["p95"] < TARGET_P95_MS
    print("PASS" if ok else "FAIL")
    return 0 if ok or args.smoke and not r["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
