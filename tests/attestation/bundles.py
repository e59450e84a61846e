"""Evidence bundles for the report tests: the real TDX and Genoa samples wrapped as Veil bundles
with keys of our own, NVIDIA's real GPU sample, and a post-quantum key's worth of bytes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.attestation import SAMPLES, collateral, quote_bytes
from veil.attestation.abi_tdx import parse_tdx_quote
from veil.attestation.evidence import Evidence, GpuEvidence

X = bytes(range(32))
ED = bytes(range(100, 132))
NONCE = bytes(range(200, 232))
KEM = bytes(range(256)) * 4 + bytes(range(192))  # the size of an ML-KEM-768 + X25519 public key
OTHER_KEM = bytes(reversed(KEM))

SNP = SAMPLES / "sev-snp"
GENOA_MEASUREMENT = (
    "7adcb574b1e22ab579f3c883da3e5b6e632ef06775dd13fdb16850640135a5f6"
    "3c7eb8741fe340c672edaf241bd1ed7c"
)
SNP_AT = datetime(2026, 6, 29, 3, 0, tzinfo=UTC)


def sample_evidence(**changes: Any) -> Evidence:
    """The real quote wrapped as if a node had sent it with our keys: its report_data is the
    quote's own, which commits to somebody else's keys."""
    raw = quote_bytes()
    fields: dict[str, Any] = {
        "format": "tdx",
        "report_data": parse_tdx_quote(raw).report_data,
        "nonce": NONCE,
        "x25519_public_key": X,
        "ed25519_public_key": ED,
        "quote": raw,
        "collateral": collateral(),
    }
    fields.update(changes)
    return Evidence.model_validate(fields)


def outcomes(report: Any) -> dict[str, str]:
    return {step.name: step.outcome for step in report.steps}


def genoa_evidence(**changes: Any) -> Evidence:
    """Tinfoil's genuine Genoa report, VCEK and AMD chain, wrapped as a Veil bundle (its
    report_data commits to Tinfoil's keys, not to X / ED)."""
    raw = (SNP / "teep_tinfoil_genoa_report.bin").read_bytes()
    fields: dict[str, Any] = {
        "format": "sev-snp",
        "report_data": raw[0x50:0x90],
        "nonce": NONCE,
        "x25519_public_key": X,
        "ed25519_public_key": ED,
        "quote": raw,
        "vcek": (SNP / "teep_genoa_vcek.der").read_bytes(),
        "cert_chain": (SNP / "ask_ark_genoa.pem").read_text(),
    }
    fields.update(changes)
    return Evidence.model_validate(fields)


class SampleGpu:
    """A stand-in for NVIDIA's SDK (no GPU here): hands out NVIDIA's genuine sample report."""

    def get_gpu_evidence(self, nonce: bytes) -> list[GpuEvidence]:
        report = bytes.fromhex(
            (SAMPLES / "nvidia" / "nvtrust_hopperAttestationReport.txt").read_text().strip()
        )
        chain = (SAMPLES / "nvidia" / "nvtrust_hopperCertChain.txt").read_text()
        return [GpuEvidence(report=report, cert_chain=chain)]
