"""The gateway's ledger of users, API keys, stacks, reservations and usage.

:class:`Ledger` is the one entry point (its rules: ``ledger.py``); the reservation states and their
one transition table are in ``state.py``; :func:`database_unavailable` tells a database outage
from a bug.
"""

from veil.gateway.ledger.accounts import User
from veil.gateway.ledger.apikeys import generate_api_key, hash_api_key, key_prefix
from veil.gateway.ledger.db import MIGRATIONS_DIR, alembic_config, database_unavailable
from veil.gateway.ledger.expiry import DEFAULT_IN_FLIGHT_GRACE, Orphan
from veil.gateway.ledger.ledger import Ledger
from veil.gateway.ledger.nodes import NodeRecord, node_url
from veil.gateway.ledger.reservations import DEFAULT_LEASE_SECONDS, Reservation
from veil.gateway.ledger.stacks import Stack
from veil.gateway.ledger.state import NodeState, Operation, ReservationState, StackState
from veil.gateway.ledger.usage import UsageRecord

__all__ = [
    "DEFAULT_IN_FLIGHT_GRACE",
    "DEFAULT_LEASE_SECONDS",
    "MIGRATIONS_DIR",
    "Ledger",
    "NodeRecord",
    "NodeState",
    "Operation",
    "Orphan",
    "Reservation",
    "ReservationState",
    "Stack",
    "StackState",
    "UsageRecord",
    "User",
    "alembic_config",
    "database_unavailable",
    "generate_api_key",
    "hash_api_key",
    "key_prefix",
    "node_url",
]
