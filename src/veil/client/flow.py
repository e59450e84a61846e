"""The confidential flow, written once and free of I/O, and the two drivers that run it.

Like httpx's ``auth_flow``, ``confidential()`` is a generator: it yields what it needs done
(``Send`` a request, ``Wait`` before retrying) and is sent the responses back; ``run`` drives it
over a sync transport and ``arun`` over an async one. One call (docs/PROTOCOL.md sections 4-8)::

    POST /v1/nodes/lock        -> node X25519 key, post-quantum key (v3), node signing key,
      + attestation_nonce         stack, reserved units, and the node's evidence for a fresh
                                  random 32-byte nonce
    accept_lock(...)           -> the evidence satisfies the policy and binds every node key and
                                  the nonce; otherwise AttestationFailed and nothing is sealed
    seal(...)                  -> HPKE (fresh encapsulation; v3: request id and timestamp,
                                  v3: ML-KEM-768 + X25519, a new response secret); the metadata
                                  the gateway could swap is authenticated (v3: in HPKE's info)
    POST /v1/confidential/...  -> sealed answer, every message opened and verified before any of
      + X-Veil-Reservation        it is used; the header (the lock's reservation_id) makes the
                                  request claim exactly its own lock's units

Retries: 409 STALE_NODE_KEY, 425 UNAVAILABLE_STACK and 503 SERVICE_UNAVAILABLE (from the lock or the
confidential POST) start the flow again - a new lock, a new attestation and a new encryption (new
HPKE encapsulation, request id and, v3, response secret), never the old ciphertext - up to
``max_attempts`` times, waiting
``backoff * 2**n`` seconds in between. 409 REPLAYED and AttestationFailed are never retried. 402
BALANCE_ERROR is raised at once, with the caller's remaining units for the model (GET /v1/stacks).

A lock whose attestation fails is not used, so its reservation is not released by a request: the
gateway releases it when the lock expires.

A network failure reaches the flow as ``TransportError`` (its ``__cause__`` the httpx error) at the
``yield`` that asked for the request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from veil.client.errors import APIError, BalanceError, MalformedResponse, TransportError, api_error
from veil.client.known_nodes import KnownNodes
from veil.client.lock import accept_lock, lock_body, new_attestation_nonce
from veil.client.opening import open_single
from veil.client.options import ClientOptions
from veil.client.plan import Plan, encode_json, seal
from veil.client.receipt import Receipt
from veil.client.streaming import StreamChecker
from veil.wire.routes import ROUTES

__all__ = [
    "Answer",
    "Flow",
    "Send",
    "StreamOpened",
    "Wait",
    "arun",
    "confidential",
    "remaining_units",
    "run",
]

LOCK_PATH = "/v1/nodes/lock"
STACKS_PATH = "/v1/stacks"
T = TypeVar("T")


@dataclass(frozen=True)
class Send:
    """Send ``request``; the flow is handed the response with its body read, unless ``stream``
    is set and the answer is a 200 event stream (then the flow reads it as it arrives)."""

    request: httpx.Request
    stream: bool = False

    def keeps_open(self, response: httpx.Response) -> bool:
        return (
            self.stream
            and response.status_code == 200
            and response.headers.get("content-type", "").startswith("text/event-stream")
        )


@dataclass(frozen=True)
class Wait:
    seconds: float


Step = Send | Wait
Flow = Generator[Step, httpx.Response | None, T]


@dataclass(frozen=True)
class Answer:
    """A verified non-streamed answer: the node's exact plaintext bytes, and the receipt."""

    plaintext: bytes
    receipt: Receipt


@dataclass(frozen=True)
class StreamOpened:
    """A streamed answer whose events are yet to come: ``checker`` opens each of them."""

    response: httpx.Response
    checker: StreamChecker

    @property
    def receipt(self) -> Receipt:
        return self.checker.opener.receipt


def json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def remaining_units(stacks: Any, model: str) -> int | None:
    """Sum of ``free_units`` over the caller's stacks for ``model`` (GET /v1/stacks body)."""
    if not isinstance(stacks, dict) or not isinstance(stacks.get("stacks"), list):
        return None
    return sum(
        int(s.get("free_units") or 0)
        for s in stacks["stacks"]
        if isinstance(s, dict) and s.get("model") == model
    )


def _answered(response: httpx.Response | None) -> httpx.Response:
    """The response a ``Send`` was answered with; anything but a 200 raises its ``APIError``."""
    assert response is not None, "a driver sends a response back for every Send"
    if response.status_code != 200:
        raise api_error(response.status_code, json_or_none(response))
    return response


# -- the flow ---------------------------------------------------------------------------------
def confidential(
    plan: Plan,
    options: ClientOptions,
    *,
    api_key: str | None = None,
    known_nodes: KnownNodes | None = None,
) -> Flow[Answer | StreamOpened]:
    """Lock, attest, seal, send, open; retried as the module docstring says."""
    started = time.perf_counter()
    attempt = 1
    while True:
        try:
            return (yield from _attempt(plan, options, api_key, known_nodes, attempt, started))
        except BalanceError as exc:
            yield from _add_remaining_units(exc, plan.model, options, api_key)
            raise exc from None
        except APIError as exc:
            if not (exc.retryable and attempt < options.max_attempts):
                raise
        attempt += 1
        yield Wait(options.delay(attempt))


def _attempt(
    plan: Plan,
    options: ClientOptions,
    api_key: str | None,
    known_nodes: KnownNodes | None,
    attempt: int,
    started: float,
) -> Flow[Answer | StreamOpened]:
    nonce = new_attestation_nonce()
    body = encode_json(lock_body(plan, nonce))
    locked = _answered((yield Send(options.request("POST", LOCK_PATH, body, api_key=api_key))))
    lock = accept_lock(locked.content, options.policy, nonce)
    if known_nodes is not None:
        known_nodes.record(
            lock.signing_key.public_bytes_raw(),
            node_small_id=lock.node_small_id,
            gateway=options.base_url,
            attestation_format=lock.attestation.format,
        )
    envelope, opener = seal(
        plan,
        lock,
        attempt,
        started,
        options.protocol,
        allow_classical_kem=options.policy.allow_classical_kem,
    )
    path = ROUTES[plan.endpoint].confidential
    sealed = options.request(
        "POST", path, envelope, api_key=api_key, headers=lock.request_headers()
    )
    send = Send(sealed, stream=plan.stream)
    response = _answered((yield send))
    if not plan.stream:
        plaintext, _ = open_single(opener, response.content)
        return Answer(plaintext, opener.receipt)
    if not send.keeps_open(response):
        raise MalformedResponse("a streamed request was not answered with an event stream")
    return StreamOpened(response, StreamChecker(opener))


def _add_remaining_units(
    exc: BalanceError, model: str, options: ClientOptions, api_key: str | None
) -> Flow[None]:
    exc.model = model
    try:
        response = yield Send(options.request("GET", STACKS_PATH, api_key=api_key))
    except TransportError:
        return
    if response is not None and response.status_code == 200:
        exc.remaining_units = remaining_units(json_or_none(response), model)


# -- the drivers --------------------------------------------------------------------------------
class _Pump:
    """Hands a flow what it was sent (a response, or a network failure) and takes its next step."""

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self.reply: httpx.Response | None = None
        self._failure: TransportError | None = None
        self.outcome: Any = None

    def next(self) -> Step | None:
        reply, failure = self.reply, self._failure
        self.reply = self._failure = None
        try:
            if failure is not None:
                return self._flow.throw(failure)
            return self._flow.send(reply)
        except StopIteration as stop:
            self.outcome = stop.value
            return None

    @contextmanager
    def sending(self, step: Step) -> Iterator[None]:
        try:
            yield
        except httpx.HTTPError as exc:
            where = (
                f"{step.request.method} {step.request.url.path}" if isinstance(step, Send) else ""
            )
            self._failure = TransportError(f"{where} failed: {type(exc).__name__}")
            self._failure.__cause__ = exc

    def received(self, step: Send, response: httpx.Response) -> httpx.Response | None:
        """Keep ``response`` for the flow; returns it if the driver must read its body first."""
        self.reply = response
        return None if step.keeps_open(response) else response


def run(flow: Flow[T], transport: httpx.BaseTransport) -> T:
    """Drive ``flow`` over a sync transport; returns what the flow returns."""
    pump = _Pump(flow)
    while (step := pump.next()) is not None:
        with pump.sending(step):
            if isinstance(step, Wait):
                time.sleep(step.seconds)
            elif unread := pump.received(step, transport.handle_request(step.request)):
                unread.read()
    return pump.outcome  # type: ignore[no-any-return]


async def arun(flow: Flow[T], transport: httpx.AsyncBaseTransport) -> T:
    """Drive ``flow`` over an async transport; returns what the flow returns."""
    pump = _Pump(flow)
    while (step := pump.next()) is not None:
        with pump.sending(step):
            if isinstance(step, Wait):
                await asyncio.sleep(step.seconds)
            elif unread := pump.received(step, await transport.handle_async_request(step.request)):
                await unread.aread()
    return pump.outcome  # type: ignore[no-any-return]
