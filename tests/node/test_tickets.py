"""Gateway tickets on the node: checked on the raw bytes, remembered in the replay cache (memory or
the real Redis at 127.0.0.1:6379), receipts signed with the node's key."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.node.keyring import Keyring
from veil.node.replay import MemoryReplayCache, RedisReplayCache
from veil.node.tickets import REMEMBER_PAST_EXPIRY_SECONDS, TicketChecker, sign_receipt
from veil.wire.errors import AuthError, Replayed, ServiceUnavailable
from veil.wire.tickets import Ticket, UsageReceipt, envelope_digest, sign_token, verify_token

REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = b'{"model":"m","input":"x"}'
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def issue(key: Ed25519PrivateKey, body: bytes = BODY, *, ttl: float = 30) -> tuple[str, Ticket]:
    ticket = Ticket(
        ticket_id=uuid.uuid4().hex,
        stack_small_id=3,
        node_small_id=1,
        units=100,
        expires_at=time.time() + ttl,
        envelope_sha256=envelope_digest(body),
    )
    return sign_token(ticket, key), ticket


@pytest.fixture
def gateway() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_ticket_is_honoured_once(gateway: Ed25519PrivateKey) -> None:
    checker = TicketChecker([gateway.public_key()], MemoryReplayCache(10))
    token, issued = issue(gateway)

    async def go() -> None:
        assert await checker.check(token, BODY) == issued
        with pytest.raises(Replayed, match="already used"):
            await checker.check(token, BODY)

    run(go())


def test_tickets_are_checked_on_the_exact_bytes_and_signer(gateway: Ed25519PrivateKey) -> None:
    checker = TicketChecker([gateway.public_key()])
    token, _ = issue(gateway)
    stranger, _ = issue(Ed25519PrivateKey.generate())
    expired, _ = issue(gateway, ttl=-1)

    async def go() -> None:
        with pytest.raises(AuthError, match="different body"):
            await checker.check(token, BODY + b" ")
        with pytest.raises(AuthError, match="refused"):
            await checker.check(stranger, BODY)
        with pytest.raises(AuthError, match="expired"):
            await checker.check(expired, BODY)
        with pytest.raises(AuthError, match="carrying a gateway ticket"):
            await checker.check(None, BODY)
        # None of those refusals spent the ticket.
        assert await checker.check(token, BODY) is not None

    run(go())


def test_a_ticket_id_is_remembered_a_moment_past_its_expiry(gateway: Ed25519PrivateKey) -> None:
    cache = MemoryReplayCache(10)
    checker = TicketChecker([gateway.public_key()], cache)
    token, issued = issue(gateway)
    ticket_id = hashlib.sha256(issued.ticket_id.encode()).digest()

    async def go() -> None:
        await checker.check(token, BODY)
        at_expiry = issued.expires_at
        assert not await cache.check_and_add(ticket_id, at_expiry + 60, at_expiry)
        after = issued.expires_at + REMEMBER_PAST_EXPIRY_SECONDS + 0.001
        assert await cache.check_and_add(ticket_id, after + 60, after)  # forgotten only then

    run(go())


def test_the_in_memory_ticket_cache_is_bounded_and_forgets_only_expired_tickets(
    gateway: Ed25519PrivateKey,
) -> None:
    checker = TicketChecker([gateway.public_key()], MemoryReplayCache(max_entries=3))
    now = time.time()

    async def scenario() -> None:
        tokens = [issue(gateway, b"{}", ttl=10)[0] for _ in range(4)]
        for token in tokens[:3]:
            assert await checker.check(token, b"{}", now) is not None
        with pytest.raises(ServiceUnavailable):  # full of live tickets: refuse, never forget
            await checker.check(tokens[3], b"{}", now)
        later = now + 12  # the first three expired
        fresh, _ = issue(gateway, b"{}", ttl=30)
        assert await checker.check(fresh, b"{}", later) is not None

    asyncio.run(scenario())


def test_without_gateway_keys_only_an_insecure_node_serves(gateway: Ed25519PrivateKey) -> None:
    token, _ = issue(gateway)
    with pytest.raises(AuthError, match="no gateway key"):
        run(TicketChecker([]).check(token, BODY))
    insecure = TicketChecker([], insecure_no_gateway=True)
    assert not insecure.required
    assert run(insecure.check(None, BODY)) is None
    # A gateway key wins over the insecure flag.
    assert TicketChecker([gateway.public_key()], insecure_no_gateway=True).required


def test_node_processes_on_one_redis_honour_a_ticket_once(gateway: Ed25519PrivateKey) -> None:
    prefix = f"veil:test:tickets:{secrets.token_hex(6)}:"
    token, _ = issue(gateway)

    async def go() -> None:
        caches = [RedisReplayCache(REDIS_URL, prefix) for _ in range(2)]
        checkers = [TicketChecker([gateway.public_key()], cache) for cache in caches]
        try:
            outcomes = await asyncio.gather(
                *(c.check(token, BODY) for c in checkers for _ in range(3)),
                return_exceptions=True,
            )
            assert sum(isinstance(o, Ticket) for o in outcomes) == 1
            assert sum(isinstance(o, Replayed) for o in outcomes) == 5
        finally:
            client = caches[0]._redis
            keys = [k async for k in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
            for cache in caches:
                await cache.close()

    run(go())


def test_a_ticket_cache_that_cannot_answer_refuses_the_ticket(gateway: Ed25519PrivateKey) -> None:
    token, _ = issue(gateway)

    async def go() -> None:
        cache = RedisReplayCache("redis://127.0.0.1:1/0", timeout=0.5)
        try:
            with pytest.raises(ServiceUnavailable):
                await TicketChecker([gateway.public_key()], cache).check(token, BODY)
        finally:
            await cache.close()

    run(go())


def test_receipts_are_signed_with_the_node_signing_key(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path, 60)
    receipt = UsageReceipt(
        ticket_id="direct",
        model="m",
        prompt_tokens=3,
        completion_tokens=4,
        compute_units=7,
        final=True,
    )
    token = sign_receipt(keyring, receipt)
    assert verify_token(token, UsageReceipt, [keyring.signing_key.public_key()]) == receipt
