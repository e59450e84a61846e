"""Issue 12, findings 1 and 7, over HTTP with real models: a reservation lives as long as its
request, and a request claims the reservation its own lock made.

The ``hurried`` gateway has every timeout tiny (a 1 s lock, a 0.5 s node timeout, a 0.05 s
in-flight grace, a sweep every 0.2 s), so a generation of a few seconds outlives all of them.
Ledger rows are read straight from the gateway's SQLite file.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import veil
from tests.e2e.conftest import CHAT, Deployment, deploy
from veil.gateway.forward import lease_for
from veil.hazmat import v1
from veil.node.service import EngineRegistry
from veil.wire.envelopes import RESERVATION_HEADER
from veil.wire.tickets import RECEIPT_COMMENT, UsageReceipt, public_key_from_b64, verify_token

LOCK_TTL = 1
GRACE = 0.05
NODE_TIMEOUT = 0.5
SWEEP = 0.2  # deploy()'s expire_interval_seconds
# SmolLM2-135M keeps writing to this for 1,000 tokens and more, at temperature 0 too (a request to
# count stops after a few dozen numbers).
STORY = [
    {"role": "user", "content": "Write a very long story about a dragon. Use at least 1000 words."}
]


@pytest.fixture(scope="module")
def hurried(
    tmp_path_factory: pytest.TempPathFactory, node_registry: EngineRegistry
) -> Iterator[Deployment]:
    servers, deployed = deploy(
        tmp_path_factory.mktemp("hurried"),
        [node_registry],
        lock_timeout_seconds=LOCK_TTL,
        node_timeout_seconds=NODE_TIMEOUT,
        in_flight_grace_seconds=GRACE,
    )
    with servers[0], servers[1]:
        yield deployed.started()


def reservation(d: Deployment, reservation_id: str) -> dict[str, Any]:
    assert d.gateway_dir is not None
    with sqlite3.connect(d.gateway_dir / "ledger.db") as db:
        db.row_factory = sqlite3.Row
        row = db.execute(
            "SELECT r.id, r.units, r.state, r.charged_units, r.expires_at, u.compute_units, "
            "u.receipt, u.created_at AS settled_at FROM reservations r "
            "LEFT JOIN usage_receipts u ON u.reservation_id = r.id WHERE r.id = ?",
            (reservation_id,),
        ).fetchone()
    assert row is not None, f"no reservation {reservation_id}"
    return dict(row)


def sealed(lock: dict[str, Any], body: dict[str, Any]) -> bytes:
    envelope, _ = v1.seal_request(
        base64.b64decode(lock["public_key"]),
        json.dumps(body).encode(),
        model_name=body["model"],
        stack_small_id=lock["stack_small_id"],
        stream=body.get("stream"),
    )
    return envelope.model_dump_json().encode()


def headers(key: str, lock: dict[str, Any] | None = None) -> dict[str, str]:
    extra = {RESERVATION_HEADER: lock["reservation_id"]} if lock is not None else {}
    return {"authorization": f"Bearer {key}", "content-type": "application/json", **extra}


def signed(lock: dict[str, Any], token: str) -> UsageReceipt:
    key = public_key_from_b64(lock["node_signing_public_key"])
    return verify_token(token, UsageReceipt, [key])


def nodes_healthy(d: Deployment) -> bool:
    return all(n["healthy"] for n in httpx.get(f"{d.url}/health", timeout=10).json()["nodes"])


# -- finding 1: long requests are charged ------------------------------------------------------


def test_a_stream_read_slowly_past_every_timeout_is_charged_its_signed_usage(
    hurried: Deployment,
) -> None:
    """The reader stops reading until the lock's timeout, the claim's lease and the grace have
    all passed and the sweep has run several times; the reservation must still be in flight then,
    and the settle charges exactly the node's last signed receipt (it used to be expired and
    charged 0)."""
    key, stacks = hurried.new_user("slow-reader", {CHAT: 100_000})
    lock = hurried.lock(key, CHAT, max_num_tokens=5_000).json()
    # Long enough (1,000 tokens, over ten seconds here) that the node is still generating when
    # the reader resumes: a shorter answer fits in the socket buffers and settles while it sleeps.
    body = {
        "model": CHAT,
        "max_tokens": 1000,
        "stream": True,
        "messages": STORY,
        "temperature": 0,
    }
    sent = time.time()
    deadline_passed = sent + max(LOCK_TTL, lease_for(NODE_TIMEOUT)) + GRACE + 3 * SWEEP
    receipts: list[str] = []
    seen_mid_stream: dict[str, Any] | None = None
    with httpx.stream(
        "POST",
        f"{hurried.url}/v1/confidential/chat/completions",
        content=sealed(lock, body),
        headers=headers(key, lock),
        timeout=120,
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith(RECEIPT_COMMENT.decode()):
                receipts.append(line[len(RECEIPT_COMMENT) :])
            if seen_mid_stream is None and line.startswith("data: "):
                time.sleep(max(0.0, deadline_passed - time.time()))  # the slow reader
                seen_mid_stream = reservation(hurried, lock["reservation_id"])
    assert seen_mid_stream is not None
    assert seen_mid_stream["state"] == "in_flight", (
        f"past every timeout the reservation was {seen_mid_stream['state']!r}, not in flight "
        "(if 'settled': the generation was too short to prove anything)"
    )
    assert seen_mid_stream["expires_at"] > sent + LOCK_TTL + GRACE  # the lease was renewed
    final = signed(lock, receipts[-1])
    assert final.final and final.compute_units > 0
    row = reservation(hurried, lock["reservation_id"])
    assert row["settled_at"] > deadline_passed  # settled after every timeout had passed
    assert (row["state"], row["charged_units"]) == ("settled", final.compute_units)
    assert signed(lock, row["receipt"].decode()) == final  # the ledger keeps the signed token
    stack = hurried.stack(stacks[CHAT])
    assert (stack["used_units"], stack["reserved_units"]) == (final.compute_units, 0)
    assert nodes_healthy(hurried)


def test_a_node_timeout_charges_what_was_produced_and_keeps_the_node(hurried: Deployment) -> None:
    """A non-streamed generation longer than the node timeout: the ticket's deadline stops the
    engine, the caller gets what was produced, the ledger charges the node's signed receipt for
    it, and the node stays in rotation (a caller's long request used to mark it unhealthy, and
    was released uncharged)."""
    key, stacks = hurried.new_user("long-asker", {CHAT: 100_000})
    lock = hurried.lock(key, CHAT, max_num_tokens=5_000).json()
    body = {"model": CHAT, "max_tokens": 400, "messages": STORY}
    started = time.monotonic()
    response = httpx.post(
        f"{hurried.url}/v1/confidential/chat/completions",
        content=sealed(lock, body),
        headers=headers(key, lock),
        timeout=120,
    )
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert 0 < usage["completion_tokens"] < 400, usage  # stopped by the deadline, not by EOS
    assert took < NODE_TIMEOUT + lease_for(NODE_TIMEOUT), f"the answer took {took:.1f}s"
    row = reservation(hurried, lock["reservation_id"])
    receipt = signed(lock, row["receipt"].decode())
    assert (row["state"], row["charged_units"]) == ("settled", usage["total_tokens"])
    assert receipt.compute_units == usage["total_tokens"]
    assert hurried.stack(stacks[CHAT])["used_units"] == usage["total_tokens"]
    assert nodes_healthy(hurried)
    # And the node still serves the next caller at once.
    lock = hurried.lock(key, CHAT, max_num_tokens=100).json()
    quick = {"model": CHAT, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    again = httpx.post(
        f"{hurried.url}/v1/confidential/chat/completions",
        content=sealed(lock, quick),
        headers=headers(key, lock),
        timeout=120,
    )
    assert again.status_code == 200, again.text


# -- finding 7: a lock binds its request -------------------------------------------------------


def test_two_concurrent_requests_of_one_user_each_settle_their_own_reservation(
    deployment: Deployment,
) -> None:
    """Locks A then B; B's request is sent first and is still streaming when A's arrives. Each
    must claim and settle its own lock's reservation (B used to take A's, the oldest held)."""
    key, stacks = deployment.new_user("two-at-once", {CHAT: 100_000})
    lock_a = deployment.lock(key, CHAT, max_num_tokens=100).json()
    lock_b = deployment.lock(key, CHAT, max_num_tokens=400).json()
    assert lock_a["reservation_id"] != lock_b["reservation_id"]
    body_b = {"model": CHAT, "max_tokens": 30, "stream": True, "messages": STORY}
    body_a = {"model": CHAT, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    receipts_b: list[str] = []
    with httpx.stream(
        "POST",
        f"{deployment.url}/v1/confidential/chat/completions",
        content=sealed(lock_b, body_b),
        headers=headers(key, lock_b),
        timeout=120,
    ) as stream_b:
        assert stream_b.status_code == 200, stream_b.read()
        lines = stream_b.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                break  # B is claimed and in flight
        assert reservation(deployment, lock_b["reservation_id"])["state"] == "in_flight"
        answer_a = httpx.post(
            f"{deployment.url}/v1/confidential/chat/completions",
            content=sealed(lock_a, body_a),
            headers=headers(key, lock_a),
            timeout=120,
        )
        assert answer_a.status_code == 200, answer_a.text
        for line in lines:
            if line.startswith(RECEIPT_COMMENT.decode()):
                receipts_b.append(line[len(RECEIPT_COMMENT) :])
    usage_a = answer_a.json()["usage"]["total_tokens"]
    usage_b = signed(lock_b, receipts_b[-1]).compute_units
    assert usage_a != usage_b  # so a swap could not go unnoticed
    row_a = reservation(deployment, lock_a["reservation_id"])
    row_b = reservation(deployment, lock_b["reservation_id"])
    assert (row_a["units"], row_a["state"], row_a["charged_units"]) == (100, "settled", usage_a)
    assert (row_b["units"], row_b["state"], row_b["charged_units"]) == (400, "settled", usage_b)
    stack = deployment.stack(stacks[CHAT])
    assert (stack["used_units"], stack["reserved_units"]) == (usage_a + usage_b, 0)


def test_a_handle_that_is_not_the_callers_live_lock_is_refused(deployment: Deployment) -> None:
    """Someone else's handle, a handle for another stack, a used handle: 425, nothing claimed;
    a malformed handle: 400 naming the header."""
    key, stacks = deployment.new_user("handle-owner", {CHAT: 10_000})
    other_key, _ = deployment.new_user("handle-thief", {CHAT: 10_000})
    theirs = deployment.lock(other_key, CHAT, max_num_tokens=50).json()
    mine = deployment.lock(key, CHAT, max_num_tokens=50).json()
    body = {"model": CHAT, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    url = f"{deployment.url}/v1/confidential/chat/completions"

    stolen = httpx.post(url, content=sealed(mine, body), headers=headers(key, theirs), timeout=60)
    assert stolen.status_code == 425, stolen.text
    assert stolen.json()["error"]["code"] == "UNAVAILABLE_STACK"
    assert reservation(deployment, theirs["reservation_id"])["state"] == "held"
    assert reservation(deployment, mine["reservation_id"])["state"] == "held"

    bad = httpx.post(
        url,
        content=sealed(mine, body),
        headers={**headers(key), RESERVATION_HEADER: "not-a-handle"},
        timeout=60,
    )
    assert bad.status_code == 400, bad.text
    assert RESERVATION_HEADER in bad.json()["error"]["message"]

    used = httpx.post(url, content=sealed(mine, body), headers=headers(key, mine), timeout=60)
    assert used.status_code == 200, used.text
    again = httpx.post(url, content=sealed(mine, body), headers=headers(key, mine), timeout=60)
    assert again.status_code == 425, again.text
    assert deployment.stack(stacks[CHAT])["reserved_units"] == 0


def test_without_a_handle_the_oldest_lock_is_claimed_as_for_atoma_sdk(
    deployment: Deployment,
) -> None:
    key, _ = deployment.new_user("no-handle", {CHAT: 10_000})
    older = deployment.lock(key, CHAT, max_num_tokens=60).json()
    newer = deployment.lock(key, CHAT, max_num_tokens=70).json()
    body = {"model": CHAT, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    answer = httpx.post(
        f"{deployment.url}/v1/confidential/chat/completions",
        content=sealed(newer, body),
        headers=headers(key),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert reservation(deployment, older["reservation_id"])["state"] == "settled"
    assert reservation(deployment, newer["reservation_id"])["state"] == "held"


def test_veils_client_sends_its_locks_handle(deployment: Deployment) -> None:
    """An older lock of the same user stays held while the client's own request runs: the client
    claimed the reservation its lock made, not the oldest."""
    key, _ = deployment.new_user("veil-client-user", {CHAT: 10_000})
    older = deployment.lock(key, CHAT, max_num_tokens=60).json()
    with veil.Client(deployment.url, key, insecure_no_tee=True, backoff=0) as client:
        done = client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert done.choices[0].message.content is not None
    assert reservation(deployment, older["reservation_id"])["state"] == "held"
