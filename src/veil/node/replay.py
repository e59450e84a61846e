"""One replay cache for everything a node must accept at most once: veil-v3 request ids
(docs/PROTOCOL.md section 9) and gateway ticket ids.

The rules, the same for every implementation (they live in :class:`ReplayCache`):

1. ``check_and_add(id, expires_at, now, tenant)`` records an id until ``expires_at`` and answers
   True only the first time. An id whose ``expires_at`` is already past is refused (False): it
   could not be remembered for as long as it stays acceptable.
2. Bounded: a tenant holds at most ``max_per_tenant`` live ids and past that gets
   ``429 TOO_MANY_REQUESTS`` for its own requests only; in memory the whole cache holds at most
   ``max_entries`` and, full of live ids, refuses new ones with 503. Nobody's id is ever evicted
   early, because a forgotten id could be replayed.
3. Fail closed: when an implementation cannot tell whether an id was seen it raises
   ServiceUnavailable (503) and never answers "unseen".

The two uses differ only in what they pass. Request ids: the pipeline calls only after the
envelope's AEAD verified and its body parsed (so no outsider can fill the cache with junk), with
``expires_at`` = the end of the request's timestamp window and ``tenant`` = the ticket's
``stack_small_id`` (a tenant seals its own envelopes, so authenticated garbage must fill its own
share only). Ticket ids: no tenant (the gateway signed them), bounded by the total alone.

- :class:`MemoryReplayCache`: one node process; a heap by expiry, O(log n) per call.
- :class:`RedisReplayCache`: shared by every node process on one Redis with ``SET key 1 NX PX ttl``
  (atomic: exactly one process wins an id). Run that Redis with ``maxmemory-policy noeviction``:
  an evicting Redis would forget live ids.

The defaults (sizes, prefixes, timeout) live in ``veil.config``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import heapq
import math
import threading
from dataclasses import dataclass

import redis.asyncio as aioredis

from veil.config import (
    REPLAY_MAX_ENTRIES,
    REPLAY_MAX_PER_TENANT,
    REPLAY_PREFIX,
    REPLAY_REDIS_TIMEOUT_SECONDS,
    TICKET_REPLAY_SUFFIX,
    NodeSettings,
)
from veil.wire.errors import ServiceUnavailable, TooManyRequests

__all__ = [
    "DEFAULT_REDIS_PREFIX",
    "MemoryReplayCache",
    "NodeReplayCaches",
    "RedisReplayCache",
    "ReplayCache",
    "Tenant",
    "make_replay_cache",
]

# Kept under its historical name: deployments and tests read their Redis keys through it.
DEFAULT_REDIS_PREFIX = REPLAY_PREFIX
MAX_ID_SIZE = 64  # a v3 request id is 16 bytes, a hashed ticket id 32

Tenant = int | str | None


class ReplayCache(abc.ABC):
    """The interface and its I/O-free rules; subclasses only store (``_record``)."""

    max_per_tenant: int

    async def check_and_add(
        self, request_id: bytes, expires_at: float, now: float, tenant: Tenant = None
    ) -> bool:
        """Record ``request_id`` until ``expires_at``; False if it is already recorded (a replay)
        or already expired. Raises ServiceUnavailable when the answer is unknown or the cache is
        full, and TooManyRequests when ``tenant`` already holds its share of live ids."""
        if not isinstance(request_id, bytes) or not 0 < len(request_id) <= MAX_ID_SIZE:
            raise ValueError(f"request id must be 1 to {MAX_ID_SIZE} bytes")
        if expires_at <= now:
            return False
        return await self._record(request_id, expires_at, now, tenant)

    @abc.abstractmethod
    async def _record(
        self, request_id: bytes, expires_at: float, now: float, tenant: Tenant
    ) -> bool:
        """Store a live id unless present (False); enforce the bounds by raising."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    def _tenant_full(self, tenant: Tenant) -> TooManyRequests:
        return TooManyRequests(
            f"stack {tenant} has {self.max_per_tenant} request ids in flight in the replay window "
            "(the most one stack may hold); retry in a few seconds"
        )


class MemoryReplayCache(ReplayCache):
    """Ids seen by this process, each until its expiry; at most ``max_entries`` live ids, and at
    most ``max_per_tenant`` of them for any one tenant."""

    def __init__(
        self, max_entries: int = REPLAY_MAX_ENTRIES, max_per_tenant: int | None = None
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_per_tenant is None:
            max_per_tenant = min(REPLAY_MAX_PER_TENANT, max_entries)
        if max_per_tenant < 1:
            raise ValueError("max_per_tenant must be at least 1")
        self.max_entries = max_entries
        self.max_per_tenant = max_per_tenant
        self._expiry: dict[tuple[Tenant, bytes], float] = {}
        # (expires_at, tenant key, id, tenant), soonest first; the tenant key is a str so tuples
        # compare even when tenants of different types share an instant.
        self._heap: list[tuple[float, str, bytes, Tenant]] = []
        self._per_tenant: dict[Tenant, int] = {}
        self._lock = threading.Lock()  # the pipeline may run in worker threads

    def __len__(self) -> int:
        return len(self._expiry)

    def held_by(self, tenant: Tenant) -> int:
        """Live ids ``tenant`` holds (as of the last call that pruned)."""
        return self._per_tenant.get(tenant, 0)

    def _prune(self, now: float) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] < now:
            expires_at, _, request_id, tenant = heapq.heappop(heap)
            if expiry.get((tenant, request_id)) == expires_at:
                del expiry[(tenant, request_id)]
                left = self._per_tenant[tenant] - 1
                if left:
                    self._per_tenant[tenant] = left
                else:
                    del self._per_tenant[tenant]

    async def _record(
        self, request_id: bytes, expires_at: float, now: float, tenant: Tenant
    ) -> bool:
        key = (tenant, request_id)
        with self._lock:
            self._prune(now)
            if key in self._expiry:
                return False
            held = self._per_tenant.get(tenant, 0)
            if tenant is not None and held >= self.max_per_tenant:
                raise self._tenant_full(tenant)
            if len(self._expiry) >= self.max_entries:
                raise ServiceUnavailable(
                    "replay cache is full of live request ids; retry in a few seconds"
                )
            self._expiry[key] = expires_at
            self._per_tenant[tenant] = held + 1
            heapq.heappush(self._heap, (expires_at, repr(tenant), request_id, tenant))
            return True

    async def close(self) -> None:
        with self._lock:
            self._expiry.clear()
            self._heap.clear()
            self._per_tenant.clear()


# Atomically: forget the tenant's expired ids, refuse a replay (0) or a full tenant (-1), else
# record the id (SET NX PX) and its expiry in the tenant's sorted set (1). The braces make both
# keys hash to one Redis Cluster slot.
_ADD_FOR_TENANT = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 1
"""


class RedisReplayCache(ReplayCache):
    """Ids shared by every node process on one Redis: ``SET prefix+hex(id) 1 NX PX ttl``.

    The client connects lazily, inside the event loop that first uses it; use one instance per
    loop. Any Redis or network error, or a timeout, raises ServiceUnavailable.
    """

    def __init__(
        self,
        url: str,
        prefix: str = REPLAY_PREFIX,
        *,
        timeout: float = REPLAY_REDIS_TIMEOUT_SECONDS,
        max_per_tenant: int = REPLAY_MAX_PER_TENANT,
    ) -> None:
        if max_per_tenant < 1:
            raise ValueError("max_per_tenant must be at least 1")
        self.prefix = prefix
        self.timeout = timeout
        self.max_per_tenant = max_per_tenant
        try:
            self._redis: aioredis.Redis = aioredis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry_on_timeout=False,
            )
        except ValueError:
            # The URL may carry a password: never repeat it.
            raise ValueError("invalid Redis URL for the replay cache") from None
        self._add_for_tenant = self._redis.register_script(_ADD_FOR_TENANT)

    def __repr__(self) -> str:  # the URL may carry credentials
        return f"RedisReplayCache(prefix={self.prefix!r})"

    def key(self, request_id: bytes, tenant: Tenant = None) -> str:
        if tenant is None:
            return self.prefix + request_id.hex()
        return f"{self.prefix}{{t{tenant}}}:{request_id.hex()}"

    def tenant_key(self, tenant: Tenant) -> str:
        return f"{self.prefix}{{t{tenant}}}:live"

    async def _record(
        self, request_id: bytes, expires_at: float, now: float, tenant: Tenant
    ) -> bool:
        ttl_ms = math.ceil((expires_at - now) * 1000)
        try:
            # Bound the whole call (connect, retries, reply): a hung Redis must not hang requests.
            async with asyncio.timeout(self.timeout * 2):
                if tenant is None:
                    created = await self._redis.set(self.key(request_id), b"1", nx=True, px=ttl_ms)
                    return created is True
                keys = [self.key(request_id, tenant), self.tenant_key(tenant)]
                args: list[int | str] = [ttl_ms, math.floor(now * 1000)]
                args += [math.ceil(expires_at * 1000), self.max_per_tenant, request_id.hex()]
                outcome = await self._add_for_tenant(keys=keys, args=args)
        except Exception:  # fail closed on anything (CancelledError still propagates)
            raise ServiceUnavailable("replay cache unavailable") from None
        if outcome == -1:
            raise self._tenant_full(tenant)
        return bool(outcome == 1)

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection is not an error
            await self._redis.aclose()


def make_replay_cache(
    spec: str | None,
    *,
    max_entries: int = REPLAY_MAX_ENTRIES,
    max_per_tenant: int | None = None,
    prefix: str = REPLAY_PREFIX,
    timeout: float = REPLAY_REDIS_TIMEOUT_SECONDS,
) -> MemoryReplayCache | RedisReplayCache:
    """``None`` / ``"memory"`` -> in-process cache; ``redis://``, ``rediss://``, ``unix://`` URL ->
    Redis (shared by every node process using it, under ``prefix``)."""
    if spec is None or spec.strip() in ("", "memory"):
        return MemoryReplayCache(max_entries, max_per_tenant)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        per_tenant = REPLAY_MAX_PER_TENANT if max_per_tenant is None else max_per_tenant
        return RedisReplayCache(spec, prefix, timeout=timeout, max_per_tenant=per_tenant)
    raise ValueError("replay cache must be 'memory' or a redis:// URL")


@dataclass(frozen=True)
class NodeReplayCaches:
    """A node's two uses of the one cache, side by side in one store (memory or one Redis):
    v3 request ids (per-tenant shares) and gateway ticket ids (their own bound and key prefix,
    so a flood of one never fills the other)."""

    requests: ReplayCache
    tickets: ReplayCache

    @classmethod
    def from_settings(cls, settings: NodeSettings) -> NodeReplayCaches:
        spec, timeout = settings.replay_cache, settings.replay_redis_timeout_seconds
        return cls(
            requests=make_replay_cache(
                spec,
                max_entries=settings.replay_max_entries,
                max_per_tenant=settings.replay_max_per_tenant,
                prefix=settings.replay_prefix,
                timeout=timeout,
            ),
            tickets=make_replay_cache(
                spec,
                max_entries=settings.ticket_replay_max_entries,
                prefix=settings.replay_prefix + TICKET_REPLAY_SUFFIX,
                timeout=timeout,
            ),
        )

    async def close(self) -> None:
        await self.requests.close()
        await self.tickets.close()
