"""The caller's own account: lock units on a node, list its stacks, read its charged usage.

POST /v1/nodes/lock    hold units on a node for a model (and relay its evidence)
GET  /v1/stacks        the caller's stacks
GET  /v1/usage         the caller's charges, each with the node's signed receipt
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from veil.gateway.ledger import Stack
from veil.gateway.routes.dependencies import Caller, CurrentGateway, RawBody
from veil.gateway.routes.metered import MeteredRoute
from veil.gateway.usage import UsageQuery, usage_json
from veil.web import parse_model
from veil.wire.envelopes import NodesCreateLockRequest
from veil.wire.errors import AuthError

__all__ = ["router", "stack_json"]

router = APIRouter(route_class=MeteredRoute)


def stack_json(stack: Stack) -> dict[str, Any]:
    """A stack as the API and ``veil stacks`` show it."""
    return {
        "stack_small_id": stack.id,
        "user": stack.user,
        "model": stack.model,
        "total_units": stack.total_units,
        "reserved_units": stack.reserved_units,
        "used_units": stack.used_units,
        "free_units": stack.free_units,
        "price_per_million": stack.price,
        "state": stack.state,
    }


@router.post("/v1/nodes/lock", name="lock")
async def lock(gateway: CurrentGateway, user: Caller, raw: RawBody) -> Response:
    ask = parse_model(raw, NodesCreateLockRequest, "lock request")
    answer = await gateway.lock(user, ask)
    return Response(answer.model_dump_json(), media_type="application/json")


@router.get("/v1/stacks", name="my_stacks")
async def my_stacks(gateway: CurrentGateway, user: Caller) -> Response:
    stacks = await gateway.ledger.list_stacks(user.name)
    return JSONResponse({"stacks": [stack_json(s) for s in stacks]})


@router.get("/v1/usage", name="usage")
async def usage(gateway: CurrentGateway, caller: Caller, request: Request) -> Response:
    """``?since=&after=&limit=``; an admin may add ``user=`` to read another user's usage."""
    query = UsageQuery.parse(request.query_params)
    user = caller
    if query.user is not None and query.user != caller.name:
        if not caller.is_admin:
            raise AuthError("only an admin API key may read another user's usage")
        user = await gateway.ledger.get_user(query.user)
    records = await gateway.ledger.usage(
        user.id, since=query.since, after_id=query.after, limit=query.limit + 1
    )
    return JSONResponse(usage_json(user.name, records, query.limit, gateway.registry))
