"""A small world most ledger tests start from: alice and bob, one node, a 1000-unit stack each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.gateway.conftest import LedgerHarness
from veil.gateway.ledger import Stack, User

T0 = 1_800_000_000.0
MODEL = "smollm2-135m-instruct"
TTL = 60.0


@dataclass
class World:
    alice: User
    bob: User
    node: int
    stack: Stack  # alice's, 1000 units of MODEL
    bobs: Stack  # bob's, 1000 units of MODEL


def make_world(h: LedgerHarness) -> World:
    alice, _ = h.create_user("alice")
    bob, _ = h.create_user("bob")
    return World(
        alice=alice,
        bob=bob,
        node=h.node_small_id("http://127.0.0.1:8081"),
        stack=h.create_stack("alice", MODEL, 1000),
        bobs=h.create_stack("bob", MODEL, 1000),
    )


def reserve(h: LedgerHarness, w: World, units: int, **kwargs: Any) -> Any:
    kwargs.setdefault("now", T0)
    kwargs.setdefault("ttl_seconds", TTL)
    kwargs.setdefault("node_small_id", w.node)
    user = kwargs.pop("user", w.alice)
    return h.reserve(user.id, kwargs.pop("model", MODEL), units, **kwargs)


def units(h: LedgerHarness, stack_id: int) -> tuple[int, int, int]:
    """(total, reserved, used) of a stack."""
    s = h.get_stack(stack_id)
    return s.total_units, s.reserved_units, s.used_units
