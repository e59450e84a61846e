"""Reference: how two peers bind CPU evidence, GPU evidence and their keys, recomputed exactly.

Tinfoil's v3 attestation documents (tinfoil-v3/) and NEAR AI's dstack report (tdx/) are genuine.
Each TEE signs 64 bytes of report_data; these tests recompute them from the document's inputs,
byte for byte, so the composition is documented by something that fails if it is wrong:

- Tinfoil TDX + H100: SHA-256(tls_key_fp || hpke_key || nonce || gpu_evidence_hash) || 32 zeros,
  every field hex-decoded to raw bytes (32 each); tls_key_fp = SHA-256(DER SubjectPublicKeyInfo of
  the TLS key); gpu_evidence_hash = SHA-256 of the exact ``gpu`` JSON bytes. The GPU evidence
  carries the same nonce, so one nonce ties CPU and GPU to one request.
- Tinfoil SEV-SNP (no GPU): SHA-256(tls_key_fp || hpke_key || nonce) || 32 zeros.
- NEAR AI dstack: SHA-256(signing_public_key || tls_cert_fingerprint) || request_nonce, raw bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from tests.attestation import SAMPLES
from veil.attestation.abi_tdx import parse_tdx_quote

TINFOIL = SAMPLES / "tinfoil-v3"
TDX_DOC = TINFOIL / "gemma4-31b_tdx_h100_attestation_v3.json"
TDX_SPKI = TINFOIL / "gemma4-31b_peer_spki.der"
SNP_DOC = TINFOIL / "router_snp_attestation_v3.json"
SNP_SPKI = TINFOIL / "router_peer_spki.der"
GPU_JSON = SAMPLES / "nvidia" / "teep_tinfoil_gpu_evidence.json"
TDX_QUOTE = SAMPLES / "tdx" / "teep_tinfoil_tdx_quote.bin"
SNP_REPORT = SAMPLES / "sev-snp" / "teep_tinfoil_genoa_report.bin"
DSTACK_QUOTE = SAMPLES / "tdx" / "neardirect_dstack_tdx_quote.bin"
DSTACK_INFO = SAMPLES / "tdx" / "neardirect_dstack_info.json"

GPU_EVIDENCE_HASH = "580ca6c7d7510dccc05551ed04ea1ce621d3c89d1ac02455871b38140c967fba"

# AMD SEV-SNP ABI, ATTESTATION_REPORT: REPORT_DATA is bytes 0x50..0x8F of the 1184-byte report.
SNP_REPORT_SIZE = 1184
SNP_REPORT_DATA = slice(0x50, 0x90)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def load(path: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def flip(data: bytes, at: int = 0) -> bytes:
    raw = bytearray(data)
    raw[at] ^= 0x01
    return bytes(raw)


def snp_report_data(report: bytes) -> bytes:
    assert len(report) == SNP_REPORT_SIZE
    return report[SNP_REPORT_DATA]


# -- the formulas, written once ------------------------------------------------------------------
def tinfoil_tdx_report_data(spki: bytes, hpke_key: bytes, nonce: bytes, gpu_json: bytes) -> bytes:
    return sha256(sha256(spki) + hpke_key + nonce + sha256(gpu_json)) + bytes(32)


def tinfoil_snp_report_data(spki: bytes, hpke_key: bytes, nonce: bytes) -> bytes:
    return sha256(sha256(spki) + hpke_key + nonce) + bytes(32)


def dstack_report_data(signing_key: bytes, tls_fingerprint: bytes, nonce: bytes) -> bytes:
    return sha256(signing_key + tls_fingerprint) + nonce


def tdx_inputs() -> dict[str, bytes]:
    fields = load(TDX_DOC)["report_data"]
    return {
        "spki": TDX_SPKI.read_bytes(),
        "hpke_key": bytes.fromhex(fields["hpke_key"]),
        "nonce": bytes.fromhex(fields["nonce"]),
        "gpu_json": GPU_JSON.read_bytes(),
    }


def snp_inputs() -> dict[str, bytes]:
    fields = load(SNP_DOC)["report_data"]
    return {
        "spki": SNP_SPKI.read_bytes(),
        "hpke_key": bytes.fromhex(fields["hpke_key"]),
        "nonce": bytes.fromhex(fields["nonce"]),
    }


def dstack_inputs() -> dict[str, bytes]:
    document = load(DSTACK_INFO)
    return {
        "signing_key": bytes.fromhex(document["signing_public_key"]),
        "tls_fingerprint": bytes.fromhex(document["tls_cert_fingerprint"]),
        "nonce": bytes.fromhex(document["request_nonce"]),
    }


def tdx_signed() -> bytes:
    return parse_tdx_quote(TDX_QUOTE.read_bytes()).report_data


# -- Tinfoil, TDX + H100 -------------------------------------------------------------------------
def test_tinfoil_tdx_document_fields() -> None:
    document = load(TDX_DOC)
    fields = document["report_data"]
    assert document["cpu"]["platform"] == "tdx"
    assert sha256(TDX_SPKI.read_bytes()).hex() == fields["tls_key_fp"]
    assert base64.b64decode(document["cpu"]["report"]) == TDX_QUOTE.read_bytes()
    # The GPU evidence committed to is the exact bytes of the document's gpu member.
    assert sha256(GPU_JSON.read_bytes()).hex() == fields["gpu_evidence_hash"] == GPU_EVIDENCE_HASH
    assert json.loads(GPU_JSON.read_bytes()) == document["gpu"]
    # Re-serialising a parsed copy is not how one gets those bytes in general; here it happens
    # to give them back (compact separators, key order kept), which the hash would reveal.
    assert json.dumps(document["gpu"], separators=(",", ":")).encode() == GPU_JSON.read_bytes()
    # One nonce for the CPU quote and every GPU report.
    assert all(e["nonce"] == fields["nonce"] for e in document["gpu"]["evidences"])


def test_tinfoil_tdx_report_data_binds_tls_hpke_nonce_and_gpu() -> None:
    signed = tdx_signed()
    assert signed == tinfoil_tdx_report_data(**tdx_inputs())
    fields = load(TDX_DOC)["report_data"]
    spelled = sha256(
        b"".join(
            bytes.fromhex(fields[k])
            for k in ("tls_key_fp", "hpke_key", "nonce", "gpu_evidence_hash")
        )
    )
    assert signed == spelled + bytes(32)
    # The fields are hashed as raw bytes, not as their hex text.
    as_text = sha256(
        "".join(
            fields[k] for k in ("tls_key_fp", "hpke_key", "nonce", "gpu_evidence_hash")
        ).encode()
    )
    assert signed[:32] != as_text


@pytest.mark.parametrize(
    ("name", "at"), [("spki", 60), ("hpke_key", 0), ("nonce", 31), ("gpu_json", 100)]
)
def test_tinfoil_tdx_binding_fails_for_a_changed_byte(name: str, at: int) -> None:
    inputs = tdx_inputs()
    inputs[name] = flip(inputs[name], at)
    assert tinfoil_tdx_report_data(**inputs) != tdx_signed()


# -- Tinfoil, SEV-SNP ----------------------------------------------------------------------------
def test_tinfoil_snp_report_data_binds_tls_hpke_and_nonce() -> None:
    document = load(SNP_DOC)
    fields = document["report_data"]
    assert document["cpu"]["platform"] == "sev-snp"
    assert "gpu" not in document and "gpu_evidence_hash" not in fields
    assert sha256(SNP_SPKI.read_bytes()).hex() == fields["tls_key_fp"]
    report = SNP_REPORT.read_bytes()
    assert base64.b64decode(document["cpu"]["report"]) == report
    assert snp_report_data(report) == tinfoil_snp_report_data(**snp_inputs())


@pytest.mark.parametrize(("name", "at"), [("spki", 60), ("hpke_key", 31), ("nonce", 0)])
def test_tinfoil_snp_binding_fails_for_a_changed_byte(name: str, at: int) -> None:
    inputs = snp_inputs()
    inputs[name] = flip(inputs[name], at)
    assert tinfoil_snp_report_data(**inputs) != snp_report_data(SNP_REPORT.read_bytes())


# -- NEAR AI, dstack -----------------------------------------------------------------------------
def test_dstack_report_data_binds_signing_key_tls_fingerprint_and_nonce() -> None:
    signed = parse_tdx_quote(DSTACK_QUOTE.read_bytes()).report_data
    assert signed == dstack_report_data(**dstack_inputs())
    document = load(DSTACK_INFO)
    assert document["signing_algo"] == "ed25519"
    assert signed[32:].hex() == document["request_nonce"]


@pytest.mark.parametrize(
    ("name", "at"), [("signing_key", 0), ("tls_fingerprint", 31), ("nonce", 5)]
)
def test_dstack_binding_fails_for_a_changed_byte(name: str, at: int) -> None:
    inputs = dstack_inputs()
    inputs[name] = flip(inputs[name], at)
    signed = parse_tdx_quote(DSTACK_QUOTE.read_bytes()).report_data
    assert dstack_report_data(**inputs) != signed


def test_signed_report_data_changes_with_the_quote() -> None:
    """The comparison is against the quote's own bytes: a flipped report_data byte is seen."""
    raw = bytearray(TDX_QUOTE.read_bytes())
    raw[48 + 520] ^= 0x01  # quote v4: header (48), then report_data at offset 520 of the TD report
    assert parse_tdx_quote(bytes(raw)).report_data != tinfoil_tdx_report_data(**tdx_inputs())
