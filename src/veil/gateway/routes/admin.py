"""Admin API (admin API keys only): users and their rate limits, stacks and top-ups.

POST        /admin/users                    create a user; its API key is shown once
POST, PATCH /admin/users/{name}/limits      set a user's rate limits
POST        /admin/stacks                   create a stack of units for a user and model
GET         /admin/stacks                   list stacks (``?user=`` for one user's)
GET         /admin/stacks/{stack_id}        one stack
POST        /admin/stacks/{stack_id}/top-up add units to a stack
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from veil.gateway.routes.accounts import stack_json
from veil.gateway.routes.dependencies import AdminCaller, CurrentGateway, RawBody, StackId, UserName
from veil.gateway.routes.metered import MeteredRoute
from veil.web import parse_model

__all__ = ["CreateStack", "CreateUser", "SetLimits", "TopUp", "router"]

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
