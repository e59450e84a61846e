"""Make the official ``openai`` package confidential, unchanged, through its ``http_client``::

    import openai, veil

    client = openai.OpenAI(
        base_url=f"{GATEWAY}/v1", api_key=KEY, http_client=veil.openai_http_client(GATEWAY, KEY)
    )
    for chunk in client.chat.completions.create(model=..., messages=..., stream=True): ...

The transport intercepts the plain ``POST /v1/chat/completions``, ``/v1/embeddings`` and
``/v1/images/generations`` the ``openai`` package builds, runs the confidential flow of ``sdk`` on
their JSON (lock, seal, verify) and answers with the node's decrypted plaintext: the exact JSON bytes
the node signed, or an SSE stream of the verified chunks ending in ``data: [DONE]``. Only the
envelope goes over the network. Requests without a body (``GET /v1/models``...) and requests
already under ``/confidential/`` pass through unchanged; any other request with a body (e.g.
``/v1/completions``, ``/v1/responses``) raises ``PlaintextRefused`` and is not sent.

Every lock is attested before anything is sealed, and requests are sealed with veil-v2, exactly as
``veil.Client`` does; ``protocol``, ``policy`` and ``insecure_no_tee`` are the ``Client`` options of
the same names (``insecure_no_tee=True``: a local demo without a TEE only).

Errors: an error the server sent becomes an HTTP response with its status and body (marked
``x-should-retry: false``: the client has already retried what can be retried), so ``openai`` raises
its usual status error. A response that fails a check raises the ``IntegrityError`` itself, which
``openai`` lets through untouched. A network failure re-raises httpx's error, which ``openai``
reports as ``APIConnectionError``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from pydantic import ValidationError

from veil.attestation.policy import Policy
from veil.client.errors import APIError, BalanceError, PlaintextRefused, TransportError
from veil.client.sdk import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PROTOCOL,
    DEFAULT_TIMEOUT,
    ROUTES,
    Answer,
    AsyncClient,
    Client,
    Endpoint,
    Plan,
    ProtocolName,
    plan_request,
)
from veil.client.streaming import AsyncChatStream, ChatStream, Receipt
from veil.wire.envelopes import ConfidentialComputeRequest

DONE = b"data: [DONE]\n\n"


def inference_endpoint(request: httpx.Request) -> Endpoint | None:
    """The OpenAI inference route a request is for, whatever the path prefix before it.

    Matching on the suffix (not on ``base_url``'s exact path) means a prefix mismatch between
    ``openai``'s ``base_url`` and the transport's can never let a plain inference request through:
    it is sealed and sent to the transport's gateway. Requests already under ``/confidential/``
    pass through untouched.
    """
    if request.method != "POST":
        return None
    path = request.url.path.rstrip("/")
    if "/confidential/" in path:
        return None
    for endpoint, route in ROUTES.items():
        if path.endswith(f"/{route}"):
            return endpoint
    return None


_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def check_passes_through(request: httpx.Request) -> None:
    """Allow a request to go out as it is only if it has no body, or is an envelope already.

    A body under ``/confidential/`` must be a well-formed ``ConfidentialComputeRequest``: a
    wrong ``base_url`` (or a caller posting OpenAI JSON there) must not send plaintext."""
    if "/confidential/" in request.url.path:
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = b""  # a streamed body cannot be checked: refused below
        try:
            ConfidentialComputeRequest.model_validate_json(body)
        except ValidationError:
            raise PlaintextRefused(
                f"{request.method} {request.url.path}: the body is not a sealed envelope, so it "
                "is not sent (is base_url the gateway's /v1?)"
            ) from None
        return
    has_body = (
        request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    )
    if request.method in _BODILESS and not has_body:
        return
    raise PlaintextRefused(
        f"{request.method} {request.url.path} cannot be sent confidentially; "
        "only chat completions, embeddings and image generations can"
    )


def _bearer(request: httpx.Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _plan(endpoint: Endpoint, content: bytes) -> Plan:
    try:
        body = json.loads(content)
    except ValueError:
        raise ValueError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the request body is not a JSON object")
    return plan_request(endpoint, body)


def _error(status: int, code: str, message: str, **more: Any) -> httpx.Response:
    body = {"error": {"code": code, "message": message, **more}}
    return httpx.Response(status, json=body, headers={"x-should-retry": "false"})


def _api_error(exc: APIError) -> httpx.Response:
    more: dict[str, Any] = {}
    if isinstance(exc, BalanceError) and exc.remaining_units is not None:
        more["remaining_units"] = exc.remaining_units
    return _error(exc.status, exc.code, exc.message, **more)


def _receipt_headers(receipt: Receipt) -> dict[str, str]:
    headers = {
        "x-veil-node-key-id": receipt.node_key_id,
        "x-veil-stack": str(receipt.stack_small_id),
        "x-veil-attempts": str(receipt.attempts),
        "x-veil-protocol": receipt.protocol,
    }
    if receipt.attestation is not None:
        headers["x-veil-attestation"] = receipt.attestation.describe()
    if receipt.reserved_units is not None:
        headers["x-veil-reserved-units"] = str(receipt.reserved_units)
    return headers


def _answer(answer: Answer) -> httpx.Response:
    headers = {
        "content-type": "application/json",
        "x-veil-signature": "verified",
        **_receipt_headers(answer.receipt),
    }
    if answer.receipt.units_charged is not None:
        headers["x-veil-units-charged"] = str(answer.receipt.units_charged)
    return httpx.Response(200, headers=headers, content=answer.plaintext)


def _stream_headers(receipt: Receipt) -> dict[str, str]:
    return {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-veil-signature": "verified-per-chunk",
        **_receipt_headers(receipt),
    }


def _network(exc: TransportError) -> BaseException:
    cause = exc.__cause__
    return cause if isinstance(cause, httpx.HTTPError) else exc


class _PlainEvents(httpx.SyncByteStream):
    def __init__(self, stream: ChatStream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        for plaintext, _ in self._stream.verified_plaintexts():
            yield b"data: " + plaintext + b"\n\n"
        yield DONE

    def close(self) -> None:
        self._stream.close()


class _AsyncPlainEvents(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncChatStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for plaintext, _ in self._stream.verified_plaintexts():
            yield b"data: " + plaintext + b"\n\n"
        yield DONE

    async def aclose(self) -> None:
        await self._stream.aclose()


class VeilTransport(httpx.BaseTransport):
    """An httpx transport that seals the three OpenAI inference routes, and passes the rest."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        protocol: ProtocolName = DEFAULT_PROTOCOL,
        policy: Policy | None = None,
        insecure_no_tee: bool = False,
    ) -> None:
        self._inner = transport or httpx.HTTPTransport()
        self._http = httpx.Client(transport=self._inner, timeout=timeout)
        self.client = Client(
            base_url,
            api_key,
            http_client=self._http,
            max_attempts=max_attempts,
            backoff=backoff,
            protocol=protocol,
            policy=policy,
            insecure_no_tee=insecure_no_tee,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        endpoint = inference_endpoint(request)
        if endpoint is None:
            check_passes_through(request)
            return self._inner.handle_request(request)
        try:
            plan = _plan(endpoint, request.read())
        except ValueError as exc:
            return _error(400, "INVALID_BODY", str(exc))
        api_key = None if self.client.api_key else _bearer(request)
        try:
            outcome = self.client.run(plan, api_key)
        except APIError as exc:
            return _api_error(exc)
        except TransportError as exc:
            raise _network(exc) from exc
        if isinstance(outcome, ChatStream):
            return httpx.Response(
                200, headers=_stream_headers(outcome.veil), stream=_PlainEvents(outcome)
            )
        return _answer(outcome)

    def close(self) -> None:
        self._http.close()


class AsyncVeilTransport(httpx.AsyncBaseTransport):
    """Async twin of ``VeilTransport``, for ``openai.AsyncOpenAI``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        protocol: ProtocolName = DEFAULT_PROTOCOL,
        policy: Policy | None = None,
        insecure_no_tee: bool = False,
    ) -> None:
        self._inner = transport or httpx.AsyncHTTPTransport()
        self._http = httpx.AsyncClient(transport=self._inner, timeout=timeout)
        self.client = AsyncClient(
            base_url,
            api_key,
            http_client=self._http,
            max_attempts=max_attempts,
            backoff=backoff,
            protocol=protocol,
            policy=policy,
            insecure_no_tee=insecure_no_tee,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        endpoint = inference_endpoint(request)
        if endpoint is None:
            check_passes_through(request)
            return await self._inner.handle_async_request(request)
        try:
            plan = _plan(endpoint, await request.aread())
        except ValueError as exc:
            return _error(400, "INVALID_BODY", str(exc))
        api_key = None if self.client.api_key else _bearer(request)
        try:
            outcome = await self.client.run(plan, api_key)
        except APIError as exc:
            return _api_error(exc)
        except TransportError as exc:
            raise _network(exc) from exc
        if isinstance(outcome, AsyncChatStream):
            return httpx.Response(
                200, headers=_stream_headers(outcome.veil), stream=_AsyncPlainEvents(outcome)
            )
        return _answer(outcome)

    async def aclose(self) -> None:
        await self._http.aclose()


def openai_http_client(
    base_url: str,
    api_key: str | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    protocol: ProtocolName = DEFAULT_PROTOCOL,
    policy: Policy | None = None,
    insecure_no_tee: bool = False,
) -> httpx.Client:
    """An ``httpx.Client`` for ``openai.OpenAI(http_client=...)`` that makes inference confidential.

    ``base_url`` is the gateway (with or without ``/v1``); ``api_key`` defaults to the bearer key
    ``openai`` sends. ``transport`` is what actually talks to the network (default
    ``httpx.HTTPTransport()``); wrap it to observe the wire. ``protocol``, ``policy`` and
    ``insecure_no_tee`` are ``veil.Client``'s options (strict attestation, veil-v2 by default).
    """
    veil = VeilTransport(
        base_url,
        api_key,
        transport=transport,
        timeout=timeout,
        max_attempts=max_attempts,
        backoff=backoff,
        protocol=protocol,
        policy=policy,
        insecure_no_tee=insecure_no_tee,
    )
    return httpx.Client(transport=veil, timeout=timeout)


def async_openai_http_client(
    base_url: str,
    api_key: str | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: float = DEFAULT_BACKOFF,
    protocol: ProtocolName = DEFAULT_PROTOCOL,
    policy: Policy | None = None,
    insecure_no_tee: bool = False,
) -> httpx.AsyncClient:
    """Async twin of ``openai_http_client``, for ``openai.AsyncOpenAI(http_client=...)``."""
    veil = AsyncVeilTransport(
        base_url,
        api_key,
        transport=transport,
        timeout=timeout,
        max_attempts=max_attempts,
        backoff=backoff,
        protocol=protocol,
        policy=policy,
        insecure_no_tee=insecure_no_tee,
    )
    return httpx.AsyncClient(transport=veil, timeout=timeout)
