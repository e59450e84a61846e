"""The ``node`` fixture: a veil-v3 node of each KEM (X-Wing, and X25519 where a policy allows it)."""

from __future__ import annotations

import pytest

from tests.hazmat.parties import Node
from veil.hazmat.v3 import Kem


@pytest.fixture(params=list(Kem), ids=lambda k: k.value)
def node(request: pytest.FixtureRequest) -> Node:
    return Node(request.param)
