"""Forwarder: one paid request to a (stand-in) node on loopback, settled exactly once in a real
SQLite ledger, whatever the node does."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Response
from fastapi.responses import StreamingResponse

from tests.gateway.node_stand_in import CHAT, NodeStandIn, serve_stand_in
from tests.servers import free_port
from veil.gateway import forward
from veil.gateway.forward import Forwarder, answer_margin, lease_for, new_request_id
from veil.gateway.ledger import Ledger, Reservation, Stack, User
from veil.gateway.metrics import GatewayMetrics
from veil.gateway.registry import NodeInfo, NodeRegistry
from veil.wire.errors import EngineError, ServiceUnavailable
from veil.wire.tickets import RECEIPT_COMMENT, Ticket, envelope_digest

GATEWAY_KEY = Ed25519PrivateKey.generate()
BODY = b'{"sealed": "envelope bytes"}'
PATH = "/v1/confidential/chat/completions"
RESERVED = 100


@dataclass
class Rig:
    ledger: Ledger
    registry: NodeRegistry
    forwarder: Forwarder
    node: NodeInfo
    user: User
    stack_id: int

    async def claimed(self, units: int = RESERVED) -> tuple[Reservation, str]:
        held = await self.ledger.reserve(
            self.user.id, CHAT, units, node_small_id=self.node.node_small_id, ttl_seconds=60
        )
        request_id = new_request_id()
        reservation = await self.ledger.claim(
            self.user.id,
            self.stack_id,
            request_id=request_id,
            reservation_id=held.id,
            lease_seconds=self.forwarder.lease_seconds,
        )
        return reservation, request_id

    async def forward(self, *, stream: bool = False) -> tuple[Response, str]:
        reservation, request_id = await self.claimed()
        response = await self.forwarder.forward(
            self.node, PATH, BODY, reservation, CHAT, request_id, stream=stream
        )
        return response, request_id

    async def stack(self) -> Stack:
        return await self.ledger.get_stack(self.stack_id)

    async def eventually(self, check: Callable[[Stack], bool], timeout: float = 15) -> Stack:
        """The stack once ``check`` holds for it (background settlement), bounded."""
        deadline = time.monotonic() + timeout
        while True:
            stack = await self.stack()
            if check(stack) or time.monotonic() > deadline:
                return stack
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, url: str, node_timeout: float = 30.0) -> AsyncIterator[Rig]:
    ledger = await Ledger.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    client = httpx.AsyncClient()
    registry = NodeRegistry(client)
    node = registry.add(url, await ledger.node_small_id(url))
    await registry.refresh(node)
    forwarder = Forwarder(client, ledger, registry, GATEWAY_KEY, GatewayMetrics(), node_timeout)
    user, _ = await ledger.create_user("alice")
    stack = await ledger.create_stack("alice", CHAT, 1_000)
    try:
        yield Rig(ledger, registry, forwarder, node, user, stack.id)
        assert await ledger.reconcile() == []  # whatever happened, the books balance
    finally:
        await forwarder.aclose()
        await client.aclose()
        await ledger.close()


Served = tuple[NodeStandIn, str]


@pytest.fixture
def stand_in() -> Iterator[Served]:
    with serve_stand_in(GATEWAY_KEY) as served:
        yield served


def test_lease_and_answer_margin_cover_a_node_timeout() -> None:
    assert answer_margin(0.2) == 1.0
    assert answer_margin(4.0) == 4.0
    assert answer_margin(300.0) == 10.0
    assert lease_for(300.0) == 310.0
    assert lease_for(0.5) == 1.5
    assert len({new_request_id() for _ in range(100)}) == 100


def test_a_signed_answer_is_relayed_and_charged_what_the_node_signed(
    tmp_path: Path, stand_in: Served
) -> None:
    node, url = stand_in

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            response, request_id = await r.forward()
            assert response.status_code == 200
            assert response.body == b'{"answer":"sealed bytes"}'
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, node.units)
            (record,) = await r.ledger.usage(r.user.id)
            assert record.request_id == request_id
            assert record.charged_units == node.units
            charged = r.forwarder.metrics.units_charged.labels(CHAT)._value.get()
            assert charged == node.units

    asyncio.run(main())
    (seen,) = node.seen
    assert seen.path == PATH and seen.body == BODY
    ticket: Ticket = seen.ticket
    assert ticket.units == RESERVED
    assert ticket.node_small_id == 1
    assert ticket.envelope_sha256 == envelope_digest(BODY)
    assert ticket.deadline is not None  # not streamed: the node must answer by then
    assert ticket.deadline <= ticket.expires_at


def test_a_charge_is_capped_at_what_was_reserved(tmp_path: Path, stand_in: Served) -> None:
    node, url = stand_in
    node.units = RESERVED * 5

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            await r.forward()
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, RESERVED)

    asyncio.run(main())


@pytest.mark.parametrize("signed", [0, 3])
def test_a_node_refusal_is_relayed_and_charged_only_what_it_signed(
    tmp_path: Path, stand_in: Served, signed: int
) -> None:
    node, url = stand_in
    node.answer, node.status, node.units = "error", 422, signed

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            response, _ = await r.forward()
            assert response.status_code == 422
            assert b"the node refuses this" in response.body
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, signed)
            assert r.node.healthy  # the caller's bad request is not the node's failure

    asyncio.run(main())


@pytest.mark.parametrize("answer", ["garbage", "foreign"])
def test_an_answer_no_veil_node_sends_is_502_and_charges_nothing(
    tmp_path: Path, stand_in: Served, answer: str
) -> None:
    node, url = stand_in
    node.answer = answer

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            with pytest.raises(EngineError, match="nothing was charged"):
                await r.forward()
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, 0)

    asyncio.run(main())


def test_an_answer_larger_than_any_node_sends_is_502_unbuffered_and_charges_nothing(
    tmp_path: Path, stand_in: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, url = stand_in
    node.answer = "bloated"  # 2 MiB, against a bound of 1 MiB here (64 MiB by default)
    monkeypatch.setattr(forward, "ANSWER_BYTES", 1 << 20)

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            with pytest.raises(EngineError, match="over 1 MiB"):
                await r.forward()
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, 0)
            assert (r.node.healthy, r.node.reason) == (False, "answer too large")

    asyncio.run(main())


@pytest.mark.parametrize("answer", ["bloated", "endless"])
def test_a_late_answer_past_the_bounds_is_not_buffered_and_charges_nothing(
    tmp_path: Path, stand_in: Served, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """The caller was answered 503 already; the node's late answer is read within the same
    bounds as any other (a whole answer, a stream line), else released."""
    node, url = stand_in
    node.answer, node.delay = answer, 2.5  # past the 1 s timeout and its margin
    monkeypatch.setattr(forward, "ANSWER_BYTES", 1 << 20)
    monkeypatch.setattr(forward, "STREAM_LINE_BYTES", 1 << 20)

    async def main() -> None:
        async with rig(tmp_path, url, node_timeout=1.0) as r:
            with pytest.raises(ServiceUnavailable):
                await r.forward(stream=answer == "endless")
            stack = await r.eventually(lambda s: s.reserved_units == 0, timeout=20)
            assert (stack.reserved_units, stack.used_units) == (0, 0)

    asyncio.run(main())


def test_an_unreachable_node_is_503_out_of_rotation_and_charges_nothing(
    tmp_path: Path, stand_in: Served
) -> None:
    _, url = stand_in

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            r.node.url = f"http://127.0.0.1:{free_port()}"  # the node went away
            with pytest.raises(ServiceUnavailable, match="nothing was charged"):
                await r.forward()
            assert (r.node.healthy, r.node.reason) == (False, "connection failed")
            assert r.node.holds == {}
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, 0)

    asyncio.run(main())


async def read_all(response: Response) -> list[str]:
    """The relayed stream's lines, each with its end; the relay only ever writes whole lines."""
    assert isinstance(response, StreamingResponse)
    writes = []
    async for chunk in response.body_iterator:
        assert isinstance(chunk, bytes) and chunk.endswith(b"\n")
        writes.append(chunk)
    return b"".join(writes).decode().splitlines(keepends=True)


def test_a_stream_is_relayed_as_it_comes_and_charged_its_last_receipt(
    tmp_path: Path, stand_in: Served
) -> None:
    node, url = stand_in
    node.answer, node.chunks = "stream", 3

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            response, _ = await r.forward(stream=True)
            assert response.headers["cache-control"] == "no-cache"
            stack = await r.stack()
            assert stack.reserved_units == RESERVED  # held while the stream is read
            lines = await read_all(response)
            assert 'data: {"chunk": 1}\n' in lines and "data: [DONE]\n" in lines
            receipts = [line for line in lines if line.startswith(RECEIPT_COMMENT.decode())]
            assert len(receipts) == 3  # passed through for the client to see
            assert r.node.answered_at > 0  # it answered: the next lock on it needs no probe
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, 3 * node.units)

    asyncio.run(main())
    assert node.seen[0].ticket.deadline is None  # a stream runs as long as it is read


def test_a_stream_whose_lines_arrive_in_pieces_is_relayed_whole_and_charged(
    tmp_path: Path, stand_in: Served
) -> None:
    node, url = stand_in
    node.answer, node.chunks, node.split = "stream", 3, 7  # every receipt cut into many reads

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            response, _ = await r.forward(stream=True)
            lines = await read_all(response)
            events = [line for line in lines if line.startswith("data: ")]
            assert events == [f'data: {{"chunk": {n}}}\n' for n in (1, 2, 3)] + ["data: [DONE]\n"]
            receipts = [line for line in lines if line.startswith(RECEIPT_COMMENT.decode())]
            assert len(receipts) == 3 and lines.count("\n") == 7
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, 3 * node.units)

    asyncio.run(main())


def test_a_stream_line_that_never_ends_is_cut_off_and_charged_its_last_receipt(
    tmp_path: Path, stand_in: Served
) -> None:
    node, url = stand_in
    node.answer = "runaway"

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            response, _ = await r.forward(stream=True)
            lines = await read_all(response)
            assert lines[0] == 'data: {"chunk": 1}\n' and len(lines) == 4  # event, receipt
            assert sum(len(line) for line in lines) < 4096  # the runaway line never relayed
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, node.units)
            assert (r.node.healthy, r.node.reason) == (False, "stream line too long")

    asyncio.run(main())


def test_a_stream_cut_short_charges_what_was_signed_before_the_cut(
    tmp_path: Path, stand_in: Served
) -> None:
    node, url = stand_in
    node.answer, node.chunks = "cut", 3

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            response, _ = await r.forward(stream=True)
            lines = await read_all(response)
            assert "data: [DONE]\n" not in lines
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, node.units)
            assert (r.node.healthy, r.node.reason) == (False, "stream broke")

    asyncio.run(main())


def test_a_node_slower_than_the_timeout_is_503_then_charged_what_it_signs(
    tmp_path: Path, stand_in: Served
) -> None:
    node, url = stand_in
    # Past the 1 s timeout and its 1 s answer margin, within the one more timeout httpx waits.
    node.delay = 2.5

    async def main() -> None:
        async with rig(tmp_path, url, node_timeout=1.0) as r:
            with pytest.raises(ServiceUnavailable, match="charged only what the node signs"):
                await r.forward()
            assert r.node.healthy  # a long request is the caller's doing
            stack = await r.eventually(lambda s: s.reserved_units == 0)
            assert (stack.reserved_units, stack.used_units) == (0, node.units)

    asyncio.run(main())


def test_shutdown_releases_a_request_still_waiting_for_its_late_answer(
    tmp_path: Path, stand_in: Served
) -> None:
    node, url = stand_in
    node.delay = 5.0

    async def main() -> None:
        async with rig(tmp_path, url, node_timeout=0.3) as r:
            with pytest.raises(ServiceUnavailable):
                await r.forward()
            assert (await r.stack()).reserved_units == RESERVED  # a late answer may still come
            await r.forwarder.aclose()
            stack = await r.stack()
            assert (stack.reserved_units, stack.used_units) == (0, 0)

    asyncio.run(main())


def test_a_stream_dropped_before_it_was_read_gives_its_units_back(
    tmp_path: Path, stand_in: Served
) -> None:
    node, url = stand_in
    node.answer = "stream"

    async def main() -> None:
        async with rig(tmp_path, url, node_timeout=0.3) as r:
            response, _ = await r.forward(stream=True)
            assert isinstance(response, StreamingResponse)
            del response  # the caller left before the relay started
            gc.collect()
            stack = await r.eventually(lambda s: s.reserved_units == 0)
            assert (stack.reserved_units, stack.used_units) == (0, 0)

    asyncio.run(main())


def test_the_ledger_keeps_the_token_the_node_signed(tmp_path: Path, stand_in: Served) -> None:
    """What ``GET /v1/usage`` shows a user to check: the node's own signed token, unchanged."""
    node, url = stand_in

    async def main() -> None:
        async with rig(tmp_path, url) as r:
            reservation, request_id = await r.claimed()
            # Ed25519 signatures are deterministic: this is the token the stand-in will send.
            expected = node.receipt(request_id, node.units)
            await r.forwarder.forward(r.node, PATH, BODY, reservation, CHAT, request_id)
            (record,) = await r.ledger.usage(r.user.id)
            assert record.receipt == expected

    asyncio.run(main())
