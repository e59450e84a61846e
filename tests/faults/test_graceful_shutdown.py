"""SIGTERM in the middle of a confidential stream, to the gateway or to the node: the process stops
taking new connections at once, lets the stream in flight finish, the gateway settles it exactly
(what the node's final signed receipt says), and the process exits 0."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import (
    CHAT,
    CHAT_PATH,
    GatewayProcess,
    NodeProcess,
    VeilProcess,
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
from veil.wire.envelopes import ConfidentialComputeResponse
from veil.wire.tickets import RECEIPT_COMMENT, UsageReceipt

RESERVED = 900
MAX_TOKENS = 400  # several seconds of generation here: the stream outlives the signal by far
SIGNAL_AFTER = 2  # chunks
MESSAGES = [
    {"role": "user", "content": "Write a very long story about a dragon. Use at least 1000 words."}
]


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(f"{url}/health", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


@pytest.mark.parametrize("target", ["gateway", "node"])
def test_sigterm_mid_stream_lets_it_finish_charges_it_exactly_and_exits_0(
    tmp_path: Path, target: str
) -> None:
    gateway_key = public_b64(load_or_create_gateway_key(tmp_path / "gateway"))
    ledger = f"sqlite+aiosqlite:///{tmp_path / 'gateway' / 'ledger.db'}"
    key, stack_ids = create_account(ledger, "drained", {CHAT: 100_000})
    node = NodeProcess(tmp_path / "node", gateway_key)
    gateway = GatewayProcess(tmp_path / "gateway", [node.url])
    stopped: VeilProcess = gateway if target == "gateway" else node
    stopped_url = gateway.url if target == "gateway" else node.url
    with running(node.start(), gateway.start()):
        node.wait_ready()
        gateway.wait_ready(CHAT)
        locked = lock(gateway.url, key, CHAT, max_num_tokens=RESERVED).json()
        body = {
            "model": CHAT,
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "messages": MESSAGES,
            "temperature": 0,
        }
        envelope, session = seal_v3(locked, body, CHAT_PATH)

        events: list[str] = []
        receipts: list[UsageReceipt] = []
        refused_while_streaming = False
        with httpx.stream(
            "POST",
            f"{gateway.url}{CHAT_PATH}",
            content=envelope.model_dump_json(),
            headers=reserved(key, locked),
            timeout=60,
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                elif line.startswith(RECEIPT_COMMENT.decode()):
                    receipts.append(
                        receipt_from(line.removeprefix(RECEIPT_COMMENT.decode()), locked)
                    )
                if len(events) == SIGNAL_AFTER and not refused_while_streaming:
                    assert stopped.proc is not None
                    stopped.proc.send_signal(signal.SIGTERM)
                    # New connections are refused at once, while this stream goes on.
                    wait_until(lambda: refuses_connections(stopped_url), 10, "stop accepting")
                    refused_while_streaming = True

        assert refused_while_streaming
        # The client got the whole answer: every chunk genuine, the final one, then [DONE].
        assert events[-1] == "[DONE]", events[-3:]
        chunks = [ConfidentialComputeResponse.model_validate_json(e) for e in events[:-1]]
        assert len(chunks) > SIGNAL_AFTER + 1
        for chunk in chunks:
            session.open(chunk)  # tag, place and running hash; the final one's signature too
        session.finish()
        final = chunks[-1]
        assert final.final and final.usage is not None and final.signature is not None
        assert session.usage == final.usage

        assert stopped.proc is not None
        assert stopped.proc.wait(timeout=60) == 0, stopped.output()[-3000:]

        # Settled exactly from the final signed receipt; nothing left reserved.
        assert receipts and receipts[-1].final
        charged = receipts[-1].compute_units
        assert charged == final.usage.prompt_tokens + final.usage.completion_tokens
        wait_until(lambda: stacks(ledger)[stack_ids[CHAT]].reserved_units == 0, 30, "settlement")
        assert stacks(ledger)[stack_ids[CHAT]].used_units == charged
        assert reconcile(ledger) == []
