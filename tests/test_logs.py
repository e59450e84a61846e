"""veil.logs: JSON lines with a request id, the id returned to the caller, and never a body."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.harness import ServerThread, wait_until
from veil.logs import (
    JsonFormatter,
    RequestIdMiddleware,
    configure_logging,
    current_request_id,
    set_units,
)

SECRET = "the secret prompt about Paris"


class Capture(logging.Handler):
    """Keeps every record, formatted as JSON, for the test to read back."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("httpx"):  # the test's own client, not the server
            self.lines.append(self.format(record))

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


def make_app() -> FastAPI:
    app = FastAPI()
    log = logging.getLogger("veil.test")

    @app.post("/v1/echo")
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        log.info("handling a request of %d bytes", len(body))
        set_units(request, 42)
        return JSONResponse({"seen": current_request_id()})

    @app.get("/v1/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"data: {i}\n\n".encode()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.get("/v1/boom")
    async def boom() -> JSONResponse:
        raise RuntimeError(SECRET)

    app.add_middleware(RequestIdMiddleware)
    return app


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    from veil.logs import _RequestIdFilter

    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    # Other tests may have raised these loggers' levels; this one reads their INFO records.
    loggers = [root, logging.getLogger("veil"), logging.getLogger("veil.access")]
    old = [(logger, logger.level, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.disabled = False
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, level, disabled in old:
            logger.setLevel(level)
            logger.disabled = disabled


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(make_app()) as running:
        yield running


def test_every_request_gets_an_id_in_its_header_and_its_log_lines(
    server: ServerThread, capture: Capture
) -> None:
    response = httpx.post(f"{server.url}/v1/echo?key=hidden", content=SECRET)
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32 and response.json() == {"seen": request_id}
    # The access record is written once the response has ended, which may be just after the
    # client has read it.
    wait_until(lambda: any(r["logger"] == "veil.access" for r in capture.records()), 10, "access")
    records = [r for r in capture.records() if r.get("request_id") == request_id]
    handler_line = next(r for r in records if r["logger"] == "veil.test")
    assert handler_line["message"] == f"handling a request of {len(SECRET)} bytes"
    access = next(r for r in records if r["logger"] == "veil.access")
    assert access["route"] == "/v1/echo" and access["status"] == 200
    assert access["method"] == "POST" and access["units"] == 42
    assert isinstance(access["latency_ms"], float)
    everything = "\n".join(capture.lines)
    assert SECRET not in everything and "hidden" not in everything


def test_a_sane_caller_id_is_kept_and_a_hostile_one_replaced(
    server: ServerThread, capture: Capture
) -> None:
    mine = "support-ticket-4711"
    assert (
        httpx.get(f"{server.url}/v1/stream", headers={"x-request-id": mine}).headers["x-request-id"]
        == mine
    )
    hostile = "x" * 10 + "\u00e9 " + SECRET
    answered = httpx.get(
        f"{server.url}/v1/stream", headers={b"x-request-id": hostile.encode("utf-8")}
    )
    assert (
        answered.headers["x-request-id"] != hostile and len(answered.headers["x-request-id"]) == 32
    )
    assert answered.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert SECRET not in "\n".join(capture.lines)


def test_a_crash_is_logged_as_a_500_by_type_never_by_message(
    server: ServerThread, capture: Capture
) -> None:
    response = httpx.get(f"{server.url}/v1/boom")
    assert response.status_code == 500
    wait_until(lambda: any(r["logger"] == "veil.access" for r in capture.records()), 10, "access")
    access = [r for r in capture.records() if r["logger"] == "veil.access"]
    assert access[-1]["status"] == 500 and access[-1]["route"] == "/v1/boom"
    assert SECRET not in "\n".join(capture.lines)


def test_json_formatter_keeps_only_the_access_fields_and_the_exception_type() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError(SECRET)
    except ValueError:
        import sys

        record = logging.LogRecord(
            "veil.x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    record.body = SECRET  # an extra that is not an access field never reaches the line
    record.status = 502
    line = json.loads(formatter.format(record))
    assert line["exception"] == "ValueError" and line["status"] == 502
    assert SECRET not in json.dumps(line)


def test_configure_logging_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("info", "yaml")  # type: ignore[arg-type]
