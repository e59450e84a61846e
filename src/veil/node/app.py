"""The node's ASGI app: it moves bytes. No plaintext passes through this module.

Each inference route reads the raw body, checks the gateway ticket on those bytes, and hands them
to :class:`veil.node.pipeline.Pipeline`, which decrypts, runs the engine and seals; what comes back
is the bytes of a whole answer with its signed receipt, or an iterator of already-sealed SSE
events (plain routes: OpenAI JSON, which the pipeline produced too). The read-only routes (models,
attestation, keys, health, metrics) carry no request content at all.

Every failure leaves as ``{"error": {"code", "message"}}`` with the status of its class in
``veil.wire.errors``; unexpected exceptions become a constant-text 500 and are logged by type and
stack frames only, because exception messages can quote their input.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from veil.attestation.evidence import AttestationError
from veil.attestation.providers import (
    build_evidence,
    choose_gpu_provider,
    choose_provider,
    load_event_log,
    load_release_evidence,
)
from veil.config import NodeSettings
from veil.node.keyring import Keyring
from veil.node.metrics import NodeMetrics
from veil.node.pipeline import Answer, Pipeline, WholeAnswer
from veil.node.receipt_log import ReceiptLog
from veil.node.replay import NodeReplayCaches, ReplayCache
from veil.node.service import EngineRegistry
from veil.node.tickets import TicketChecker
from veil.web import answer_or_error, error_response, parse_json_object, read_body
from veil.wire.envelopes import b64decode
from veil.wire.errors import InternalError, InvalidBody, NotFound, ServiceUnavailable
from veil.wire.routes import ROUTES, Endpoint
from veil.wire.tickets import (
    RECEIPT_HEADER,
    RECEIPTS_PATH,
    TICKET_HEADER,
    Ticket,
    public_key_from_b64,
)

log = logging.getLogger("veil.node")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# A receipt query names at most 1,000 ticket ids of at most 64 characters, base64 in a token.
RECEIPT_QUERY_MAX_BYTES = 256 * 1024

# What an inference route does with the bytes it read and the ticket checked on them.
Work = Callable[[bytes, Ticket | None], Awaitable[Answer]]


def respond(answer: Answer) -> Response:
    """The HTTP response for a pipeline answer; its bytes are sent as they are."""
    if isinstance(answer, WholeAnswer):
        return Response(
            answer.body, media_type="application/json", headers={RECEIPT_HEADER: answer.receipt}
        )
    return StreamingResponse(answer.events, media_type="text/event-stream", headers=SSE_HEADERS)


class NodeApp:
    """Holds the node's state (on ``app.state.node``) and implements its routes."""

    def __init__(self, settings: NodeSettings, engines: EngineRegistry, keyring: Keyring) -> None:
        self.settings = settings
        self.engines = engines
        self.keyring = keyring
        self.metrics = NodeMetrics()
        self.attestation_provider = choose_provider(settings.attestation)
        self.gpu_provider = choose_gpu_provider(settings.gpu_attestation)
        self.release = load_release_evidence(settings)
        self.event_log = load_event_log(settings)
        self.replay_caches = NodeReplayCaches.from_settings(settings)
        self.tickets = TicketChecker(
            [public_key_from_b64(key) for key in settings.gateway_keys],
            self.replay_caches.tickets,
            insecure_no_gateway=settings.insecure_no_gateway,
        )
        self.receipt_log = ReceiptLog(
            settings.receipt_retention_entries, settings.receipt_retention_seconds
        )
        self.pipeline = Pipeline(
            keyring=keyring,
            engines=engines,
            replay=self.replay_caches.requests,
            metrics=self.metrics,
            default_units=settings.default_units,
            request_timeout_seconds=settings.request_timeout_seconds,
            kems=settings.kems,
            receipt_log=self.receipt_log,
        )

    @property
    def replay(self) -> ReplayCache:
        """The v3 request-id cache (what tests and operators inspect)."""
        return self.replay_caches.requests

    async def handle(self, route: str, work: Callable[[], Awaitable[Response]]) -> Response:
        """Run a route's work with the error shape, metrics and one log line."""
        started = time.perf_counter()
        response, code = await answer_or_error(work, route=route, log=log, service="node")
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(route, code).inc()
        self.metrics.latency.labels(route).observe(elapsed)
        log.info("%s %s %.1fms", route, code, elapsed * 1000)
        return response

    async def inference(self, route: str, request: Request, work: Work) -> Response:
        """Read the body, check the ticket on its bytes, and send what the pipeline answers."""

        async def run() -> Response:
            raw = await read_body(request, self.settings.max_body_bytes)
            ticket = await self.tickets.check(request.headers.get(TICKET_HEADER), raw)
            return respond(await work(raw, ticket))

        return await self.handle(route, run)

    async def receipts(self, request: Request) -> Response:
        """The kept receipts of the tickets a gateway's signed query names (those it has)."""

        async def work() -> Response:
            raw = await read_body(request, RECEIPT_QUERY_MAX_BYTES)
            query = self.tickets.check_query(parse_json_object(raw).get("query"))
            found = self.receipt_log.lookup(query.ticket_ids)
            return JSONResponse({"receipts": found})

        return await self.handle("receipts", work)

    async def attestation(self, nonce_b64: str | None) -> Response:
        """Fresh evidence binding the current X25519 key, the signing key, the current
        post-quantum key (when the keyring has one) and the caller's nonce."""
        try:
            nonce = b64decode(nonce_b64 or "", field="nonce")
        except ValueError as exc:
            raise InvalidBody(str(exc)) from None
        if not 16 <= len(nonce) <= 64:
            raise InvalidBody("nonce must be 16 to 64 bytes, base64")
        self.keyring.refresh()
        current = self.keyring.current  # one generation: both its keys, even mid-rotation
        try:
            evidence = await asyncio.to_thread(
                functools.partial(
                    build_evidence,
                    self.attestation_provider,
                    current.public_key,
                    self.keyring.signing_public_key,
                    nonce,
                    gpu_provider=self.gpu_provider,
                    release=self.release,
                    event_log=self.event_log,
                    kem_public_key=None if current.hybrid is None else current.hybrid.public_key,
                )
            )
        except AttestationError as exc:
            log.error("attestation failed: %s", exc)
            raise ServiceUnavailable("the TEE did not produce evidence; see the node log") from None
        return Response(evidence.to_json(), media_type="application/json")

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": engine.model_id,
                    "object": "model",
                    "created": int(self.keyring.current.created_at),
                    "owned_by": "veil",
                    "kind": engine.kind,
                }
                for engine in self.engines.all()
            ],
        }

    async def health(self) -> JSONResponse:
        engines = self.engines.all()
        verdicts = await asyncio.gather(*(e.healthy() for e in engines))  # at once, not in turn
        unhealthy = [e.model_id for e, ok in zip(engines, verdicts, strict=True) if not ok]
        body = {
            "status": "ok" if not unhealthy else "degraded",
            "models": self.engines.model_ids(),
            "unhealthy": unhealthy,
            "key_id": self.keyring.current.key_id,
        }
        return JSONResponse(body, status_code=200 if not unhealthy else 503)


def create_app(
    settings: NodeSettings,
    engines: EngineRegistry,
    keyring: Keyring | None = None,
    *,
    manage_engines: bool = True,
) -> FastAPI:
    """Build the node app. ``manage_engines=False`` leaves engine start/stop to the caller."""
    keyring = keyring or Keyring(settings.data_dir, settings.key_grace_seconds)
    node = NodeApp(settings, engines, keyring)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_engines:
            for engine in engines.all():
                await engine.start()
        log.info(
            "node ready: key %s, models %s", keyring.current.key_id, ", ".join(engines.model_ids())
        )
        if not node.tickets.required:
            log.warning(
                "INSECURE: --insecure-no-gateway: serving paid routes to anyone, without gateway "
                "tickets; callers set their own budgets. Never expose this node to the network."
            )
        elif not settings.gateway_keys:
            log.error(
                "no gateway key configured: every paid request is refused (401); start the node "
                "with --gateway-key KEY, or --insecure-no-gateway for direct use"
            )
        try:
            yield
        finally:
            await node.replay_caches.close()
            if manage_engines:
                for engine in engines.all():
                    await engine.close()

    app = FastAPI(title="Veil node", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.node = node

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(NotFound("no such route"))
        if exc.status_code == 405:
            return error_response(NotFound("no such route for this method"))
        return error_response(InternalError("unexpected HTTP error"))

    def confidential_route(endpoint: Endpoint, name: str) -> Any:
        async def handler(request: Request) -> Response:
            return await node.inference(
                name, request, functools.partial(node.pipeline.confidential, endpoint)
            )

        return handler

    def plain_route(endpoint: Endpoint, name: str) -> Any:
        async def handler(request: Request) -> Response:
            return await node.inference(
                name, request, functools.partial(node.pipeline.plain, endpoint)
            )

        return handler

    for endpoint, route in ROUTES.items():
        name = route.tail.replace("/", "_")  # the metrics label: "chat_completions"
        app.post(route.confidential)(confidential_route(endpoint, f"confidential_{name}"))
        app.post(route.plain)(plain_route(endpoint, name))

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return node.models()

    @app.get("/v1/attestation")
    async def attestation(request: Request) -> Response:
        async def work() -> Response:
            await read_body(request, settings.max_body_bytes)  # bounded like every route's body
            return await node.attestation(request.query_params.get("nonce"))

        return await node.handle("attestation", work)

    @app.post(RECEIPTS_PATH)
    async def receipts(request: Request) -> Response:
        return await node.receipts(request)

    @app.get("/v1/keys")
    async def keys() -> dict[str, Any]:
        return node.keyring.describe()

    @app.get("/health")
    async def health() -> JSONResponse:
        return await node.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(node.metrics.render(), media_type="text/plain; version=0.0.4")

    return app
