"""Offline TDX quote verification with dcap-qvl, on real Intel quotes and collateral."""

from __future__ import annotations

import pytest

from tests.attestation import (
    GOOD_AT,
    OUTDATED_AT,
    OUTDATED_QUOTE,
    SAMPLE_MR_TD,
    TODAY,
    collateral,
    outdated_collateral,
    quote_bytes,
)
from veil.attestation.abi_tdx import QuoteFormatError, parse_tdx_quote, signature_offset
from veil.attestation.verify_tdx import (
    NO_MATCHING_TCB_LEVEL,
    CollateralError,
    CollateralRequired,
    QuoteVerificationError,
    verify_tdx_quote,
)


def flip(raw: bytes, offset: int) -> bytes:
    altered = bytearray(raw)
    altered[offset] ^= 0x01
    return bytes(altered)


def test_sample_quote_is_up_to_date_on_2025_07_01() -> None:
    result = verify_tdx_quote(quote_bytes(), collateral(), GOOD_AT)
    assert result.tcb_status == "UpToDate"
    assert result.advisory_ids == ()
    assert result.platform_status == "UpToDate" and result.qe_status == "UpToDate"
    assert result.mr_td.hex() == SAMPLE_MR_TD
    assert result.rtmrs == parse_tdx_quote(quote_bytes()).rtmrs
    assert result.rtmrs[3] == bytes(48)
    assert len(result.report_data) == 64
    assert result.verified_at == GOOD_AT


def test_collateral_as_json_text_works_too() -> None:
    text = (OUTDATED_QUOTE.parent / "tdx_quote_collateral.json").read_text()
    assert verify_tdx_quote(quote_bytes(), text, GOOD_AT).tcb_status == "UpToDate"


def test_todays_date_fails_because_the_collateral_expired() -> None:
    with pytest.raises(QuoteVerificationError) as failure:
        verify_tdx_quote(quote_bytes(), collateral(), TODAY)
    assert failure.value.reason.startswith("collateral expired")
    assert "CrlExpired" in failure.value.detail


def test_default_time_is_now_and_now_is_past_the_collateral() -> None:
    with pytest.raises(QuoteVerificationError, match="collateral expired"):
        verify_tdx_quote(quote_bytes(), collateral())


@pytest.mark.parametrize("into_signature", [0, 31, 63])
def test_one_flipped_byte_in_the_signature_fails(into_signature: int) -> None:
    raw = quote_bytes()
    offset = signature_offset(raw) + into_signature
    with pytest.raises(QuoteVerificationError) as failure:
        verify_tdx_quote(flip(raw, offset), collateral(), GOOD_AT)
    assert failure.value.reason.startswith("quote signature check failed")


def test_one_flipped_byte_in_the_measured_body_fails() -> None:
    raw = quote_bytes()
    mr_td_offset = 48 + 136  # header, then tee_tcb_svn .. xfam
    assert raw[mr_td_offset : mr_td_offset + 48].hex() == SAMPLE_MR_TD
    with pytest.raises(QuoteVerificationError, match="signature"):
        verify_tdx_quote(flip(raw, mr_td_offset), collateral(), GOOD_AT)


def test_no_collateral_is_a_clear_error_not_a_network_fetch() -> None:
    with pytest.raises(CollateralRequired, match="collateral is required"):
        verify_tdx_quote(quote_bytes(), None, GOOD_AT)


def test_unreadable_collateral_and_non_quotes_are_refused() -> None:
    with pytest.raises(CollateralError, match="QuoteCollateralV3"):
        verify_tdx_quote(quote_bytes(), {"tcb_info": "{}"}, GOOD_AT)
    with pytest.raises(QuoteFormatError, match="not a readable quote"):
        verify_tdx_quote(b"\x04\x00" + bytes(100), collateral(), GOOD_AT)


def test_collateral_of_another_platform_is_refused() -> None:
    with pytest.raises(QuoteVerificationError, match="another platform"):
        verify_tdx_quote(quote_bytes(), outdated_collateral(), OUTDATED_AT)


def test_outdated_platform_reports_a_non_up_to_date_status() -> None:
    result = verify_tdx_quote(OUTDATED_QUOTE.read_bytes(), outdated_collateral(), OUTDATED_AT)
    assert result.tcb_status == NO_MATCHING_TCB_LEVEL
    assert result.quote.version == 5 and result.quote.body == "TD15"


def test_outdated_status_is_only_given_to_a_quote_whose_signature_verified() -> None:
    raw = OUTDATED_QUOTE.read_bytes()
    forged = flip(raw, signature_offset(raw) + 5)
    with pytest.raises(QuoteVerificationError, match="signature"):
        verify_tdx_quote(forged, outdated_collateral(), OUTDATED_AT)


def test_sample_is_a_production_td() -> None:
    parsed = parse_tdx_quote(quote_bytes())
    assert not parsed.debug
    assert parsed.attribute_problems() == []
