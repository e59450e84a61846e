"""Revoking an API key takes effect on every gateway of a ledger within a second.

Two real gateways on one ledger database (each of SQLite and PostgreSQL), each in front of a
stand-in node. The key is revoked the way ``veil users revoke`` does it: by another ledger on the
same database, which neither gateway hears about. Both gateways must then refuse the key on every
paid surface (lock, confidential request, stacks) within a bounded wait of one second, with the
wire's ``AUTH_ERROR`` saying it was revoked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.gateway.served import Served, serve_gateway
from veil.gateway.ledger import Ledger

PROPAGATION_BOUND = 1.0  # seconds: the promise under test


def revoke_elsewhere(database_url: str, key: str) -> None:
    async def go() -> None:
        ledger = await Ledger.open(database_url)
        try:
            assert await ledger.revoke_api_key(key[:12]) is True
        finally:
            await ledger.close()

    asyncio.run(go())


def refused_within(
    check: Callable[[], httpx.Response], bound: float, granted: list[httpx.Response]
) -> httpx.Response:
    """Ask until the key is refused, for at most ``bound`` seconds (at least once); the answers
    that still went through (a gateway reuses an authentication for a fraction of a second) are
    appended to ``granted``."""
    deadline = time.monotonic() + bound
    while True:
        answer = check()
        if answer.status_code == 401 or time.monotonic() >= deadline:
            return answer
        granted.append(answer)
        time.sleep(0.02)


def paid_calls(gw: Served, key: str, stack_id: int) -> dict[str, httpx.Response]:
    return {
        "lock": gw.lock(key, max_num_tokens=8),
        "request": gw.call(
            "POST", "/v1/confidential/chat/completions", key, content=gw.envelope(stack_id)
        ),
        "stacks": gw.call("GET", "/v1/stacks", key),
    }


def test_a_revoked_key_is_refused_by_every_gateway_within_a_second(
    db_url: str, tmp_path: Path
) -> None:
    with (
        serve_gateway(tmp_path / "a", database_url=db_url) as a,
        serve_gateway(tmp_path / "b", database_url=db_url) as b,
    ):
        key, stack_id = a.new_user("ana")
        for gw in (a, b):  # the key works on both, and each gateway has seen it
            assert gw.lock(key, max_num_tokens=8).status_code == 200
            assert gw.call("GET", "/v1/stacks", key).status_code == 200
        revoke_elsewhere(db_url, key)
        late: list[httpx.Response] = []  # locks granted before the revocation reached a gateway
        for gw in (a, b):
            first = refused_within(
                lambda gw=gw: gw.lock(key, max_num_tokens=8), PROPAGATION_BOUND, late
            )
            assert first.status_code == 401, first.text
            for surface, answer in paid_calls(gw, key, stack_id).items():
                assert answer.status_code == 401, (surface, answer.text)
                error = answer.json()["error"]
                assert error["code"] == "AUTH_ERROR" and "revoked" in error["message"], surface
                assert key not in answer.text
        # Nothing was charged for the refused requests: the locks granted (before the revocation,
        # and any a gateway granted in its reuse window) are only held, each exactly.
        assert all(answer.status_code == 200 for answer in late), [r.text for r in late]
        stack = a.stack(stack_id)
        assert stack["used_units"] == 0 and stack["reserved_units"] == 8 * (2 + len(late))
