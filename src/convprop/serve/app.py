"""`convprop serve`'s routes (documented in docs/serve.md): the page's static files and the JSON endpoints.

Requests are checked by `inputs` (bounded bodies and images; every bad request gets HTTP 4xx and a
one-line {"error": …}); the model's passes are the `engine`'s, training the `trainer`'s; the page is
the package's static/ folder, served by Starlette's StaticFiles, which opens nothing outside it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from .._extras import install
from . import inputs
from .arrays import encode
from .engine import Engine, step_info
from .guard import HostOriginGuard
from .inputs import InputError
from .trainer import Busy, Trainer

STATIC = Path(__file__).parent / "static"
DIGIT = ("image", "pixels")  # the fields of a digit (inputs.digit)


def require() -> None:
    """ImportError with the install command when the `serve` extra is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ImportError(f"convprop serve needs Starlette and uvicorn: {install('serve')}") from None


def _floats(a) -> list:
    return [float(v) for v in np.asarray(a).ravel()]


def create_app(engine: Engine, allow_hosts: tuple[str, ...] | list[str] = ()):
    """The ASGI app for one engine, with its trainer (`app.state.trainer`), behind the Host and Origin
    checks of `guard` (which also answer the names in allow_hosts)."""
    require()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    class Static(StaticFiles):
        """The page's files, always revalidated (an upgraded server's page is never a cached old one), its ES
        modules as text/javascript whatever the system's MIME table says (browsers refuse other types)."""

        def file_response(self, full_path, stat_result, scope, status_code=200):
            response = super().file_response(full_path, stat_result, scope, status_code)
            response.headers["Cache-Control"] = "no-cache"
            if str(full_path).endswith(".js") and response.status_code == 200:
                response.headers["Content-Type"] = "text/javascript; charset=utf-8"
            return response

    trainer = Trainer(engine)

    def endpoint(fn, fields: tuple[str, ...] | None = None):
        """fn(body) run in a worker thread: a POST's JSON body with no keys but `fields` (None: a GET, its
        query with no keys but "format" where fn takes it); InputError → its 4xx, Busy → 409, one line each."""
        async def handler(request):
            try:
                if fields is None:
                    body = dict(request.query_params)
                    inputs.check_fields(body, ("format",) if fn is filters else (), "query")
                else:
                    body = await inputs.json_body(request, fields)
                result = await run_in_threadpool(fn, body)
            except InputError as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            except Busy as e:  # the trainer's state forbids it now (already running, …)
                return JSONResponse({"error": str(e)}, status_code=409)
            except inputs.ClientGone:  # nobody to answer
                return Response(status_code=400)
            return JSONResponse(result)
        return handler

    def model_info(_):
        return engine.describe()

    def predict(body):
        digit = inputs.digit(body, engine.spec["prepare"])
        probs = engine.predict(engine.input(digit))
        return {"probs": _floats(probs), "predicted": int(probs.argmax()), "digit": digit.tolist()}

    def forward(body):
        fmt, digit = inputs.output_format(body), inputs.digit(body, engine.spec["prepare"])
        x = engine.input(digit)
        walk, probs = engine.forward(x)
        inputs.target_class(body.get("class"), probs.shape[-1])  # checked as backward checks it, not used
        return {"probs": _floats(probs), "predicted": int(probs.argmax()), "digit": digit.tolist(),
                "input": encode(x[0], fmt, "gray"),
                "layers": [{**step_info(k, s), "output": encode(s.output[0], fmt),
                            "parts": [encode(p[0], fmt) for p in s.parts]} for k, s in enumerate(walk)]}

    def backward(body):
        fmt, digit = inputs.output_format(body), inputs.digit(body, engine.spec["prepare"])
        r = engine.backward(engine.input(digit), body.get("class"))
        dx = r["input_grad"][0]
        return {"class": r["class"], "loss": r["loss"], "probs": _floats(r["probs"]), "predicted": r["predicted"],
                "digit": digit.tolist(), "input": encode(engine.input(digit)[0], fmt, "gray"),
                "input_grad": encode(dx, fmt, "signed"), "saliency": encode(np.abs(dx).max(axis=0), fmt, "hot"),
                "layers": [_layer_gradients(e, fmt) for e in r["layers"]]}

    def filters(body):
        return encode(engine.filters(), inputs.output_format(body), "signed")

    def train_start(body):
        trainer.start(*inputs.training_options(body))
        return trainer.state()

    def train_stop(_):
        trainer.stop()
        return trainer.state()

    def train_restore(_):
        trainer.restore()
        return trainer.state()

    def train_status(_):
        return trainer.state()

    async def train_events(request):
        """Server-sent events: every 0.25 s while anything changed, {state since the last event, filters}."""
        async def stream():
            since, last, run = 0, None, None
            while not app.state.closing:
                if trainer.run != run:  # a reset: send the new curves from their start
                    since, run = 0, trainer.run
                s = trainer.state(since)
                key = (s["run"], s["step"], s["running"], s["epoch"], s["error"])
                if key != last:
                    s["filters"] = encode(await run_in_threadpool(engine.filters), "png", "signed")
                    since, last = s["next"], key
                    yield f"data: {json.dumps(s)}\n\n"
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.25)
        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    routes = [Route("/", lambda _: FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})),
              Route("/favicon.ico", lambda _: Response(status_code=204)),
              Route("/api/model", endpoint(model_info)),
              Route("/api/predict", endpoint(predict, DIGIT), methods=["POST"]),
              # (forward takes backward's "class" and ignores it: the page sends both passes one body)
              Route("/api/forward", endpoint(forward, DIGIT + ("format", "class")), methods=["POST"]),
              Route("/api/backward", endpoint(backward, DIGIT + ("format", "class")), methods=["POST"]),
              Route("/api/filters", endpoint(filters)),
              Route("/api/train/start", endpoint(train_start, ("lr", "reset")), methods=["POST"]),
              Route("/api/train/stop", endpoint(train_stop, ()), methods=["POST"]),
              Route("/api/train/restore", endpoint(train_restore, ()), methods=["POST"]),
              Route("/api/train/status", endpoint(train_status)),
              Route("/api/train/events", train_events),
              Mount("/static", Static(directory=STATIC))]

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        return JSONResponse({"error": f"{request.method} {request.url.path}: "
                                      f"{'no such endpoint' if status == 404 else 'not allowed'}"},
                            status_code=status)

    async def server_error(request, exc):
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 500: server_error},
                    middleware=[Middleware(HostOriginGuard, allow_hosts=tuple(allow_hosts))])
    app.router.redirect_slashes = False  # /api/predict/ is not an endpoint: 404, not a 307 to another URL
    app.state.closing = False
    app.state.engine, app.state.trainer = engine, trainer
    return app


def _layer_gradients(e: dict, fmt: str) -> dict:
    """One layer of Engine.backward's answer, its arrays encoded in fmt."""
    entry = {k: e[k] for k in ("index", "type", "label", "block", "branch", "equation")}
    entry["grad_parts"] = [encode(g[0], fmt) for g in e.get("grad_parts", [])]
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
                            "contribution": encode(t["contribution"], fmt, "signed")} for t in pc["transposed"]],
            "patches": [{"position": q["position"], "dz": q["dz"], "patch": encode(q["patch"], fmt),
                         "product": encode(q["product"], fmt, "signed")} for q in pc["patches"]]}
    return entry
