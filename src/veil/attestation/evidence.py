"""The evidence bundle a node hands out, and the report_data binding (docs/PROTOCOL.md section 3).

One bundle per node: the CPU TEE's evidence (a TDX quote or an SEV-SNP report), the evidence of
every confidential GPU, the node's public keys, and the release manifest the node claims to run.
``report_data`` is the 64 bytes the CPU TEE signs into its report. Veil fills it with::

    gpu_nonce   = SHA-256(b"veil gpu nonce" || x25519 || ed25519 || nonce)
    gpu_digest  = SHA-256(b"veil gpus" || for each GPU: u32 len(report) || report
                                                   || u32 len(cert_chain) || cert_chain)
    report_data = SHA-512(b"veil-v2 report" || x25519 || ed25519 || gpu_digest || nonce)

or, for a bundle that carries the node's veil-v3 post-quantum key (``kem_public_key``, the
ML-KEM-768 + X25519 public key, 1216 bytes)::

    report_data = SHA-512(b"veil-v3 report" || x25519 || ed25519 || SHA-256(kem_public_key)
                          || gpu_digest || nonce)

so a verified CPU report vouches for exactly one encryption key (with v3: one of each KEM), one
signing key and the exact GPU evidence beside it, and (through the nonce) for having been produced after the verifier chose the
nonce. Each GPU signs ``gpu_nonce``, so its report is fresh and made for these keys too: nobody can
pair a genuine GPU report with a foreign VM. Keys and digests have fixed sizes, so the
concatenation is unambiguous even though the nonce's length varies.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

from veil.wire.envelopes import b64decode, b64encode

REPORT_DATA_SIZE = 64
KEY_SIZE = 32
NONCE_MIN_SIZE = 16
NONCE_MAX_SIZE = 64
REPORT_DATA_LABEL = b"veil-v2 report"
REPORT_DATA_LABEL_V3 = b"veil-v3 report"
KEM_PUBLIC_KEY_SIZE = 1184 + 32  # ML-KEM-768's public key, then X25519's (X-Wing)
GPU_NONCE_LABEL = b"veil gpu nonce"
GPU_DIGEST_LABEL = b"veil gpus"
NO_TEE_WARNING = "no TEE: development only"
BINDING_FORMULA_V2 = 'SHA-512("veil-v2 report" || x25519 || ed25519 || gpu_digest || nonce)'
BINDING_FORMULA_V3 = (
    'SHA-512("veil-v3 report" || x25519 || ed25519 || SHA-256(kem_public_key) || gpu_digest '
    "|| nonce)"
)

EvidenceFormat = Literal["tdx", "sev-snp", "nvidia", "none"]
FORMATS: tuple[EvidenceFormat, ...] = ("tdx", "sev-snp", "nvidia", "none")


class AttestationError(Exception):
    """Base class of every attestation failure; messages never carry secret material."""


class EvidenceError(AttestationError, ValueError):
    """Wrong sizes or an inconsistent evidence document."""


def _check_size(name: str, value: bytes, low: int, high: int | None = None) -> None:
    high = low if high is None else high
    if not low <= len(value) <= high:
        want = f"{low}" if low == high else f"{low} to {high}"
        raise EvidenceError(f"{name} must be {want} bytes, got {len(value)}")


def _check_keys(x25519_public_key: bytes, ed25519_public_key: bytes, nonce: bytes) -> None:
    _check_size("x25519_public_key", x25519_public_key, KEY_SIZE)
    _check_size("ed25519_public_key", ed25519_public_key, KEY_SIZE)
    _check_size("nonce", nonce, NONCE_MIN_SIZE, NONCE_MAX_SIZE)


def gpu_nonce(x25519_public_key: bytes, ed25519_public_key: bytes, nonce: bytes) -> bytes:
    """The 32-byte nonce each GPU signs: fresh (the verifier's nonce) and bound to both keys."""
    _check_keys(x25519_public_key, ed25519_public_key, nonce)
    return hashlib.sha256(GPU_NONCE_LABEL + x25519_public_key + ed25519_public_key + nonce).digest()


def gpu_digest(gpus: Sequence[tuple[bytes, bytes]]) -> bytes:
    """SHA-256 over every GPU's (report, certificate chain), length-prefixed, in order."""
    digest = hashlib.sha256(GPU_DIGEST_LABEL)
    for report, chain in gpus:
        digest.update(struct.pack(">I", len(report)) + report)
        digest.update(struct.pack(">I", len(chain)) + chain)
    return digest.digest()


def report_data(
    x25519_public_key: bytes,
    ed25519_public_key: bytes,
    nonce: bytes,
    gpus_digest: bytes | None = None,
    kem_public_key: bytes | None = None,
) -> bytes:
    """The 64 bytes that bind the node keys, the GPU evidence and the verifier's nonce: the
    veil-v3 formula when ``kem_public_key`` is given, else the v2 one (module docstring)."""
    _check_keys(x25519_public_key, ed25519_public_key, nonce)
    bound_gpus = gpu_digest(()) if gpus_digest is None else gpus_digest
    _check_size("gpu_digest", bound_gpus, 32)
    parts: tuple[bytes, ...]
    if kem_public_key is None:
        parts = (REPORT_DATA_LABEL, x25519_public_key, ed25519_public_key, bound_gpus, nonce)
    else:
        _check_size("kem_public_key", kem_public_key, KEM_PUBLIC_KEY_SIZE)
        parts = (
            REPORT_DATA_LABEL_V3,
            x25519_public_key,
            ed25519_public_key,
            hashlib.sha256(kem_public_key).digest(),
            bound_gpus,
            nonce,
        )
    digest = hashlib.sha512()
    for part in parts:
        digest.update(part)
    return digest.digest()


def _decoder(low: int | None = None, high: int | None = None) -> Callable[[object], bytes]:
    def decode(value: object) -> bytes:
        raw = b64decode(value)
        if low is not None:
            _check_size("value", raw, low, high)
        return raw

    return decode


_AS_B64 = PlainSerializer(b64encode, return_type=str, when_used="always")
_B64_SCHEMA = WithJsonSchema({"type": "string", "contentEncoding": "base64"})

ReportData64 = Annotated[bytes, BeforeValidator(_decoder(REPORT_DATA_SIZE)), _AS_B64, _B64_SCHEMA]
PublicKey32 = Annotated[bytes, BeforeValidator(_decoder(KEY_SIZE)), _AS_B64, _B64_SCHEMA]
Nonce = Annotated[
    bytes, BeforeValidator(_decoder(NONCE_MIN_SIZE, NONCE_MAX_SIZE)), _AS_B64, _B64_SCHEMA
]
Blob = Annotated[bytes, BeforeValidator(_decoder()), _AS_B64, _B64_SCHEMA]
KemPublicKey = Annotated[
    bytes, BeforeValidator(_decoder(KEM_PUBLIC_KEY_SIZE)), _AS_B64, _B64_SCHEMA
]


class GpuEvidence(BaseModel):
    """One confidential GPU's evidence: its SPDM measurement report (over ``gpu_nonce``) and
    device certificate chain; optionally the vendor-signed RIMs and OCSP replies the node
    fetched (vendor-signed, so a verifier may use them under the same rules as its own)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    arch: Literal["HOPPER", "BLACKWELL"] = "HOPPER"
    report: Blob
    cert_chain: str
    rims: tuple[Blob, ...] = ()
    ocsp: tuple[Blob, ...] = ()


class ReleaseEvidence(BaseModel):
    """The release the node claims to run: the manifest's exact bytes and its signature (an
    Ed25519 signature document or a Sigstore bundle). The verifier trusts only the signers its
    own policy names; the node chooses nothing here but which release to show."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    manifest: Blob | None = None
    signature: dict[str, Any] | None = None
    sigstore_bundle: dict[str, Any] | None = None


class Evidence(BaseModel):
    """What ``GET /v1/attestation`` returns: the node's evidence bundle for the caller's nonce.

    ``quote`` is the CPU TEE's raw report (a TDX quote or an SEV-SNP attestation report from
    configfs-tsm). Optional verification material the node attached: ``collateral`` (TDX, the
    dcap-qvl ``QuoteCollateralV3`` JSON object), ``vcek`` and ``cert_chain`` (SNP, as AMD's KDS
    serves them), ``event_log`` (dstack-style runtime measurements into RTMRs). ``gpus`` holds
    each GPU's evidence, ``release`` the release manifest, ``kem_public_key`` the node's current
    veil-v3 post-quantum key (absent from bundles of nodes without one). Structure is checked here; whether
    anything is true is for ``veil.attestation.report.verify_evidence`` to say.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: EvidenceFormat
    report_data: ReportData64
    nonce: Nonce
    x25519_public_key: PublicKey32
    ed25519_public_key: PublicKey32
    kem_public_key: KemPublicKey | None = None
    quote: Blob | None = None
    collateral: dict[str, Any] | None = None
    vcek: Blob | None = None
    cert_chain: str | None = None
    event_log: list[dict[str, Any]] | None = None
    gpus: tuple[GpuEvidence, ...] = ()
    release: ReleaseEvidence | None = None
    warning: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Evidence:
        if self.format == "none":
            if self.quote is not None:
                raise ValueError("evidence of format 'none' cannot carry a quote")
        elif self.quote is None or not self.quote:
            raise ValueError(f"evidence of format {self.format!r} must carry a quote")
        return self

    def gpus_digest(self) -> bytes:
        return gpu_digest([(g.report, g.cert_chain.encode()) for g in self.gpus])

    def gpu_nonce(self) -> bytes:
        return gpu_nonce(self.x25519_public_key, self.ed25519_public_key, self.nonce)

    def expected_report_data(self) -> bytes:
        """What ``report_data`` must be if the bundle is honest about its keys, GPUs and nonce
        (the v3 formula when it carries a post-quantum key)."""
        return report_data(
            self.x25519_public_key,
            self.ed25519_public_key,
            self.nonce,
            self.gpus_digest(),
            self.kem_public_key,
        )

    @property
    def binding_formula(self) -> str:
        """The report_data formula this bundle is checked against, for people to read."""
        return BINDING_FORMULA_V2 if self.kem_public_key is None else BINDING_FORMULA_V3

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A bundle without a post-quantum key serializes exactly as before veil-v3 existed.
        data = handler(self)
        if isinstance(data, dict) and data.get("kem_public_key", "") is None:
            del data["kem_public_key"]
        return data

    def to_json(self) -> str:
        return self.model_dump_json()
