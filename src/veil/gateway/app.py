"""The gateway's ASGI app: build the ``Gateway`` at startup, put it on ``app.state``, mount the
routers (``veil.gateway.routes``), and answer every HTTP-level error in Veil's error shape.

This module and everything it imports must stay unable to decrypt: the gateway handles envelopes
only as validated base64 fields and moves their bytes to the node untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from veil.config import GatewaySettings
from veil.console import mount_console
from veil.gateway.cors import add_console_cors
from veil.gateway.identity import public_b64
from veil.gateway.ledger import Ledger
from veil.gateway.routes import ROUTERS
from veil.gateway.routes.accounts import stack_json
from veil.gateway.routes.metered import invalid_parameters
from veil.gateway.service import Gateway
from veil.web import error_response
from veil.wire.errors import InternalError, NotFound

# stack_json: `veil stacks` prints stacks as the API shows them.
__all__ = ["create_gateway_app", "stack_json"]

log = logging.getLogger("veil.gateway")


async def start_gateway(
    settings: GatewaySettings,
    key: Ed25519PrivateKey,
    *,
    on_admin_key: Callable[[str], None] | None = None,
    bootstrap_units: int = 0,
) -> Gateway:
    """Open (and migrate) the ledger, learn the nodes, and make the admin key on first start."""
    ledger = await Ledger.open(
        settings.resolved_database_url, in_flight_grace=settings.in_flight_grace_seconds
    )
    client = httpx.AsyncClient(  # idle connections kept as many as may be busy
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=256)
    )
    gateway = Gateway(settings, ledger, key, client)
    await gateway.load_nodes()  # the ledger's node list, with the --node URLs in it
    # What an earlier run left in flight: charged from the nodes' receipts where they kept one,
    # the rest released.
    await gateway.recover()
    released = await ledger.expire()
    if released:
        log.info("released %d reservation(s) left by an earlier run", released)
    admin_key = await ledger.ensure_admin_key()
    if admin_key is not None:
        if bootstrap_units:
            # First start of a local demo: give the admin a stack per model so the printed key
            # works at once.
            admin = await ledger.authenticate(admin_key)
            for model in sorted(gateway.registry.models()):
                await ledger.create_stack(admin.name, model, bootstrap_units)
        if on_admin_key is not None:
            on_admin_key(admin_key)
    return gateway


def create_gateway_app(
    settings: GatewaySettings,
    key: Ed25519PrivateKey,
    *,
    on_admin_key: Callable[[str], None] | None = None,
    bootstrap_units: int = 0,
) -> FastAPI:
    """Build the gateway. The ledger opens (and migrates) when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = await start_gateway(
            settings, key, on_admin_key=on_admin_key, bootstrap_units=bootstrap_units
        )
        app.state.gateway = gateway
        task = asyncio.create_task(gateway.maintain())
        log.info(
            "gateway ready: ticket key %s, %d node(s)", public_b64(key)[:12], len(settings.nodes)
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await gateway.aclose()

    app = FastAPI(title="Veil gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _parameter_error)  # type: ignore[arg-type]
    for router in ROUTERS:
        app.include_router(router)
    mount_console(app)
    add_console_cors(app, settings.console_origins)  # none by default: no CORS headers
    return app


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code in (404, 405):
        return error_response(NotFound("no such route"))
    return error_response(InternalError("unexpected HTTP error"))


async def _parameter_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # Metered routes answer this themselves; this covers any other route.
    return error_response(invalid_parameters(exc))
