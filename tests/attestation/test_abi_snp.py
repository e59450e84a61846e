"""SEV-SNP report parsing, on AMD's real Milan (v2) and Genoa (v3) sample reports."""

from __future__ import annotations

import pytest

from tests.attestation import SAMPLES
from veil.attestation.abi_snp import (
    REPORT_SIZE,
    SnpReportFormatError,
    TcbVersion,
    parse_snp_report,
    policy_problems,
    product_from_cpuid,
)
from veil.attestation.evidence import AttestationError

SNP = SAMPLES / "sev-snp"
MILAN_MEASUREMENT = (
    "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
    "6bdf8a9ece31a5a608eb0cf2e4872b01"
)
GENOA_MEASUREMENT = (
    "7adcb574b1e22ab579f3c883da3e5b6e632ef06775dd13fdb16850640135a5f6"
    "3c7eb8741fe340c672edaf241bd1ed7c"
)
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
    "581a0db248b0a77aecec196accc52973",
    16,
)


def milan() -> bytes:
    return (SNP / "gosevguest_report.bin").read_bytes()


def genoa() -> bytes:
    return (SNP / "teep_tinfoil_genoa_report.bin").read_bytes()


def with_bit(raw: bytes, offset: int, bit: int) -> bytes:
    altered = bytearray(raw)
    altered[offset + bit // 8] ^= 1 << (bit % 8)
    return bytes(altered)


def test_milan_v2_report_fields() -> None:
    report = parse_snp_report(milan())
    assert report.version == 2
    assert report.guest_svn == 0 and report.vmpl == 0
    assert report.signature_algo == 1 and report.signing_key == "VCEK"
    assert not report.author_key_en and not report.mask_chip_key
    assert report.policy.raw == 0xB0000
    assert report.policy.debug_allowed and report.policy.smt_allowed
    assert not report.policy.migrate_ma_allowed and not report.policy.single_socket
    assert (report.policy.abi_major, report.policy.abi_minor) == (0, 0)
    assert report.measurement.hex() == MILAN_MEASUREMENT
    assert report.report_data == bytes.fromhex("0102030405") + bytes(59)
    for tcb in (report.reported_tcb, report.current_tcb, report.committed_tcb, report.launch_tcb):
        assert tcb.components() == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
        assert tcb.raw == 0x4405000000000002
    assert report.platform_info == 1
    assert report.current_version == (1, 49, 3)
    assert report.cpuid_family is None and report.product is None  # v2 names no CPU
    assert len(report.chip_id) == 64 and report.chip_id.hex().startswith("3ac3fe21e13fb099")
    assert report.family_id == bytes(16) and report.image_id == bytes(16)
    assert len(report.host_data) == 32 and len(report.id_key_digest) == 48
    assert len(report.author_key_digest) == 48 and len(report.report_id) == 32


def test_signed_region_and_little_endian_signature() -> None:
    raw = milan()
    report = parse_snp_report(raw)
    assert report.signed == raw[:0x2A0]
    assert report.signature_r == int.from_bytes(raw[0x2A0:0x2E8], "little")
    assert report.signature_s == int.from_bytes(raw[0x2E8:0x330], "little")
    # Read big-endian, r would be far above the curve order: the little-endian reading is the
    # one that yields values an ECDSA P-384 signature can have.
    assert 0 < report.signature_r < P384_ORDER and 0 < report.signature_s < P384_ORDER
    assert int.from_bytes(raw[0x2A0:0x2E8], "big") > P384_ORDER


def test_genoa_v3_report_fields_and_cpuid() -> None:
    report = parse_snp_report(genoa())
    assert report.version == 3
    assert report.policy.raw == 0x30000 and not report.policy.debug_allowed
    assert (report.cpuid_family, report.cpuid_model, report.cpuid_stepping) == (0x19, 0x11, 1)
    assert report.product == "Genoa"
    assert report.reported_tcb.components() == {
        "bootloader": 10,
        "tee": 0,
        "snp": 23,
        "microcode": 84,
    }
    assert report.reported_tcb.fmc is None
    assert report.reported_tcb_dict() == report.reported_tcb.components()
    assert report.measurement.hex() == GENOA_MEASUREMENT
    assert report.report_data[32:] == bytes(32)
    assert report.current_version == (1, 55, 40)
    assert report.platform_info == 0x27


def test_turin_tcb_layout_has_an_fmc_byte() -> None:
    raw = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 5]), "little")
    turin = TcbVersion.decode(raw, "Turin")
    assert (turin.fmc, turin.bootloader, turin.tee, turin.snp, turin.microcode) == (1, 2, 3, 4, 5)
    assert turin.components()["fmc"] == 1
    genoa_layout = TcbVersion.decode(raw, "Genoa")
    assert (genoa_layout.bootloader, genoa_layout.tee, genoa_layout.snp) == (1, 2, 0)
    assert genoa_layout.microcode == 5 and "fmc" not in genoa_layout.components()


def test_a_v3_report_from_a_turin_cpu_is_decoded_with_the_turin_layout() -> None:
    altered = bytearray(genoa())
    altered[0x188:0x18A] = bytes([0x1A, 0x02])  # CPUID family 0x1A model 0x02: Turin
    report = parse_snp_report(bytes(altered))
    assert report.product == "Turin"
    # The same u64 (0x541700000000000a) read with Turin's byte positions.
    assert report.reported_tcb.fmc == 10 and report.reported_tcb.bootloader == 0
    assert report.reported_tcb.microcode == 84


def test_the_cpuid_wins_over_the_callers_product_and_v2_follows_the_caller() -> None:
    assert parse_snp_report(genoa(), "Milan").product == "Genoa"
    assert parse_snp_report(milan(), "milan").product == "Milan"
    assert parse_snp_report(milan(), "Turin").reported_tcb.fmc == 2  # Turin layout on request


def test_product_from_cpuid() -> None:
    assert product_from_cpuid(0x19, 0x01) == "Milan"
    assert product_from_cpuid(0x19, 0x11) == "Genoa"
    assert product_from_cpuid(0x19, 0xA0) == "Genoa"
    assert product_from_cpuid(0x1A, 0x02) == "Turin"
    assert product_from_cpuid(0x17, 0x31) is None  # Rome: not an SNP product KDS serves here
    assert product_from_cpuid(0x19, 0x21) is None  # a desktop part


@pytest.mark.parametrize("size", [0, 1, 0x2A0, REPORT_SIZE - 1, REPORT_SIZE + 1, 4000])
def test_wrong_sizes_are_refused_before_reading(size: int) -> None:
    raw = (milan() * 4)[:size]
    with pytest.raises(SnpReportFormatError, match=f"is 1184 bytes, got {size}$"):
        parse_snp_report(raw)


@pytest.mark.parametrize("version", [0, 1, 4, 5, 0xFFFFFFFF])
def test_unsupported_versions_are_refused(version: int) -> None:
    raw = version.to_bytes(4, "little") + milan()[4:]
    with pytest.raises(SnpReportFormatError, match=f"unsupported SEV-SNP report version {version}"):
        parse_snp_report(raw)


def test_unknown_product_is_refused() -> None:
    with pytest.raises(SnpReportFormatError, match="unknown SEV-SNP product 'Rome'"):
        parse_snp_report(milan(), "Rome")


def test_format_error_is_an_attestation_error() -> None:
    with pytest.raises(AttestationError):
        parse_snp_report(b"")
    assert issubclass(SnpReportFormatError, ValueError)


def test_real_milan_sample_allows_debug_and_is_refused_by_default() -> None:
    report = parse_snp_report(milan())
    (problem,) = policy_problems(report)
    assert "allows debugging (bit 19)" in problem
    assert policy_problems(report, allow_debug=True) == []


def test_genoa_policy_is_acceptable() -> None:
    assert policy_problems(parse_snp_report(genoa())) == []


def test_debug_bit_set_on_genoa_is_refused_unless_allowed() -> None:
    report = parse_snp_report(with_bit(genoa(), 0x008, 19))
    assert report.policy.raw == 0xB0000 and report.policy.debug_allowed
    (problem,) = policy_problems(report)
    assert "debugging" in problem
    assert policy_problems(report, allow_debug=True) == []


def test_migration_agent_bit_is_refused_unless_allowed() -> None:
    report = parse_snp_report(with_bit(genoa(), 0x008, 18))
    assert report.policy.migrate_ma_allowed and not report.policy.debug_allowed
    (problem,) = policy_problems(report)
    assert "migration agent (bit 18)" in problem
    assert policy_problems(report, allow_migration_agent=True) == []
    both = parse_snp_report(with_bit(with_bit(genoa(), 0x008, 18), 0x008, 19))
    assert len(policy_problems(both)) == 2
    assert policy_problems(both, allow_debug=True, allow_migration_agent=True) == []


def test_single_socket_and_abi_fields_decode() -> None:
    report = parse_snp_report(with_bit(with_bit(genoa(), 0x008, 20), 0x008, 8))
    assert report.policy.single_socket
    assert report.policy.abi_major == 1 and report.policy.abi_minor == 0
