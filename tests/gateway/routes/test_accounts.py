"""Accounts router: lock, the caller's stacks, the caller's usage."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from tests.gateway.node_stand_in import CHAT, raw_public
from tests.gateway.served import serve_gateway
from veil.wire.keyid import key_id


def test_a_lock_holds_units_on_the_node_and_names_its_keys(tmp_path: Path) -> None:
    with serve_gateway(tmp_path, default_chat_units=64) as gw:
        key, stack_id = gw.new_user("alice", units=1_000)
        lock = gw.lock(key)
        assert lock.status_code == 200, lock.text
        answer = lock.json()
        assert base64.b64decode(answer["public_key"]) == gw.node.public_key
        assert base64.b64decode(answer["node_signing_public_key"]) == raw_public(
            gw.node.signing_key
        )
        assert (answer["key_id"], answer["node_small_id"]) == (gw.node.key_id, 1)
        assert (answer["stack_small_id"], answer["reserved_units"]) == (stack_id, 64)
        assert answer["evidence"] is None
        assert gw.stack(stack_id)["reserved_units"] == 64
        sized = gw.lock(key, max_num_tokens=300).json()
        assert (
            sized["reserved_units"] == 300 and sized["reservation_id"] != answer["reservation_id"]
        )
        assert gw.stack(stack_id)["reserved_units"] == 364
        assert gw.lock(key, max_num_tokens=10_000).status_code == 402  # more than is free


def test_a_lock_with_a_nonce_relays_the_evidence_and_learns_a_rotated_key(
    tmp_path: Path,
) -> None:
    with serve_gateway(tmp_path) as gw:
        key, _ = gw.new_user("alice")
        nonce = base64.b64encode(os.urandom(32)).decode()
        lock = gw.lock(key, attestation_nonce=nonce).json()
        assert lock["evidence"]["nonce"] == nonce
        rotated = os.urandom(32)
        gw.node.public_key = rotated  # the node rotated since the gateway's last refresh
        lock = gw.lock(key, attestation_nonce=nonce).json()
        # The evidence named a key the gateway did not know: it refreshed before answering.
        assert base64.b64decode(lock["public_key"]) == rotated
        assert base64.b64decode(lock["evidence"]["x25519_public_key"]) == rotated


def test_the_stacks_route_lists_only_the_callers_own(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        alice, alices = gw.new_user("alice", units=10)
        _, bobs = gw.new_user("bob", units=20)
        stacks = gw.call("GET", "/v1/stacks", alice).json()["stacks"]
        assert [(s["stack_small_id"], s["user"], s["model"]) for s in stacks] == [
            (alices, "alice", CHAT)
        ]
        assert stacks[0]["free_units"] == 10 and bobs != alices


def test_usage_shows_each_charge_with_the_nodes_signed_receipt(tmp_path: Path) -> None:
    with serve_gateway(tmp_path) as gw:
        alice, stack_id = gw.new_user("alice")
        gw.new_user("bob")
        body = {"model": CHAT, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        assert gw.call("POST", "/v1/chat/completions", alice, json=body).status_code == 200
        page = gw.call("GET", "/v1/usage", alice).json()
        assert page["user"] == "alice" and page["next_after"] is None
        (row,) = page["usage"]
        assert (row["stack_small_id"], row["charged_units"]) == (stack_id, gw.node.units)
        assert base64.b64decode(row["node_signing_key"]) == raw_public(gw.node.signing_key)
        assert row["receipt"] == gw.node.receipt(row["request_id"], gw.node.units)
        # Another user's usage: admins only.
        refused = gw.call("GET", "/v1/usage?user=bob", alice)
        assert refused.status_code == 401
        assert "only an admin" in refused.json()["error"]["message"]
        assert gw.admin("GET", "/v1/usage?user=alice").json()["usage"] == [row]
        assert gw.call("GET", "/v1/usage?limit=0", alice).status_code == 400


def test_a_lock_names_the_nodes_post_quantum_key_when_it_publishes_one(tmp_path: Path) -> None:
    kem_key = os.urandom(1216)
    with serve_gateway(tmp_path / "v3", node={"kem_public_key": kem_key}) as gw:
        key, _ = gw.new_user("alice")
        nonce = base64.b64encode(os.urandom(32)).decode()
        answer = gw.lock(key, attestation_nonce=nonce).json()
        assert answer["kem"] == "mlkem768-x25519"
        assert base64.b64decode(answer["kem_public_key"]) == kem_key
        assert answer["kem_key_id"] == key_id(kem_key)
        assert answer["evidence"]["kem_public_key"] == answer["kem_public_key"]
    with serve_gateway(tmp_path / "v2") as gw:
        key, _ = gw.new_user("bob")
        answer = gw.lock(key).json()
        assert "kem_public_key" not in answer or answer["kem_public_key"] is None
        assert answer.get("kem") is None and answer.get("kem_key_id") is None
