"""The node's ASGI app: thin routes over ``pipeline`` (crypto) and ``service`` (engines, budget).

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
from dataclasses import dataclass
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
from veil.engines.base import TOKENS_SO_FAR, EngineFailure
from veil.node.keyring import Keyring
from veil.node.metrics import NodeMetrics
from veil.node.pipeline import (
    Endpoint,
    OpenAIRequest,
    OpenedRequest,
    Sealer,
    encode_json,
    open_request,
    parse_openai_request,
    sse_event,
)
from veil.node.replay import make_replay_cache
from veil.node.service import ChatPlan, EngineRegistry, NodeService, engine_failure_message
from veil.node.tickets import TicketChecker, make_ticket_cache, sign_receipt
from veil.web import answer_or_error, error_response, parse_model, read_body
from veil.wire.envelopes import ConfidentialComputeRequest, b64decode, b64encode
from veil.wire.errors import (
    EngineError,
    InternalError,
    InvalidBody,
    NotFound,
    ServiceUnavailable,
)
from veil.wire.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest
from veil.wire.tickets import (
    RECEIPT_COMMENT,
    RECEIPT_HEADER,
    TICKET_HEADER,
    Ticket,
    UsageReceipt,
    public_key_from_b64,
)

log = logging.getLogger("veil.node")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def parse_envelope(raw: bytes) -> ConfidentialComputeRequest:
    return parse_model(raw, ConfidentialComputeRequest, "envelope")


class NodeApp:
    """Holds the node's state and implements its routes."""

    def __init__(self, settings: NodeSettings, engines: EngineRegistry, keyring: Keyring) -> None:
        self.settings = settings
        self.engines = engines
        self.keyring = keyring
        self.service = NodeService(engines, settings.default_units)
        self.metrics = NodeMetrics()
        self.attestation_provider = choose_provider(settings.attestation)
        self.gpu_provider = choose_gpu_provider(settings.gpu_attestation)
        self.release = load_release_evidence(settings)
        self.event_log = load_event_log(settings)
        self.replay = make_replay_cache(
            settings.replay_cache,
            max_entries=settings.replay_max_entries,
            max_per_tenant=settings.replay_max_per_tenant,
            prefix=settings.replay_prefix,
        )
        ticket_cache = make_ticket_cache(
            settings.replay_cache, prefix=settings.replay_prefix + "ticket:"
        )
        self.tickets = TicketChecker(
            [public_key_from_b64(key) for key in settings.gateway_keys],
            ticket_cache,
            insecure_no_gateway=settings.insecure_no_gateway,
        )

    # -- plumbing --------------------------------------------------------------------------
    async def handle(
        self,
        route: str,
        request: Request,
        work: Callable[[bytes, Ticket | None], Awaitable[Response]],
        *,
        ticketed: bool = True,
    ) -> Response:
        started = time.perf_counter()

        async def run() -> Response:
            raw = await read_body(request, self.settings.max_body_bytes)
            ticket = None
            if ticketed:
                ticket = await self.tickets.check(request.headers.get(TICKET_HEADER), raw)
            return await work(raw, ticket)

        response, code = await answer_or_error(run, route=route, log=log, service="node")
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(route, code).inc()
        self.metrics.latency.labels(route).observe(elapsed)
        log.info("%s %s %.1fms", route, code, elapsed * 1000)
        return response

    def check_model(self, endpoint: Endpoint, model: str) -> None:
        getter = {
            "chat": self.engines.get_chat,
            "embeddings": self.engines.get_embeddings,
            "images": self.engines.get_images,
        }[endpoint]
        getter(model)

    # -- confidential routes ---------------------------------------------------------------
    async def confidential(
        self, endpoint: Endpoint, path: str, raw: bytes, ticket: Ticket | None
    ) -> Response:
        envelope = parse_envelope(raw)
        self.check_model(endpoint, envelope.model_name)
        # The replay space is partitioned per tenant: the ticket's stack (the envelope's own
        # claim only on an --insecure-no-gateway node, where the caller is its own gateway).
        tenant = ticket.stack_small_id if ticket is not None else envelope.stack_small_id
        opened = await open_request(
            envelope, endpoint, self.keyring, self.replay, path=path, tenant=tenant
        )
        sealer = opened.sealer
        request = opened.request
        units = _budget(opened, ticket)
        stamp = Stamp(ticket, opened.request_id, sealer, units)
        if isinstance(request, ChatCompletionRequest):
            plan = await self.service.plan_chat(request, units)
            stamp = Stamp(ticket, opened.request_id, sealer, plan.units)
            if opened.stream:

                def seal(chunk: dict[str, Any], usage: dict[str, int] | None, final: bool) -> bytes:
                    self.metrics.stream_chunks.labels("confidential_chat").inc()
                    return sse_event(sealer.seal(chunk, usage, final=final))

                return await self._stream(plan, request, seal, stamp, done=sealer.done)
            result = await self._chat(plan, request, stamp)
            usage = _wire_usage(result.get("usage"))
        elif isinstance(request, EmbeddingRequest):
            result = await self.service.embed(request, units)
            usage = _wire_usage(result.get("usage"))
        else:
            assert isinstance(request, ImageGenerationRequest)
            result = await self.service.generate_images(request, units)
            usage = None  # images are metered in pixels; v1 carries no usage for them
        sealed = sealer.seal(result, usage)
        return self._answer(sealed.model_dump_json(exclude_none=True), request, usage, stamp)

    def _answer(
        self,
        content: bytes | str,
        request: OpenAIRequest,
        usage: dict[str, int] | None,
        stamp: Stamp,
    ) -> Response:
        receipt = self._receipt(request, usage, stamp)
        self.metrics.count_usage(request.model, usage)
        if isinstance(request, ImageGenerationRequest):
            self.metrics.tokens.labels(request.model, "pixels").inc(request.compute_units())
        return Response(content, media_type="application/json", headers={RECEIPT_HEADER: receipt})

    def _receipt(
        self,
        request: OpenAIRequest,
        usage: dict[str, int] | None,
        stamp: Stamp,
        *,
        final: bool = True,
    ) -> str:
        prompt = usage["prompt_tokens"] if usage else 0
        completion = usage["completion_tokens"] if usage else 0
        if isinstance(request, ImageGenerationRequest):
            units = request.compute_units()
        else:
            units = prompt + completion
        if stamp.units is not None:
            units = min(units, stamp.units)  # an engine's usage is charged at most the budget
        last_hash = stamp.sealer.last_hash if stamp.sealer is not None else None
        receipt = UsageReceipt(
            ticket_id=stamp.ticket.ticket_id if stamp.ticket else "direct",
            model=request.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            compute_units=units,
            final=final,
            request_id=stamp.request_id,
            response_hash=b64encode(last_hash) if last_hash is not None else None,
        )
        return sign_receipt(self.keyring, receipt)

    def _deadline(self, stamp: Stamp) -> float:
        """The ``time.monotonic()`` instant this request must end by: the node's
        ``request_timeout_seconds``, or the ticket's own deadline if it carries an earlier one."""
        timeout = self.settings.request_timeout_seconds
        if stamp.ticket is not None and stamp.ticket.deadline is not None:
            timeout = min(timeout, max(0.0, stamp.ticket.deadline - time.time()))
        return time.monotonic() + timeout

    async def _chat(
        self, plan: ChatPlan, request: ChatCompletionRequest, stamp: Stamp
    ) -> dict[str, Any]:
        """A whole completion; past the deadline the engine stops and answers what it wrote."""
        return await self.service.chat(plan, request, deadline=self._deadline(stamp))

    async def _stream(
        self,
        plan: ChatPlan,
        request: ChatCompletionRequest,
        encode: Callable[[dict[str, Any], dict[str, int] | None, bool], bytes],
        stamp: Stamp,
        done: bytes | None,
    ) -> Response:
        """Run a chat stream; fail with a status if it fails before its first chunk.

        After the first chunk the status is sent, so a failure becomes a last (sealed, for
        confidential routes) error event that carries the usage produced so far. Every content
        chunk is followed by a signed running receipt of the completion tokens produced so far
        (the engine's count, ``TOKENS_SO_FAR``), so a client that hangs up pays what it got. A
        stream that passes its deadline or its budget is stopped: the engine is closed and a
        final receipt signs what was produced (at most the budget).
        """
        deadline = self._deadline(stamp)
        loop_deadline = asyncio.get_running_loop().time() + (deadline - time.monotonic())
        chunks = self.service.chat_stream(plan, request)
        try:
            async with asyncio.timeout_at(loop_deadline):
                first = await anext(chunks)
        except EngineFailure as exc:
            await chunks.aclose()
            raise EngineError(engine_failure_message(exc)) from None
        except StopAsyncIteration:
            raise EngineError("the model backend produced no output") from None
        except TimeoutError:
            await chunks.aclose()
            raise EngineError("the model produced nothing before the request's deadline") from None

        def receipt_line(usage: dict[str, int], final: bool) -> bytes:
            token = self._receipt(request, usage, stamp, final=final)
            return RECEIPT_COMMENT + token.encode() + b"\n\n"

        def so_far(completion: int) -> dict[str, int]:
            total = plan.prompt_tokens + completion
            return {
                "prompt_tokens": plan.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": total,
            }

        def stopped(why: str, produced: int) -> list[bytes]:
            """The last event and final receipt of a stream the node ended itself."""
            usage = so_far(produced)
            self.metrics.count_usage(request.model, usage)
            log.warning("stream for %s stopped: %s", request.model, why)
            failure = EngineError(f"the stream was stopped: {why}")
            return [encode(failure.to_body(), usage, True), receipt_line(usage, final=True)]

        async def events() -> AsyncIterator[bytes]:
            chunk: dict[str, Any] | None = first
            produced = 0  # completion tokens so far: the engine's count, or one per content chunk
            try:
                while chunk is not None:
                    counted = chunk.pop(TOKENS_SO_FAR, None)
                    usage = _wire_usage(chunk.get("usage"))
                    if usage is not None:
                        yield encode(chunk, usage, True)
                        self.metrics.count_usage(request.model, usage)
                        yield receipt_line(usage, final=True)
                    elif chunk.get("choices"):
                        if isinstance(counted, int) and not isinstance(counted, bool):
                            produced = max(produced, counted)
                        elif _has_content(chunk):
                            produced += 1
                        if plan.prompt_tokens + produced > plan.units:
                            why = f"its usage passed the request's {plan.units} compute units"
                            for event in stopped(why, produced):
                                yield event
                            return
                        yield encode(chunk, None, False)
                        yield receipt_line(so_far(produced), final=False)
                    else:
                        yield encode(chunk, None, False)
                    try:
                        async with asyncio.timeout_at(loop_deadline):
                            chunk = await anext(chunks, None)
                    except TimeoutError:
                        for event in stopped("it ran past the request's deadline", produced):
                            yield event
                        return
                if done is not None:
                    yield done
            except EngineFailure as exc:
                partial = exc.usage.as_dict() if exc.usage is not None else None
                self.metrics.count_usage(request.model, partial)
                failure = EngineError(engine_failure_message(exc))
                yield encode(failure.to_body(), partial, True)
                log.warning("stream for %s ended by an engine failure", request.model)
            finally:
                await chunks.aclose()

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    # -- plain routes ----------------------------------------------------------------------
    async def plain(self, endpoint: Endpoint, raw: bytes, ticket: Ticket | None) -> Response:
        request = parse_openai_request(endpoint, raw)
        units = ticket.units if ticket is not None else None
        stamp = Stamp(ticket, units=units)
        if isinstance(request, ChatCompletionRequest):
            plan = await self.service.plan_chat(request, units)
            stamp = Stamp(ticket, units=plan.units)
            if request.stream:

                def encode(chunk: dict[str, Any], usage: dict[str, int] | None, _: bool) -> bytes:
                    return b"data: " + encode_json(chunk) + b"\n\n"

                return await self._stream(plan, request, encode, stamp, done=b"data: [DONE]\n\n")
            result = await self._chat(plan, request, stamp)
        elif isinstance(request, EmbeddingRequest):
            result = await self.service.embed(request, units)
        else:
            assert isinstance(request, ImageGenerationRequest)
            result = await self.service.generate_images(request, units)
        return self._answer(encode_json(result), request, _wire_usage(result.get("usage")), stamp)

    # -- read-only routes ------------------------------------------------------------------
    async def attestation(self, nonce_b64: str | None) -> Response:
        """Fresh evidence binding the current X25519 key, the signing key and the caller's nonce."""
        try:
            nonce = b64decode(nonce_b64 or "", field="nonce")
        except ValueError as exc:
            raise InvalidBody(str(exc)) from None
        if not 16 <= len(nonce) <= 64:
            raise InvalidBody("nonce must be 16 to 64 bytes, base64")
        try:
            evidence = await asyncio.to_thread(
                functools.partial(
                    build_evidence,
                    self.attestation_provider,
                    self.keyring.current.public_key,
                    self.keyring.signing_public_key,
                    nonce,
                    gpu_provider=self.gpu_provider,
                    release=self.release,
                    event_log=self.event_log,
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
        unhealthy = [e.model_id for e in self.engines.all() if not await e.healthy()]
        body = {
            "status": "ok" if not unhealthy else "degraded",
            "models": self.engines.model_ids(),
            "unhealthy": unhealthy,
            "key_id": self.keyring.current.key_id,
        }
        return JSONResponse(body, status_code=200 if not unhealthy else 503)


def _budget(opened: OpenedRequest, ticket: Ticket | None) -> int | None:
    """The units a request may spend.

    Without a ticket (a node used directly) the envelope's ``num_compute_units`` is the budget.
    With one, the ticket decides for v1: atoma-sdk puts ``max_tokens`` in ``num_compute_units``,
    which caps the completion (the body's ``max_tokens`` does that already), not prompt +
    completion. In v2 the client's ``num_compute_units`` is authenticated (AAD), so it also caps
    the ticket: a gateway cannot make the node spend more than the client agreed to.
    """
    if ticket is None:
        return opened.units
    if opened.request_id is not None and opened.units is not None:
        return min(ticket.units, opened.units)
    return ticket.units


def _has_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and (
            delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")
        ):
            return True
    return False


def _wire_usage(usage: Any) -> dict[str, int] | None:
    """The three standard counters of an engine's usage object, or None."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens", 0) or 0)
    completion = int(usage.get("completion_tokens", 0) or 0)
    total = int(usage.get("total_tokens", prompt + completion) or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


@dataclass(frozen=True)
class Stamp:
    """What a usage receipt names: the gateway ticket, the v2 request id, the sealer's last hash."""

    ticket: Ticket | None
    request_id: str | None = None
    sealer: Sealer | None = None
    units: int | None = None  # the request's budget: no receipt charges more


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

    def confidential_route(endpoint: Endpoint, route: str) -> Any:
        async def handler(request: Request) -> Response:
            path = request.url.path
            return await node.handle(
                route, request, lambda raw, ticket: node.confidential(endpoint, path, raw, ticket)
            )

        return handler

    def plain_route(endpoint: Endpoint, route: str) -> Any:
        async def handler(request: Request) -> Response:
            return await node.handle(
                route, request, lambda raw, ticket: node.plain(endpoint, raw, ticket)
            )

        return handler

    for endpoint, path in (
        ("chat", "chat/completions"),
        ("embeddings", "embeddings"),
        ("images", "images/generations"),
    ):
        name = path.replace("/", "_")
        app.post(f"/v1/confidential/{path}")(confidential_route(endpoint, f"confidential_{name}"))  # type: ignore[arg-type]
        app.post(f"/v1/{path}")(plain_route(endpoint, name))  # type: ignore[arg-type]

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return node.models()

    @app.get("/v1/attestation")
    async def attestation(request: Request) -> Response:
        async def work(_: bytes, __: Ticket | None) -> Response:
            return await node.attestation(request.query_params.get("nonce"))

        return await node.handle("attestation", request, work, ticketed=False)

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
