"""The facade: one ``Ledger`` made of every part, reading the time from one injected clock."""

from __future__ import annotations

import inspect

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import TTL, make_world, reserve
from veil.gateway.ledger import DEFAULT_LEASE_SECONDS, Ledger

T1 = 1_900_000_000.0


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, start: float) -> None:
        self.time = start

    def __call__(self) -> float:
        return self.time


def test_every_time_the_ledger_stamps_comes_from_its_clock(h: LedgerHarness) -> None:
    clock = Clock(T1)
    h.reopen(now=clock)
    w = make_world(h)
    assert w.alice.created_at == T1 and w.stack.created_at == T1
    assert h.sql("SELECT DISTINCT created_at FROM nodes") == [(T1,)]
    assert h.sql("SELECT DISTINCT created_at FROM api_keys") == [(T1,)]

    clock.time = T1 + 10
    held = reserve(h, w, 100, now=None)  # no ``now``: the clock's
    assert (held.created_at, held.expires_at) == (T1 + 10, T1 + 10 + TTL)
    flying = reserve(h, w, 100, now=None)
    claimed = h.claim(w.alice.id, w.stack.id, request_id="r", reservation_id=flying.id)
    assert claimed.expires_at == T1 + 10 + DEFAULT_LEASE_SECONDS

    clock.time = T1 + 10 + TTL - 1
    assert h.expire() == 0
    clock.time = T1 + 10 + TTL
    assert h.expire() == 1
    assert h.get_reservation(held.id).state == "expired"

    clock.time = T1 + 20 + TTL
    h.settle(flying.id, 7)
    (record,) = h.usage(w.alice.id)
    assert (record.created_at, record.charged_units) == (T1 + 20 + TTL, 7)
    _, key = h.create_user("carol")
    clock.time = T1 + 30 + TTL
    assert h.revoke_api_key(key) is True
    assert h.sql("SELECT revoked_at FROM api_keys WHERE prefix = :prefix", prefix=key[:12]) == [
        (T1 + 30 + TTL,)
    ]


def test_a_call_may_still_name_its_own_time(h: LedgerHarness) -> None:
    h.reopen(now=Clock(T1))
    w = make_world(h)
    r = reserve(h, w, 10, now=T1 - 500)
    assert r.created_at == T1 - 500
    assert h.expire(now=T1 - 500 + TTL - 1) == 0
    assert h.expire() == 1  # the clock says the lock is long gone


def test_the_facade_offers_every_operation_as_a_coroutine() -> None:
    operations = {
        "create_user", "create_api_key", "authenticate", "revoke_api_key", "get_user",
        "set_limits", "ensure_admin_key", "create_stack", "list_stacks", "get_stack", "top_up",
        "set_state", "node_small_id", "reserve", "claim", "heartbeat", "settle", "release",
        "get_reservation", "expire", "run_expiry", "usage", "reconcile", "open", "close",
    }  # fmt: skip
    for name in operations:
        assert inspect.iscoroutinefunction(getattr(Ledger, name)), name
