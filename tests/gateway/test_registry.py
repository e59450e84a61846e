"""NodeRegistry against stand-in nodes on loopback: what a refresh learns, the ticket probe, health,
and which node a request goes to."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from typing import TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.gateway.node_stand_in import CHAT, EMBED, raw_public, serve_stand_in
from tests.servers import free_port
from veil.attestation.policy import Policy
from veil.gateway.node_attestation import NodeAttestation
from veil.gateway.registry import TICKET_PROBE_PATH, Fault, NodeRegistry
from veil.wire.errors import NotFound, ServiceUnavailable, StaleNodeKey
from veil.wire.keyid import key_id

T = TypeVar("T")
GATEWAY_KEY = Ed25519PrivateKey.generate()


def run(work: Awaitable[T]) -> T:
    async def main() -> T:
        return await work

    return asyncio.run(main())


async def refreshed(*urls: str) -> NodeRegistry:
    registry = NodeRegistry(httpx.AsyncClient())
    for n, url in enumerate(urls, start=1):
        registry.add(url + "/", n)
    await registry.refresh_all()
    await registry.client.aclose()
    return registry


def test_a_refresh_learns_the_node_keys_models_and_signing_key() -> None:
    with serve_stand_in(GATEWAY_KEY) as (stand_in, url):
        registry = run(refreshed(url))
    (node,) = registry.nodes
    assert node.url == url  # the trailing slash is dropped
    assert (node.healthy, node.reason) == (True, None)
    assert node.current_key_id == stand_in.key_id
    assert node.current_public_key == stand_in.public_key
    assert node.signing_public_key == raw_public(stand_in.signing_key)
    assert node.models == {CHAT: "chat", EMBED: "embeddings"}
    assert registry.models() == {CHAT: "chat", EMBED: "embeddings"}
    assert registry.kind_of(EMBED) == "embeddings"
    assert registry.by_public_key(stand_in.public_key) is node


def test_a_node_serving_without_tickets_is_not_routed_to_and_says_why() -> None:
    with serve_stand_in(GATEWAY_KEY, require_tickets=False) as (_, url):
        registry = run(refreshed(url))
    (node,) = registry.nodes
    assert node.healthy is False
    assert node.reason is not None
    assert "without a gateway ticket" in node.reason
    assert TICKET_PROBE_PATH in node.reason and "HTTP 200" in node.reason
    assert registry.models() == {}
    with pytest.raises(ServiceUnavailable):
        registry.candidates(CHAT)


def test_an_unreachable_node_is_unhealthy_and_a_later_refresh_brings_it_back() -> None:
    port = free_port()
    registry = run(refreshed(f"http://127.0.0.1:{port}"))
    (node,) = registry.nodes
    assert (node.healthy, node.reason) == (False, "refresh failed")
    with pytest.raises(NotFound):  # never reached: its models are not known at all
        registry.candidates(CHAT)
    with serve_stand_in(GATEWAY_KEY) as (stand_in, url):
        node.url = url

        async def again() -> None:
            registry.client = httpx.AsyncClient()
            await registry.refresh(node)
            await registry.client.aclose()

        run(again())
    assert (node.healthy, node.reason) == (True, None)
    assert node.current_public_key == stand_in.public_key


def test_candidates_are_the_healthy_nodes_least_busy_first() -> None:
    with (
        serve_stand_in(GATEWAY_KEY) as (_, a),
        serve_stand_in(GATEWAY_KEY) as (_, b),
        serve_stand_in(GATEWAY_KEY, models={EMBED: "embeddings"}) as (_, c),
    ):
        registry = run(refreshed(a, b, c))
    first, second, third = registry.nodes
    assert [n.node_small_id for n in registry.candidates(CHAT)] == [1, 2]  # ties: by id
    later = time.time() + 60
    registry.hold(1, "r1", later)
    registry.hold(1, "r2", later)
    registry.hold(2, "r3", later)
    assert [n.node_small_id for n in registry.candidates(CHAT)] == [2, 1]
    assert [n.node_small_id for n in registry.candidates(EMBED)] == [3, 2, 1]
    registry.release("r3")
    registry.release("r1")
    assert [n.node_small_id for n in registry.candidates(CHAT)] == [2, 1]
    registry.mark_unhealthy(second, "connection failed")
    assert [n.node_small_id for n in registry.candidates(CHAT)] == [1]
    assert second.reason == "connection failed"
    assert CHAT in registry.models()  # still served by the first
    registry.mark_unhealthy(first, "connection failed")
    assert CHAT not in registry.models()
    with pytest.raises(ServiceUnavailable):
        registry.candidates(CHAT)
    assert third.healthy


def test_expired_holds_no_longer_count_and_are_dropped_on_the_next_hold() -> None:
    with serve_stand_in(GATEWAY_KEY) as (_, a), serve_stand_in(GATEWAY_KEY) as (_, b):
        registry = run(refreshed(a, b))
    now = time.time()
    registry.hold(1, "gone", now - 1)
    assert [n.node_small_id for n in registry.candidates(CHAT)] == [1, 2]
    registry.hold(1, "live", now + 60)
    assert registry.nodes[0].holds == {"live": now + 60}


def test_unknown_models_keys_and_ids_are_refused_with_their_own_errors() -> None:
    with serve_stand_in(GATEWAY_KEY) as (stand_in, url):
        registry = run(refreshed(url))
    with pytest.raises(NotFound, match="not served by any node"):
        registry.kind_of("no-such-model")
    with pytest.raises(StaleNodeKey, match="lock again"):
        registry.by_public_key(bytes(32))
    with pytest.raises(NotFound):
        registry.by_id(99)
    with pytest.raises(NotFound):
        registry.hold(99, "r", time.time() + 60)
    assert registry.by_public_key(stand_in.public_key).node_small_id == 1


# -- veil-v3: the post-quantum key ----------------------------------------------------------------

KEM_KEY = os.urandom(1184) + os.urandom(32)  # the shape of an ML-KEM-768 + X25519 public key


def test_a_refresh_learns_the_kem_key_and_routes_v3_envelopes_by_its_x25519_part() -> None:
    with (
        serve_stand_in(GATEWAY_KEY, kem_public_key=KEM_KEY) as (stand_in, url),
        serve_stand_in(GATEWAY_KEY) as (_, other_url),
    ):
        registry = run(refreshed(other_url, url))
    other, node = registry.nodes
    assert node.current_kem_public_key == KEM_KEY
    assert node.current_kem_key_id == key_id(KEM_KEY)
    assert other.current_kem_public_key is None and other.kem_public_keys == {}
    # A v3 envelope's node_dh_public_key is the X25519 part (the last 32 bytes) of the kem key.
    assert registry.by_public_key(KEM_KEY[-32:]) is node
    assert registry.by_public_key(stand_in.public_key) is node
    with pytest.raises(StaleNodeKey):
        registry.by_public_key(KEM_KEY[:32])  # the ML-KEM part is not an X25519 key


def test_a_node_whose_evidence_binds_another_kem_key_is_not_routed_to() -> None:
    async def checked(url: str) -> NodeRegistry:
        registry = NodeRegistry(httpx.AsyncClient(), NodeAttestation(Policy(allow_no_tee=True)))
        registry.add(url, 1)
        await registry.refresh_all()
        await registry.client.aclose()
        return registry

    with serve_stand_in(GATEWAY_KEY, kem_public_key=KEM_KEY) as (_, url):
        honest = run(checked(url))
    assert honest.nodes[0].healthy, honest.nodes[0].reason
    swapped = os.urandom(1216)
    with serve_stand_in(GATEWAY_KEY, kem_public_key=KEM_KEY, evidence_kem_key=swapped) as (_, url):
        lying = run(checked(url))
    (node,) = lying.nodes
    assert node.healthy is False and node.fault is Fault.ATTESTATION
    assert node.reason is not None and "post-quantum key differ" in node.reason
