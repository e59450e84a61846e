"""Release manifests: the measurement sets a release accepts, per platform (step 2 of the verifier).

A release is a JSON document (``ReleaseManifest``) listing, per platform, the accepted measurement
sets and the digest of the model weights the node serves. Its digest is SHA-256 over the exact
bytes as published; the bytes are never re-serialised, so a signer and a verifier cannot disagree
on a canonical form. Who signed it is checked by ``release_ed25519`` and ``release_sigstore``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from veil.attestation.evidence import AttestationError

if TYPE_CHECKING:
    from veil.attestation.abi_tdx import TdxQuote

__all__ = [
    "GpuFirmwareSet",
    "ReleaseManifest",
    "ReleaseManifestError",
    "ReleaseVerificationError",
    "SnpMeasurementSet",
    "TdxMeasurementSet",
    "manifest_digest",
    "parse_manifest",
    "tdx_fields",
]

MEASUREMENT_SIZE = 48  # TDX MRTD / RTMRs / MRSEAM / MRCONFIGID..., SEV-SNP MEASUREMENT
MAX_MANIFEST_SIZE = 1 << 20  # a manifest is a few KiB; refuse anything absurd before parsing
TDX_FIELDS = (
    "mr_td",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mr_seam",
    "mr_config_id",
    "mr_owner",
    "mr_owner_config",
)
# Fulcio certificate extensions (v1, raw bytes): the OIDC issuer, and GitHub's repository and ref.
_MODEL_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class ReleaseVerificationError(AttestationError):
    """A release that is not signed by a trusted signer, or does not say what it must.

    ``reason`` is one line naming what was expected and what was found.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReleaseManifestError(ReleaseVerificationError, ValueError):
    """A manifest document that is not a valid Veil release manifest."""


def _measurement(value: object) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = bytes.fromhex(value.strip().lower().removeprefix("0x"))
        except ValueError:
            raise ValueError("must be hex") from None
    else:
        raise ValueError("must be a hex string")
    if len(raw) != MEASUREMENT_SIZE:
        raise ValueError(
            f"must be {MEASUREMENT_SIZE} bytes ({2 * MEASUREMENT_SIZE} hex digits), "
            f"found {len(raw)} bytes"
        )
    return raw


Measurement = Annotated[
    bytes,
    BeforeValidator(_measurement),
    PlainSerializer(lambda raw: raw.hex(), return_type=str, when_used="always"),
]


def same_bytes(a: bytes, b: bytes) -> bool:
    """Constant-time equality: how every pinned value is compared."""
    return hmac.compare_digest(a, b)


class TdxMeasurementSet(BaseModel):
    """One accepted TDX measurement set; every field given must equal the quote's.

    ``mr_td`` is optional so that a release may pin only what it controls (Tinfoil's releases pin
    RTMR1/RTMR2, the kernel and command line, and leave MRTD/RTMR0 to a separate per-platform list),
    but at least one field must be pinned: an empty set would accept every TD. A verifier that needs
    the firmware pinned too must demand ``mr_td`` in ``pinned()`` or pin it in its policy.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mr_td: Measurement | None = None
    rtmr0: Measurement | None = None
    rtmr1: Measurement | None = None
    rtmr2: Measurement | None = None
    rtmr3: Measurement | None = None
    mr_seam: Measurement | None = None
    mr_config_id: Measurement | None = None
    mr_owner: Measurement | None = None
    mr_owner_config: Measurement | None = None

    @model_validator(mode="after")
    def _pins_something(self) -> TdxMeasurementSet:
        if not self.pinned():
            raise ValueError(
                f"a TDX measurement set must pin at least one of {', '.join(TDX_FIELDS)}"
            )
        return self

    def pinned(self) -> frozenset[str]:
        """The names of the fields this set pins."""
        return frozenset(name for name in TDX_FIELDS if getattr(self, name) is not None)

    def matches(self, quote_fields: Mapping[str, bytes]) -> bool:
        """True when every pinned field equals the quote's (a field the quote lacks never does)."""
        ok = True
        for name in TDX_FIELDS:
            expected: bytes | None = getattr(self, name)
            if expected is None:
                continue
            found = quote_fields.get(name)
            # No early exit: every pinned field is compared, each in constant time.
            ok &= found is not None and same_bytes(bytes(found), expected)
        return ok


class SnpMeasurementSet(BaseModel):
    """One accepted SEV-SNP launch measurement (the report's MEASUREMENT, 48 bytes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    measurement: Measurement


class GpuFirmwareSet(BaseModel):
    """One accepted NVIDIA GPU firmware pair, as the attestation report names them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    driver_version: str = Field(min_length=1, max_length=64)
    vbios_version: str = Field(min_length=1, max_length=64)

    def matches(self, driver: str, vbios: str) -> bool:
        # VBIOS versions are hex groups ("96.00.9F.00.01") that tools print in either case.
        ok = same_bytes(driver.strip().casefold().encode(), self.driver_version.casefold().encode())
        ok &= same_bytes(vbios.strip().casefold().encode(), self.vbios_version.casefold().encode())
        return ok


class ReleaseManifest(BaseModel):
    """The accepted measurement sets of one release, per platform, and its model weight digests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    release: str = Field(min_length=1, max_length=200, description="name and version")
    tdx: list[TdxMeasurementSet] = Field(default_factory=list)
    sev_snp: list[SnpMeasurementSet] = Field(default_factory=list)
    gpu: list[GpuFirmwareSet] = Field(default_factory=list)
    models: dict[str, str] = Field(
        default_factory=dict, description='model id -> "sha256:<64 hex>" of the weights file'
    )
    # SHA-256 (hex) of the web console bundle the release ships (`veil console --print-hash`),
    # so a user can check the page they run: `veil console --manifest FILE`.
    console_bundle_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    created_at: datetime | None = None

    @field_validator("models")
    @classmethod
    def _model_digests(cls, value: dict[str, str]) -> dict[str, str]:
        for model_id, digest in value.items():
            if not model_id:
                raise ValueError("a model id must not be empty")
            if not _MODEL_DIGEST.fullmatch(digest):
                raise ValueError(
                    f"model {model_id!r}: digest must be 'sha256:' and 64 lowercase hex digits, "
                    f"found {digest[:80]!r}"
                )
        return value

    @model_validator(mode="after")
    def _lists_a_cpu_tee(self) -> ReleaseManifest:
        if not self.tdx and not self.sev_snp:
            raise ValueError("a release must list at least one TDX or SEV-SNP measurement set")
        return self

    def tdx_match(self, quote_fields: Mapping[str, bytes] | TdxQuote) -> frozenset[str] | None:
        """The fields pinned by the first TDX set the quote matches, or None when none matches.

        ``quote_fields`` maps ``TDX_FIELDS`` names to the quote's values, or is a parsed TdxQuote.
        """
        fields = quote_fields if isinstance(quote_fields, Mapping) else tdx_fields(quote_fields)
        found: frozenset[str] | None = None
        for candidate in self.tdx:
            if candidate.matches(fields) and found is None:
                found = candidate.pinned()
        return found

    def snp_match(self, measurement: bytes) -> bool:
        """True when ``measurement`` (48 bytes) equals one of the release's SEV-SNP measurements."""
        if len(measurement) != MEASUREMENT_SIZE:
            return False
        ok = False
        for candidate in self.sev_snp:
            ok |= same_bytes(bytes(measurement), candidate.measurement)
        return ok

    def gpu_match(self, driver: str, vbios: str) -> bool:
        """True when the (driver, VBIOS) pair is one of the release's GPU firmware sets."""
        ok = False
        for candidate in self.gpu:
            ok |= candidate.matches(driver, vbios)
        return ok

    def console_bundle_matches(self, sha256: str) -> bool:
        """True when the release lists a console bundle and ``sha256`` (hex) is its digest."""
        expected = self.console_bundle_sha256
        return expected is not None and same_bytes(
            sha256.strip().lower().encode(), expected.encode()
        )

    def model_match(self, model_id: str, digest: str) -> bool:
        """True when ``digest`` ("sha256:<hex>") is the release's digest for ``model_id``."""
        expected = self.models.get(model_id)
        return expected is not None and same_bytes(
            digest.strip().lower().encode(), expected.encode()
        )


def tdx_fields(quote: TdxQuote) -> dict[str, bytes]:
    """A parsed quote's measurement registers under the names a TdxMeasurementSet uses."""
    return {
        "mr_td": quote.mr_td,
        "rtmr0": quote.rtmrs[0],
        "rtmr1": quote.rtmrs[1],
        "rtmr2": quote.rtmrs[2],
        "rtmr3": quote.rtmrs[3],
        "mr_seam": quote.mr_seam,
        "mr_config_id": quote.mr_config_id,
        "mr_owner": quote.mr_owner,
        "mr_owner_config": quote.mr_owner_config,
    }


def validation_summary(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "manifest"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def manifest_from_object(document: object, what: str) -> ReleaseManifest:
    try:
        return ReleaseManifest.model_validate(document)
    except ValidationError as exc:
        raise ReleaseManifestError(
            f"{what} is not a valid release manifest: {validation_summary(exc)}"
        ) from None


def parse_manifest(raw: bytes) -> ReleaseManifest:
    """Parse a manifest file's exact bytes (JSON); unknown fields and bad sizes are errors."""
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ReleaseManifestError(
            f"manifest is {len(raw)} bytes, more than the {MAX_MANIFEST_SIZE} a manifest may have"
        )
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseManifestError(f"manifest is not valid JSON: {exc}") from None
    return manifest_from_object(document, "manifest")


def manifest_digest(raw: bytes) -> bytes:
    """SHA-256 over the manifest's exact bytes: what every signature commits to."""
    return hashlib.sha256(raw).digest()
