"""Who may talk to `convprop serve`: the Host and Origin checks of a local web server (as Jupyter's).

A page on any other site can make the user's browser send requests to 127.0.0.1; two checks stop it:

- **Host** (DNS rebinding: a page whose own name has been pointed at 127.0.0.1 is, for the browser,
  same-origin with the server).  Every request — page, static files, JSON, event stream — must name
  the server in its Host header: `localhost`, `127.0.0.1`, `[::1]`, the address the connection
  arrived on, or a name given with `--allow-host`, with the server's port (no port: 80).  Names are
  compared without case; a trailing dot, a second Host header or a malformed one is refused.  403.
- **Origin** (cross-site requests: a form or `fetch` from another site may POST without asking).  A
  request that can change something (any method but GET, HEAD and OPTIONS) must come from the
  server's own page: its Origin, or without one its Referer, must be `http://` + an accepted
  host:port.  With neither (not a browser's request, or a very old browser), it must say
  `Content-Type: application/json`, which no page of another site can send without a CORS
  preflight — and the server grants none.  403.

Pure ASGI, so it stands in front of everything: routes, static files and the server-sent events.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(name: str) -> str | None:
    """A host name as compared: lowercase, an IP address in its short form; None if it is not one."""
    name = name.lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not all(name.split(".")) or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
        return None  # an empty label: a trailing dot or '..'; characters no host name has
    return name


def split_host(value: str) -> tuple[str, int | None] | None:
    """'name[:port]' or '[v6][:port]' → (host_name, port or None); None if malformed."""
    if value.startswith("["):
        end = value.find("]")
        name, rest = value[1:end], value[end + 1:]
        if end < 0 or ":" not in name:
            return None
    else:
        name, colon, port = value.rpartition(":")
        name, rest = (name, colon + port) if colon else (value, "")
        if ":" in name:
            return None
    port = None
    if rest:
        digits = rest[1:]
        if not rest.startswith(":") or not (1 <= len(digits) <= 5 and digits.isascii() and digits.isdigit()):
            return None
        port = int(digits)
    host = host_name(name)
    return None if host is None else (host, port)


def is_json(content_type: str | None) -> bool:
    """`application/json`, with or without parameters (charset=utf-8)."""
    return content_type is not None and content_type.split(";")[0].strip().lower() == "application/json"


class HostOriginGuard:
    """ASGI middleware: 403 with {"error": one line} for a request whose Host is not the server's, or
    that changes state and comes from another origin."""

    def __init__(self, app, allow_hosts=()) -> None:
        self.app = app
        self.names = set(LOCAL_NAMES)
        for name in allow_hosts:
            host = host_name(name)
            if host is None:
                raise ValueError(f"--allow-host: expected a host name or IP address, got {name!r}")
            self.names.add(host)

    def accepts(self, value: str, scope) -> bool:
        """value ('host[:port]') names this server: an accepted name and the port it listens on."""
        hp = split_host(value)
        if hp is None:
            return False
        host, port = hp
        server = scope.get("server") or (None, None)
        names = self.names | ({host_name(str(server[0]))} if server[0] else set())
        return host in names and (port or 80) == (server[1] or 80)

    def refusal(self, scope) -> str | None:
        """Why the request is refused, in one line; None if it is not."""
        headers: dict[bytes, list[bytes]] = {}
        for k, v in scope.get("headers", ()):
            headers.setdefault(k.lower(), []).append(v)

        def one(name: bytes) -> str | None:
            values = headers.get(name, [])
            if len(values) > 1:
                raise _Refused(f"{name.decode()}: expected one header, got {len(values)}")
            return values[0].decode("latin-1") if values else None

        try:
            host = one(b"host")
            if host is None:
                return "Host: missing (this server answers only requests that name it)"
            if not self.accepts(host, scope):
                return (f"Host {host[:100]!r}: not this server (it answers localhost, 127.0.0.1, [::1], its own "
                        "address and the names of --allow-host, with its port)")
            if scope.get("method", "GET") in SAFE_METHODS:
                return None
            origin, referer = one(b"origin"), one(b"referer")
        except _Refused as e:
            return str(e)
        if origin is not None:
            if not self._same(origin, whole=True, scope=scope):
                return f"Origin {origin[:100]!r}: requests that change something must come from this server's page"
        elif referer is not None:
            if not self._same(referer, whole=False, scope=scope):
                return "Referer: another site's; requests that change something must come from this server's page"
        elif not is_json(headers.get(b"content-type", [b""])[0].decode("latin-1")):
            return "a request without Origin or Referer that changes something must be Content-Type: application/json"
        return None

    def _same(self, url: str, whole: bool, scope) -> bool:
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.scheme != "http" or not parts.netloc or "@" in parts.netloc:
            return False
        if whole and (parts.path or parts.query or parts.fragment):
            return False
        return self.accepts(parts.netloc, scope)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        reason = self.refusal(scope)
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # (none are served; close before accepting)
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps({"error": reason}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


class _Refused(Exception):
    pass
