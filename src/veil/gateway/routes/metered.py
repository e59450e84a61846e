"""``MeteredRoute``: the route class of every API router, wrapping each request the same way.

Around a route's dependencies and handler it: turns any failure into Veil's error body (a ledger
database that cannot be reached is a 503, never a 500; a rate limit adds ``Retry-After``), counts
the answer and its latency by route name and wire code, and gives the caller's concurrency slot
back (for a stream: once its last byte is sent or the caller hung up). A node's refusal (a 4xx it
answered) also weighs extra in the caller's minute, so probing with bad requests is expensive.

The slot itself is taken by the authentication dependency (``dependencies.authenticated``); it is
kept on ``request.state`` so this wrapper finds it, whichever dependency raised.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import anyio
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute

from veil.gateway.ledger import database_unavailable
from veil.gateway.ratelimit import UNLIMITED, Admission, RateLimited
from veil.gateway.service import Gateway
from veil.web import answer_or_error
from veil.wire.errors import InvalidBody, ServiceUnavailable

__all__ = ["MeteredRoute", "admission_of", "current_gateway", "invalid_parameters"]

log = logging.getLogger("veil.gateway")


def current_gateway(request: Request) -> Gateway:
    """The running gateway (set on ``app.state`` when the app starts)."""
    gateway: Gateway = request.app.state.gateway
    return gateway


def admission_of(request: Request) -> Admission:
    """The concurrency slot the caller's authentication took (admins and anonymous: none)."""
    admission = getattr(request.state, "veil_admission", None)
    return UNLIMITED if admission is None else admission


def invalid_parameters(exc: RequestValidationError) -> InvalidBody:
    """A bad path or query parameter (e.g. a stack id past the signed 64-bit range), named but
    never echoed."""
    names = sorted({str(e["loc"][-1]) for e in exc.errors() if e.get("loc")})
    where = f": {', '.join(names)[:200]}" if names else ""
    return InvalidBody(f"invalid path or query parameter{where}")


class MeteredRoute(APIRoute):
    """An API route answered through :func:`answer_metered` under its route name."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        name = self.name

        async def metered(request: Request) -> Response:
            return await answer_metered(current_gateway(request), name, request, handler)

        return metered


async def answer_metered(
    gateway: Gateway,
    route: str,
    request: Request,
    handler: Callable[[Request], Awaitable[Response]],
) -> Response:
    """Run ``handler`` (dependencies included) and answer whatever happens; see the module."""
    started = time.perf_counter()
    limited: list[RateLimited] = []
    answered: list[Response] = []  # set only when the handler returned (a relayed node answer)

    async def guarded() -> Response:
        try:
            answered.append(await handler(request))
            return answered[0]
        except RateLimited as exc:
            limited.append(exc)
            raise
        except RequestValidationError as exc:
            raise invalid_parameters(exc) from None
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.warning("ledger database unavailable on %s: %s", route, type(exc).__name__)
            raise ServiceUnavailable("the ledger database is unavailable; retry shortly") from None

    try:
        response, code = await answer_or_error(guarded, route=route, log=log, service="gateway")
    except BaseException:
        await admission_of(request).release()
        raise
    if limited:
        response.headers["Retry-After"] = str(limited[0].retry_after)
    await _finish_admission(gateway, request, response, refused_by_node=bool(answered))
    gateway.metrics.requests.labels(route, code).inc()
    gateway.metrics.latency.labels(route).observe(time.perf_counter() - started)
    return response


async def _finish_admission(
    gateway: Gateway, request: Request, response: Response, *, refused_by_node: bool
) -> None:
    """Charge a node's refusal extra weight, then give the concurrency slot back: now, or for a
    stream once its last byte is sent (or the client hung up)."""
    admission = admission_of(request)
    if admission is UNLIMITED:
        return
    if refused_by_node and 400 <= response.status_code < 500:
        with contextlib.suppress(ServiceUnavailable):  # the request is over; logged already
            await gateway.limiter.penalize(
                request.state.veil_user_id, gateway.settings.failed_request_weight - 1
            )
    if isinstance(response, StreamingResponse):
        response.body_iterator = _released_after(response.body_iterator, admission)
    else:
        await admission.release()


async def _released_after(chunks: AsyncIterable[Any], admission: Admission) -> AsyncIterator[Any]:
    """Relay a stream, keeping its concurrency slot alive, and give the slot back at the end
    (after the inner stream has closed and settled), however the stream ends."""
    try:
        async for chunk in chunks:
            await admission.touch()
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
            await admission.release()
