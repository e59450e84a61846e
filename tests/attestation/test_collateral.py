"""Collateral from Intel PCS replies, its freshness, and the fetcher against a PCS/KDS stand-in.

The material is genuine: the Intel PCS replies captured with the Tinfoil and NEAR AI quotes on
2026-06-29, and AMD's VCEK and ASK/ARK chain for Tinfoil's Genoa chip. The fetcher talks real HTTP
to ``pcs_kds_standin``, a loopback stand-in serving those recorded replies (the real services cannot
be reached from here).
"""

from __future__ import annotations

import json
import stat
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from tests.attestation import SAMPLES, TODAY
from tests.attestation.pcs_kds_standin import (
    GENOA_REPORT,
    GENOA_VCEK,
    PCS_REPLIES,
    PcsKdsStandIn,
    genoa_chip_and_tcb,
)
from veil.attestation.collateral import (
    CollateralFetcher,
    CollateralFetchError,
    PcsReplyError,
    check_collateral_freshness,
    collateral_from_path,
    tdx_collateral_from_pcs_replies,
)
from veil.attestation.verify_tdx import QuoteVerificationError, verify_tdx_quote

TINFOIL_QUOTE = SAMPLES / "tdx" / "teep_tinfoil_tdx_quote.bin"
NEAR_QUOTE = SAMPLES / "tdx" / "neardirect_dstack_tdx_quote.bin"
TINFOIL_AT = datetime(2026, 6, 29, 2, 8, 14, tzinfo=UTC)
NEAR_AT = datetime(2026, 6, 29, 2, 6, 32, tzinfo=UTC)
FMSPC = "90c06f000000"
TCB_ISSUED = "2026-06-29T01:42:47Z"
TCB_NEXT_UPDATE = "2026-07-29T01:42:47Z"
COLLATERAL_KEYS = {
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
}


@pytest.fixture(scope="module")
def pcs_collateral() -> dict[str, str]:
    return tdx_collateral_from_pcs_replies(PCS_REPLIES)


@pytest.fixture()
def standin() -> Iterator[PcsKdsStandIn]:
    with PcsKdsStandIn() as server:
        yield server


def fetcher(standin: PcsKdsStandIn, cache: Path | None, **kwargs: Any) -> CollateralFetcher:
    return CollateralFetcher(pccs_url=standin.url, kds_url=standin.url, cache_dir=cache, **kwargs)


# --- (1) Intel PCS replies -> dcap-qvl collateral ----------------------------------------------


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


def copy_replies(tmp_path: Path) -> Path:
    target = tmp_path / "replies"
    target.mkdir()
    for path in PCS_REPLIES.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


# --- (2) freshness -----------------------------------------------------------------------------


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


# --- (3) the fetcher, against the stand-in -----------------------------------------------------


def test_fetcher_builds_the_same_collateral_as_the_replies(
    standin: PcsKdsStandIn, tmp_path: Path, pcs_collateral: dict[str, str]
) -> None:
    with fetcher(standin, tmp_path / "cache") as fetch:
        collateral = fetch.tdx(FMSPC, at=TINFOIL_AT)
    assert collateral == pcs_collateral
    assert verify_tdx_quote(TINFOIL_QUOTE.read_bytes(), collateral, TINFOIL_AT).tcb_status == (
        "UpToDate"
    )
    assert [p.split("?")[0] for p in standin.requests] == [
        "/tdx/certification/v4/tcb",
        "/tdx/certification/v4/qe/identity",
        "/sgx/certification/v4/pckcrl",
        "/sgx/certification/v4/rootcacrl",
    ]
    assert standin.requests[0] == f"/tdx/certification/v4/tcb?fmspc={FMSPC}"
    assert standin.requests[2] == "/sgx/certification/v4/pckcrl?ca=platform&encoding=der"


def test_collateral_for_a_quote_uses_its_fmspc_and_ca(
    standin: PcsKdsStandIn, pcs_collateral: dict[str, str]
) -> None:
    with fetcher(standin, None) as fetch:
        assert fetch.tdx_for_quote(NEAR_QUOTE.read_bytes(), at=NEAR_AT) == pcs_collateral
        with pytest.raises(PcsReplyError, match="cannot read FMSPC and PCK CA from the quote"):
            fetch.tdx_for_quote(b"not a quote")
    assert standin.requests[0] == f"/tdx/certification/v4/tcb?fmspc={FMSPC}"


def test_second_call_is_served_from_the_disk_cache(standin: PcsKdsStandIn, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with fetcher(standin, cache) as fetch:
        first = fetch.tdx(FMSPC, at=TINFOIL_AT)
        assert len(standin.requests) == 4
        assert fetch.tdx(FMSPC, at=NEAR_AT) == first
    with fetcher(standin, cache) as again:  # a new process finds it on disk
        assert again.tdx(FMSPC.upper(), at=TINFOIL_AT + timedelta(days=1)) == first
    assert len(standin.requests) == 4


def test_a_stale_cache_entry_is_refetched(standin: PcsKdsStandIn, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with fetcher(standin, cache, max_age_days=5) as fetch:
        fetch.tdx(FMSPC, at=TINFOIL_AT)
        fetch.tdx(FMSPC, at=TINFOIL_AT + timedelta(days=4))
        assert standin.count("/tdx/certification/v4/tcb") == 1
        fetch.tdx(FMSPC, at=TINFOIL_AT + timedelta(days=6))  # cached copy now beyond the bound
        assert standin.count("/tdx/certification/v4/tcb") == 2
        assert standin.count("/sgx/certification/v4/rootcacrl") == 2


def test_a_corrupt_cache_entry_is_refetched(standin: PcsKdsStandIn, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with fetcher(standin, cache) as fetch:
        fetch.tdx(FMSPC, at=TINFOIL_AT)
        (cache / f"tdx-{FMSPC}-platform.json").write_text("{not json")
        assert set(fetch.tdx(FMSPC, at=TINFOIL_AT)) == COLLATERAL_KEYS
    assert standin.count("/tdx/certification/v4/tcb") == 2


def test_cache_files_are_0600_in_a_0700_directory(standin: PcsKdsStandIn, tmp_path: Path) -> None:
    cache = tmp_path / "deep" / "cache"
    chip_id, tcb = genoa_chip_and_tcb()
    with fetcher(standin, cache) as fetch:
        fetch.tdx(FMSPC, at=TINFOIL_AT)
        fetch.snp_vcek("Genoa", chip_id, tcb, at=TINFOIL_AT)
        fetch.snp_cert_chain("Genoa", at=TINFOIL_AT)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    files = sorted(cache.iterdir())
    assert len(files) == 3
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_pccs_without_rootcacrl_falls_back_to_the_next_address(
    standin: PcsKdsStandIn, tmp_path: Path, pcs_collateral: dict[str, str]
) -> None:
    standin.fail["/sgx/certification/v4/rootcacrl"] = 404
    addresses = (
        f"{standin.url}/sgx/certification/v4/rootcacrl",
        f"{standin.url}/IntelSGXRootCA.der",
    )
    with fetcher(standin, None, root_ca_crl_url=addresses) as fetch:
        assert fetch.tdx(FMSPC, at=TINFOIL_AT) == pcs_collateral
    assert standin.count("/sgx/certification/v4/rootcacrl") == 1
    assert standin.count("/IntelSGXRootCA.der") == 1


def test_a_configured_root_ca_crl_address_is_the_only_one_asked(
    standin: PcsKdsStandIn, pcs_collateral: dict[str, str]
) -> None:
    with fetcher(standin, None, root_ca_crl_url=f"{standin.url}/IntelSGXRootCA.der") as fetch:
        assert fetch.root_ca_crl_urls == (f"{standin.url}/IntelSGXRootCA.der",)
        assert fetch.tdx(FMSPC, at=TINFOIL_AT) == pcs_collateral
    assert standin.count("/IntelSGXRootCA.der") == 1
    assert standin.count("/sgx/certification/v4/rootcacrl") == 0


def test_a_500_from_the_pccs_root_ca_crl_path_does_not_fall_back(standin: PcsKdsStandIn) -> None:
    standin.fail["/sgx/certification/v4/rootcacrl"] = 500
    with fetcher(standin, None) as fetch, pytest.raises(CollateralFetchError, match=r"HTTP 500$"):
        fetch.tdx(FMSPC, at=TINFOIL_AT)


def test_root_ca_crl_addresses_for_intel_pcs_and_for_a_pccs() -> None:
    intel = CollateralFetcher(cache_dir=None)
    assert intel.root_ca_crl_urls == (
        "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der",
    )
    pccs = CollateralFetcher("https://pccs.example:8081/", cache_dir=None)
    assert pccs.root_ca_crl_urls[0] == "https://pccs.example:8081/sgx/certification/v4/rootcacrl"
    intel.close()
    pccs.close()


@pytest.mark.parametrize("status", [404, 500])
def test_service_errors_name_the_url_and_status(
    standin: PcsKdsStandIn, tmp_path: Path, status: int
) -> None:
    standin.fail["/tdx/certification/v4/qe/identity"] = status
    with fetcher(standin, tmp_path / "cache") as fetch, pytest.raises(CollateralFetchError) as err:
        fetch.tdx(FMSPC, at=TINFOIL_AT)
    message = str(err.value)
    assert message == f"GET {standin.url}/tdx/certification/v4/qe/identity answered HTTP {status}"
    assert "stand-in failure" not in message  # the body is never echoed
    assert not (tmp_path / "cache" / f"tdx-{FMSPC}-platform.json").exists()


def test_unknown_fmspc_is_a_404_naming_the_url(standin: PcsKdsStandIn) -> None:
    with fetcher(standin, None) as fetch, pytest.raises(CollateralFetchError) as err:
        fetch.tdx("00606a000000", at=TINFOIL_AT)
    assert str(err.value) == (
        f"GET {standin.url}/tdx/certification/v4/tcb?fmspc=00606a000000 answered HTTP 404"
    )


def test_an_unreachable_service_is_a_fetch_error() -> None:
    refused = r"^GET http://127\.0\.0\.1:9/tdx/.* failed: ConnectError$"
    with (
        CollateralFetcher("http://127.0.0.1:9", cache_dir=None, timeout=2) as fetch,
        pytest.raises(CollateralFetchError, match=refused),
    ):
        fetch.tdx(FMSPC)


def test_bad_arguments_are_refused_before_any_request(standin: PcsKdsStandIn) -> None:
    with fetcher(standin, None) as fetch:
        with pytest.raises(ValueError, match="FMSPC must be 12 hex digits"):
            fetch.tdx("../etc")
        with pytest.raises(ValueError, match="PCK CA must be one of"):
            fetch.tdx(FMSPC, ca="other")
        with pytest.raises(ValueError, match="chip_id is 8 bytes, expected 64"):
            fetch.snp_vcek("Genoa", bytes(8), {})
        with pytest.raises(ValueError, match="product must be one of"):
            fetch.snp_cert_chain("Naples/../x")
    assert standin.requests == []


# --- KDS ---------------------------------------------------------------------------------------


def test_kds_vcek_and_chain_match_the_recorded_bytes(
    standin: PcsKdsStandIn, tmp_path: Path
) -> None:
    from veil.attestation.abi_snp import parse_snp_report

    report = parse_snp_report(GENOA_REPORT.read_bytes(), "Genoa")
    tcb = report.reported_tcb.components()
    assert tcb == {"bootloader": 10, "tee": 0, "snp": 23, "microcode": 84}
    with fetcher(standin, tmp_path / "cache") as fetch:
        vcek = fetch.snp_vcek("Genoa", report.chip_id, tcb, at=TINFOIL_AT)
        chain = fetch.snp_cert_chain("Genoa", at=TINFOIL_AT)
        # served from the cache the second time
        assert fetch.snp_vcek("Genoa", report.chip_id, tcb, at=TINFOIL_AT) == vcek
        assert fetch.snp_cert_chain("Genoa", at=TINFOIL_AT) == chain
    assert vcek == GENOA_VCEK.read_bytes()
    assert chain == (SAMPLES / "sev-snp" / "ask_ark_genoa.pem").read_bytes()
    chip_hex = report.chip_id.hex()
    assert standin.requests == [
        f"/vcek/v1/Genoa/{chip_hex}?blSPL=10&teeSPL=0&snpSPL=23&ucodeSPL=84",
        "/vcek/v1/Genoa/cert_chain",
    ]


def test_an_expired_cached_vcek_is_refetched(standin: PcsKdsStandIn, tmp_path: Path) -> None:
    chip_id, tcb = genoa_chip_and_tcb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)  # AMD VCEKs have serial 0
        expiry = x509.load_der_x509_certificate(GENOA_VCEK.read_bytes()).not_valid_after_utc
    with fetcher(standin, tmp_path / "cache") as fetch:
        fetch.snp_vcek("Genoa", chip_id, tcb, at=TINFOIL_AT)
        fetch.snp_vcek("Genoa", chip_id, tcb, at=expiry - timedelta(seconds=1))
        assert len(standin.requests) == 1
        fetch.snp_vcek("Genoa", chip_id, tcb, at=expiry)
    assert len(standin.requests) == 2


def test_kds_404_for_another_tcb_names_the_url(standin: PcsKdsStandIn) -> None:
    chip_id, tcb = genoa_chip_and_tcb()
    with fetcher(standin, None) as fetch, pytest.raises(CollateralFetchError) as err:
        fetch.snp_vcek("Genoa", chip_id, dict(tcb, snpSPL=22))
    assert str(err.value) == (
        f"GET {standin.url}/vcek/v1/Genoa/{chip_id.hex()}"
        "?blSPL=10&teeSPL=0&snpSPL=22&ucodeSPL=84 answered HTTP 404"
    )


def test_kds_500_for_the_chain_names_the_url(standin: PcsKdsStandIn) -> None:
    standin.fail["/vcek/v1/Milan/cert_chain"] = 500
    with fetcher(standin, None) as fetch, pytest.raises(CollateralFetchError) as err:
        fetch.snp_cert_chain("Milan")
    assert str(err.value) == f"GET {standin.url}/vcek/v1/Milan/cert_chain answered HTTP 500"
