"""The receipts a node keeps: each gateway ticket's newest signed usage receipt, for a while.

A gateway writes a request's charge to its ledger after the node's answer reached it. A gateway
killed in between (or mid-stream) leaves the reservation in flight, and whoever sweeps it once its
lease and grace have run out would hand every unit back: the caller would have had the answer, or
part of a stream, free. So the node remembers the last receipt it signed for each ticket (a
running receipt is cumulative, so the newest is the whole account) and answers a gateway's signed
``ReceiptQuery`` with them (``POST /v1/receipts``); the sweeping gateway checks each against the
node's key and charges it instead of releasing.

Bounded in count and in age (``NodeSettings.receipt_retention_*``): the oldest go first. Memory
only: a node restarted since has nothing to give, and the reservation is released as before.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

__all__ = ["ReceiptLog"]


class ReceiptLog:
    def __init__(
        self,
        max_entries: int,
        retention_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or retention_seconds <= 0:
            raise ValueError("a receipt log needs room for one entry and a positive retention")
        self._max = max_entries
        self._retention = retention_seconds
        self._clock = clock
        # ticket id -> (signed receipt token, monotonic time it was recorded); oldest first
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, ticket_id: str, token: str) -> None:
        """``token`` is now ``ticket_id``'s newest receipt (it replaces an older one)."""
        now = self._clock()
        self._entries[ticket_id] = (token, now)
        self._entries.move_to_end(ticket_id)
        self._forget(now)

    def lookup(self, ticket_ids: Iterable[str]) -> dict[str, str]:
        """The kept receipt token of each of ``ticket_ids`` that has one."""
        self._forget(self._clock())
        found: dict[str, str] = {}
        for ticket_id in ticket_ids:
            entry = self._entries.get(ticket_id)
            if entry is not None:
                found[ticket_id] = entry[0]
        return found

    def _forget(self, now: float) -> None:
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        oldest = now - self._retention
        while self._entries:
            ticket_id, (_, recorded) = next(iter(self._entries.items()))
            if recorded > oldest:
                break
            del self._entries[ticket_id]
