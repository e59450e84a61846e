"""The receipts a node keeps for a gateway that lost them (``veil.node.receipt_log``), and the
``POST /v1/receipts`` query that hands them out: only to a gateway's signed, fresh query, only
for the tickets it names, the newest receipt of each. Real nodes on loopback over the session's
engines (MiniLM, SmolLM2 on llama.cpp)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.harness import sign_ticket
from tests.node.conftest import CHAT, EMBED, start_node
from veil.gateway.identity import public_b64
from veil.node.receipt_log import ReceiptLog
from veil.node.service import EngineRegistry
from veil.wire.tickets import (
    MAX_RECEIPT_QUERY_IDS,
    RECEIPT_COMMENT,
    RECEIPT_HEADER,
    RECEIPT_QUERY_WINDOW_SECONDS,
    RECEIPTS_PATH,
    TICKET_HEADER,
    ReceiptQuery,
    UsageReceipt,
    sign_token,
    verify_token,
)

# -- the log ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_log_keeps_the_newest_receipt_of_each_ticket() -> None:
    log = ReceiptLog(10, 60.0)
    log.record("t1", "first")
    log.record("t2", "other")
    log.record("t1", "second")  # a running receipt replaced by a later one
    assert log.lookup(["t1", "t2", "unknown"]) == {"t1": "second", "t2": "other"}
    assert len(log) == 2


def test_the_log_is_bounded_in_count_and_age_and_drops_the_oldest_first() -> None:
    clock = Clock()
    log = ReceiptLog(3, 60.0, clock)
    for i in range(5):
        log.record(f"t{i}", f"r{i}")
        clock.now += 10
    assert len(log) == 3 and log.lookup([f"t{i}" for i in range(5)]) == {
        "t2": "r2", "t3": "r3", "t4": "r4",
    }  # fmt: skip
    log.record("t2", "r2 again")  # renewed: now the youngest
    clock.now += 45  # t3 is now 65 s old (gone), t4 55 s (kept), t2 45 s (kept)
    assert log.lookup(["t2", "t3", "t4"]) == {"t2": "r2 again", "t4": "r4"}
    clock.now += 100
    assert log.lookup(["t2", "t4"]) == {} and len(log) == 0


def test_a_log_without_room_or_retention_is_refused() -> None:
    with pytest.raises(ValueError):
        ReceiptLog(0, 60.0)
    with pytest.raises(ValueError):
        ReceiptLog(10, 0.0)


# -- the route -------------------------------------------------------------------------------------


def query(key: Ed25519PrivateKey, ids: list[str], issued_at: float | None = None) -> str:
    issued = time.time() if issued_at is None else issued_at
    return sign_token(ReceiptQuery(ticket_ids=ids, issued_at=issued), key)


def ask(url: str, token: object) -> httpx.Response:
    return httpx.post(f"{url}{RECEIPTS_PATH}", json={"query": token}, timeout=30)


def embed(url: str, key: Ed25519PrivateKey, ticket_id: str) -> str:
    body = json.dumps({"model": EMBED, "input": "a receipt worth keeping"}).encode()
    ticket = sign_ticket(key, body, units=100, ticket_id=ticket_id)
    answer = httpx.post(
        f"{url}/v1/embeddings",
        content=body,
        headers={"content-type": "application/json", TICKET_HEADER: ticket},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.headers[RECEIPT_HEADER]


def test_a_gateway_gets_back_the_receipt_the_node_sent_and_no_other(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    gateway, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    server, node = start_node(tmp_path, node_registry, gateway_keys=[public_b64(gateway)])
    with server:
        first, second = uuid.uuid4().hex, uuid.uuid4().hex
        sent = {first: embed(node.url, gateway, first), second: embed(node.url, gateway, second)}
        never = uuid.uuid4().hex
        answer = ask(node.url, query(gateway, [first, second, never]))
        assert answer.status_code == 200, answer.text
        kept = answer.json()["receipts"]
        assert kept == sent  # byte for byte what the node sent; nothing for an unknown ticket
        signer = node.signing_key()
        for ticket_id, token in kept.items():
            assert verify_token(token, UsageReceipt, [signer]).ticket_id == ticket_id

        # Only a fresh query signed by one of the node's gateway keys is answered.
        refused = {
            "a stranger's key": query(stranger, [first]),
            "too old": query(gateway, [first], time.time() - RECEIPT_QUERY_WINDOW_SECONDS - 5),
            "from the future": query(gateway, [first], time.time() + RECEIPT_QUERY_WINDOW_SECONDS + 5),
            "a ticket, not a query": sign_ticket(gateway, b"{}", units=1),
            "not a token": "garbage",
            "no token": None,
        }  # fmt: skip
        for why, token in refused.items():
            answer = ask(node.url, token)
            assert answer.status_code == 401, why
            assert answer.json()["error"]["code"] == "AUTH_ERROR", why
            assert sent[first] not in answer.text, why
        too_many = [uuid.uuid4().hex for _ in range(MAX_RECEIPT_QUERY_IDS + 1)]
        with pytest.raises(ValueError):  # the model itself refuses to build such a query
            ReceiptQuery(ticket_ids=too_many, issued_at=time.time())
        bad = httpx.post(f"{node.url}{RECEIPTS_PATH}", content=b"[1, 2", timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_BODY"
        huge = httpx.post(f"{node.url}{RECEIPTS_PATH}", content=b"x" * (300 * 1024), timeout=30)
        assert huge.status_code == 413


def test_a_node_without_gateway_keys_keeps_and_hands_out_nothing(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    gateway = Ed25519PrivateKey.generate()
    server, node = start_node(tmp_path, node_registry, insecure_no_gateway=True)
    with server:
        answer = ask(node.url, query(gateway, [uuid.uuid4().hex]))
        assert answer.status_code == 401
        assert "keeps no receipts" in answer.json()["error"]["message"]


def test_a_stream_cut_off_leaves_its_last_running_receipt_kept(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    """The client (the gateway, here the test) hangs up mid-stream: the node's kept receipt is
    the last one it signed, cumulative, and is the newest the stream carried."""
    gateway = Ed25519PrivateKey.generate()
    server, node = start_node(tmp_path, node_registry, gateway_keys=[public_b64(gateway)])
    with server:
        ticket_id = uuid.uuid4().hex
        body = json.dumps(
            {"model": CHAT, "messages": [{"role": "user", "content": "Count to fifty."}],
             "max_tokens": 200, "stream": True}
        ).encode()  # fmt: skip
        ticket = sign_ticket(gateway, body, units=1000, ticket_id=ticket_id)
        seen: list[str] = []
        headers = {"content-type": "application/json", TICKET_HEADER: ticket}
        with httpx.stream(
            "POST", f"{node.url}/v1/chat/completions", content=body, headers=headers, timeout=60
        ) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                if line.startswith(RECEIPT_COMMENT.decode()):
                    seen.append(line[len(RECEIPT_COMMENT) :])
                    break  # hang up after the first running receipt
        kept = ask(node.url, query(gateway, [ticket_id])).json()["receipts"][ticket_id]
        receipt = verify_token(kept, UsageReceipt, [node.signing_key()])
        first = verify_token(seen[0], UsageReceipt, [node.signing_key()])
        assert receipt.ticket_id == ticket_id and receipt.compute_units >= first.compute_units > 0
        assert receipt.completion_tokens < 200  # the node stopped when the reader left
