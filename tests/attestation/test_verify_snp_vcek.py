"""The VCEK checks on AMD's real reports (``snp_samples.py``): the report signature, the chain to
AMD's pinned roots, validity at the verification time, and the VCEK's extensions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from tests.attestation.snp_samples import (
    AT,
    chain_certs,
    chain_pem,
    flip,
    genoa,
    milan,
    read,
)
from veil.attestation.abi_snp import TcbVersion, parse_snp_report
from veil.attestation.verify_snp import verify_snp_report
from veil.attestation.verify_snp_vcek import (
    ARK_SHA256,
    SnpVerificationError,
    check_vcek_extensions,
    load_vcek,
)


def test_pinned_ark_fingerprints_are_the_sample_roots() -> None:
    for product in ("Milan", "Genoa", "Turin"):
        ask, ark = chain_certs(f"ask_ark_{product.lower()}.pem")
        assert ark.fingerprint(hashes.SHA256()) == ARK_SHA256[product]
        assert ask.fingerprint(hashes.SHA256()) != ARK_SHA256[product]


# -- the wrong chain, VCEK or product fails --------------------------------------------------------
def test_genoa_report_fails_against_the_milan_chain() -> None:
    report, vcek, _ = genoa()
    with pytest.raises(SnpVerificationError) as failure:
        verify_snp_report(report, vcek, read("ask_ark_milan.pem"), at=AT)
    assert failure.value.step == "SNP certificate chain"
    assert "Genoa" in failure.value.reason and "Milan" in failure.value.reason


def test_genoa_report_fails_when_the_caller_says_milan() -> None:
    report, vcek, chain = genoa()
    with pytest.raises(SnpVerificationError, match="is not AMD's Milan root"):
        verify_snp_report(report, vcek, chain, at=AT, product="Milan")
    with pytest.raises(SnpVerificationError, match="names a Genoa processor"):
        verify_snp_report(report, vcek, read("ask_ark_milan.pem"), at=AT, product="Milan")


def test_genoa_report_fails_against_the_turin_chain() -> None:
    report, vcek, _ = genoa()
    with pytest.raises(SnpVerificationError, match="but the chain is Turin's"):
        verify_snp_report(report, vcek, read("ask_ark_turin.pem"), at=AT)


def test_unknown_product_fails() -> None:
    with pytest.raises(SnpVerificationError, match="unknown SEV-SNP product 'Rome'"):
        verify_snp_report(*milan(), at=AT, product="Rome")


def test_milan_vcek_does_not_verify_the_genoa_report() -> None:
    report, _, chain = genoa()
    with pytest.raises(SnpVerificationError) as failure:
        verify_snp_report(report, read("gosevguest_vcek.der"), chain, at=AT)
    assert failure.value.step == "SNP signature"
    assert "does not verify with this VCEK" in failure.value.reason


def test_ask_in_place_of_the_vcek_fails() -> None:
    report, _, chain = milan()
    ask, _ark = chain_certs("ask_ark_milan.pem")
    with pytest.raises(SnpVerificationError, match="not an ECDSA P-384 key"):
        verify_snp_report(report, ask.public_bytes(Encoding.DER), chain, at=AT)


def test_unreadable_vcek_and_chain_fail() -> None:
    report, vcek, chain = milan()
    with pytest.raises(SnpVerificationError, match=r"not a DER X\.509 certificate"):
        verify_snp_report(report, vcek[:-10], chain, at=AT)
    with pytest.raises(SnpVerificationError, match=r"not PEM X\.509"):
        verify_snp_report(report, vcek, b"not a chain", at=AT)
    ask, ark = chain_certs("ask_ark_milan.pem")
    with pytest.raises(SnpVerificationError, match="must hold 2 certificates"):
        verify_snp_report(report, vcek, ark.public_bytes(Encoding.PEM), at=AT)
    with pytest.raises(SnpVerificationError, match="none of AMD's pinned roots"):
        verify_snp_report(report, vcek, chain_pem(ark, ask), at=AT)  # ARK first: wrong order


# -- tampering fails -------------------------------------------------------------------------------
SIGNED_OFFSETS = {
    "version": 0x000,
    "guest_svn": 0x004,
    "policy": 0x008,
    "policy debug bit": 0x00A,
    "family_id": 0x010,
    "vmpl": 0x030,
    "current_tcb": 0x038,
    "platform_info": 0x040,
    "author_key_en": 0x048,
    "report_data": 0x050,
    "report_data end": 0x08F,
    "measurement": 0x090,
    "measurement end": 0x0BF,
    "host_data": 0x0C0,
    "id_key_digest": 0x0E0,
    "report_id": 0x140,
    "reported_tcb": 0x180,
    "reported_tcb snp": 0x186,
    "cpuid": 0x188,
    "chip_id": 0x1A0,
    "committed_tcb": 0x1E0,
    "launch_tcb": 0x1F0,
    "reserved": 0x200,
    "last signed byte": 0x29F,
}


@pytest.mark.parametrize("sample", [milan, genoa], ids=["milan", "genoa"])
@pytest.mark.parametrize("offset", SIGNED_OFFSETS.values(), ids=SIGNED_OFFSETS.keys())
def test_a_flipped_byte_in_the_signed_region_fails(
    sample: Callable[[], tuple[bytes, bytes, bytes]], offset: int
) -> None:
    report, vcek, chain = sample()
    with pytest.raises(SnpVerificationError) as failure:
        verify_snp_report(flip(report, offset), vcek, chain, at=AT)
    assert failure.value.step == "SNP signature"


def test_signature_algorithm_flip_is_named() -> None:
    report, vcek, chain = genoa()
    with pytest.raises(SnpVerificationError, match="signature algorithm 0 is not 1"):
        verify_snp_report(flip(report, 0x034), vcek, chain, at=AT)


@pytest.mark.parametrize("offset", [0x2A0, 0x2C0, 0x2CF, 0x2E7, 0x2E8, 0x300, 0x317, 0x32F])
def test_a_flipped_byte_in_the_signature_fails(offset: int) -> None:
    report, vcek, chain = genoa()
    with pytest.raises(SnpVerificationError, match="does not verify with this VCEK"):
        verify_snp_report(flip(report, offset), vcek, chain, at=AT)


def test_a_tampered_ask_fails() -> None:
    report, vcek, _ = milan()
    ask, ark = chain_certs("ask_ark_milan.pem")
    bad_ask = flip(ask.public_bytes(Encoding.DER), len(ask.public_bytes(Encoding.DER)) - 1)
    with pytest.raises(SnpVerificationError, match="the ASK's signature does not verify"):
        verify_snp_report(report, vcek, chain_pem(bad_ask, ark), at=AT)


def test_a_vcek_with_an_altered_amd_signature_fails() -> None:
    report, vcek, chain = milan()
    # The last DER byte is in the ASK's signature over the VCEK; the VCEK's key is untouched, so
    # the report signature still verifies and only the chain can catch it.
    with pytest.raises(SnpVerificationError, match="the VCEK's signature does not verify"):
        verify_snp_report(report, flip(vcek, len(vcek) - 1), chain, at=AT)


def test_a_tampered_ark_is_not_a_pinned_root() -> None:
    report, vcek, _ = milan()
    ask, ark = chain_certs("ask_ark_milan.pem")
    der = ark.public_bytes(Encoding.DER)
    with pytest.raises(SnpVerificationError, match="none of AMD's pinned roots"):
        verify_snp_report(report, vcek, chain_pem(ask, flip(der, len(der) - 1)), at=AT)


def test_the_genoa_ask_under_the_milan_ark_fails() -> None:
    report, vcek, _ = milan()
    genoa_ask, _ = chain_certs("ask_ark_genoa.pem")
    _, milan_ark = chain_certs("ask_ark_milan.pem")
    with pytest.raises(SnpVerificationError, match="ASK was not issued by the next certificate"):
        verify_snp_report(report, vcek, chain_pem(genoa_ask, milan_ark), at=AT)


# -- validity at the verification time ---------------------------------------------------------
def test_certificates_expired_in_2035() -> None:
    at = datetime(2035, 1, 1, tzinfo=UTC)
    for sample in (milan, genoa):
        with pytest.raises(SnpVerificationError) as failure:
            verify_snp_report(*sample(), at=at)
        assert failure.value.step == "SNP certificate chain"
        assert "the VCEK is valid" in failure.value.reason
        assert "not at the verification time 2035-01-01T00:00:00Z" in failure.value.reason


def test_genoa_vcek_is_not_yet_valid_before_it_was_issued() -> None:
    with pytest.raises(SnpVerificationError, match="VCEK is valid 2026-06-28T02:12:47Z to 2033"):
        verify_snp_report(*genoa(), at=datetime(2026, 1, 1, tzinfo=UTC))


def test_milan_verifies_at_the_ends_of_its_window_and_not_past_them() -> None:
    verify_snp_report(*milan(), at=datetime(2029, 9, 24, 0, 55, 28, tzinfo=UTC))
    with pytest.raises(SnpVerificationError, match="not at the verification time"):
        verify_snp_report(*milan(), at=datetime(2029, 9, 24, 0, 55, 29, tzinfo=UTC))


# -- the VCEK's extensions -----------------------------------------------------------------------
def test_vcek_for_another_chip_fails() -> None:
    report, vcek, _ = genoa()
    parsed = dataclasses.replace(parse_snp_report(report), chip_id=bytes(64))
    with pytest.raises(SnpVerificationError) as failure:
        check_vcek_extensions(parsed, load_vcek(vcek))
    assert failure.value.step == "SNP VCEK extensions"
    assert "VCEK is for chip 1af1aa6c1f56037a" in failure.value.reason
    assert "report is from chip 0000000000000000" in failure.value.reason


def test_vcek_for_another_tcb_fails_naming_both_values() -> None:
    report, vcek, _ = genoa()
    parsed = parse_snp_report(report)
    newer = TcbVersion.decode(parsed.reported_tcb.raw + (1 << 48), "Genoa")  # snp 23 -> 24
    with pytest.raises(SnpVerificationError, match="snp 23 in the VCEK, 24 in the report"):
        check_vcek_extensions(dataclasses.replace(parsed, reported_tcb=newer), load_vcek(vcek))


def test_extensions_of_the_real_vceks_match() -> None:
    for sample in (milan, genoa):
        report, vcek, _ = sample()
        check_vcek_extensions(parse_snp_report(report), load_vcek(vcek))


def test_a_non_vcek_certificate_is_refused_by_the_extension_check() -> None:
    report, _, _ = milan()
    ask, _ = chain_certs("ask_ark_milan.pem")
    with pytest.raises(SnpVerificationError, match="subject CN SEV-Milan, not SEV-VCEK"):
        check_vcek_extensions(parse_snp_report(report), ask)


def test_a_turin_report_needs_the_fmc_extension() -> None:
    report, vcek, _ = genoa()
    turin = parse_snp_report(report, "Turin")
    as_turin = dataclasses.replace(
        turin, reported_tcb=TcbVersion.decode(turin.reported_tcb.raw, "Turin")
    )
    with pytest.raises(
        SnpVerificationError, match=r"no fmc TCB extension \(1.3.6.1.4.1.3704.1.3.9\)"
    ):
        check_vcek_extensions(as_turin, load_vcek(vcek))
