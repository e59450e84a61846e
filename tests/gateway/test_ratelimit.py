"""The rate limiter on its own: both backends (in process, and a real Redis), the sliding window,
Retry-After, concurrency slots with deadlines, failure weight, fail closed; per-user limits in the
ledger on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import pytest
import redis

from tests.gateway.conftest import LedgerHarness
from veil.gateway.ratelimit import (
    Limits,
    MemoryLimiter,
    RateLimited,
    RedisLimiter,
    make_limiter,
    retry_after_seconds,
)
from veil.wire.errors import InvalidBody, NotFound, ServiceUnavailable

REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


def redis_or_skip() -> None:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis unreachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {exc}")


@pytest.fixture(params=["memory", "redis"])
def limiter_factory(request: pytest.FixtureRequest) -> Iterator[type]:
    """Builds limiters of one backend; Redis ones share a fresh key prefix (like two gateways)."""
    prefix = f"veil:test:rl:{secrets.token_hex(6)}:"
    if request.param == "redis":
        redis_or_skip()

    def make(slot_ttl: float = 60.0) -> MemoryLimiter | RedisLimiter:
        if request.param == "memory":
            return MemoryLimiter(slot_ttl)
        return RedisLimiter(REDIS_URL, slot_ttl, prefix=prefix)

    yield make  # type: ignore[misc]
    if request.param == "redis":
        with redis.Redis.from_url(REDIS_URL) as client:
            for key in client.scan_iter(match=prefix + "*"):
                client.delete(key)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_retry_after_follows_the_sliding_window() -> None:
    # 10 per minute, all 10 used in this minute, 0 before: wait for the next minute to start,
    # then until 9/10 of it would still be too many... at 0.1 of the next minute 10*0.9+1 = 10.
    assert retry_after_seconds(10, 1, 10, 0, 0.5) == 36  # 30 s to the boundary + 6 s
    # Room in this minute, but the previous one still weighs: 8 previous, 5 now, limit 10:
    # 8*(1-f)+5+1 <= 10 -> f >= 0.5; at f=0.25 that is 15 s away.
    assert retry_after_seconds(10, 1, 5, 8, 0.25) == 15
    # Never less than one second.
    assert retry_after_seconds(10, 1, 0, 10, 0.999) == 1


async def _admit_all(limiter: MemoryLimiter | RedisLimiter, user: int, n: int, now: float) -> int:
    admitted = 0
    for _ in range(n):
        try:
            slot = await limiter.admit(user, Limits(5, 100), now=now)
        except RateLimited:
            continue
        admitted += 1
        await slot.release()
    return admitted


def test_requests_per_minute_is_shared_and_per_user(limiter_factory: type) -> None:
    async def go() -> None:
        a = limiter_factory()
        # Redis: two gateways on the same keys. In process there is no sharing: one limiter.
        b = a if isinstance(a, MemoryLimiter) else limiter_factory()
        try:
            first = await _admit_all(a, 1, 4, T0 + 10)
            second = await _admit_all(b, 1, 4, T0 + 11)
            other_user = await _admit_all(b, 2, 5, T0 + 11)
            with pytest.raises(RateLimited) as refused:
                await b.admit(1, Limits(5, 100), now=T0 + 12)
            assert refused.value.limit == "requests_per_minute"
            assert refused.value.status == 429
            # All 5 used in this minute: the next one fits once the window slid far enough.
            assert refused.value.retry_after == retry_after_seconds(5, 1, 5, 0, 12 / 60)
            body = refused.value.to_body()["error"]
            assert body["code"] == "TOO_MANY_REQUESTS" and body["retry_after_seconds"] > 0
            assert body["limit"] == "requests_per_minute" and body["limit_value"] == 5
            # Two minutes later the old counts no longer weigh.
            assert await _admit_all(a, 1, 5, T0 + 130) == 5
        finally:
            await a.close()
            await b.close()
        assert (first, second, other_user) == (4, 1, 5)

    run(go())


def test_the_previous_minute_still_weighs(limiter_factory: type) -> None:
    async def go() -> None:
        limiter = limiter_factory()
        try:
            assert await _admit_all(limiter, 7, 5, T0 + 59) == 5
            # 15 s into the next minute, 3/4 of the previous 5 still count: 3.75 + 0 + 1 <= 5.
            assert await _admit_all(limiter, 7, 5, T0 + 75) == 1
        finally:
            await limiter.close()

    run(go())


def test_concurrency_slots_are_released_and_expire(limiter_factory: type) -> None:
    async def go() -> None:
        limiter = limiter_factory(slot_ttl=30.0)
        limits = Limits(1000, 2)
        try:
            one = await limiter.admit(3, limits, now=T0)
            await limiter.admit(3, limits, now=T0)  # never released: a crashed gateway
            with pytest.raises(RateLimited) as refused:
                await limiter.admit(3, limits, now=T0 + 1)
            assert refused.value.limit == "concurrency" and refused.value.retry_after >= 1
            await one.release()
            await one.release()  # idempotent
            three = await limiter.admit(3, limits, now=T0 + 2)
            with pytest.raises(RateLimited):
                await limiter.admit(3, limits, now=T0 + 3)
            # Past the leaked slot's deadline it no longer counts; 'three' expired too.
            await limiter.admit(3, limits, now=T0 + 40)
            await limiter.admit(3, limits, now=T0 + 40)
            await three.release()
        finally:
            await limiter.close()

    run(go())


def test_a_refused_request_costs_nothing_a_failed_one_costs_more(limiter_factory: type) -> None:
    async def go() -> None:
        limiter = limiter_factory()
        try:
            held = await limiter.admit(9, Limits(3, 1), now=T0 + 1)
            for _ in range(5):  # refused for concurrency: not counted per minute
                with pytest.raises(RateLimited, match="concurrent"):
                    await limiter.admit(9, Limits(3, 1), now=T0 + 1)
            await held.release()
            assert await _admit_all(limiter, 9, 2, T0 + 2) == 2  # 3 of 3 used now
            for _ in range(5):  # refused per minute: not counted either
                with pytest.raises(RateLimited, match="per minute"):
                    await limiter.admit(9, Limits(3, 10), now=T0 + 3)
            # 20 s into the next minute, 2/3 of the previous 3 weigh: 2 + 1 <= 3 (had the refused
            # ones counted, 8 * 2/3 + 1 > 3).
            slot = await limiter.admit(9, Limits(3, 10), now=T0 + 80)
            await slot.release()
            # Limit 10: one request the node refused, weighing 5, leaves room for 5 more.
            slot = await limiter.admit(11, Limits(10, 10), now=T0 + 1)
            await slot.release()
            await limiter.penalize(11, 4, now=T0 + 1)
            assert await _admit_all_10(limiter, 11, T0 + 2) == 5
        finally:
            await limiter.close()

    run(go())


async def _admit_all_10(limiter: MemoryLimiter | RedisLimiter, user: int, now: float) -> int:
    admitted = 0
    for _ in range(10):
        try:
            slot = await limiter.admit(user, Limits(10, 10), now=now)
        except RateLimited:
            continue
        admitted += 1
        await slot.release()
    return admitted


def test_redis_down_fails_closed_with_503(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        # Nothing listens on port 1: the connection is refused at once.
        limiter = RedisLimiter("redis://127.0.0.1:1/0", 30.0, timeout=0.5)
        try:
            with pytest.raises(ServiceUnavailable, match="rate limiter is unavailable"):
                await limiter.admit(1, Limits(10, 10))
            with pytest.raises(ServiceUnavailable):
                await limiter.penalize(1, 3)
        finally:
            await limiter.close()

    with caplog.at_level("ERROR", logger="veil.gateway.ratelimit"):
        run(go())
    assert any("fail closed" in r.getMessage() for r in caplog.records)
    assert not any("127.0.0.1:1" in r.getMessage() for r in caplog.records)


def test_make_limiter_picks_the_backend_and_refuses_other_urls() -> None:
    assert isinstance(make_limiter(None, slot_ttl=1), MemoryLimiter)
    assert isinstance(make_limiter("", slot_ttl=1), MemoryLimiter)
    assert isinstance(make_limiter("redis://127.0.0.1:6379/0", slot_ttl=1), RedisLimiter)
    with pytest.raises(ValueError, match="redis://"):
        make_limiter("http://127.0.0.1:6379", slot_ttl=1)
    with pytest.raises(ValueError, match="at least 1"):
        Limits(0, 1)


# -- per-user limits in the ledger (SQLite and PostgreSQL) ----------------------------------------


def test_user_limits_are_stored_set_and_reset(h: LedgerHarness) -> None:
    user, key = h.create_user("ada", requests_per_minute=10, concurrency=2)
    assert (user.requests_per_minute, user.concurrency) == (10, 2)
    seen = h.authenticate(key)
    assert (seen.requests_per_minute, seen.concurrency) == (10, 2)
    changed = h.set_limits("ada", concurrency=5)  # requests_per_minute left as it is
    assert (changed.requests_per_minute, changed.concurrency) == (10, 5)
    reset = h.set_limits("ada", requests_per_minute=0)
    assert (reset.requests_per_minute, reset.concurrency) == (None, 5)
    plain, _ = h.create_user("grace")
    assert (plain.requests_per_minute, plain.concurrency) == (None, None)


@pytest.mark.parametrize("bad", [-1, 2**31, True, 1.5])
def test_user_limits_out_of_range_are_refused(h: LedgerHarness, bad: object) -> None:
    h.create_user("ada")
    with pytest.raises(InvalidBody, match="requests_per_minute must be an integer from 1"):
        h.set_limits("ada", requests_per_minute=bad)
    with pytest.raises(InvalidBody, match="concurrency must be an integer from 1"):
        h.create_user("bob", concurrency=bad)
    with pytest.raises(NotFound, match="no user named 'nobody'"):
        h.set_limits("nobody", concurrency=3)


def test_the_database_refuses_a_zero_limit_from_any_writer(h: LedgerHarness) -> None:
    h.create_user("ada")
    with pytest.raises(Exception, match=r"(?i)check"):
        h.sql("UPDATE users SET concurrency = 0 WHERE name = 'ada'")
