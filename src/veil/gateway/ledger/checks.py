"""Argument checks shared by the ledger's parts: each refuses a bad value before any SQL runs,
naming the field (``InvalidBody``, a 400), or ``ValueError`` for what only code can get wrong."""

from __future__ import annotations

from typing import Final

from veil.wire.envelopes import MAX_ID
from veil.wire.errors import InvalidBody

MAX_LIMIT: Final = 2**31 - 1
"""Rate limits live in 32-bit INTEGER columns."""
MAX_NAME: Final = 200
"""User names and model names live in VARCHAR(200) columns."""


def check_limit(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidBody(f"{what} must be an integer from 1 to {MAX_LIMIT}")
    return value


def check_count(value: int, what: str, *, minimum: int, maximum: int = MAX_ID) -> int:
    """Counts live in signed 64-bit columns: anything outside ``minimum..maximum`` is refused
    here, naming the field, before a driver could overflow binding it."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidBody(f"{what} must be an integer from {minimum} to {maximum}")
    return value


def check_seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 10**9:
        raise ValueError(f"{what} must be a positive number of seconds")
    return float(value)


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise InvalidBody(f"{what} must be a non-empty string of at most {MAX_NAME} characters")
    return value
