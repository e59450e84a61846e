"""Per-user rate limits: requests per minute and concurrent requests, shared by every gateway.

Why: one tenant must not be able to starve the others (or the nodes) by flooding, and a tenant
whose requests mostly fail at the node (which had to open them first) must be slowed, not the node.

The two limits, both per user (every API key of a user shares them; admin keys are exempt):

1. **Requests per minute**, a sliding-window counter: the count of the current fixed minute plus
   the previous minute's count weighted by how much of it still overlaps the last 60 seconds. It
   never lets a burst of twice the limit through at a minute boundary (a plain fixed window does),
   and needs only two integers per user. A request is admitted only if its weight still fits; a
   refused request costs nothing, so a client that backs off is not punished twice. A request the
   node refused (HTTP 4xx after the gateway forwarded it) is charged ``failed_request_weight``
   in total, via :meth:`Limiter.penalize`.
2. **Concurrent requests**: a set of slots, each with its own deadline. A slot is taken at
   admission and given back when the response is complete (for a stream: when its last byte is
   sent or the client hangs up). A gateway that crashes cannot leak slots forever: each slot
   expires at its deadline, and a long stream pushes its deadline forward while it is alive.

Backends: :class:`MemoryLimiter` (one gateway process) and :class:`RedisLimiter` (every gateway
on one Redis: one Lua script per admission, so the check and the increment are atomic across
gateways). Redis unreachable means **fail closed**: :class:`~veil.wire.errors.ServiceUnavailable`
(503), logged, never "let everything through". Window arithmetic uses the gateway's clock; gateways
sharing a Redis are assumed to run NTP (a skew of seconds only shifts a minute's boundary).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import redis.asyncio as aioredis

from veil.wire.errors import ServiceUnavailable, TooManyRequests

__all__ = [
    "Admission",
    "Limiter",
    "Limits",
    "MemoryLimiter",
    "RateLimited",
    "RedisLimiter",
    "make_limiter",
    "retry_after_seconds",
]

log = logging.getLogger("veil.gateway.ratelimit")

WINDOW_SECONDS: Final = 60.0
DEFAULT_PREFIX: Final = "veil:rl:"
DEFAULT_REDIS_TIMEOUT_SECONDS: Final = 2.0
# The concurrency limit cannot know when a slot frees; the caller is told to try again soon.
CONCURRENCY_RETRY_SECONDS: Final = 1
_LOG_EVERY_SECONDS: Final = 10.0  # an outage is logged, not once per refused request


@dataclass(frozen=True)
class Limits:
    """What one user may do: requests per sliding minute and requests in flight at once."""

    requests_per_minute: int
    concurrency: int

    def __post_init__(self) -> None:
        if self.requests_per_minute < 1 or self.concurrency < 1:
            raise ValueError("rate limits must be at least 1")


class RateLimited(TooManyRequests):
    """429 with the limit that was hit and when to retry (also sent as ``Retry-After``)."""

    def __init__(self, limit: str, value: int, retry_after: int) -> None:
        what = "requests per minute" if limit == "requests_per_minute" else "concurrent requests"
        super().__init__(
            f"rate limit reached: at most {value} {what} for this API key; retry in {retry_after} s"
        )
        self.limit = limit
        self.value = value
        self.retry_after = retry_after

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        body["error"].update(
            limit=self.limit, limit_value=self.value, retry_after_seconds=self.retry_after
        )
        return body


def retry_after_seconds(
    limit: int, weight: int, current: int, previous: int, elapsed: float
) -> int:
    """Whole seconds until ``previous * (1 - elapsed) + current + weight <= limit`` holds, where
    ``elapsed`` is the fraction of the current minute gone (the sliding-window estimate decays as
    the previous minute slides out; at the next minute ``current`` becomes the previous one)."""
    if current + weight <= limit and previous > 0:
        needed = 1.0 - (limit - weight - current) / previous
        wait = (needed - elapsed) * WINDOW_SECONDS
    else:
        needed = 1.0 - (limit - weight) / current if current > 0 else 0.0
        wait = (1.0 - elapsed + max(0.0, needed)) * WINDOW_SECONDS
    return max(1, math.ceil(wait))


def _window(now: float) -> tuple[int, float]:
    """The current minute's index and the fraction of it already gone."""
    index = math.floor(now / WINDOW_SECONDS)
    return index, (now - index * WINDOW_SECONDS) / WINDOW_SECONDS


class Admission(Protocol):
    """A taken concurrency slot: give it back once the response is complete."""

    async def touch(self) -> None:
        """Push the slot's deadline forward (a long stream that is still alive)."""

    async def release(self) -> None:
        """Give the slot back; idempotent, never raises."""


class Limiter(Protocol):
    async def admit(self, user_id: int, limits: Limits, *, now: float | None = None) -> Admission:
        """Count one request and take a slot, or raise ``RateLimited`` (429) naming the limit;
        ``ServiceUnavailable`` (503) if the shared state cannot be reached."""

    async def penalize(self, user_id: int, weight: int, *, now: float | None = None) -> None:
        """Add ``weight`` more requests to the user's current minute (a failed request)."""

    async def close(self) -> None: ...


@dataclass
class _Slot:
    """A slot with a deadline; ``_give_back`` does the backend's part once."""

    ttl: float
    _refresh: Callable[[float], Awaitable[None]]
    _give_back: Callable[[], Awaitable[None]]
    _released: bool = False
    _touched: float = field(default_factory=time.monotonic)

    async def touch(self) -> None:
        # At most a few refreshes per TTL: a stream sends many chunks.
        if self._released or time.monotonic() - self._touched < self.ttl / 4:
            return
        self._touched = time.monotonic()
        try:
            await self._refresh(time.time() + self.ttl)
        except Exception as exc:  # the slot stays counted until its old deadline: harmless
            log.warning("rate limiter: could not extend a slot: %s", type(exc).__name__)

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            await self._give_back()
        except Exception as exc:  # it expires at its deadline instead
            log.warning("rate limiter: could not release a slot: %s", type(exc).__name__)


class _NoSlot:
    """An admission that holds nothing (admin keys)."""

    async def touch(self) -> None:
        return None

    async def release(self) -> None:
        return None


UNLIMITED: Final[Admission] = _NoSlot()


@dataclass
class _UserState:
    windows: dict[int, int] = field(default_factory=dict)  # minute index -> weight counted
    slots: dict[str, float] = field(default_factory=dict)  # slot id -> deadline (unix seconds)


class MemoryLimiter:
    """The limits of one gateway process (no Redis configured). Every operation runs without an
    ``await`` in the middle, so the event loop makes it atomic."""

    def __init__(self, slot_ttl: float) -> None:
        self.slot_ttl = slot_ttl
        self._users: defaultdict[int, _UserState] = defaultdict(_UserState)

    def __repr__(self) -> str:
        return "MemoryLimiter()"

    async def admit(self, user_id: int, limits: Limits, *, now: float | None = None) -> Admission:
        when = time.time() if now is None else now
        state = self._users[user_id]
        for slot_id in [s for s, deadline in state.slots.items() if deadline <= when]:
            del state.slots[slot_id]
        if len(state.slots) >= limits.concurrency:
            raise RateLimited("concurrency", limits.concurrency, CONCURRENCY_RETRY_SECONDS)
        index, elapsed = _window(when)
        for old in [i for i in state.windows if i < index - 1]:
            del state.windows[old]
        current, previous = state.windows.get(index, 0), state.windows.get(index - 1, 0)
        if previous * (1.0 - elapsed) + current + 1 > limits.requests_per_minute:
            wait = retry_after_seconds(limits.requests_per_minute, 1, current, previous, elapsed)
            raise RateLimited("requests_per_minute", limits.requests_per_minute, wait)
        state.windows[index] = current + 1
        slot_id = secrets.token_hex(8)
        state.slots[slot_id] = when + self.slot_ttl

        async def refresh(deadline: float) -> None:
            if slot_id in state.slots:
                state.slots[slot_id] = deadline

        async def give_back() -> None:
            state.slots.pop(slot_id, None)

        return _Slot(self.slot_ttl, refresh, give_back)

    async def penalize(self, user_id: int, weight: int, *, now: float | None = None) -> None:
        if weight <= 0:
            return
        index, _ = _window(time.time() if now is None else now)
        windows = self._users[user_id].windows
        windows[index] = windows.get(index, 0) + weight

    def in_flight(self, user_id: int) -> int:
        return len(self._users[user_id].slots)

    async def close(self) -> None:
        return None


# KEYS: current minute, previous minute, the user's slot set.
# ARGV: rpm limit, weight, elapsed fraction, minute key TTL (ms), concurrency limit, now,
#       the new slot's deadline, the new slot's id, slot set TTL (ms).
# Returns {status, current, previous}: 1 admitted, 0 requests per minute, -1 concurrency.
_ADMIT: Final = """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then
  return {-1, 0, 0}
end
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local weight = tonumber(ARGV[2])
if previous * (1 - tonumber(ARGV[3])) + current + weight > tonumber(ARGV[1]) then
  return {0, current, previous}
end
current = redis.call('INCRBY', KEYS[1], weight)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[8])
redis.call('PEXPIRE', KEYS[3], ARGV[9])
return {1, current, previous}
"""
# Only a slot still present is moved (a released or expired one stays gone).
_TOUCH: Final = """
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""


class RedisLimiter:
    """The limits of every gateway on one Redis. Keys (under ``prefix``): ``rpm:<user>:<minute>``
    (an integer, expiring after two minutes) and ``slots:<user>`` (a sorted set of slot ids
    scored by deadline; expired slots are dropped on every admission).

    The client connects lazily inside the event loop that first uses it: one instance per loop.
    Any Redis or network error, or a timeout, is a 503 (fail closed), logged.
    """

    def __init__(
        self,
        url: str,
        slot_ttl: float,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS,
    ) -> None:
        self.slot_ttl = slot_ttl
        self.prefix = prefix
        self.timeout = timeout
        try:
            self._redis: aioredis.Redis = aioredis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
            )
        except ValueError:
            raise ValueError("invalid Redis URL for the rate limiter") from None  # no password
        self._admit = self._redis.register_script(_ADMIT)
        self._touch = self._redis.register_script(_TOUCH)
        self._last_logged = -math.inf
        # Keys outlive the window they count by one minute (the previous minute is still read).
        self._key_ttl_ms = int(2 * WINDOW_SECONDS * 1000)

    def __repr__(self) -> str:  # the URL may carry credentials
        return f"RedisLimiter(prefix={self.prefix!r})"

    def _minute_key(self, user_id: int, index: int) -> str:
        return f"{self.prefix}rpm:{user_id}:{index}"

    def _slots_key(self, user_id: int) -> str:
        return f"{self.prefix}slots:{user_id}"

    async def _call(self, what: str, work: Awaitable[Any]) -> Any:
        try:
            # Bound the whole call (connect, reply): a hung Redis must not hang requests.
            async with asyncio.timeout(self.timeout * 2):
                return await work
        except Exception as exc:  # fail closed on anything (CancelledError still propagates)
            now = time.monotonic()
            if now - self._last_logged >= _LOG_EVERY_SECONDS:
                self._last_logged = now
                log.error(
                    "rate limiter: Redis unavailable during %s (%s); refusing requests with 503 "
                    "until it is back (fail closed)",
                    what,
                    type(exc).__name__,
                )
            raise ServiceUnavailable(
                "the rate limiter is unavailable; nothing was done, retry shortly"
            ) from None

    async def admit(self, user_id: int, limits: Limits, *, now: float | None = None) -> Admission:
        when = time.time() if now is None else now
        index, elapsed = _window(when)
        slot_id = secrets.token_hex(8)
        slots = self._slots_key(user_id)
        keys = [self._minute_key(user_id, index), self._minute_key(user_id, index - 1), slots]
        args: list[str | int] = [
            limits.requests_per_minute,
            1,
            repr(elapsed),
            self._key_ttl_ms,
            limits.concurrency,
            repr(when),
            repr(when + self.slot_ttl),
            slot_id,
            int(self.slot_ttl * 2000),
        ]
        status, current, previous = await self._call("admission", self._admit(keys, args))
        if int(status) == -1:
            raise RateLimited("concurrency", limits.concurrency, CONCURRENCY_RETRY_SECONDS)
        if int(status) == 0:
            wait = retry_after_seconds(
                limits.requests_per_minute, 1, int(current), int(previous), elapsed
            )
            raise RateLimited("requests_per_minute", limits.requests_per_minute, wait)

        async def refresh(deadline: float) -> None:
            await self._call(
                "slot refresh",
                self._touch([slots], [repr(deadline), slot_id, int(self.slot_ttl * 2000)]),
            )

        async def give_back() -> None:
            await self._call("slot release", self._redis.zrem(slots, slot_id))

        return _Slot(self.slot_ttl, refresh, give_back)

    async def penalize(self, user_id: int, weight: int, *, now: float | None = None) -> None:
        if weight <= 0:
            return
        index, _ = _window(time.time() if now is None else now)
        key = self._minute_key(user_id, index)

        async def add() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incrby(key, weight)
                pipe.pexpire(key, self._key_ttl_ms)
                await pipe.execute()

        await self._call("penalty", add())

    async def in_flight(self, user_id: int) -> int:
        key = self._slots_key(user_id)
        return int(await self._call("count", self._redis.zcount(key, time.time(), "+inf")))

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection is not an error
            await self._redis.aclose()


def make_limiter(
    redis_url: str | None, *, slot_ttl: float, prefix: str = DEFAULT_PREFIX
) -> MemoryLimiter | RedisLimiter:
    """No URL: in-process limits (one gateway). ``redis://``, ``rediss://`` or ``unix://``: limits
    shared by every gateway on that Redis."""
    if redis_url is None or not redis_url.strip():
        return MemoryLimiter(slot_ttl)
    if redis_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisLimiter(redis_url, slot_ttl, prefix=prefix)
    raise ValueError("the rate limiter's Redis URL must start with redis://, rediss:// or unix://")
