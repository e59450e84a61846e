"""The gateway's ledger of users, API keys, stacks, reservations and usage (see ``ledger.py``)."""

from veil.gateway.ledger.apikeys import generate_api_key, hash_api_key, key_prefix
from veil.gateway.ledger.ledger import (
    DEFAULT_IN_FLIGHT_GRACE,
    DEFAULT_LEASE_SECONDS,
    MIGRATIONS_DIR,
    Ledger,
    Reservation,
    Stack,
    User,
    alembic_config,
)

__all__ = [
    "DEFAULT_IN_FLIGHT_GRACE",
    "DEFAULT_LEASE_SECONDS",
    "MIGRATIONS_DIR",
    "Ledger",
    "Reservation",
    "Stack",
    "User",
    "alembic_config",
    "generate_api_key",
    "hash_api_key",
    "key_prefix",
]
