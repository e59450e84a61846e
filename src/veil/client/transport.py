"""The httpx transport that makes the official ``openai`` package confidential, unchanged::

    import openai, veil

    client = openai.OpenAI(
        base_url=f"{GATEWAY}/v1", api_key=KEY, http_client=veil.openai_http_client(GATEWAY, KEY)
    )
    for chunk in client.chat.completions.create(model=..., messages=..., stream=True): ...

``VeilTransport`` (sync) and ``AsyncVeilTransport`` intercept the plain ``POST
/v1/chat/completions``, ``/v1/embeddings`` and ``/v1/images/generations`` the ``openai`` package
builds, run the confidential flow (``veil.client.flow``) on their JSON - the bytes ``openai``
encoded are the plaintext that is sealed - and answer with the node's decrypted plaintext: the
exact JSON bytes the node signed, or the verified chunks as server-sent events ending in ``data:
[DONE]`` (``veil.client.streaming``). Only envelopes go over the network. Requests without a body
(``GET /v1/models``...) pass through unchanged, and so does a body under ``/confidential/`` only
if it is a well-formed envelope; any other request with a body (e.g. ``/v1/completions``, or a
``base_url`` that points ``openai`` at the confidential routes) raises ``PlaintextRefused`` and is
not sent.

Every lock is attested before anything is sealed, and requests are sealed with veil-v3 (by
default; post-quantum), exactly as ``veil.Client`` does (``veil.Client`` is ``openai.OpenAI`` over this transport); the options are
``veil.client.options.ClientArguments`` (``insecure_no_tee=True``: a local demo without a TEE only).

Each answer carries its ``Receipt`` in ``response.extensions["veil_receipt"]`` and a summary in
``x-veil-*`` headers. Errors: an error the server sent becomes an HTTP response with its status and
body (marked ``x-should-retry: false``: the flow has already retried what can be retried), so
``openai`` raises its usual status error; with ``raise_errors=True`` (``veil.Client``) the
``APIError`` itself is raised instead. A response that fails a check raises its ``IntegrityError``,
which ``openai`` lets through untouched. A network failure re-raises httpx's error, which
``openai`` reports as ``APIConnectionError`` (``raise_errors``: ``TransportError``).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, Unpack

import httpx
from pydantic import ValidationError

from veil.client.errors import APIError, BalanceError, PlaintextRefused, TransportError
from veil.client.flow import Answer, Flow, StreamOpened, arun, confidential, run
from veil.client.known_nodes import KnownNodes
from veil.client.options import ClientArguments, ClientOptions
from veil.client.plan import plan_body
from veil.client.receipt import Receipt
from veil.client.streaming import VerifiedEvents
from veil.wire.envelopes import ConfidentialComputeRequest
from veil.wire.routes import ROUTES, Endpoint

__all__ = [
    "NO_API_KEY",
    "RECEIPT_EXTENSION",
    "AsyncVeilTransport",
    "VeilTransport",
    "async_openai_http_client",
    "check_passes_through",
    "inference_endpoint",
    "openai_http_client",
    "receipt_of",
]

RECEIPT_EXTENSION = "veil_receipt"
# The API key ``veil.Client`` gives ``openai`` when it has none (``openai`` insists on one): a
# request bearing it is sent with no Authorization header at all.
NO_API_KEY = "veil-no-api-key"
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def inference_endpoint(request: httpx.Request) -> Endpoint | None:
    """The OpenAI inference route a request is for, whatever the path prefix before it.

    Matching on the suffix (not on ``base_url``'s exact path) means a prefix mismatch between
    ``openai``'s ``base_url`` and the transport's can never let a plain inference request through:
    it is sealed and sent to the transport's gateway. Requests already under ``/confidential/``
    are not sealed again (``check_passes_through`` decides about them).
    """
    if request.method != "POST":
        return None
    path = request.url.path.rstrip("/")
    if "/confidential/" in path:
        return None
    for endpoint, route in ROUTES.items():
        if path.endswith(f"/{route.tail}"):
            return endpoint
    return None


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


def receipt_of(response: httpx.Response) -> Receipt:
    """The receipt of an answer this transport gave."""
    receipt = response.extensions.get(RECEIPT_EXTENSION)
    if not isinstance(receipt, Receipt):
        raise LookupError("the response is not a confidential answer of Veil's transport")
    return receipt


def _bearer(request: httpx.Request) -> str | None:
    """The request's bearer key; a ``NO_API_KEY`` bearer is taken off the request."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    key = (token.strip() or None) if scheme.lower() == "bearer" else None
    if key == NO_API_KEY:
        del request.headers["authorization"]
        return None
    return key


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
    if receipt.kem is not None:
        headers["x-veil-kem"] = receipt.kem
    if receipt.attestation is not None:
        headers["x-veil-attestation"] = receipt.attestation.describe()
    if receipt.reserved_units is not None:
        headers["x-veil-reserved-units"] = str(receipt.reserved_units)
    return headers


def _answer(outcome: Answer | StreamOpened) -> httpx.Response:
    receipt = outcome.receipt
    extensions = {RECEIPT_EXTENSION: receipt}
    headers = _receipt_headers(receipt)
    if isinstance(outcome, StreamOpened):
        headers.update(
            {
                "content-type": "text/event-stream",
                "cache-control": "no-cache",
                "x-veil-signature": "verified-per-chunk",
            }
        )
        stream = VerifiedEvents(outcome.response, outcome.checker)
        return httpx.Response(200, headers=headers, stream=stream, extensions=extensions)
    headers.update({"content-type": "application/json", "x-veil-signature": "verified"})
    if receipt.units_charged is not None:
        headers["x-veil-units-charged"] = str(receipt.units_charged)
    return httpx.Response(200, headers=headers, content=outcome.plaintext, extensions=extensions)


Inner = TypeVar("Inner", httpx.BaseTransport, httpx.AsyncBaseTransport)


class _Sealing(Generic[Inner]):
    """What both transports share: which requests are sealed, and the flow that answers one."""

    def __init__(
        self, options: ClientOptions, transport: Inner | None = None, *, raise_errors: bool = False
    ) -> None:
        self.options = options
        self.raise_errors = raise_errors
        self._inner: Inner = transport if transport is not None else self._network()
        # Signing keys of attested nodes, for `veil usage --verify` (None: do not record).
        self.known_nodes: KnownNodes | None = KnownNodes()

    def _network(self) -> Inner:
        """The transport that talks to the network when none is given."""
        raise NotImplementedError

    def flow_for(self, request: httpx.Request) -> Flow[httpx.Response] | None:
        """The flow answering ``request``, or None when it may pass through as it is."""
        api_key = _bearer(request)
        endpoint = inference_endpoint(request)
        if endpoint is None:
            check_passes_through(request)
            return None
        return self._answering(endpoint, request, self.options.api_key or api_key)

    def _answering(
        self, endpoint: Endpoint, request: httpx.Request, api_key: str | None
    ) -> Flow[httpx.Response]:
        try:
            plan = plan_body(endpoint, request.content)
        except ValueError as exc:
            if self.raise_errors:
                raise
            return _error(400, "INVALID_BODY", str(exc))
        flow = confidential(plan, self.options, api_key=api_key, known_nodes=self.known_nodes)
        try:
            return _answer((yield from flow))
        except APIError as exc:
            if self.raise_errors:
                raise
            return _api_error(exc)
        except TransportError as exc:
            cause = exc.__cause__
            if self.raise_errors or not isinstance(cause, httpx.HTTPError):
                raise
            raise cause from exc


class VeilTransport(_Sealing[httpx.BaseTransport], httpx.BaseTransport):
    """Seals the three OpenAI inference routes over ``transport`` (what talks to the network,
    default ``httpx.HTTPTransport()``), and passes the rest, as the module docstring says."""

    def _network(self) -> httpx.BaseTransport:
        return httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        flow = self.flow_for(request)
        return self._inner.handle_request(request) if flow is None else run(flow, self._inner)

    def close(self) -> None:
        self._inner.close()


class AsyncVeilTransport(_Sealing[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """``VeilTransport`` for ``openai.AsyncOpenAI``: the same flow, driven asynchronously."""

    def _network(self) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        flow = self.flow_for(request)
        if flow is None:
            return await self._inner.handle_async_request(request)
        return await arun(flow, self._inner)

    async def aclose(self) -> None:
        await self._inner.aclose()


def openai_http_client(
    base_url: str,
    api_key: str | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
    **options: Unpack[ClientArguments],
) -> httpx.Client:
    """An ``httpx.Client`` for ``openai.OpenAI(http_client=...)`` that makes inference confidential.

    ``base_url`` is the gateway (with or without ``/v1``); ``api_key`` defaults to the bearer key
    ``openai`` sends. ``transport`` is what actually talks to the network (default
    ``httpx.HTTPTransport()``); wrap it to observe the wire. ``options`` are ``veil.Client``'s
    (``timeout``, ``max_attempts``, ``backoff``, ``protocol``, ``policy``, ``insecure_no_tee``).
    """
    resolved = ClientOptions.resolve(base_url, api_key, **options)
    return httpx.Client(transport=VeilTransport(resolved, transport), timeout=resolved.timeout)


def async_openai_http_client(
    base_url: str,
    api_key: str | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    **options: Unpack[ClientArguments],
) -> httpx.AsyncClient:
    """``openai_http_client`` for ``openai.AsyncOpenAI(http_client=...)``."""
    resolved = ClientOptions.resolve(base_url, api_key, **options)
    return httpx.AsyncClient(
        transport=AsyncVeilTransport(resolved, transport), timeout=resolved.timeout
    )
