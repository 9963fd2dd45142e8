"""`convprop serve [CKPT]`: the web page (the `serve` extra)."""

from __future__ import annotations

from .._extras import install
from ._options import UsageError, run_paths


def add_parser(sub) -> None:
    v = sub.add_parser("serve", help="a web page: draw a digit, watch its forward and backward pass, train live",
                       description="Serve a page (the `serve` extra) that draws every layer's output and gradient "
                                   "for a digit you draw, and trains the model live. JSON endpoints: docs/serve.md.")
    v.add_argument("checkpoint", metavar="CKPT", nargs="?", default=None,
                   help="a checkpoint.npz, or the run directory that holds it (default: the last convprop train "
                        "run's, else train LeNet-5 first)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    v.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0: any free port)")
    v.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host is NAME (repeatable; the server answers localhost, "
                        "127.0.0.1, [::1] and the address it listens on, so that no other site's page can "
                        "reach it through a name of its own)")


def run(args) -> int:
    try:
        from ..serve.server import serve
    except ImportError:
        raise UsageError(f"serve needs Starlette and uvicorn: {install('serve')}") from None
    return serve(None if args.checkpoint is None else run_paths(args.checkpoint)[1], args.host, args.port,
                 args.allow_host)
