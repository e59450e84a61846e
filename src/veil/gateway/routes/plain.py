"""The plain OpenAI surface: ``GET /v1/models`` and, one per row of ``veil.wire.routes.ROUTES``,
``POST /v1/chat/completions`` and the others.

Here the gateway sees the caller's plaintext, by the caller's choice: it reserves on a node for the
request's model and forwards it; the node's signed receipt decides the charge.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from veil.gateway.routes.dependencies import Caller, CurrentGateway, RawBody
from veil.gateway.routes.metered import MeteredRoute
from veil.wire.routes import ROUTES, Endpoint

__all__ = ["router"]

router = APIRouter(route_class=MeteredRoute)


@router.get("/v1/models", name="models")
async def models(gateway: CurrentGateway) -> Response:
    return JSONResponse(gateway.models())


def _forwarding(endpoint: Endpoint) -> Callable[..., Awaitable[Response]]:
    async def forward(gateway: CurrentGateway, user: Caller, raw: RawBody) -> Response:
        return await gateway.forward_plain(user, endpoint, raw)

    forward.__name__ = endpoint
    return forward


for _route in ROUTES.values():
    router.post(_route.plain, name=_route.endpoint)(_forwarding(_route.endpoint))
