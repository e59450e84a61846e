"""Logging for node and gateway: text for people, JSON lines for log pipelines, a request id for both.

``configure_logging(level, "json")`` makes every record one JSON object per line::

    {"time": "2026-12-02T18:04:05.123Z", "level": "INFO", "logger": "veil.access",
     "message": "POST /v1/confidential/chat/completions 200", "request_id": "3f2a...",
     "method": "POST", "route": "/v1/confidential/chat/completions", "status": 200,
     "latency_ms": 41.7, "units": 57}

``RequestIdMiddleware`` gives every HTTP request an id (the caller's ``X-Request-Id`` when it is a
sane token, else a fresh one), returns it in the ``X-Request-Id`` response header, puts it on every
log record written while the request runs, and writes one access record when the response ends.

What never reaches a log line: bodies (requests, answers, error details that quote input), header
values other than the request id, and query strings (a key can hide in one). Only the fields named
in ``ACCESS_FIELDS`` are copied from a record into JSON, so an ``extra=`` carrying anything else is
dropped rather than logged.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:  # starlette is a server dependency; the client-only install has none
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ACCESS_FIELDS",
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "LogFormat",
    "RequestIdMiddleware",
    "configure_logging",
    "current_request_id",
    "set_units",
]

LogFormat = Literal["text", "json"]
REQUEST_ID_HEADER: Final = "x-request-id"
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_FIELDS: Final = ("request_id", "method", "route", "status", "latency_ms", "units")

# A caller's id is echoed back and logged, so only a short plain token is taken as given.
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "veil_request_id", default=None
)
access_log = logging.getLogger("veil.access")


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


def set_units(scope_or_request: Any, units: int) -> None:
    """Record the units a request was charged, for its access record (a Starlette ``Request``
    or an ASGI scope)."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    scope.setdefault("state", {})["veil_units"] = int(units)


class _RequestIdFilter(logging.Filter):
    """Stamps the current request id on every record (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; only the fields of ``ACCESS_FIELDS`` are copied from extras."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        document: dict[str, Any] = {
            "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ACCESS_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: an exception's message can quote its input (a prompt).
            document["exception"] = record.exc_info[0].__name__
        return json.dumps(document, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    """Set up the root logger (and uvicorn's) for a node or gateway process."""
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (expected text or json)")
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own access log would repeat ours, with the query string; its errors go to root.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = name != "uvicorn.access"
    logging.getLogger("uvicorn.access").disabled = True


class RequestIdMiddleware:
    """Pure ASGI middleware (streams pass through untouched): request id in, header out, one
    access record per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None
        )
        request_id = given if given and _SANE_ID.match(given) else secrets.token_hex(16)
        token = _request_id.set(request_id)
        started = time.perf_counter()
        status = 500  # what the caller sees if the app dies before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            state = scope.get("state") or {}
            route = scope.get("path", "")
            access_log.info(
                "%s %s %d",
                scope.get("method", ""),
                route,
                status,
                extra={
                    "request_id": request_id,
                    "method": scope.get("method", ""),
                    "route": route,
                    "status": status,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    "units": state.get("veil_units"),
                },
            )
            _request_id.reset(token)
