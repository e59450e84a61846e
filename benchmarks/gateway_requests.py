"""The gateway benchmark's requests: one each way (through the gateway, straight to the node with a
ticket signed here), timed, and the concurrent loops of them; see ``benchmarks/gateway.py``."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client.parser import text_string_to_metric_families
from tests.harness import sign_ticket

from benchmarks.confidential import (
    EMBED,
    OP_TIMEOUT,
    IntegrityFailure,
    error_code,
    one_request,
    opened,
    percentile,
    seal,
)
from veil.wire.envelopes import RESERVATION_HEADER
from veil.wire.routes import confidential_path
from veil.wire.tickets import (
    RECEIPT_HEADER,
    TICKET_HEADER,
    SignatureInvalid,
    UsageReceipt,
    verify_token,
)

PATH = confidential_path("embeddings")
BODY: dict[str, Any] = {"model": EMBED, "input": "a short private sentence"}
UNITS = 128  # what each lock holds and each v2 envelope authorises (load.py's figure)
TICKET_SECONDS = 300.0  # a direct ticket's lifetime: the gateway's default node timeout
WARMUP_ROUNDS = 5
CLIENTS = 32
OVERHEAD_TARGET_MS = 3.0
OVERHEAD_P99_TARGET_MS = 6.0
RSS_TARGET_MB = 200.0


class RequestFailed(Exception):
    """A request answered with an error status (or not at all); ``code`` names it."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# -- 1. one request each way, timed --------------------------------------------------------------


@dataclass(frozen=True)
class Direct:
    """What a client needs to use the node directly, and what the gateway would put in a ticket."""

    url: str
    lock: dict[str, Any]  # lock-shaped: public_key, key_id, node_signing_public_key, stack id
    node_small_id: int
    ticket_key: Ed25519PrivateKey  # trusted by the node (--gateway-key)
    node_signer: Ed25519PublicKey


async def via_gateway(
    http: httpx.AsyncClient,
    gateway: str,
    auth: dict[str, str],
    seen: Counter[int],
    model: str = EMBED,
) -> tuple[float, float, dict[str, Any]]:
    """Lock and request through the gateway; (lock seconds, request seconds, the lock)."""
    started = time.perf_counter()
    locked = await http.post(
        f"{gateway}/v1/nodes/lock", json={"model": model, "max_num_tokens": UNITS}, headers=auth
    )
    lock_seconds = time.perf_counter() - started
    if locked.status_code != 200:
        raise RequestFailed(error_code(locked))
    lock = locked.json()
    sealed = seal("embeddings", "veil-v3", lock, {**BODY, "model": model}, UNITS)
    content = sealed.content
    started = time.perf_counter()
    # The request claims exactly its lock's reservation (veil-v3 binds it).
    headers = {**auth, "content-type": "application/json"}
    headers[RESERVATION_HEADER] = lock["reservation_id"]
    response = await http.post(f"{gateway}{PATH}", content=content, headers=headers)
    request_seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RequestFailed(error_code(response))
    seen[lock["stack_small_id"]] += opened(sealed, response.content, "embeddings")
    return lock_seconds, request_seconds, lock


async def straight_to_node(http: httpx.AsyncClient, direct: Direct, model: str = EMBED) -> float:
    """The same request sent to the node itself with our own ticket; the request's seconds."""
    sealed = seal("embeddings", "veil-v3", direct.lock, {**BODY, "model": model}, UNITS)
    content = sealed.content
    request_id = uuid.uuid4().hex
    # The ticket the gateway's ``Forwarder.ticket`` would sign for this envelope.
    ticket = sign_ticket(
        direct.ticket_key, content, units=UNITS, stack_small_id=direct.lock["stack_small_id"],
        node_small_id=direct.node_small_id, ticket_id=request_id, lifetime=TICKET_SECONDS,
    )  # fmt: skip
    headers = {"content-type": "application/json", TICKET_HEADER: ticket}
    started = time.perf_counter()
    response = await http.post(f"{direct.url}{PATH}", content=content, headers=headers)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RequestFailed(error_code(response))
    units = opened(sealed, response.content, "embeddings")
    try:  # what the gateway would check before charging
        receipt = verify_token(
            response.headers.get(RECEIPT_HEADER, ""), UsageReceipt, [direct.node_signer]
        )
    except SignatureInvalid:
        raise IntegrityFailure("usage receipt") from None
    if receipt.ticket_id != request_id or receipt.compute_units != units:
        raise IntegrityFailure("usage receipt does not match the request")
    return seconds


@dataclass
class Latency:
    direct: list[float] = field(default_factory=list)
    request: list[float] = field(default_factory=list)  # the gateway's request leg
    lock_request: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    # the gateway's own timings over these rounds: name -> (mean seconds per call, calls)
    breakdown: dict[str, tuple[float, int]] = field(default_factory=dict)


async def bounded(work: Any) -> Any:
    async with asyncio.timeout(OP_TIMEOUT):
        return await work


def failure_code(exc: BaseException) -> str:
    if isinstance(exc, RequestFailed):
        return exc.code
    if isinstance(exc, IntegrityFailure):
        return "INTEGRITY"
    if isinstance(exc, TimeoutError):
        return "TIMEOUT"
    return type(exc).__name__


async def latency_rounds(
    http: httpx.AsyncClient,
    gateway: str,
    auth: dict[str, str],
    direct: Direct,
    rounds: int,
    seen: Counter[int],
    model: str = EMBED,
) -> Latency:
    out = Latency()
    for i in range(rounds):
        order = (0, 1) if i % 2 == 0 else (1, 0)  # alternate who goes first
        for which in order:
            try:
                if which == 0:
                    lock_s, request_s, _ = await bounded(
                        via_gateway(http, gateway, auth, seen, model)
                    )
                    out.request.append(request_s)
                    out.lock_request.append(lock_s + request_s)
                else:
                    out.direct.append(await bounded(straight_to_node(http, direct, model)))
            except (RequestFailed, IntegrityFailure, TimeoutError, httpx.HTTPError) as exc:
                out.errors[("gateway " if which == 0 else "direct ") + failure_code(exc)] += 1
    return out


# -- 2. throughput ---------------------------------------------------------------------------


@dataclass
class Throughput:
    latencies: list[float]
    errors: Counter[str]
    elapsed: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def throughput(one: Callable[[], Awaitable[str]], clients: int, seconds: float) -> Throughput:
    """``clients`` loops of ``one()`` (returns "OK" or an error code) until ``seconds`` passed."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:  # each request is bounded (OP_TIMEOUT)
            begun = time.perf_counter()
            code = await one()
            if code == "OK":
                latencies.append(time.perf_counter() - begun)
            else:
                errors[code] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Throughput(latencies, errors, time.perf_counter() - started)


async def gateway_load(
    gateway: str, api_key: str, clients: int, seconds: float, seen: Counter[int]
) -> Throughput:
    """Lock + request through the gateway (``confidential.one_request``: veil-v3 embeddings)."""
    async with http_client(api_key, clients + 4) as http:

        async def one() -> str:
            code, _ = await one_request(http, lambda: gateway, "embeddings", "veil-v3", seen)
            return code

        return await throughput(one, clients, seconds)


async def node_load(direct: Direct, clients: int, seconds: float) -> Throughput:
    """The same request straight to the node (tickets signed here): the node's own ceiling."""
    async with http_client(None, clients + 4) as http:

        async def one() -> str:
            try:
                await bounded(straight_to_node(http, direct))
            except (RequestFailed, IntegrityFailure, TimeoutError, httpx.HTTPError) as exc:
                return failure_code(exc)
            return "OK"

        return await throughput(one, clients, seconds)


def percentile_or_nan(values: list[float], q: float) -> float:
    return percentile(values, q) if values else float("nan")


def http_client(api_key: str | None, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        timeout=httpx.Timeout(OP_TIMEOUT, connect=10.0), limits=limits, headers=headers
    )


BREAKDOWN_OPS = ("authenticate", "claim", "settle")


async def gateway_timings(url: str) -> dict[str, tuple[float, float]]:
    """The gateway's own histograms: ``{name: (sum seconds, count)}`` for each ledger operation
    (``veil_gateway_ledger_seconds``) and for the node hop (``veil_gateway_node_seconds``)."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        text = (await http.get(f"{url}/metrics")).text
    labels = {"veil_gateway_ledger_seconds": "op", "veil_gateway_node_seconds": "route"}
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in labels:
            continue
        for sample in family.samples:
            index = {"_sum": 0, "_count": 1}.get(sample.name.removeprefix(family.name))
            if index is None:
                continue
            name = sample.labels[labels[family.name]]
            name = "node hop" if family.name == "veil_gateway_node_seconds" else name
            found.setdefault(name, [0.0, 0.0])[index] += sample.value
    return {name: (v[0], v[1]) for name, v in found.items()}


def timing_delta(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, int]]:
    """Mean seconds per call and number of calls between two scrapes."""
    out = {}
    for name, (total, count) in after.items():
        total0, count0 = before.get(name, (0.0, 0.0))
        if count > count0:
            out[name] = ((total - total0) / (count - count0), int(count - count0))
    return out


async def node_keys(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        response = await http.get(f"{url}/v1/keys")
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document
