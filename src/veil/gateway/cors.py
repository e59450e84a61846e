"""CORS for the web console served elsewhere (``veil console --gateway URL``): the exact origins
the gateway's operator allows (``console_origins``, ``VEIL_CONSOLE_ORIGINS``, ``veil gateway
--console-origin``), none by default.

A page served from an allowed origin may call the API routes the console uses (``/v1/...``,
``/admin/...``) with its bearer header: preflights are answered here, and every answer to that
origin names it in ``Access-Control-Allow-Origin`` (never ``*``) and exposes ``Retry-After``. No
credentials (cookies) are allowed: the page authenticates with the bearer header only. A request
from any other origin gets no CORS headers at all, so the browser keeps its answers from the page.

Allowing an origin lets pages there spend the API keys users type into them: allow only origins
that serve the console bundle you trust (the one ``veil console`` serves from an installed
package, whose SHA-256 it prints).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final
from urllib.parse import urlsplit

__all__ = ["ConsoleCors", "add_console_cors", "parse_origin"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# The routes the console calls; everything else (the page itself, /health, /metrics) is same-origin
# or not for browsers.
API_PREFIXES: Final = ("/v1/", "/admin/")
ALLOW_METHODS: Final = "GET, POST, PATCH"
# What the page sends: the bearer key, JSON bodies, and a lock's handle with the sealed request.
ALLOW_HEADERS: Final = "authorization, content-type, x-veil-reservation"
# What the page reads besides the body: how long to wait when rate limited.
EXPOSE_HEADERS: Final = "retry-after"
PREFLIGHT_MAX_AGE: Final = "600"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def parse_origin(value: str) -> str:
    """``scheme://host[:port]`` as a browser sends it in ``Origin`` (lowercase, default port
    dropped); ``*``, paths, queries and user names are refused (ValueError naming the value)."""
    text = value.strip()
    if text == "*" or "*" in text:
        raise ValueError(
            f"console origin {value!r}: a wildcard is not allowed; list each origin that serves "
            "the console exactly, e.g. http://127.0.0.1:8090"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"console origin {value!r} is not a URL") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(
            f"console origin {value!r}: expected http(s)://host[:port], e.g. http://127.0.0.1:8090"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        raise ValueError(
            f"console origin {value!r}: an origin is scheme://host[:port] only "
            "(no path, query or user)"
        )
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


class ConsoleCors:
    """ASGI middleware: CORS on the API routes for the allowed origins, exactly."""

    def __init__(self, app: App, origins: Iterable[str]) -> None:
        self.app = app
        self.origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(API_PREFIXES):
            await self.app(scope, receive, send)
            return
        raw = _header(scope, b"origin")
        origin = raw.decode("latin-1") if raw is not None else None
        if origin not in self.origins:
            # Not an allowed page (or not a browser): no CORS headers. The answer still varies by
            # Origin for caches, since an allowed origin's would carry them.
            await self.app(scope, receive, _vary_origin(send))
            return
        allow = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *allow,
                        (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                        (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                        (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        expose = (b"access-control-expose-headers", EXPOSE_HEADERS.encode())
        await self.app(scope, receive, _vary_origin(send, allow[0], expose))


def _vary_origin(send: Send, *extra: tuple[bytes, bytes]) -> Send:
    """``send`` with ``Vary: Origin`` merged into the response's headers, and ``extra`` added."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            vary = [v for k, v in headers if k.lower() == b"vary"]
            headers = [(k, v) for k, v in headers if k.lower() != b"vary"]
            headers.append((b"vary", b", ".join([*vary, b"Origin"])))
            message["headers"] = [*headers, *extra]
        await send(message)

    return sending


def add_console_cors(app: Any, origins: Iterable[str]) -> None:
    """Install ``ConsoleCors`` on a Starlette/FastAPI ``app`` when any origin is allowed."""
    allowed = frozenset(origins)
    if allowed:
        app.add_middleware(ConsoleCors, origins=allowed)
