"""``GET /v1/usage``: a caller's charged requests, each with the node's signed usage receipt.

Why: the ledger is the operator's, so a user should not have to trust it. Every charge is listed
with the token the node signed (the ledger keeps it at settlement), the node it came from and that
node's signing key, so the client can check each signature against the keys it saw in attested
locks (``veil usage --verify``) and add the charges up against its stacks' ``used_units``.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from veil.gateway.ledger.ledger import UsageRecord
from veil.gateway.registry import NodeRegistry
from veil.wire.envelopes import MAX_ID
from veil.wire.errors import InvalidBody
from veil.wire.keyid import key_id

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "UsageQuery", "parse_since", "usage_json"]

DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000


def parse_since(value: str) -> float:
    """Unix seconds (``1733100000``, ``1733100000.5``) or an ISO 8601 time (``2026-12-02T06:00Z``;
    without a zone: UTC)."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidBody("since: expected Unix seconds or an ISO 8601 time") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    if not math.isfinite(seconds) or not 0 <= seconds <= 2**40:
        raise InvalidBody("since: expected a time between 1970 and year 36812")
    return seconds


def _count(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 20 or not low <= int(raw) <= high:
        raise InvalidBody(f"{name}: expected an integer from {low} to {high}")
    return int(raw)


@dataclass(frozen=True)
class UsageQuery:
    """``?since=T&after=ID&limit=N&user=NAME`` (``user``: admins only)."""

    since: float | None
    after: int
    limit: int
    user: str | None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> UsageQuery:
        since = params.get("since")
        user = params.get("user")
        if user is not None and not 1 <= len(user) <= 200:
            raise InvalidBody("user: expected a user name of 1 to 200 characters")
        return cls(
            since=None if since is None else parse_since(since),
            after=_count(params, "after", 0, 0, MAX_ID),
            limit=_count(params, "limit", DEFAULT_PAGE, 1, MAX_PAGE),
            user=user,
        )


def usage_json(
    user: str, records: Sequence[UsageRecord], limit: int, registry: NodeRegistry
) -> dict[str, Any]:
    """One page: at most ``limit`` records (``records`` may hold one more, which says a next
    page exists: ``next_after`` is then the ``after`` to ask for)."""
    keys = {
        n.node_small_id: n.signing_public_key
        for n in registry.nodes
        if n.signing_public_key is not None
    }
    page = list(records[:limit])
    rows = []
    for r in page:
        key = keys.get(r.node_small_id)
        rows.append(
            {
                "id": r.id,
                "time": r.created_at,
                "time_iso": datetime.fromtimestamp(r.created_at, UTC).isoformat(),
                "request_id": r.request_id,
                "reservation_id": r.reservation_id,
                "model": r.model,
                "stack_small_id": r.stack_id,
                "node_small_id": r.node_small_id,
                "reserved_units": r.reserved_units,
                "charged_units": r.charged_units,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "receipt": r.receipt,
                "node_signing_key": None if key is None else base64.b64encode(key).decode(),
                "node_signing_key_id": None if key is None else key_id(key),
            }
        )
    more = len(records) > limit
    return {
        "user": user,
        "usage": rows,
        "limit": limit,
        "next_after": page[-1].id if more and page else None,
    }
