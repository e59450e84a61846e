"""The fields of an AMD SEV-SNP ATTESTATION_REPORT, decoded from its fixed little-endian layout.

There is no maintained Python reader for SNP reports, and the structure is a flat table of
fixed-size fields, so it is read here with ``struct`` after checking the size and version first.
Layout, from AMD's "SEV Secure Nested Paging Firmware ABI Specification" (publication 56860),
table "ATTESTATION_REPORT Structure"; versions 2 and 3 are both 1184 bytes::

    0x000 VERSION u32        0x004 GUEST_SVN u32      0x008 POLICY u64
    0x010 FAMILY_ID (16)     0x020 IMAGE_ID (16)      0x030 VMPL u32      0x034 SIGNATURE_ALGO u32
    0x038 CURRENT_TCB u64    0x040 PLATFORM_INFO u64  0x048 flags u32 (AUTHOR_KEY_EN, MASK_CHIP_KEY,
                                                            SIGNING_KEY)
    0x050 REPORT_DATA (64)   0x090 MEASUREMENT (48)   0x0C0 HOST_DATA (32)
    0x0E0 ID_KEY_DIGEST (48) 0x110 AUTHOR_KEY_DIGEST (48)
    0x140 REPORT_ID (32)     0x160 REPORT_ID_MA (32)  0x180 REPORTED_TCB u64
    0x188 CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (u8 each; version 3 only, reserved in version 2)
    0x1A0 CHIP_ID (64)       0x1E0 COMMITTED_TCB u64
    0x1E8 CURRENT_BUILD, _MINOR, _MAJOR (u8)         0x1EC COMMITTED_BUILD, _MINOR, _MAJOR (u8)
    0x1F0 LAUNCH_TCB u64     0x1F8..0x29F reserved
    0x2A0 SIGNATURE: R (72, little-endian) | S (72, little-endian) | reserved

The signature (ECDSA P-384 with SHA-384, by the VCEK) covers bytes 0x000-0x29F.

A TCB_VERSION is a u64 whose byte layout depends on the processor: Milan and Genoa put the boot
loader SVN in byte 0, TEE in byte 1, SNP in byte 6 and microcode in byte 7; Turin adds an FMC byte
and puts FMC, boot loader, TEE, SNP in bytes 0-3 and microcode in byte 7. Version 2 reports do not
name their processor, but Turin firmware writes version 3 or later, so a version 2 report is read
with the Milan/Genoa layout; a version 3 report names its CPU family and model.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from veil.attestation.evidence import AttestationError

REPORT_SIZE = 1184
SUPPORTED_VERSIONS = (2, 3)
SIGNED_SIZE = 0x2A0
SIGNATURE_R_OFFSET = 0x2A0
SIGNATURE_S_OFFSET = 0x2E8
SIGNATURE_COMPONENT_SIZE = 72
MEASUREMENT_SIZE = 48
REPORT_DATA_SIZE = 64
CHIP_ID_SIZE = 64
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1

PRODUCTS = ("Milan", "Genoa", "Turin")

# Guest POLICY bits (ABI spec, "Guest Policy Structure").
POLICY_SMT = 1 << 16
POLICY_RESERVED_ONE = 1 << 17  # must be 1
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20

# The flags word at 0x048.
FLAG_AUTHOR_KEY_EN = 1 << 0
FLAG_MASK_CHIP_KEY = 1 << 1
SIGNING_KEY_SHIFT = 2
SIGNING_KEY_MASK = 0b111
SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "none"}

# PLATFORM_INFO bits.
PLATFORM_SMT_EN = 1 << 0
PLATFORM_TSME_EN = 1 << 1


class SnpReportFormatError(AttestationError, ValueError):
    """Bytes that are not an SEV-SNP attestation report of a version this module reads."""


@dataclass(frozen=True)
class TcbVersion:
    """One decoded TCB_VERSION: the security version of each firmware component."""

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin only

    @classmethod
    def decode(cls, raw: int, product: str | None) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if product == "Turin":
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def components(self) -> dict[str, int]:
        """Component name -> SVN, the names ``min_tcb`` and the VCEK's TCB extensions use."""
        parts = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            parts["fmc"] = self.fmc
        return parts

    def __str__(self) -> str:
        return " / ".join(f"{name} {value}" for name, value in self.components().items())


@dataclass(frozen=True)
class SnpPolicy:
    """The guest policy the hypervisor launched the VM with (what the firmware enforces)."""

    raw: int

    @property
    def abi_minor(self) -> int:
        return self.raw & 0xFF

    @property
    def abi_major(self) -> int:
        return (self.raw >> 8) & 0xFF

    @property
    def smt_allowed(self) -> bool:
        return bool(self.raw & POLICY_SMT)

    @property
    def migrate_ma_allowed(self) -> bool:
        return bool(self.raw & POLICY_MIGRATE_MA)

    @property
    def debug_allowed(self) -> bool:
        return bool(self.raw & POLICY_DEBUG)

    @property
    def single_socket(self) -> bool:
        return bool(self.raw & POLICY_SINGLE_SOCKET)

    def __str__(self) -> str:
        return (
            f"0x{self.raw:x} (abi >= {self.abi_major}.{self.abi_minor}, "
            f"debug {'allowed' if self.debug_allowed else 'off'}, "
            f"migration agent {'allowed' if self.migrate_ma_allowed else 'off'}, "
            f"smt {'allowed' if self.smt_allowed else 'off'}, "
            f"single socket {'required' if self.single_socket else 'not required'})"
        )


@dataclass(frozen=True)
class SnpReport:
    """An SEV-SNP attestation report, every field Veil reads, plus the signed bytes."""

    version: int
    guest_svn: int
    policy: SnpPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: str  # "VCEK", "VLEK", "none" or "reserved(n)"
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_family: int | None  # version 3 only
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_version: tuple[int, int, int]  # firmware (major, minor, build)
    committed_version: tuple[int, int, int]
    launch_tcb: TcbVersion
    product: str | None  # read from the CPUID fields (version 3), else as given to the parser
    signed: bytes  # bytes 0x000-0x29F, what the VCEK signs
    signature_r: int
    signature_s: int

    def reported_tcb_dict(self) -> dict[str, int]:
        """REPORTED_TCB as component -> SVN: what a KDS VCEK request and ``min_tcb`` name."""
        return self.reported_tcb.components()


def product_from_cpuid(family: int, model: int) -> str | None:
    """The AMD KDS product name for a CPUID family and model (None if not an SNP product)."""
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:  # Genoa, Genoa-X, Bergamo, Siena
            return "Genoa"
    if family == 0x1A and model <= 0x1F:
        return "Turin"
    return None


def _check_product(product: str | None) -> str | None:
    if product is None:
        return None
    for known in PRODUCTS:
        if product.lower() == known.lower():
            return known
    raise SnpReportFormatError(
        f"unknown SEV-SNP product {product!r} (known: {', '.join(PRODUCTS)})"
    )


def parse_snp_report(raw: bytes, product: str | None = None) -> SnpReport:
    """Decode ``raw``; refuse anything but a 1184-byte version 2 or 3 report.

    The TCB_VERSION layout follows a version 3 report's CPUID fields; otherwise ``product``
    ("Milan", "Genoa", "Turin"), and without it the Milan/Genoa layout (see the module docstring).
    """
    raw = bytes(raw)
    if len(raw) != REPORT_SIZE:
        raise SnpReportFormatError(
            f"an SEV-SNP attestation report is {REPORT_SIZE} bytes, got {len(raw)}"
        )
    (version,) = struct.unpack_from("<I", raw, 0x000)
    if version not in SUPPORTED_VERSIONS:
        raise SnpReportFormatError(
            f"unsupported SEV-SNP report version {version} (this verifier reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    named = _check_product(product)
    cpuid: tuple[int, int, int] | None = None
    if version >= 3:
        cpuid = (raw[0x188], raw[0x189], raw[0x18A])
        # The CPUID the firmware wrote wins over the caller's word; a verifier compares the two.
        named = product_from_cpuid(cpuid[0], cpuid[1]) or named

    guest_svn, policy = struct.unpack_from("<IQ", raw, 0x004)
    vmpl, signature_algo, current_tcb, platform_info, flags = struct.unpack_from(
        "<IIQQI", raw, 0x030
    )
    (reported_tcb,) = struct.unpack_from("<Q", raw, 0x180)
    (committed_tcb,) = struct.unpack_from("<Q", raw, 0x1E0)
    (launch_tcb,) = struct.unpack_from("<Q", raw, 0x1F0)
    key = (flags >> SIGNING_KEY_SHIFT) & SIGNING_KEY_MASK

    def field(offset: int, size: int) -> bytes:
        return raw[offset : offset + size]

    def tcb(value: int) -> TcbVersion:
        return TcbVersion.decode(value, named)

    return SnpReport(
        version=version,
        guest_svn=guest_svn,
        policy=SnpPolicy(policy),
        family_id=field(0x010, 16),
        image_id=field(0x020, 16),
        vmpl=vmpl,
        signature_algo=signature_algo,
        current_tcb=tcb(current_tcb),
        platform_info=platform_info,
        author_key_en=bool(flags & FLAG_AUTHOR_KEY_EN),
        mask_chip_key=bool(flags & FLAG_MASK_CHIP_KEY),
        signing_key=SIGNING_KEYS.get(key, f"reserved({key})"),
        report_data=field(0x050, REPORT_DATA_SIZE),
        measurement=field(0x090, MEASUREMENT_SIZE),
        host_data=field(0x0C0, 32),
        id_key_digest=field(0x0E0, 48),
        author_key_digest=field(0x110, 48),
        report_id=field(0x140, 32),
        report_id_ma=field(0x160, 32),
        reported_tcb=tcb(reported_tcb),
        cpuid_family=None if cpuid is None else cpuid[0],
        cpuid_model=None if cpuid is None else cpuid[1],
        cpuid_stepping=None if cpuid is None else cpuid[2],
        chip_id=field(0x1A0, CHIP_ID_SIZE),
        committed_tcb=tcb(committed_tcb),
        current_version=(raw[0x1EA], raw[0x1E9], raw[0x1E8]),
        committed_version=(raw[0x1EE], raw[0x1ED], raw[0x1EC]),
        launch_tcb=tcb(launch_tcb),
        product=named,
        signed=raw[:SIGNED_SIZE],
        signature_r=int.from_bytes(field(SIGNATURE_R_OFFSET, SIGNATURE_COMPONENT_SIZE), "little"),
        signature_s=int.from_bytes(field(SIGNATURE_S_OFFSET, SIGNATURE_COMPONENT_SIZE), "little"),
    )


def policy_problems(
    report: SnpReport, *, allow_debug: bool = False, allow_migration_agent: bool = False
) -> list[str]:
    """Why this guest's policy is not acceptable, if it isn't (empty list: fine)."""
    problems = []
    if report.policy.debug_allowed and not allow_debug:
        problems.append(
            "the guest policy allows debugging (bit 19): the host can read and alter guest memory"
        )
    if report.policy.migrate_ma_allowed and not allow_migration_agent:
        problems.append(
            "the guest policy allows a migration agent (bit 18): another VM can export its memory"
        )
    return problems


__all__ = [
    "PRODUCTS",
    "REPORT_SIZE",
    "SnpPolicy",
    "SnpReport",
    "SnpReportFormatError",
    "TcbVersion",
    "parse_snp_report",
    "policy_problems",
    "product_from_cpuid",
]
