"""Ledger fixtures: ``h`` (an open ledger on each backend) comes from ``tests/gateway/conftest.py``;
``w`` adds the small world of ``world.py`` to it."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import LedgerHarness
from tests.gateway.ledger.world import World, make_world


@pytest.fixture
def w(h: LedgerHarness) -> World:
    return make_world(h)
