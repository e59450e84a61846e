"""Collateral freshness: valid at the verification time, issued within the age bound."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography import x509

from tests.attestation import SAMPLES, TODAY
from tests.attestation.collateral_samples import TCB_ISSUED, TCB_NEXT_UPDATE, TINFOIL_AT
from tests.attestation.pcs_kds_standin import PCS_REPLIES
from veil.attestation.collateral import check_collateral_freshness, tdx_collateral_from_pcs_replies


@pytest.fixture(scope="module")
def pcs_collateral() -> dict[str, str]:
    return tdx_collateral_from_pcs_replies(PCS_REPLIES)


def test_fresh_at_the_capture_time(pcs_collateral: dict[str, str]) -> None:
    assert check_collateral_freshness(pcs_collateral, TINFOIL_AT, max_age_days=30) == []


def test_past_next_update_fails_naming_the_date(pcs_collateral: dict[str, str]) -> None:
    at = datetime(2026, 7, 29, 1, 42, 47, tzinfo=UTC)  # exactly the TCB info's nextUpdate
    problems = check_collateral_freshness(pcs_collateral, at)
    assert any(
        p.startswith(f"TCB info expired: its next update {TCB_NEXT_UPDATE}")
        and "2026-07-29T01:42:47Z" in p
        for p in problems
    ), problems
    assert any(p.startswith("QE identity expired") for p in problems)


def test_older_than_the_age_bound_fails_though_unexpired(pcs_collateral: dict[str, str]) -> None:
    at = datetime(2026, 7, 10, tzinfo=UTC)  # inside every validity window, 11 days after issue
    assert check_collateral_freshness(pcs_collateral, at, max_age_days=30) == []
    problems = check_collateral_freshness(pcs_collateral, at, max_age_days=10)
    assert (
        f"TCB info issued {TCB_ISSUED} is more than 10 days before the verification time "
        "2026-07-10T00:00:00Z; fetch fresh collateral"
    ) in problems
    assert any(
        p.startswith("QE identity issued 2026-06-29T01:42:43Z is more than 10") for p in problems
    )
    assert not any("expired" in p for p in problems)


def test_max_age_zero_refuses_collateral_issued_before_the_verification_time(
    pcs_collateral: dict[str, str],
) -> None:
    problems = check_collateral_freshness(pcs_collateral, TINFOIL_AT, max_age_days=0)
    assert any(p.startswith(f"TCB info issued {TCB_ISSUED} is more than 0 days") for p in problems)


def test_collateral_from_the_future_is_refused(pcs_collateral: dict[str, str]) -> None:
    problems = check_collateral_freshness(pcs_collateral, datetime(2026, 6, 1, tzinfo=UTC))
    assert f"TCB info issued {TCB_ISSUED} is after the verification time 2026-06-01T00:00:00Z" in (
        problems
    )


def test_a_crl_past_its_next_update_fails(pcs_collateral: dict[str, str]) -> None:
    crl = x509.load_der_x509_crl(bytes.fromhex(pcs_collateral["pck_crl"]))
    assert crl.next_update_utc is not None
    due = crl.next_update_utc
    problems = check_collateral_freshness(pcs_collateral, due, max_age_days=10_000)
    stamp = due.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert any(p.startswith(f"PCK CRL expired: its next update {stamp}") for p in problems), (
        problems
    )


def test_a_crl_older_than_the_age_bound_fails(pcs_collateral: dict[str, str]) -> None:
    root = x509.load_der_x509_crl(bytes.fromhex(pcs_collateral["root_ca_crl"]))
    issued = root.last_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert check_collateral_freshness(pcs_collateral, TINFOIL_AT, max_age_days=0) != []
    problems = check_collateral_freshness(pcs_collateral, TINFOIL_AT, root_ca_crl_max_age_days=100)
    assert problems == [
        f"root CA CRL last updated {issued} is more than 100 days before the verification time "
        "2026-06-29T02:08:14Z; fetch fresh collateral"
    ]


def test_the_pck_crl_has_the_tight_age_bound(pcs_collateral: dict[str, str]) -> None:
    pck = x509.load_der_x509_crl(bytes.fromhex(pcs_collateral["pck_crl"]))
    issued = pck.last_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    problems = check_collateral_freshness(pcs_collateral, TINFOIL_AT, max_age_days=0)
    assert any(p.startswith(f"PCK CRL last updated {issued} is more than 0 days") for p in problems)
    assert not any(p.startswith("root CA CRL") for p in problems)


def test_unreadable_items_are_problems_not_passes(pcs_collateral: dict[str, str]) -> None:
    broken = dict(pcs_collateral, tcb_info="{}", pck_crl="00")
    problems = check_collateral_freshness(broken, TINFOIL_AT)
    assert "TCB info has no readable issueDate and nextUpdate; cannot check it" in problems
    assert "PCK CRL is not a readable CRL with a next update; cannot check it" in problems
    assert len(check_collateral_freshness({}, TINFOIL_AT)) == 4


def test_the_sample_collateral_in_dcap_qvl_json_is_checked_alike() -> None:
    document = json.loads((SAMPLES / "tdx_quote_collateral.json").read_text())
    assert check_collateral_freshness(document, datetime(2025, 7, 1, tzinfo=UTC)) == []
    assert check_collateral_freshness(document, TODAY)
