"""The evidence document a node hands out, and the report_data binding (PROTOCOL.md section 6).

``report_data`` is the 64 bytes a TEE signs into its quote. Veil fills it with::

    SHA-512(b"veil-v1 report" || x25519_public_key || ed25519_public_key || nonce)

so a verified quote vouches for exactly one encryption key and one signing key, and (through the
nonce) for having been produced after the verifier chose that nonce. Both keys have a fixed size,
so the concatenation is unambiguous even though the nonce's length varies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from veil.protocol.envelopes import b64decode, b64encode

REPORT_DATA_SIZE = 64
KEY_SIZE = 32
NONCE_MIN_SIZE = 16
NONCE_MAX_SIZE = 64
REPORT_DATA_LABEL = b"veil-v1 report"
NO_TEE_WARNING = "no TEE: development only"

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


def report_data(x25519_public_key: bytes, ed25519_public_key: bytes, nonce: bytes) -> bytes:
    """The 64 bytes that bind both node keys and the verifier's nonce into a quote."""
    _check_size("x25519_public_key", x25519_public_key, KEY_SIZE)
    _check_size("ed25519_public_key", ed25519_public_key, KEY_SIZE)
    _check_size("nonce", nonce, NONCE_MIN_SIZE, NONCE_MAX_SIZE)
    digest = hashlib.sha512()
    for part in (REPORT_DATA_LABEL, x25519_public_key, ed25519_public_key, nonce):
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


class Evidence(BaseModel):
    """What ``GET /v1/attestation`` returns: the keys, the nonce, and the TEE's signed statement.

    ``quote`` is the raw evidence of the format (a TDX or SEV-SNP report from configfs-tsm, NVIDIA
    GPU evidence as JSON); ``collateral`` is optional verification material the node attached
    (for TDX, the dcap-qvl ``QuoteCollateralV3`` JSON object). Structure is checked here; whether
    anything is true is for ``veil.attestation.report.verify_evidence`` to say.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: EvidenceFormat
    report_data: ReportData64
    nonce: Nonce
    x25519_public_key: PublicKey32
    ed25519_public_key: PublicKey32
    quote: Blob | None = None
    collateral: dict[str, Any] | None = None
    warning: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Evidence:
        if self.format == "none":
            if self.quote is not None:
                raise ValueError("evidence of format 'none' cannot carry a quote")
        elif self.quote is None or not self.quote:
            raise ValueError(f"evidence of format {self.format!r} must carry a quote")
        return self

    def expected_report_data(self) -> bytes:
        """What ``report_data`` must be if the document is honest about its keys and nonce."""
        return report_data(self.x25519_public_key, self.ed25519_public_key, self.nonce)

    def to_json(self) -> str:
        return self.model_dump_json()
