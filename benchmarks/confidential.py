"""What the load and gateway benchmarks share: one confidential request through a gateway, timed
from the client's side, and the ledger's books afterwards.

A request is lock -> seal -> send -> open and check every message with the client's own openers
(``tests.harness.seal_to``: AEAD tag, response hash, the node's Ed25519 signature, clear usage equal
to the signed usage). Its units, from the signed usage, are added up per stack, so that after a run
the ledger can be compared with what the clients were shown.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from tests.harness import NodeKeys, SealedRequest, Suite, seal_to

from veil.client.errors import IntegrityError, VeilClientError
from veil.gateway.ledger import Ledger
from veil.wire.envelopes import RESERVATION_HEADER
from veil.wire.routes import Endpoint, confidential_path

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
UNITS = {CHAT: 256, EMBED: 128}  # what each lock holds; prompt + completion fit well inside
STACK_UNITS = 10**9
OP_TIMEOUT = 240.0  # one lock + request, end to end (below the gateway's 300 s node timeout)
SETTLE_TIMEOUT = 60.0
PROMPT = [{"role": "user", "content": "Write one short sentence about the sea."}]

Kind = Literal["embeddings", "chat", "stream"]
KINDS: tuple[Kind, ...] = ("embeddings", "chat", "stream")
SUITES: tuple[Suite, ...] = ("atoma-v1", "veil-v3")
ENDPOINT_OF: dict[Kind, Endpoint] = {"embeddings": "embeddings", "chat": "chat", "stream": "chat"}


class IntegrityFailure(Exception):
    """An answer failed a client-side check (never expected; counted as INTEGRITY)."""


def request_body(kind: Kind) -> dict[str, Any]:
    if kind == "embeddings":
        return {"model": EMBED, "input": "a short private sentence"}
    if kind == "chat":
        return {"model": CHAT, "messages": PROMPT, "max_tokens": 4}
    return {"model": CHAT, "messages": PROMPT, "max_tokens": 8, "stream": True}


def seal(
    kind: Kind, suite: Suite, lock: dict[str, Any], body: dict[str, Any], units: int
) -> SealedRequest:
    """``body`` sealed to the node of ``lock``; veil-v3 (to the node's post-quantum key) carries
    ``units`` as its authenticated ``num_compute_units`` and is bound to the lock's reservation,
    atoma-v1 leaves both to the lock."""
    v3 = suite != "atoma-v1"  # veil-v3 (a caller still naming the deleted v2 gets v3)
    return seal_to(
        NodeKeys.from_lock(lock), body, suite=suite, endpoint=ENDPOINT_OF[kind],
        stack_small_id=lock["stack_small_id"], units=units if v3 else None,
        reservation_id=lock.get("reservation_id") if v3 else None,
    )  # fmt: skip


def units_of(sealed: SealedRequest, kind: Kind) -> int:
    """Units the node's signed usage says (the client checked the clear usage against it)."""
    usage = sealed.usage
    if usage is None:
        raise IntegrityFailure("no usage")
    return usage.prompt_tokens if kind == "embeddings" else usage.total_tokens


def opened(sealed: SealedRequest, raw: bytes, kind: Kind) -> int:
    """Open a whole answer; its units."""
    try:
        sealed.open(raw)
    except VeilClientError as exc:
        raise IntegrityFailure(type(exc).__name__) from None
    return units_of(sealed, kind)


async def read_stream(response: httpx.Response, sealed: SealedRequest, kind: Kind) -> int:
    """Open every chunk of a streamed answer in its place; its units."""
    try:
        async for _ in sealed.achunks(response):
            pass
    except VeilClientError as exc:
        raise IntegrityFailure(type(exc).__name__) from None
    return units_of(sealed, kind)


FIRST_MESSAGES: dict[str, str] = {}
"""The first error message seen for each error code (for the report: why it failed)."""


def error_code(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError):
        code, message = f"HTTP_{response.status_code}", response.text[:200]
    FIRST_MESSAGES.setdefault(code, message)
    return code


async def one_request(
    http: httpx.AsyncClient, pick: Callable[[], str], kind: Kind, suite: Suite, seen: Counter[int]
) -> tuple[str, int | None]:
    """Lock, seal, send, open, check. Returns "OK" or an error code, and the node the lock chose;
    adds the usage to ``seen``."""
    model = EMBED if kind == "embeddings" else CHAT
    node: int | None = None
    try:
        async with asyncio.timeout(OP_TIMEOUT):
            locked = await http.post(
                f"{pick()}/v1/nodes/lock", json={"model": model, "max_num_tokens": UNITS[model]}
            )
            if locked.status_code != 200:
                return error_code(locked), node
            lock = locked.json()
            node = int(lock["node_small_id"])
            sealed = seal(kind, suite, lock, request_body(kind), UNITS[model])
            url = f"{pick()}{confidential_path(ENDPOINT_OF[kind])}"
            headers = {"content-type": "application/json"}
            if lock.get("reservation_id"):  # the request claims exactly this lock's reservation
                headers[RESERVATION_HEADER] = lock["reservation_id"]
            if kind == "stream":
                async with http.stream(
                    "POST", url, content=sealed.content, headers=headers
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        return error_code(response), node
                    units = await read_stream(response, sealed, kind)
            else:
                response = await http.post(url, content=sealed.content, headers=headers)
                if response.status_code != 200:
                    return error_code(response), node
                units = opened(sealed, response.content, kind)
    except TimeoutError:
        return "TIMEOUT", node
    except httpx.HTTPError as exc:
        return type(exc).__name__, node
    except (IntegrityFailure, IntegrityError):
        return "INTEGRITY", node
    seen[lock["stack_small_id"]] += units
    return "OK", node


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def p_ms(values: list[float], q: float) -> float | None:
    """The ``q`` percentile in milliseconds, or None (no samples)."""
    return percentile(values, q) * 1000 if values else None


# -- the ledger after a run ----------------------------------------------------------------------


@dataclass
class Books:
    charged: int
    seen: int
    per_stack_equal: bool
    reserved: int
    problems: list[str]
    waited: float

    @property
    def balanced(self) -> bool:
        return self.per_stack_equal and self.reserved == 0 and not self.problems

    def row(self, label: str) -> tuple[str, int, int, str, int, str, float]:
        """For a table with ``BOOKS_COLUMNS``."""
        reconcile = "clean" if not self.problems else f"{len(self.problems)} problem(s)"
        equal = "yes" if self.per_stack_equal else "NO"
        return (label, self.charged, self.seen, equal, self.reserved, reconcile, self.waited)


BOOKS_COLUMNS = [
    ("setup", ""),
    ("charged units", "d"),
    ("signed usage seen", "d"),
    ("equal per stack", ""),
    ("reserved after", "d"),
    ("reconcile()", ""),
    ("settled within s", ".1f"),
]


async def create_user(
    database_url: str, models: tuple[str, ...] = (CHAT, EMBED)
) -> tuple[str, str]:
    ledger = await Ledger.open(database_url)
    try:
        # One key drives every client: limits far above any load this machine can make, so the
        # benchmark measures throughput, not the rate limiter (benchmarks/ratelimit.py does).
        user, key = await ledger.create_user(
            f"load-{secrets.token_hex(4)}", requests_per_minute=2**31 - 1, concurrency=100_000
        )
        for model in models:
            await ledger.create_stack(user.name, model, STACK_UNITS)
        return user.name, key
    finally:
        await ledger.close()


async def read_books(database_url: str, user: str, seen: Counter[int]) -> Books:
    """Wait (bounded) for in-flight settlement, then compare the ledger with what clients saw."""
    ledger = await Ledger.open(database_url)
    try:
        started = time.monotonic()
        stacks = await ledger.list_stacks(user)
        while any(s.reserved_units for s in stacks) and time.monotonic() - started < SETTLE_TIMEOUT:
            await asyncio.sleep(0.25)
            stacks = await ledger.list_stacks(user)
        return Books(
            charged=sum(s.used_units for s in stacks),
            seen=sum(seen.values()),
            per_stack_equal=all(s.used_units == seen.get(s.id, 0) for s in stacks)
            and set(seen) <= {s.id for s in stacks},
            reserved=sum(s.reserved_units for s in stacks),
            problems=await ledger.reconcile(),
            waited=time.monotonic() - started,
        )
    finally:
        await ledger.close()
