"""The collateral fetcher (PCCS / Intel PCS, AMD KDS, the disk cache) talking real HTTP to
``pcs_kds_standin``, a loopback stand-in serving recorded replies (the real services cannot be
reached from here)."""

from __future__ import annotations

import stat
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from tests.attestation import SAMPLES
from tests.attestation.collateral_samples import (
    COLLATERAL_KEYS,
    FMSPC,
    NEAR_AT,
    NEAR_QUOTE,
    TINFOIL_AT,
    TINFOIL_QUOTE,
    fetcher,
)
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
    tdx_collateral_from_pcs_replies,
)
from veil.attestation.verify_tdx import verify_tdx_quote


@pytest.fixture(scope="module")
def pcs_collateral() -> dict[str, str]:
    return tdx_collateral_from_pcs_replies(PCS_REPLIES)


@pytest.fixture()
def standin() -> Iterator[PcsKdsStandIn]:
    with PcsKdsStandIn() as server:
        yield server


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
