"""A node killed (SIGKILL) in the middle of a confidential stream: the client sees a truncated
answer it can tell is truncated, and the gateway charges exactly what the node signed for so far.

One gateway and one ``veil node`` subprocess for the module; each test kills the node mid-stream
and the next one starts it again (same data directory, same keys, same port), which the gateway
picks up by itself.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.faults.conftest import (
    CHAT,
    CHAT_PATH,
    GatewayProcess,
    NodeProcess,
    create_account,
    lock,
    receipt_from,
    reconcile,
    reserved,
    running,
    seal_v3,
    stacks,
)
from tests.servers import wait_until
from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.hazmat import v3
from veil.wire.envelopes import ConfidentialComputeResponse
from veil.wire.tickets import RECEIPT_COMMENT, UsageReceipt

RESERVED = 1800
MAX_TOKENS = 1500
KILL_AFTER = 3  # chunks
# A base model keeps counting for a long time: far more than the chunks read before the kill.
MESSAGES = [
    {"role": "user", "content": "Count to one thousand: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"}
]


@dataclass
class Deployment:
    gateway: GatewayProcess
    node: NodeProcess
    ledger: str
    key: str
    stack_id: int

    def up(self) -> None:
        """The node running and routed to (started again if a test killed it)."""
        if not self.node.alive():
            self.node.start()
        self.node.wait_ready()
        self.gateway.wait_ready(CHAT)

    def used(self) -> int:
        return stacks(self.ledger)[self.stack_id].used_units

    def settled(self) -> None:
        wait_until(lambda: stacks(self.ledger)[self.stack_id].reserved_units == 0, 30, "settlement")
        assert reconcile(self.ledger) == []


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("node-crash")
    gateway_key = public_b64(load_or_create_gateway_key(tmp / "gateway"))
    ledger = f"sqlite+aiosqlite:///{tmp / 'gateway' / 'ledger.db'}"
    key, stack_ids = create_account(ledger, "streamer", {CHAT: 100_000})
    node = NodeProcess(tmp / "node", gateway_key)
    gateway = GatewayProcess(tmp / "gateway", [node.url])
    with running(node.start(), gateway.start()):
        yield Deployment(gateway, node, ledger, key, stack_ids[CHAT])


def test_node_killed_mid_stream_charges_the_last_signed_receipt(deployment: Deployment) -> None:
    d = deployment
    d.up()
    used_before = d.used()
    locked = lock(d.gateway.url, d.key, CHAT, max_num_tokens=RESERVED).json()
    body = {"model": CHAT, "max_tokens": MAX_TOKENS, "stream": True, "messages": MESSAGES}
    envelope, session = seal_v3(locked, body, CHAT_PATH)

    events: list[str] = []
    receipts: list[UsageReceipt] = []
    with httpx.stream(
        "POST",
        f"{d.gateway.url}{CHAT_PATH}",
        content=envelope.model_dump_json(),
        headers=reserved(d.key, locked),
        timeout=30,  # a stream left hanging by the dead node fails the test
    ) as response:
        assert response.status_code == 200
        try:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                elif line.startswith(RECEIPT_COMMENT.decode()):
                    token = line.removeprefix(RECEIPT_COMMENT.decode())
                    receipts.append(receipt_from(token, locked))
                if len(events) == KILL_AFTER and d.node.alive():
                    d.node.kill()
        except httpx.RemoteProtocolError:
            pass  # the gateway may also cut the connection: as clear an end as any
    assert not d.node.alive()

    # The client: every chunk that came is genuine (veil-v3: its tag, its place and the running
    # hash; only a final chunk is signed, and none came), and the answer is visibly cut short.
    assert "[DONE]" not in events
    hashes: list[bytes | None] = []
    for event in events:
        chunk = ConfidentialComputeResponse.model_validate_json(event)
        session.open(chunk)
        assert chunk.usage is None and chunk.final is False and chunk.signature is None
        hashes.append(chunk.response_hash)
    with pytest.raises(v3.StreamOrderError, match="truncated"):
        session.finish()
    # The node's signature covers what came all the same: each running receipt, signed by the
    # key the lock announced, vouches for the running hash of a chunk the client opened (none
    # before the first chunk), and the last one for a chunk at least.
    assert receipts and receipts[-1].response_hash is not None
    for receipt in receipts:
        if receipt.response_hash is not None:
            assert base64.b64decode(receipt.response_hash) in hashes

    # The gateway: charged the last running receipt, handed the rest of the reservation back.
    d.settled()
    # Running receipts follow the first chunk, then every RUNNING_RECEIPT_CHUNKS chunks or
    # RUNNING_RECEIPT_SECONDS: the kill came after chunk KILL_AFTER, so the first one arrived.
    assert receipts
    last = receipts[-1]
    assert not last.final and last.completion_tokens >= 1
    charged = d.used() - used_before
    assert charged == last.compute_units == last.prompt_tokens + last.completion_tokens
    assert 0 < charged < RESERVED // 4

    # The dead node is out of rotation: a new lock is refused cleanly and holds nothing.
    refused = lock(d.gateway.url, d.key, CHAT, max_num_tokens=64)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert stacks(d.ledger)[d.stack_id].reserved_units == 0


def test_veil_client_reports_a_killed_node_as_a_truncated_stream(deployment: Deployment) -> None:
    import veil
    from veil.client.errors import StreamTruncated, TransportError

    d = deployment
    d.up()
    used_before = d.used()
    received = 0
    with veil.Client(d.gateway.url, d.key, insecure_no_tee=True, max_attempts=1) as client:
        stream = client.chat.completions.create(
            model=CHAT, max_tokens=MAX_TOKENS, stream=True, messages=MESSAGES
        )
        with pytest.raises((StreamTruncated, TransportError)):
            for _ in stream:
                received += 1
                if received == KILL_AFTER:
                    d.node.kill()
    assert received >= KILL_AFTER
    d.settled()
    charged = d.used() - used_before
    assert 0 < charged < MAX_TOKENS // 4
