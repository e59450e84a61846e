"""Admin API (admin API keys only): users and their rate limits, stacks and top-ups, nodes.

POST        /admin/users                    create a user; its API key is shown once
POST, PATCH /admin/users/{name}/limits      set a user's rate limits
POST        /admin/stacks                   create a stack of units for a user and model
GET         /admin/stacks                   list stacks (``?user=`` for one user's)
GET         /admin/stacks/{stack_id}        one stack
POST        /admin/stacks/{stack_id}/top-up add units to a stack
GET         /admin/nodes                    the node list, with this gateway's view of each
POST        /admin/nodes                    add a node (checked first: keys, tickets, evidence)
POST        /admin/nodes/drain              no new locks to a node; in flight finishes
POST        /admin/nodes/undrain            new locks to a drained node again
POST        /admin/nodes/remove             take a drained, idle node off (``force``: any node)

Node changes go to the ledger, so every gateway on the database applies them (this one at once,
the others at their next maintenance round, within seconds). Errors: a malformed URL is
400 ``INVALID_BODY``, as is a node whose checks fail (the message says which); an unknown URL
404 ``NOT_FOUND``; a URL already listed, or removing a node that is not drained and idle,
409 ``CONFLICT``; a node that does not answer, 503 ``SERVICE_UNAVAILABLE``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from veil.gateway.ledger import NodeRecord
from veil.gateway.registry import NodeInfo
from veil.gateway.routes.accounts import stack_json
from veil.gateway.routes.dependencies import AdminCaller, CurrentGateway, RawBody, StackId, UserName
from veil.gateway.routes.metered import MeteredRoute
from veil.gateway.service import Gateway
from veil.web import parse_model

__all__ = ["CreateStack", "CreateUser", "NodeAsk", "RemoveNode", "SetLimits", "TopUp", "router"]

router = APIRouter(route_class=MeteredRoute)

Limit = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]
# 0 returns a limit to the gateway's default.
LimitOrDefault = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]


class CreateUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    requests_per_minute: Limit | None = None
    concurrency: Limit | None = None


class SetLimits(BaseModel):
    """A limit left out is unchanged; 0 returns it to the gateway's default."""

    model_config = ConfigDict(extra="forbid")
    requests_per_minute: LimitOrDefault | None = None
    concurrency: LimitOrDefault | None = None


class CreateStack(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=256)
    units: StrictInt = Field(ge=1, le=2**62)
    price_per_million: StrictInt = Field(default=0, ge=0, le=2**62)


class TopUp(BaseModel):
    model_config = ConfigDict(extra="forbid")
    units: StrictInt = Field(ge=1, le=2**62)


@router.post("/admin/users", name="admin_create_user")
async def create_user(gateway: CurrentGateway, _: AdminCaller, raw: RawBody) -> Response:
    ask = parse_model(raw, CreateUser, "user")
    user, api_key = await gateway.ledger.create_user(
        ask.name, requests_per_minute=ask.requests_per_minute, concurrency=ask.concurrency
    )
    return JSONResponse(
        {"user": user.name, "api_key": api_key, **gateway.limits_json(user)}, status_code=201
    )


@router.api_route("/admin/users/{name}/limits", methods=["POST", "PATCH"], name="admin_set_limits")
async def set_limits(
    gateway: CurrentGateway, _: AdminCaller, name: UserName, raw: RawBody
) -> Response:
    ask = parse_model(raw, SetLimits, "limits")
    user = await gateway.ledger.set_limits(
        name, requests_per_minute=ask.requests_per_minute, concurrency=ask.concurrency
    )
    gateway.forget_users()  # in force here at once (other gateways: within a second)
    return JSONResponse({"user": user.name, **gateway.limits_json(user)})


@router.post("/admin/stacks", name="admin_create_stack")
async def create_stack(gateway: CurrentGateway, _: AdminCaller, raw: RawBody) -> Response:
    ask = parse_model(raw, CreateStack, "stack")
    stack = await gateway.ledger.create_stack(
        ask.user, ask.model, ask.units, price_per_million=ask.price_per_million
    )
    return JSONResponse(stack_json(stack), status_code=201)


@router.get("/admin/stacks", name="admin_list_stacks")
async def list_stacks(gateway: CurrentGateway, _: AdminCaller, request: Request) -> Response:
    stacks = await gateway.ledger.list_stacks(request.query_params.get("user"))
    return JSONResponse({"stacks": [stack_json(s) for s in stacks]})


@router.get("/admin/stacks/{stack_id}", name="admin_show_stack")
async def show_stack(gateway: CurrentGateway, _: AdminCaller, stack_id: StackId) -> Response:
    return JSONResponse(stack_json(await gateway.ledger.get_stack(stack_id)))


@router.post("/admin/stacks/{stack_id}/top-up", name="admin_top_up")
async def top_up(
    gateway: CurrentGateway, _: AdminCaller, stack_id: StackId, raw: RawBody
) -> Response:
    ask = parse_model(raw, TopUp, "top-up")
    return JSONResponse(stack_json(await gateway.ledger.top_up(stack_id, ask.units)))


class NodeAsk(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2000)


class RemoveNode(NodeAsk):
    force: bool = False


def node_json(record: NodeRecord, node: NodeInfo | None, live: int) -> dict[str, Any]:
    """A node as ``veil nodes list`` shows it: the ledger's row and this gateway's view."""
    verdict = None if node is None else node.attestation
    return {
        "node_small_id": record.id,
        "url": record.url,
        "state": record.state.value,
        "healthy": node is not None and node.healthy,
        "routed": node is not None and node.routed,
        "reason": "not loaded here yet" if node is None else node.reason,
        "key_id": None if node is None else node.current_key_id,
        "models": {} if node is None else dict(sorted(node.models.items())),
        "attestation": None if verdict is None else verdict.to_json(),
        "release": None if verdict is None else verdict.release,
        "live_reservations": live,
        "state_changed_at": record.state_changed_at,
    }


async def _shown(gateway: Gateway, record: NodeRecord) -> dict[str, Any]:
    here = {n.node_small_id: n for n in gateway.registry.nodes}
    live = await gateway.ledger.live_reservations_on(record.id)
    return node_json(record, here.get(record.id), live)


@router.get("/admin/nodes", name="admin_list_nodes")
async def list_nodes(gateway: CurrentGateway, _: AdminCaller) -> Response:
    await gateway.sync_nodes()  # show the ledger's list now, not at the next round
    records = await gateway.ledger.list_nodes()
    return JSONResponse({"nodes": [await _shown(gateway, r) for r in records], "time": time.time()})


@router.post("/admin/nodes", name="admin_add_node")
async def add_node(gateway: CurrentGateway, _: AdminCaller, raw: RawBody) -> Response:
    ask = parse_model(raw, NodeAsk, "node")
    node = await gateway.add_node(ask.url)
    record = await gateway.ledger.get_node(node.url)
    return JSONResponse(await _shown(gateway, record), status_code=201)


@router.post("/admin/nodes/drain", name="admin_drain_node")
async def drain_node(gateway: CurrentGateway, _: AdminCaller, raw: RawBody) -> Response:
    ask = parse_model(raw, NodeAsk, "node")
    record = await gateway.ledger.drain_node(ask.url)
    await gateway.set_node_state(record)
    return JSONResponse(await _shown(gateway, record))


@router.post("/admin/nodes/undrain", name="admin_undrain_node")
async def undrain_node(gateway: CurrentGateway, _: AdminCaller, raw: RawBody) -> Response:
    ask = parse_model(raw, NodeAsk, "node")
    record = await gateway.ledger.undrain_node(ask.url)
    await gateway.set_node_state(record)
    return JSONResponse(await _shown(gateway, record))


@router.post("/admin/nodes/remove", name="admin_remove_node")
async def remove_node(gateway: CurrentGateway, _: AdminCaller, raw: RawBody) -> Response:
    ask = parse_model(raw, RemoveNode, "node")
    record = await gateway.ledger.remove_node(ask.url, force=ask.force)
    await gateway.set_node_state(record)
    return JSONResponse(await _shown(gateway, record))
