"""AMD's real SEV-SNP reports, VCEKs and KDS certificate chains, for the SEV-SNP tests.

The Milan VCEK is valid 2022-09-24 to 2029-09-24, the Genoa VCEK 2026-06-28 to 2033-06-28, so
``AT`` (the day after the Genoa VCEK was issued) is inside every certificate's validity.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.attestation import SAMPLES

SNP = SAMPLES / "sev-snp"
AT = datetime(2026, 6, 29, 12, 0, tzinfo=UTC)
MILAN_MEASUREMENT = bytes.fromhex(
    "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
    "6bdf8a9ece31a5a608eb0cf2e4872b01"
)
GENOA_MEASUREMENT = bytes.fromhex(
    "7adcb574b1e22ab579f3c883da3e5b6e632ef06775dd13fdb16850640135a5f6"
    "3c7eb8741fe340c672edaf241bd1ed7c"
)
SNP_STEPS = [
    "SNP signature",
    "SNP certificate chain",
    "SNP VCEK extensions",
    "SNP policy",
    "SNP TCB",
    "measurements",
]


def read(name: str) -> bytes:
    return (SNP / name).read_bytes()


def milan() -> tuple[bytes, bytes, bytes]:
    return read("gosevguest_report.bin"), read("gosevguest_vcek.der"), read("ask_ark_milan.pem")


def genoa() -> tuple[bytes, bytes, bytes]:
    return (
        read("teep_tinfoil_genoa_report.bin"),
        read("teep_genoa_vcek.der"),
        read("ask_ark_genoa.pem"),
    )


def flip(raw: bytes, offset: int) -> bytes:
    altered = bytearray(raw)
    altered[offset] ^= 0x01
    return bytes(altered)


def chain_pem(ask: x509.Certificate | bytes, ark: x509.Certificate | bytes) -> bytes:
    """A cert_chain PEM from certificates or from (possibly altered) DER."""
    parts = []
    for cert in (ask, ark):
        der = cert if isinstance(cert, bytes) else cert.public_bytes(Encoding.DER)
        parts.append(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM))
    return b"".join(parts)


def chain_certs(name: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(read(name))
