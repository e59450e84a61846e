"""The confidential surface: ``POST /v1/confidential/...``, one route per row of
``veil.wire.routes.ROUTES``.

The body is a sealed envelope; the gateway reads only its routing fields (node key, model, stack,
stream flag), charges the caller's reservation and moves the bytes to the node untouched.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from veil.gateway.routes.dependencies import Caller, CurrentGateway, RawBody
from veil.gateway.routes.metered import MeteredRoute
from veil.wire.envelopes import RESERVATION_HEADER, RESERVATION_ID_PATTERN
from veil.wire.errors import InvalidBody
from veil.wire.routes import ROUTES, Endpoint

__all__ = ["reservation_handle", "router"]

router = APIRouter(route_class=MeteredRoute)


async def reservation_handle(request: Request) -> str | None:
    """The ``X-Veil-Reservation`` header (a lock's ``reservation_id``), checked for shape."""
    value = request.headers.get(RESERVATION_HEADER)
    if value is None:
        return None
    if re.fullmatch(RESERVATION_ID_PATTERN, value) is None:
        raise InvalidBody(
            f"{RESERVATION_HEADER}: expected the lock's reservation_id (32 hex digits)"
        )
    return value


ReservationHandle = Annotated[str | None, Depends(reservation_handle)]


def _forwarding(endpoint: Endpoint) -> Callable[..., Awaitable[Response]]:
    async def forward(
        gateway: CurrentGateway, user: Caller, raw: RawBody, handle: ReservationHandle
    ) -> Response:
        return await gateway.forward_confidential(user, endpoint, raw, handle)

    forward.__name__ = f"confidential_{endpoint}"
    return forward


for _route in ROUTES.values():
    router.post(_route.confidential, name=f"confidential_{_route.endpoint}")(
        _forwarding(_route.endpoint)
    )
