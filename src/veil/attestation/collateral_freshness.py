"""Collateral freshness: valid at the verification time, and issued recently (step 3 of the verifier).

A signature does not say *when*. An old TCB info, still inside its validity window but issued
before a TCB recovery, would rate a now-vulnerable platform "UpToDate". So collateral from ANY
source passes ``check_collateral_freshness`` first: it must be valid at the verification time and
issued at most ``max_age_days`` (default 30) before it. That bound is what makes relayed collateral
safe to use: a relay can withhold fresh collateral, never make stale collateral pass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

__all__ = ["DEFAULT_MAX_AGE_DAYS", "DEFAULT_ROOT_CA_CRL_MAX_AGE_DAYS", "check_collateral_freshness"]

DEFAULT_MAX_AGE_DAYS = 30
DEFAULT_ROOT_CA_CRL_MAX_AGE_DAYS = 366
_TIME = "%Y-%m-%dT%H:%M:%SZ"


def check_collateral_freshness(
    collateral: Mapping[str, Any],
    at: datetime,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
    *,
    root_ca_crl_max_age_days: int = DEFAULT_ROOT_CA_CRL_MAX_AGE_DAYS,
) -> list[str]:
    """What makes ``collateral`` unfit for a verification at ``at``; an empty list means fit.

    Steps, for the TCB info and QE identity (``issueDate`` / ``nextUpdate``) and for the PCK and
    root CA CRLs (``thisUpdate`` / ``nextUpdate``): (1) issued no later than ``at``; (2) its next
    update after ``at``; (3) issued no more than ``max_age_days`` before ``at``. An item that cannot
    be read is a problem too: a check that cannot run fails.

    The root CA CRL has its own bound, ``root_ca_crl_max_age_days`` (default 366): Intel issues it
    about once a year with a year's validity (the one PCS served on 2026-06-29 was last updated
    2026-02-26), so a 30-day bound would refuse the current genuine CRL. It lists revoked Intel CAs;
    the TCB info, QE identity and PCK CRL, which change with TCB recoveries, keep the tight bound.
    """
    for name, value in (
        ("max_age_days", max_age_days),
        ("root_ca_crl_max_age_days", root_ca_crl_max_age_days),
    ):
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, got {value}")
    when = as_utc(at)
    problems: list[str] = []
    for key, name in (("tcb_info", "TCB info"), ("qe_identity", "QE identity")):
        window = _json_window(collateral.get(key))
        if window is None:
            problems.append(f"{name} has no readable issueDate and nextUpdate; cannot check it")
            continue
        problems += _window_problems(name, "issued", window, when, max_age_days)
    for key, name, bound in (
        ("pck_crl", "PCK CRL", max_age_days),
        ("root_ca_crl", "root CA CRL", root_ca_crl_max_age_days),
    ):
        crl_window = _crl_window(collateral.get(key))
        if crl_window is None:
            problems.append(f"{name} is not a readable CRL with a next update; cannot check it")
            continue
        problems += _window_problems(name, "last updated", crl_window, when, bound)
    return problems


def _window_problems(
    name: str,
    issued: str,
    window: tuple[datetime, datetime],
    at: datetime,
    max_age_days: int,
) -> list[str]:
    start, next_update = window
    s, n, a = start.strftime(_TIME), next_update.strftime(_TIME), at.strftime(_TIME)
    problems = []
    if start > at:
        problems.append(f"{name} {issued} {s} is after the verification time {a}")
    if next_update <= at:
        problems.append(
            f"{name} expired: its next update {n} is not after the verification time {a}; "
            f"fetch fresh collateral"
        )
    if start < at - timedelta(days=max_age_days):
        problems.append(
            f"{name} {issued} {s} is more than {max_age_days} days before the verification time "
            f"{a}; fetch fresh collateral"
        )
    return problems


def _json_window(value: Any) -> tuple[datetime, datetime] | None:
    try:
        document = json.loads(value) if isinstance(value, str | bytes) else value
        return _parse_time(document["issueDate"]), _parse_time(document["nextUpdate"])
    except (ValueError, KeyError, TypeError):
        return None


def _crl_window(value: Any) -> tuple[datetime, datetime] | None:
    try:
        if isinstance(value, str):
            der = bytes.fromhex(value)
        elif isinstance(value, bytes | bytearray):
            der = bytes(value)
        elif isinstance(value, list):
            der = bytes(value)  # a byte array serialised as a list of numbers
        else:
            return None
        crl = x509.load_der_x509_crl(der)
    except (ValueError, TypeError):
        return None
    if crl.next_update_utc is None:
        return None
    return crl.last_update_utc, crl.next_update_utc


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not a time")
    return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))


def as_utc(at: datetime) -> datetime:
    """``at`` in UTC; a naive time is taken to be UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
