"""What a route handler declares it needs: the running gateway, the caller, the raw body.

``Caller`` authenticates the bearer API key and admits the request under the caller's rate limits
(admin keys are not limited); ``AdminCaller`` also requires an admin key. FastAPI resolves a
handler's dependencies in the order of its parameters, so handlers name the caller before the body:
an unauthenticated request is refused before its body is read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from veil.gateway.ledger import User
from veil.gateway.routes.metered import current_gateway
from veil.gateway.service import Gateway
from veil.web import read_body
from veil.wire.envelopes import MAX_ID
from veil.wire.errors import AuthError

__all__ = ["AdminCaller", "Caller", "CurrentGateway", "RawBody", "StackId", "UserName"]


async def _gateway(request: Request) -> Gateway:
    return current_gateway(request)


CurrentGateway = Annotated[Gateway, Depends(_gateway)]


async def authenticated(request: Request, gateway: CurrentGateway) -> User:
    """The user whose bearer API key this is; a non-admin is admitted under its rate limits
    here (the slot is given back by ``MeteredRoute`` when the answer is complete)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing bearer API key")
    user = await gateway.authenticate(token.strip())
    if not user.is_admin and getattr(request.state, "veil_admission", None) is None:
        request.state.veil_admission = await gateway.limiter.admit(user.id, gateway.limits(user))
        request.state.veil_user_id = user.id
    return user


Caller = Annotated[User, Depends(authenticated)]


async def admin(user: Caller) -> User:
    if not user.is_admin:
        raise AuthError("this route needs an admin API key")
    return user


AdminCaller = Annotated[User, Depends(admin)]


async def raw_body(request: Request, gateway: CurrentGateway) -> bytes:
    """The request body, refused (413) past the gateway's limit without reading it all."""
    return await read_body(request, gateway.settings.max_body_bytes)


RawBody = Annotated[bytes, Depends(raw_body)]

# Ids live in signed 64-bit columns: a larger one is a bad request, not a database overflow.
StackId = Annotated[int, Path(ge=0, le=MAX_ID)]
UserName = Annotated[str, Path(min_length=1, max_length=128)]
