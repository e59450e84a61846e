"""The gateway's ASGI app: authenticate, reserve, forward ciphertext, settle from signed receipts.

This module and everything it imports must stay unable to decrypt: it handles envelopes only as
validated base64 fields and moves their bytes to the node untouched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from veil.config import GatewaySettings
from veil.gateway.forward import Forwarder, database_unavailable, new_request_id
from veil.gateway.identity import public_b64
from veil.gateway.ledger import Ledger, User
from veil.gateway.metrics import GatewayMetrics
from veil.gateway.ratelimit import UNLIMITED, Admission, Limits, RateLimited, make_limiter
from veil.gateway.registry import NodeInfo, NodeRegistry
from veil.gateway.usage import UsageQuery, usage_json
from veil.web import (
    answer_or_error,
    error_response,
    parse_json_object,
    parse_model,
    read_body,
)
from veil.wire.envelopes import (
    MAX_ID,
    RESERVATION_HEADER,
    RESERVATION_ID_PATTERN,
    ConfidentialComputeRequest,
    NodesCreateLockRequest,
    NodesCreateLockResponse,
)
from veil.wire.errors import (
    AuthError,
    InternalError,
    InvalidBody,
    NotFound,
    ServiceUnavailable,
    StaleNodeKey,
)
from veil.wire.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest

log = logging.getLogger("veil.gateway")

Kind = Literal["chat", "embeddings", "images"]
ROUTES: dict[Kind, str] = {
    "chat": "chat/completions",
    "embeddings": "embeddings",
    "images": "images/generations",
}


# Ids live in signed 64-bit columns: a larger one is a bad request, not a database overflow.
StackId = Annotated[int, Path(ge=0, le=MAX_ID)]
UserName = Annotated[str, Path(min_length=1, max_length=128)]


Limit = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]


class CreateUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    requests_per_minute: Limit | None = None
    concurrency: Limit | None = None


class SetLimits(BaseModel):
    """A limit left out is unchanged; 0 returns it to the gateway's default."""

    model_config = ConfigDict(extra="forbid")
    requests_per_minute: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = None
    concurrency: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] | None = None


class CreateStack(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1, max_length=256)
    units: StrictInt = Field(ge=1, le=2**62)
    price_per_million: StrictInt = Field(default=0, ge=0, le=2**62)


class TopUp(BaseModel):
    model_config = ConfigDict(extra="forbid")
    units: StrictInt = Field(ge=1, le=2**62)


def reservation_handle(request: Request) -> str | None:
    """The ``X-Veil-Reservation`` header (a lock's ``reservation_id``), checked for shape."""
    value = request.headers.get(RESERVATION_HEADER)
    if value is None:
        return None
    if re.fullmatch(RESERVATION_ID_PATTERN, value) is None:
        raise InvalidBody(
            f"{RESERVATION_HEADER}: expected the lock's reservation_id (32 hex digits)"
        )
    return value


def stack_json(stack: Any) -> dict[str, Any]:
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


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        ledger: Ledger,
        key: Ed25519PrivateKey,
        client: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.key = key
        self.client = client
        self.metrics = GatewayMetrics()
        self.registry = NodeRegistry(client)
        self.forwarder = Forwarder(
            client, ledger, self.registry, key, self.metrics, settings.node_timeout_seconds
        )
        # A slot outlives the longest non-streamed request; a live stream keeps extending it.
        self.limiter = make_limiter(
            settings.redis_url,
            slot_ttl=settings.node_timeout_seconds + 60.0,
            prefix=settings.rate_limit_prefix,
        )

    # -- plumbing --------------------------------------------------------------------------
    async def handle(
        self, route: str, request: Request, work: Callable[[], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        limited: list[RateLimited] = []
        answered: list[Response] = []  # set only when work() returned (a relayed node answer)

        async def guarded() -> Response:
            try:
                answered.append(await work())
                return answered[0]
            except RateLimited as exc:
                limited.append(exc)
                raise
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                log.warning("ledger database unavailable on %s: %s", route, type(exc).__name__)
                raise ServiceUnavailable(
                    "the ledger database is unavailable; retry shortly"
                ) from None

        try:
            response, code = await answer_or_error(guarded, route=route, log=log, service="gateway")
        except BaseException:
            await self.admitted(request).release()
            raise
        if limited:
            response.headers["Retry-After"] = str(limited[0].retry_after)
        await self.finish_admission(request, response, refused_by_node=bool(answered))
        self.metrics.requests.labels(route, code).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    async def user(self, request: Request) -> User:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("missing bearer API key")
        with self.metrics.ledger_latency.labels("authenticate").time():
            user = await self.ledger.authenticate(token.strip())
        if not user.is_admin and getattr(request.state, "veil_admission", None) is None:
            request.state.veil_admission = await self.limiter.admit(user.id, self.limits(user))
            request.state.veil_user_id = user.id
        return user

    # -- rate limits -----------------------------------------------------------------------
    def limits(self, user: User) -> Limits:
        return Limits(
            requests_per_minute=user.requests_per_minute
            or self.settings.default_requests_per_minute,
            concurrency=user.concurrency or self.settings.default_concurrency,
        )

    def limits_json(self, user: User) -> dict[str, Any]:
        """A user's own limits (None: the default) and the limits in force."""
        limits = self.limits(user)
        return {
            "requests_per_minute": user.requests_per_minute,
            "concurrency": user.concurrency,
            "effective": {
                "requests_per_minute": limits.requests_per_minute,
                "concurrency": limits.concurrency,
            },
        }

    @staticmethod
    def admitted(request: Request) -> Admission:
        admission = getattr(request.state, "veil_admission", None)
        return UNLIMITED if admission is None else admission

    async def finish_admission(
        self, request: Request, response: Response, *, refused_by_node: bool
    ) -> None:
        """Charge a node's refusal extra weight, then give the concurrency slot back: now, or
        for a stream once its last byte is sent (or the client hung up)."""
        admission = self.admitted(request)
        if admission is UNLIMITED:
            return
        if refused_by_node and 400 <= response.status_code < 500:
            with contextlib.suppress(ServiceUnavailable):  # the request is over; logged already
                await self.limiter.penalize(
                    request.state.veil_user_id, self.settings.failed_request_weight - 1
                )
        if isinstance(response, StreamingResponse):
            response.body_iterator = _released_after(response.body_iterator, admission)
        else:
            await admission.release()

    async def admin(self, request: Request) -> User:
        user = await self.user(request)
        if not user.is_admin:
            raise AuthError("this route needs an admin API key")
        return user

    async def body(self, request: Request) -> bytes:
        return await read_body(request, self.settings.max_body_bytes)

    def default_units(self, kind: str) -> int:
        if kind == "embeddings":
            return self.settings.default_embedding_units
        if kind == "images":
            return self.settings.default_image_units
        return self.settings.default_chat_units

    async def alive(self, node: NodeInfo) -> bool:
        try:
            response = await self.client.get(f"{node.url}/health", timeout=3)
            return response.status_code == 200
        except httpx.HTTPError:
            self.registry.mark_unhealthy(node, "health check failed")
            return False

    async def reserve_on_a_node(
        self, user: User, model: str, units: int, ttl: int
    ) -> tuple[NodeInfo, Any]:
        """Reserve on the least busy healthy node that answers; try the next one otherwise."""
        for node in self.registry.candidates(model):
            if not await self.alive(node):
                continue
            with self.metrics.ledger_latency.labels("reserve").time():
                reservation = await self.ledger.reserve(
                    user.id, model, units, node_small_id=node.node_small_id, ttl_seconds=ttl
                )
            self.registry.hold(node.node_small_id, reservation.id, reservation.expires_at)
            return node, reservation
        raise ServiceUnavailable(f"no node serving {model!r} is reachable right now")

    # -- routes ----------------------------------------------------------------------------
    async def lock(self, request: Request) -> Response:
        user = await self.user(request)
        ask = parse_model(await self.body(request), NodesCreateLockRequest, "lock request")
        kind = self.registry.kind_of(ask.model)
        units = ask.max_num_tokens or self.default_units(kind)
        ttl = ask.timeout or self.settings.lock_timeout_seconds
        node, reservation = await self.reserve_on_a_node(user, ask.model, units, ttl)
        evidence = None
        if ask.attestation_nonce is not None:
            evidence = await self.evidence(node, ask.attestation_nonce, reservation)
            if (
                evidence.get("x25519_public_key")
                != base64.b64encode(node.current_public_key).decode()
            ):
                # The node rotated since our last refresh: learn its new key now, or the client
                # would see evidence for one key and a lock for another.
                await self.registry.refresh(node)
        answer = NodesCreateLockResponse(
            public_key=node.current_public_key,
            node_small_id=node.node_small_id,
            stack_small_id=reservation.stack_id,
            stack_entry_digest=None,
            key_id=node.current_key_id,
            node_signing_public_key=node.signing_public_key,
            reserved_units=reservation.units,
            expires_at=reservation.expires_at,
            evidence=evidence,
            reservation_id=reservation.id,
        )
        return Response(answer.model_dump_json(), media_type="application/json")

    async def evidence(self, node: NodeInfo, nonce: bytes, reservation: Any) -> dict[str, Any]:
        """Relay the node's evidence for the client's nonce; the client, not us, judges it."""
        try:
            response = await self.client.get(
                f"{node.url}/v1/attestation",
                params={"nonce": base64.b64encode(nonce).decode()},
                timeout=30,
            )
            if response.status_code == 200:
                document = response.json()
                if isinstance(document, dict):
                    return document
        except (httpx.HTTPError, ValueError):
            self.registry.mark_unhealthy(node, "attestation failed")
        await self.ledger.release(reservation.id)
        self.registry.release(reservation.id)
        raise ServiceUnavailable("the node did not return attestation evidence; nothing reserved")

    async def confidential(self, kind: Kind, request: Request) -> Response:
        user = await self.user(request)
        raw = await self.body(request)
        envelope = parse_model(raw, ConfidentialComputeRequest, "envelope")
        node = self.registry.by_public_key(envelope.node_dh_public_key)
        if envelope.model_name not in node.models:
            raise NotFound(f"model {envelope.model_name!r} is not served by that node")
        handle = reservation_handle(request)
        request_id = new_request_id()
        with self.metrics.ledger_latency.labels("claim").time():
            # The lock's own reservation when the request names it (Veil's client); the caller's
            # oldest held one on the stack otherwise (atoma-sdk knows no handle).
            reservation = await self.ledger.claim(
                user.id,
                envelope.stack_small_id,
                request_id=request_id,
                reservation_id=handle,
                model=envelope.model_name,
                lease_seconds=self.forwarder.lease_seconds,
            )
        response = await self.forwarder.forward(
            node,
            f"/v1/confidential/{ROUTES[kind]}",
            raw,
            reservation,
            envelope.model_name,
            request_id,
            stream=envelope.stream is True,
        )
        if response.status_code == StaleNodeKey.status:  # stale key (or a replay: harmless)
            await self.registry.refresh(node)  # the client will lock again: give it the new key
        return response

    async def plain(self, kind: Kind, request: Request) -> Response:
        """Non-confidential OpenAI routes: the gateway sees plaintext here, by the caller's choice."""
        user = await self.user(request)
        raw = await self.body(request)
        document = parse_json_object(raw)
        model = document.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidBody("model: a model id is required")
        units = self.plain_units(kind, raw)
        node, reservation = await self.reserve_on_a_node(
            user, model, units, self.settings.lock_timeout_seconds
        )
        request_id = new_request_id()
        with self.metrics.ledger_latency.labels("claim").time():
            claimed = await self.ledger.claim(
                user.id,
                reservation.stack_id,
                request_id=request_id,
                reservation_id=reservation.id,
                lease_seconds=self.forwarder.lease_seconds,
            )
        return await self.forwarder.forward(
            node,
            f"/v1/{ROUTES[kind]}",
            raw,
            claimed,
            model,
            request_id,
            stream=document.get("stream") is True,
        )

    def plain_units(self, kind: Kind, raw: bytes) -> int:
        """What to hold for a plain request; the node's signed receipt decides the charge."""
        if kind == "images":
            return parse_model(raw, ImageGenerationRequest, "images request").compute_units()
        if kind == "embeddings":
            parse_model(raw, EmbeddingRequest, "embeddings request")
            return self.settings.default_embedding_units
        chat = parse_model(raw, ChatCompletionRequest, "chat request")
        wanted = chat.requested_max_tokens()
        # Bytes bound the prompt's tokens from above for byte-level tokenizers.
        return self.settings.default_chat_units if wanted is None else wanted + len(raw)

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": model, "object": "model", "created": 0, "owned_by": "veil", "kind": kind}
                for model, kind in sorted(self.registry.models().items())
            ],
        }

    # -- background ------------------------------------------------------------------------
    async def maintain(self) -> None:
        """Refresh nodes and release expired reservations, forever (cancelled at shutdown)."""
        last_refresh = 0.0
        while True:
            await asyncio.sleep(self.settings.expire_interval_seconds)
            try:
                released = await self.ledger.expire()
                if released:
                    self.metrics.expired.inc(released)
                    log.info("released %d expired reservation(s)", released)
                if time.monotonic() - last_refresh >= self.settings.health_interval_seconds:
                    await self.registry.refresh_all()
                    last_refresh = time.monotonic()
            except Exception as exc:  # keep maintaining; the next round may succeed
                log.error("maintenance round failed: %s", type(exc).__name__)


def create_gateway_app(
    settings: GatewaySettings,
    key: Ed25519PrivateKey,
    *,
    on_admin_key: Callable[[str], None] | None = None,
    bootstrap_units: int = 0,
) -> FastAPI:
    """Build the gateway. The ledger opens (and migrates) when the app starts."""
    state: dict[str, Gateway] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ledger = await Ledger.open(
            settings.resolved_database_url, in_flight_grace=settings.in_flight_grace_seconds
        )
        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=256))
        gateway = Gateway(settings, ledger, key, client)
        state["gateway"] = gateway
        released = await ledger.expire()
        if released:
            log.info("released %d reservation(s) left by an earlier run", released)
        for url in settings.nodes:
            gateway.registry.add(url, await ledger.node_small_id(url.rstrip("/")))
        await gateway.registry.refresh_all()
        admin_key = await ledger.ensure_admin_key()
        if admin_key is not None:
            if bootstrap_units:
                # First start of a local demo: give the admin a stack per model so the
                # printed key works at once.
                admin = await ledger.authenticate(admin_key)
                for model in sorted(gateway.registry.models()):
                    await ledger.create_stack(admin.name, model, bootstrap_units)
            if on_admin_key is not None:
                on_admin_key(admin_key)
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
            await gateway.forwarder.aclose()
            await client.aclose()
            await gateway.limiter.close()
            await ledger.close()

    app = FastAPI(title="Veil gateway", lifespan=lifespan, docs_url=None, redoc_url=None)

    def gw() -> Gateway:
        return state["gateway"]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (404, 405):
            return error_response(NotFound("no such route"))
        return error_response(InternalError("unexpected HTTP error"))

    @app.exception_handler(RequestValidationError)
    async def path_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Name the parameter (e.g. stack_id past the signed 64-bit range), never echo its value.
        names = sorted({str(e["loc"][-1]) for e in exc.errors() if e.get("loc")})
        where = f": {', '.join(names)[:200]}" if names else ""
        return error_response(InvalidBody(f"invalid path or query parameter{where}"))

    def route(path: str, name: str, method: str = "POST") -> Callable[..., Any]:
        def register(work: Callable[[Gateway, Request], Awaitable[Response]]) -> Any:
            async def handler(request: Request) -> Response:
                return await gw().handle(name, request, lambda: work(gw(), request))

            app.add_api_route(path, handler, methods=[method], name=name)
            return work

        return register

    route("/v1/nodes/lock", "lock")(Gateway.lock)
    for kind, path in ROUTES.items():
        route(f"/v1/confidential/{path}", f"confidential_{kind}")(
            lambda g, r, k=kind: g.confidential(k, r)
        )
        route(f"/v1/{path}", kind)(lambda g, r, k=kind: g.plain(k, r))

    @route("/v1/models", "models", "GET")
    async def models(g: Gateway, _: Request) -> Response:
        return JSONResponse(g.models())

    @route("/v1/stacks", "my_stacks", "GET")
    async def my_stacks(g: Gateway, request: Request) -> Response:
        user = await g.user(request)
        stacks = await g.ledger.list_stacks(user.name)
        return JSONResponse({"stacks": [stack_json(s) for s in stacks]})

    @route("/admin/users", "admin_create_user")
    async def create_user(g: Gateway, request: Request) -> Response:
        await g.admin(request)
        ask = parse_model(await g.body(request), CreateUser, "user")
        user, api_key = await g.ledger.create_user(
            ask.name, requests_per_minute=ask.requests_per_minute, concurrency=ask.concurrency
        )
        return JSONResponse(
            {"user": user.name, "api_key": api_key, **g.limits_json(user)}, status_code=201
        )

    async def set_limits(request: Request, name: str) -> Response:
        async def work() -> Response:
            await gw().admin(request)
            ask = parse_model(await gw().body(request), SetLimits, "limits")
            user = await gw().ledger.set_limits(
                name, requests_per_minute=ask.requests_per_minute, concurrency=ask.concurrency
            )
            return JSONResponse({"user": user.name, **gw().limits_json(user)})

        return await gw().handle("admin_set_limits", request, work)

    @app.post("/admin/users/{name}/limits")
    async def post_limits(name: UserName, request: Request) -> Response:
        return await set_limits(request, name)

    @app.patch("/admin/users/{name}/limits")
    async def patch_limits(name: UserName, request: Request) -> Response:
        return await set_limits(request, name)

    @route("/v1/usage", "usage", "GET")
    async def usage(g: Gateway, request: Request) -> Response:
        caller = await g.user(request)
        query = UsageQuery.parse(request.query_params)
        user = caller
        if query.user is not None and query.user != caller.name:
            if not caller.is_admin:
                raise AuthError("only an admin API key may read another user's usage")
            user = await g.ledger.get_user(query.user)
        records = await g.ledger.usage(
            user.id, since=query.since, after_id=query.after, limit=query.limit + 1
        )
        return JSONResponse(usage_json(user.name, records, query.limit, g.registry))

    @route("/admin/stacks", "admin_create_stack")
    async def create_stack(g: Gateway, request: Request) -> Response:
        await g.admin(request)
        ask = parse_model(await g.body(request), CreateStack, "stack")
        stack = await g.ledger.create_stack(
            ask.user, ask.model, ask.units, price_per_million=ask.price_per_million
        )
        return JSONResponse(stack_json(stack), status_code=201)

    @route("/admin/stacks", "admin_list_stacks", "GET")
    async def list_stacks(g: Gateway, request: Request) -> Response:
        await g.admin(request)
        stacks = await g.ledger.list_stacks(request.query_params.get("user"))
        return JSONResponse({"stacks": [stack_json(s) for s in stacks]})

    @app.get("/admin/stacks/{stack_id}")
    async def show_stack(stack_id: StackId, request: Request) -> Response:
        async def work() -> Response:
            await gw().admin(request)
            return JSONResponse(stack_json(await gw().ledger.get_stack(stack_id)))

        return await gw().handle("admin_show_stack", request, work)

    @app.post("/admin/stacks/{stack_id}/top-up")
    async def top_up(stack_id: StackId, request: Request) -> Response:
        async def work() -> Response:
            await gw().admin(request)
            ask = parse_model(await gw().body(request), TopUp, "top-up")
            return JSONResponse(stack_json(await gw().ledger.top_up(stack_id, ask.units)))

        return await gw().handle("admin_top_up", request, work)

    @app.get("/health")
    async def health() -> JSONResponse:
        nodes = [
            {
                "node_small_id": n.node_small_id,
                "url": n.url,
                "healthy": n.healthy,
                "reason": n.reason,  # why it is not routed to (e.g. it serves without tickets)
            }
            for n in gw().registry.nodes
        ]
        healthy = any(n["healthy"] for n in nodes)
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", "nodes": nodes},
            status_code=200 if healthy else 503,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gw().metrics.render(), media_type="text/plain; version=0.0.4")

    return app
