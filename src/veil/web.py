"""HTTP plumbing shared by node and gateway: bounded body reads and the error body shape.

Nothing here can decrypt: the gateway imports it too.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from veil.wire.errors import InternalError, InvalidBody, PayloadTooLarge, VeilError

M = TypeVar("M", bound=BaseModel)


def error_response(exc: VeilError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status)


async def answer_or_error(
    work: Callable[[], Awaitable[Response]], *, route: str, log: logging.Logger, service: str
) -> tuple[Response, str]:
    """Run a route's work; turn any failure into our error body. Returns (response, wire code).

    Unexpected exceptions are logged by type and stack frames only: their messages can quote
    their input, which may be plaintext.
    """
    try:
        return await work(), "OK"
    except VeilError as exc:
        return error_response(exc), exc.code
    except Exception as exc:
        log.error(
            "internal error on %s: %s\n%s",
            route,
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        return error_response(InternalError(f"internal error; see the {service} log")), (
            InternalError.code
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
    size, parts = 0, []
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        parts.append(part)
    return b"".join(parts)


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """A readable summary of what was wrong, naming fields but never echoing their values."""
    errors = exc.errors(include_input=False, include_url=False)
    parts = []
    for error in errors[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{prefix}{where}: {error['msg']}")
    if len(errors) > len(parts):
        parts.append(f"and {len(errors) - len(parts)} more")
    return "; ".join(parts)


def parse_json_object(raw: bytes) -> dict[str, object]:
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # also: integers over 4300 digits, too-deep nesting
        raise InvalidBody("the request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidBody("the request body must be a JSON object")
    return document


def parse_model(raw: bytes, cls: type[M], what: str) -> M:
    """Parse a JSON body into ``cls``: 400 INVALID_BODY naming the bad fields otherwise."""
    document = parse_json_object(raw)
    try:
        return cls.model_validate(document)
    except ValidationError as exc:
        raise InvalidBody(f"invalid {what}: {describe_validation_error(exc)}") from None
