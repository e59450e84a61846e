"""Replay caches for veil-v2 request ids (PROTOCOL.md section 5, item 4).

The pipeline calls ``check_and_add`` only after the envelope's AEAD verified (so nobody can fill the
cache with junk), with ``expires_at`` = the instant the request's timestamp leaves the acceptance
window (``ServerSession.expires_at``). An id is remembered at least until then; after that the
timestamp check alone refuses the envelope.

Both caches fail closed: when they cannot tell whether an id was seen they raise
ServiceUnavailable (503) and never answer "unseen".

- :class:`MemoryReplayCache`: one node process; bounded, and when full of live ids it refuses new
  requests instead of forgetting an id that could still be replayed.
- :class:`RedisReplayCache`: shared by every node process pointing at the same Redis, with
  ``SET key 1 NX PX ttl`` (atomic: exactly one process wins a given id).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import threading
from typing import Protocol

import redis.asyncio as aioredis

from veil.protocol.errors import ServiceUnavailable

DEFAULT_MAX_ENTRIES = 100_000  # ~20 MB; 100k ids per window is ~400 requests/s sustained
DEFAULT_REDIS_PREFIX = "veil:replay:"
DEFAULT_REDIS_TIMEOUT_SECONDS = 2.0
MAX_ID_SIZE = 64


class ReplayCache(Protocol):
    async def check_and_add(self, request_id: bytes, expires_at: float, now: float) -> bool:
        """Record ``request_id`` until ``expires_at``; False if it is already recorded (a replay).

        An id whose ``expires_at`` is already past is refused (False): it could not be remembered
        for the time it stays acceptable. Raises ServiceUnavailable when the answer is unknown.
        """
        ...


def _check_id(request_id: bytes) -> None:
    if not isinstance(request_id, bytes) or not 0 < len(request_id) <= MAX_ID_SIZE:
        raise ValueError(f"request id must be 1 to {MAX_ID_SIZE} bytes")


class MemoryReplayCache:
    """Ids seen by this process, each until its expiry; at most ``max_entries`` live ids."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []  # (expires_at, id), soonest first
        self._lock = threading.Lock()  # the pipeline may run in worker threads

    def __len__(self) -> int:
        return len(self._expiry)

    def _prune(self, now: float) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] < now:
            expires_at, request_id = heapq.heappop(heap)
            if expiry.get(request_id) == expires_at:
                del expiry[request_id]

    async def check_and_add(self, request_id: bytes, expires_at: float, now: float) -> bool:
        _check_id(request_id)
        with self._lock:
            self._prune(now)
            if request_id in self._expiry or expires_at <= now:
                return False
            if len(self._expiry) >= self.max_entries:
                raise ServiceUnavailable(
                    "replay cache is full of live request ids; retry in a few seconds"
                )
            self._expiry[request_id] = expires_at
            heapq.heappush(self._heap, (expires_at, request_id))
            return True

    async def close(self) -> None:
        with self._lock:
            self._expiry.clear()
            self._heap.clear()


class RedisReplayCache:
    """Ids shared by every node process on one Redis: ``SET prefix+hex(id) 1 NX PX ttl``.

    The client connects lazily, inside the event loop that first uses it; use one instance per
    loop. Any Redis or network error, or a timeout, raises ServiceUnavailable.
    """

    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_REDIS_PREFIX,
        *,
        timeout: float = DEFAULT_REDIS_TIMEOUT_SECONDS,
    ) -> None:
        self.prefix = prefix
        self.timeout = timeout
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

    def __repr__(self) -> str:  # the URL may carry credentials
        return f"RedisReplayCache(prefix={self.prefix!r})"

    def key(self, request_id: bytes) -> str:
        return self.prefix + request_id.hex()

    async def check_and_add(self, request_id: bytes, expires_at: float, now: float) -> bool:
        _check_id(request_id)
        ttl_ms = math.ceil((expires_at - now) * 1000)
        if ttl_ms <= 0:
            return False
        try:
            # Bound the whole call (connect, retries, reply): a hung Redis must not hang requests.
            async with asyncio.timeout(self.timeout * 2):
                created = await self._redis.set(self.key(request_id), b"1", nx=True, px=ttl_ms)
        except Exception:  # fail closed on anything (CancelledError still propagates)
            raise ServiceUnavailable("replay cache unavailable") from None
        return created is True

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection is not an error
            await self._redis.aclose()


def make_replay_cache(
    spec: str | None, *, max_entries: int = DEFAULT_MAX_ENTRIES
) -> MemoryReplayCache | RedisReplayCache:
    """``None`` / ``"memory"`` -> in-process cache; ``redis://``, ``rediss://``, ``unix://`` URL ->
    Redis (shared by every node process using it)."""
    if spec is None or spec.strip() in ("", "memory"):
        return MemoryReplayCache(max_entries)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisReplayCache(spec)
    raise ValueError("replay cache must be 'memory' or a redis:// URL")
