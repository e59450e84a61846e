"""The replay cache: one interface, in memory (bounded, fails closed) and on Redis (shared across
node processes), used by the node for veil-v3 request ids and for gateway ticket ids.

The Redis tests use the server at ``VEIL_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379``),
each under its own random key prefix, deleted afterwards. Without a reachable Redis they are
skipped with a warning, except under CI (env ``CI`` set), where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil import config
from veil.config import NodeSettings
from veil.hazmat import v3
from veil.node.replay import (
    MemoryReplayCache,
    NodeReplayCaches,
    RedisReplayCache,
    ReplayCache,
    make_replay_cache,
)
from veil.wire.errors import Replayed, ServiceUnavailable, TooManyRequests

REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379")
UNREACHABLE = "redis://127.0.0.1:1"
NOW = 1_750_000_000.0
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def rid(n: int = 0) -> bytes:
    return n.to_bytes(16, "big")


# -- memory ----------------------------------------------------------------------------------------


def test_memory_seen_and_unseen() -> None:
    async def go() -> None:
        cache = MemoryReplayCache(max_entries=10)
        assert await cache.check_and_add(rid(1), NOW + 60, NOW) is True
        assert await cache.check_and_add(rid(1), NOW + 60, NOW + 1) is False
        assert await cache.check_and_add(rid(2), NOW + 60, NOW + 1) is True
        assert len(cache) == 2

    run(go())


def test_memory_forgets_only_after_expiry() -> None:
    async def go() -> None:
        cache = MemoryReplayCache()
        assert await cache.check_and_add(rid(1), NOW + 10, NOW)
        assert not await cache.check_and_add(rid(1), NOW + 20, NOW + 10)  # still live at expiry
        assert await cache.check_and_add(rid(1), NOW + 30, NOW + 10.001)  # expired: new use
        assert not await cache.check_and_add(rid(1), NOW + 40, NOW + 20)
        assert len(cache) == 1

    run(go())


def test_memory_refuses_an_id_that_is_already_expired() -> None:
    async def go() -> None:
        cache = MemoryReplayCache()
        assert not await cache.check_and_add(rid(1), NOW, NOW)
        assert not await cache.check_and_add(rid(1), NOW - 1, NOW)
        assert len(cache) == 0

    run(go())


def test_memory_is_bounded_and_fails_closed_when_full_of_live_ids() -> None:
    async def go() -> None:
        cache = MemoryReplayCache(max_entries=3)
        for i in range(3):
            assert await cache.check_and_add(rid(i), NOW + 100 + i, NOW)
        with pytest.raises(ServiceUnavailable):
            await cache.check_and_add(rid(99), NOW + 100, NOW)
        # Nothing was forgotten to make room.
        for i in range(3):
            assert not await cache.check_and_add(rid(i), NOW + 200, NOW + 1)
        # Once the oldest expires there is room again, and only it is forgotten.
        assert await cache.check_and_add(rid(99), NOW + 300, NOW + 100.5)
        assert len(cache) == 3
        assert not await cache.check_and_add(rid(1), NOW + 300, NOW + 100.5)
        with pytest.raises(ServiceUnavailable):
            await cache.check_and_add(rid(98), NOW + 300, NOW + 100.5)

    run(go())


def test_memory_prunes_many_expired_entries() -> None:
    async def go() -> None:
        cache = MemoryReplayCache(max_entries=1000)
        for i in range(1000):
            await cache.check_and_add(rid(i), NOW + 1 + i % 7, NOW)
        assert await cache.check_and_add(rid(5000), NOW + 100, NOW + 8)
        assert len(cache) == 1

    run(go())


def test_bad_ids_are_refused() -> None:
    async def go() -> None:
        cache = MemoryReplayCache()
        with pytest.raises(ValueError):
            await cache.check_and_add(b"", NOW + 1, NOW)
        with pytest.raises(ValueError):
            await cache.check_and_add(b"x" * 65, NOW + 1, NOW)

    run(go())


def test_factory() -> None:
    assert isinstance(make_replay_cache(None), MemoryReplayCache)
    assert isinstance(make_replay_cache("memory"), MemoryReplayCache)
    bounded = make_replay_cache("memory", max_entries=5)
    assert isinstance(bounded, MemoryReplayCache) and bounded.max_entries == 5
    assert isinstance(make_replay_cache("redis://127.0.0.1:6379/0"), RedisReplayCache)
    with pytest.raises(ValueError):
        make_replay_cache("memcached://x")


def test_the_classes_satisfy_the_protocol() -> None:
    caches: list[ReplayCache] = [MemoryReplayCache(), RedisReplayCache(UNREACHABLE)]
    assert all(hasattr(c, "check_and_add") for c in caches)


def test_redis_repr_never_shows_the_url() -> None:
    cache = RedisReplayCache("redis://user:hunter2@127.0.0.1:1/0")
    assert "hunter2" not in repr(cache)


def test_replay_partitions_per_tenant_in_memory() -> None:
    now = 1_000.0
    cache = MemoryReplayCache(max_entries=10, max_per_tenant=2)

    async def scenario() -> None:
        assert await cache.check_and_add(b"a", now + 5, now, tenant=1)
        assert await cache.check_and_add(b"b", now + 5, now, tenant=1)
        with pytest.raises(TooManyRequests, match="stack 1"):
            await cache.check_and_add(b"c", now + 5, now, tenant=1)
        assert await cache.check_and_add(b"a", now + 5, now, tenant=2)  # its own space
        assert not await cache.check_and_add(b"a", now + 5, now, tenant=1)  # still a replay
        assert await cache.check_and_add(b"c", now + 9, now + 5.5, tenant=1)  # a and b expired
        assert cache.held_by(1) == 1

    asyncio.run(scenario())


# -- the pipeline's use: open_request, then the cache ---------------------------------------------


def test_v3_request_replayed_to_the_same_node_is_refused() -> None:
    """What the node pipeline does: open (HPKE verifies), then check the id until expires_at."""
    key = v3.NodeKemKey.generate()
    envelope, _ = v3.seal_request(
        key.public_key,
        key.key_id,
        b"{}",
        node_signing_key=Ed25519PrivateKey.generate().public_key(),
        endpoint="/v1/confidential/embeddings",
        model_name="m",
        stack_small_id=1,
        now=NOW,
    )

    async def handle(cache: ReplayCache, now: float) -> None:
        _, session = v3.open_request(
            envelope,
            lambda kid: key if kid == key.key_id else None,
            endpoint="/v1/confidential/embeddings",
            now=now,
        )
        if not await cache.check_and_add(session.request_id, session.expires_at, now):
            raise Replayed("request id already used")

    async def go() -> None:
        cache = MemoryReplayCache()
        await handle(cache, NOW)
        with pytest.raises(Replayed, match="already used"):
            await handle(cache, NOW + 5)
        # At the very end of the window the id is still remembered...
        with pytest.raises(Replayed, match="already used"):
            await handle(cache, NOW + 120)
        # ...and past it, the timestamp check refuses the envelope by itself.
        with pytest.raises(Replayed, match="outside"):
            await handle(cache, NOW + 121)

    run(go())


# -- Redis -----------------------------------------------------------------------------------------


def _redis_reachable() -> bool:
    async def ping() -> bool:
        client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(await client.ping())
        except Exception:
            return False
        finally:
            await client.aclose()

    return run(ping())


@pytest.fixture(scope="module")
def redis_url() -> str:
    if not _redis_reachable():
        message = f"Redis not reachable at {REDIS_URL}: the shared replay cache is NOT tested"
        if os.environ.get("CI"):
            pytest.fail(message)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    value = f"veil:test:replay:{secrets.token_hex(8)}:"
    yield value

    async def cleanup() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k async for k in client.scan_iter(match=value + "*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    run(cleanup())


def with_caches(url: str, prefix: str, n: int, body: Callable[..., Awaitable[None]]) -> None:
    async def go() -> None:
        caches = [RedisReplayCache(url, prefix) for _ in range(n)]
        try:
            await body(*caches)
        finally:
            for cache in caches:
                await cache.close()

    run(go())


def test_redis_seen_and_unseen(redis_url: str, prefix: str) -> None:
    async def body(cache: RedisReplayCache) -> None:
        assert await cache.check_and_add(rid(1), NOW + 60, NOW) is True
        assert await cache.check_and_add(rid(1), NOW + 60, NOW + 1) is False
        assert await cache.check_and_add(rid(2), NOW + 60, NOW + 1) is True
        assert await cache.check_and_add(rid(3), NOW, NOW) is False  # already expired

    with_caches(redis_url, prefix, 1, body)


def test_redis_ttl_follows_expires_at(redis_url: str, prefix: str) -> None:
    async def body(cache: RedisReplayCache) -> None:
        assert await cache.check_and_add(rid(1), NOW + 0.3, NOW)
        client = aioredis.Redis.from_url(redis_url)
        try:
            ttl = await client.pttl(cache.key(rid(1)))
            assert 0 < ttl <= 300
            await asyncio.sleep(0.45)
            assert await client.exists(cache.key(rid(1))) == 0
        finally:
            await client.aclose()
        # Expired in Redis: the id may be used again (its envelope is outside the window by then).
        assert await cache.check_and_add(rid(1), NOW + 60, NOW)

    with_caches(redis_url, prefix, 1, body)


def test_two_node_processes_share_the_cache(redis_url: str, prefix: str) -> None:
    async def body(node_a: RedisReplayCache, node_b: RedisReplayCache) -> None:
        assert await node_a.check_and_add(rid(7), NOW + 60, NOW)
        assert not await node_b.check_and_add(rid(7), NOW + 60, NOW)
        assert await node_b.check_and_add(rid(8), NOW + 60, NOW)
        assert not await node_a.check_and_add(rid(8), NOW + 60, NOW)

    with_caches(redis_url, prefix, 2, body)


def test_concurrent_submissions_have_exactly_one_winner(redis_url: str, prefix: str) -> None:
    async def body(*caches: RedisReplayCache) -> None:
        results = await asyncio.gather(
            *(c.check_and_add(rid(42), NOW + 60, NOW) for c in caches for _ in range(5))
        )
        assert results.count(True) == 1

    with_caches(redis_url, prefix, 4, body)


def test_prefixes_isolate_deployments(redis_url: str, prefix: str) -> None:
    async def go() -> None:
        a = RedisReplayCache(redis_url, prefix + "a:")
        b = RedisReplayCache(redis_url, prefix + "b:")
        try:
            assert await a.check_and_add(rid(1), NOW + 60, NOW)
            assert await b.check_and_add(rid(1), NOW + 60, NOW)
        finally:
            await a.close()
            await b.close()

    run(go())


def test_redis_unreachable_fails_closed() -> None:
    async def go() -> None:
        cache = make_replay_cache(UNREACHABLE)
        try:
            for i in range(3):
                with pytest.raises(ServiceUnavailable, match="replay cache unavailable"):
                    await cache.check_and_add(rid(i), NOW + 60, NOW)
        finally:
            await cache.close()

    run(go())


def test_redis_that_stops_answering_fails_closed(redis_url: str, prefix: str) -> None:
    """A Redis that goes away mid-life (here: the client's connection is closed under it)."""

    async def go() -> None:
        cache = RedisReplayCache(redis_url, prefix, timeout=0.5)
        assert await cache.check_and_add(rid(1), NOW + 60, NOW)
        # Point the same object at a dead port: the next check must not answer True.
        await cache._redis.aclose()
        cache._redis = aioredis.Redis.from_url(UNREACHABLE)
        with pytest.raises(ServiceUnavailable):
            await cache.check_and_add(rid(2), NOW + 60, NOW)
        await cache.close()

    run(go())


# -- one interface, two stores: the same rules hold for both --------------------------------------


@pytest.fixture(params=["memory", "redis"])
def cache_factory(request: pytest.FixtureRequest) -> Callable[..., ReplayCache]:
    """Builds a cache of the parametrised kind; Redis ones get the test's own prefix."""
    if request.param == "memory":
        return lambda **kw: MemoryReplayCache(max_entries=100, **kw)
    url = request.getfixturevalue("redis_url")
    prefix_ = request.getfixturevalue("prefix")
    return lambda **kw: RedisReplayCache(url, prefix_, **kw)


def with_cache(factory: Callable[..., ReplayCache], body: Callable[..., Awaitable[None]]) -> None:
    async def go() -> None:
        cache = factory(max_per_tenant=2)
        try:
            await body(cache)
        finally:
            await cache.close()

    run(go())


def test_every_cache_answers_true_once_per_id_and_tenant(
    cache_factory: Callable[..., ReplayCache],
) -> None:
    async def body(cache: ReplayCache) -> None:
        assert await cache.check_and_add(rid(1), NOW + 60, NOW, tenant=5)
        assert not await cache.check_and_add(rid(1), NOW + 60, NOW, tenant=5)
        assert await cache.check_and_add(rid(1), NOW + 60, NOW, tenant=6)  # another partition
        assert await cache.check_and_add(rid(1), NOW + 60, NOW)  # the tenant-less space too
        assert not await cache.check_and_add(rid(1), NOW + 60, NOW)

    with_cache(cache_factory, body)


def test_every_cache_refuses_an_expired_id(cache_factory: Callable[..., ReplayCache]) -> None:
    async def body(cache: ReplayCache) -> None:
        assert not await cache.check_and_add(rid(1), NOW, NOW, tenant=5)
        assert not await cache.check_and_add(rid(2), NOW - 1, NOW)
        # Refused without being recorded: it never holds the tenant's share.
        assert await cache.check_and_add(rid(3), NOW + 60, NOW, tenant=5)
        assert await cache.check_and_add(rid(4), NOW + 60, NOW, tenant=5)

    with_cache(cache_factory, body)


def test_every_cache_fails_closed_when_a_tenant_holds_its_share(
    cache_factory: Callable[..., ReplayCache],
) -> None:
    async def body(cache: ReplayCache) -> None:
        assert await cache.check_and_add(rid(1), NOW + 10, NOW, tenant=5)
        assert await cache.check_and_add(rid(2), NOW + 20, NOW, tenant=5)
        with pytest.raises(TooManyRequests, match="stack 5"):
            await cache.check_and_add(rid(3), NOW + 20, NOW, tenant=5)
        assert await cache.check_and_add(rid(3), NOW + 20, NOW, tenant=6)
        # The share frees only as ids expire, and then only by as many as expired.
        assert await cache.check_and_add(rid(4), NOW + 30, NOW + 10.5, tenant=5)
        with pytest.raises(TooManyRequests):
            await cache.check_and_add(rid(5), NOW + 30, NOW + 10.5, tenant=5)
        assert not await cache.check_and_add(rid(2), NOW + 30, NOW + 10.5, tenant=5)

    with_cache(cache_factory, body)


def test_the_interface_checks_ids_before_any_store_sees_them() -> None:
    async def go() -> None:
        cache = RedisReplayCache(UNREACHABLE)  # would answer 503 if it were asked
        try:
            with pytest.raises(ValueError):
                await cache.check_and_add(b"", NOW + 1, NOW)
            assert not await cache.check_and_add(rid(1), NOW, NOW)  # expired: no Redis call
        finally:
            await cache.close()

    run(go())


# -- the node's two uses: request ids and ticket ids ------------------------------------------------


def node_settings(tmp_path: Path, **kw: object) -> NodeSettings:
    return NodeSettings(data_dir=tmp_path, embedded=False, **kw)  # type: ignore[arg-type]


def test_the_defaults_come_from_config() -> None:
    assert MemoryReplayCache().max_entries == config.REPLAY_MAX_ENTRIES
    assert MemoryReplayCache().max_per_tenant == config.REPLAY_MAX_PER_TENANT
    assert RedisReplayCache(UNREACHABLE).prefix == config.REPLAY_PREFIX
    assert RedisReplayCache(UNREACHABLE).timeout == config.REPLAY_REDIS_TIMEOUT_SECONDS
    defaults = NodeSettings()
    assert defaults.replay_max_entries == config.REPLAY_MAX_ENTRIES
    assert defaults.ticket_replay_max_entries == config.TICKET_REPLAY_MAX_ENTRIES


def test_node_caches_in_memory_are_bounded_separately(tmp_path: Path) -> None:
    settings = node_settings(
        tmp_path, replay_max_entries=3, replay_max_per_tenant=2, ticket_replay_max_entries=2
    )
    caches = NodeReplayCaches.from_settings(settings)
    assert isinstance(caches.requests, MemoryReplayCache)
    assert isinstance(caches.tickets, MemoryReplayCache)
    assert (caches.requests.max_entries, caches.requests.max_per_tenant) == (3, 2)
    assert caches.tickets.max_entries == 2

    async def go() -> None:
        # Request ids fill their own cache (tenant 1's share, then the total)...
        assert await caches.requests.check_and_add(rid(1), NOW + 60, NOW, tenant=1)
        assert await caches.requests.check_and_add(rid(2), NOW + 60, NOW, tenant=1)
        with pytest.raises(TooManyRequests):
            await caches.requests.check_and_add(rid(3), NOW + 60, NOW, tenant=1)
        assert await caches.requests.check_and_add(rid(3), NOW + 60, NOW, tenant=2)
        with pytest.raises(ServiceUnavailable):
            await caches.requests.check_and_add(rid(4), NOW + 60, NOW, tenant=3)
        # ...and not the tickets', which has its own bound and fails closed at it.
        assert await caches.tickets.check_and_add(rid(1), NOW + 60, NOW)
        assert await caches.tickets.check_and_add(rid(2), NOW + 60, NOW)
        with pytest.raises(ServiceUnavailable, match="full"):
            await caches.tickets.check_and_add(rid(3), NOW + 60, NOW)
        # Once the tickets expire there is room again.
        assert await caches.tickets.check_and_add(rid(3), NOW + 120, NOW + 61)
        await caches.close()

    run(go())


def test_node_caches_on_redis_share_one_server_under_two_prefixes(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    settings = node_settings(
        tmp_path, replay_cache=redis_url, replay_prefix=prefix, replay_max_per_tenant=1
    )

    async def go() -> None:
        first = NodeReplayCaches.from_settings(settings)
        second = NodeReplayCaches.from_settings(settings)  # another node process
        try:
            assert isinstance(first.tickets, RedisReplayCache)
            assert first.tickets.prefix == prefix + config.TICKET_REPLAY_SUFFIX
            assert first.tickets.max_per_tenant == config.REPLAY_MAX_PER_TENANT
            assert await first.requests.check_and_add(rid(1), NOW + 60, NOW, tenant=1)
            assert not await second.requests.check_and_add(rid(1), NOW + 60, NOW, tenant=1)
            with pytest.raises(TooManyRequests):
                await second.requests.check_and_add(rid(2), NOW + 60, NOW, tenant=1)
            # The same id as a ticket id is another key: the two uses never collide.
            assert await second.tickets.check_and_add(rid(1), NOW + 60, NOW)
            assert not await first.tickets.check_and_add(rid(1), NOW + 60, NOW)
        finally:
            await first.close()
            await second.close()

    run(go())


def test_node_caches_on_an_unreachable_redis_fail_closed_for_both_uses(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, replay_cache=UNREACHABLE, replay_redis_timeout_seconds=0.5)

    async def go() -> None:
        caches = NodeReplayCaches.from_settings(settings)
        try:
            with pytest.raises(ServiceUnavailable):
                await caches.requests.check_and_add(rid(1), NOW + 60, NOW, tenant=1)
            with pytest.raises(ServiceUnavailable):
                await caches.tickets.check_and_add(rid(1), NOW + 60, NOW)
        finally:
            await caches.close()

    run(go())
