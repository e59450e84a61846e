"""Intel PCS replies (a directory or a server's bodies) -> dcap-qvl collateral, on the replies
captured with the Tinfoil and NEAR AI quotes."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.attestation import SAMPLES, TODAY
from tests.attestation.collateral_samples import (
    COLLATERAL_KEYS,
    FMSPC,
    NEAR_AT,
    NEAR_QUOTE,
    TINFOIL_AT,
    TINFOIL_QUOTE,
    copy_replies,
)
from tests.attestation.pcs_kds_standin import PCS_REPLIES
from veil.attestation.collateral import (
    PcsReplyError,
    check_collateral_freshness,
    collateral_from_path,
    tdx_collateral_from_pcs_replies,
)
from veil.attestation.verify_tdx import QuoteVerificationError, verify_tdx_quote


@pytest.fixture(scope="module")
def pcs_collateral() -> dict[str, str]:
    return tdx_collateral_from_pcs_replies(PCS_REPLIES)


def test_pcs_replies_give_dcap_qvl_collateral_in_its_encodings(
    pcs_collateral: dict[str, str],
) -> None:
    assert set(pcs_collateral) == COLLATERAL_KEYS
    raw = (PCS_REPLIES / f"tcb_info_{FMSPC}.json").read_text()
    # the signed part is the served text itself, not a re-serialisation of it
    assert raw.startswith('{"tcbInfo":' + pcs_collateral["tcb_info"] + ',"signature":')
    assert json.loads(raw)["signature"] == pcs_collateral["tcb_info_signature"]
    assert json.loads(pcs_collateral["qe_identity"])["id"] == "TD_QE"
    assert (
        bytes.fromhex(pcs_collateral["pck_crl"])
        == (PCS_REPLIES / "pck_crl_platform.der").read_bytes()
    )
    assert (
        bytes.fromhex(pcs_collateral["root_ca_crl"])
        == (PCS_REPLIES / "IntelSGXRootCA_crl.der").read_bytes()
    )
    assert pcs_collateral["tcb_info_issuer_chain"].startswith("-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize(("quote", "at"), [(TINFOIL_QUOTE, TINFOIL_AT), (NEAR_QUOTE, NEAR_AT)])
def test_real_quotes_verify_up_to_date_with_the_pcs_replies(
    pcs_collateral: dict[str, str], quote: Path, at: datetime
) -> None:
    result = verify_tdx_quote(quote.read_bytes(), pcs_collateral, at)
    assert result.tcb_status == "UpToDate"
    assert check_collateral_freshness(pcs_collateral, at) == []


@pytest.mark.parametrize("quote", [TINFOIL_QUOTE, NEAR_QUOTE])
def test_at_todays_date_the_pcs_collateral_has_expired(
    pcs_collateral: dict[str, str], quote: Path
) -> None:
    with pytest.raises(QuoteVerificationError, match="collateral expired"):
        verify_tdx_quote(quote.read_bytes(), pcs_collateral, TODAY)
    assert any("expired" in p for p in check_collateral_freshness(pcs_collateral, TODAY))


def test_a_re_serialised_tcb_info_no_longer_verifies(pcs_collateral: dict[str, str]) -> None:
    altered = dict(pcs_collateral)
    altered["tcb_info"] = json.dumps(json.loads(pcs_collateral["tcb_info"]))
    assert altered["tcb_info"] != pcs_collateral["tcb_info"]
    with pytest.raises(QuoteVerificationError):
        verify_tdx_quote(TINFOIL_QUOTE.read_bytes(), altered, TINFOIL_AT)


def test_a_flipped_byte_in_a_served_reply_fails(tmp_path: Path) -> None:
    replies = copy_replies(tmp_path)
    path = replies / "qe_identity.json"
    path.write_text(path.read_text().replace('"isvprodid":2', '"isvprodid":3'))
    collateral = tdx_collateral_from_pcs_replies(replies)
    with pytest.raises(QuoteVerificationError):
        verify_tdx_quote(TINFOIL_QUOTE.read_bytes(), collateral, TINFOIL_AT)


def test_url_encoded_issuer_chains_as_in_the_headers_are_accepted(tmp_path: Path) -> None:
    from urllib.parse import quote

    replies = copy_replies(tmp_path)
    for name in ("tcb_info_issuer_chain.pem", "pck_crl_issuer_chain.pem"):
        (replies / name).write_text(quote((PCS_REPLIES / name).read_text(), safe=""))
    collateral = tdx_collateral_from_pcs_replies(replies)
    assert verify_tdx_quote(TINFOIL_QUOTE.read_bytes(), collateral, TINFOIL_AT).tcb_status == (
        "UpToDate"
    )


def test_malformed_replies_are_refused_naming_the_part(tmp_path: Path) -> None:
    replies = copy_replies(tmp_path)
    (replies / "qe_identity.json").write_text('{"enclaveIdentity": {"id": "TD_QE"}}')
    with pytest.raises(PcsReplyError, match="QE identity reply must be an object with"):
        tdx_collateral_from_pcs_replies(replies)
    (replies / "qe_identity.json").write_bytes((PCS_REPLIES / "qe_identity.json").read_bytes())
    (replies / "pck_crl_platform.der").write_bytes(b"\x30\x03\x02\x01\x00")
    with pytest.raises(PcsReplyError, match="PCK CRL is not a DER"):
        tdx_collateral_from_pcs_replies(replies)
    with pytest.raises(PcsReplyError, match=r"has no tcb_info_b0c06f000000\.json"):
        tdx_collateral_from_pcs_replies(replies, fmspc="B0C06F000000")
    (replies / f"tcb_info_{FMSPC}.json").rename(replies / "tcb_info_b0c06f000000.json")
    with pytest.raises(PcsReplyError, match="TCB info is for FMSPC '90c06f000000'"):
        tdx_collateral_from_pcs_replies(replies)


def test_collateral_from_path_takes_a_reply_directory_or_dcap_qvl_json(
    tmp_path: Path, pcs_collateral: dict[str, str]
) -> None:
    assert collateral_from_path(PCS_REPLIES) == pcs_collateral
    sample = SAMPLES / "tdx_quote_collateral.json"
    assert collateral_from_path(sample) == json.loads(sample.read_text())
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"tcb_info": "{}"}))
    with pytest.raises(PcsReplyError, match="missing pck_crl, pck_crl_issuer_chain, qe_identity"):
        collateral_from_path(partial)
    with pytest.raises(PcsReplyError, match="cannot read collateral"):
        collateral_from_path(tmp_path / "absent.json")
