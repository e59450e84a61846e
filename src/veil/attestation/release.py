"""Signed release manifests: which measurements a release accepts, signed by a signer the CLIENT trusts.

A strict client accepts a node only when the node's evidence matches a measurement set of a release
the client trusts. The release is a JSON document (``ReleaseManifest``) listing, per platform, the
accepted measurement sets and the digest of the model weights the node serves. Its authenticity
comes from one of two signatures, always checked against a signer identity from the client's own
configuration (``ReleaseSigner``), never one that the node or the gateway supplies:

- **Ed25519 release key** (private deployments): ``sign_manifest`` writes a small signature
  document; ``verify_ed25519`` checks it against the client's trusted public keys.
- **Sigstore keyless** (public CI): a Sigstore bundle (v0.3, DSSE, in-toto statement) verified
  offline by the ``sigstore`` package against a trusted root file and an identity policy (OIDC
  issuer + exact workflow identity, the certificate's SAN). No network: no TUF refresh, no Rekor
  lookup; the bundle's inclusion proof, checkpoint and SET are checked against the root's keys.

The manifest's digest is SHA-256 over the exact bytes as published; the bytes are never
re-serialised, so a signer and a verifier cannot disagree on a canonical form.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
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
    "SIGNATURE_FORMAT",
    "TINFOIL_PREDICATE",
    "VEIL_PREDICATE",
    "GpuFirmwareSet",
    "ReleaseManifest",
    "ReleaseManifestError",
    "ReleaseSigner",
    "ReleaseVerificationError",
    "SnpMeasurementSet",
    "TdxMeasurementSet",
    "VerifiedRelease",
    "embedded_trusted_root_path",
    "manifest_digest",
    "parse_manifest",
    "sign_manifest",
    "tdx_fields",
    "verify_ed25519",
    "verify_release",
    "verify_shown_release",
    "verify_sigstore",
]

MEASUREMENT_SIZE = 48  # TDX MRTD / RTMRs / MRSEAM / MRCONFIGID..., SEV-SNP MEASUREMENT
MAX_MANIFEST_SIZE = 1 << 20  # a manifest is a few KiB; refuse anything absurd before parsing
MAX_BUNDLE_SIZE = 1 << 20
SIGNATURE_FORMAT = "veil-release-signature-v1"
SIGNATURE_DOMAIN = b"veil release v1\0"
VEIL_PREDICATE = "https://veil.dev/release/v1"
TINFOIL_PREDICATE = "https://tinfoil.sh/predicate/snp-tdx-multiplatform/v1"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
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
_OID_ISSUER = "1.3.6.1.4.1.57264.1.1"
_OID_GITHUB_REPOSITORY = "1.3.6.1.4.1.57264.1.5"
_OID_GITHUB_REF = "1.3.6.1.4.1.57264.1.6"
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


# ---------------------------------------------------------------------------------------------
# The manifest


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


def _same(a: bytes, b: bytes) -> bool:
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
            ok &= found is not None and _same(bytes(found), expected)
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
        ok = _same(driver.strip().casefold().encode(), self.driver_version.casefold().encode())
        ok &= _same(vbios.strip().casefold().encode(), self.vbios_version.casefold().encode())
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
            ok |= _same(bytes(measurement), candidate.measurement)
        return ok

    def gpu_match(self, driver: str, vbios: str) -> bool:
        """True when the (driver, VBIOS) pair is one of the release's GPU firmware sets."""
        ok = False
        for candidate in self.gpu:
            ok |= candidate.matches(driver, vbios)
        return ok

    def model_match(self, model_id: str, digest: str) -> bool:
        """True when ``digest`` ("sha256:<hex>") is the release's digest for ``model_id``."""
        expected = self.models.get(model_id)
        return expected is not None and _same(digest.strip().lower().encode(), expected.encode())


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


def _validation_summary(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "manifest"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _manifest_from_object(document: object, what: str) -> ReleaseManifest:
    try:
        return ReleaseManifest.model_validate(document)
    except ValidationError as exc:
        raise ReleaseManifestError(
            f"{what} is not a valid release manifest: {_validation_summary(exc)}"
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
    return _manifest_from_object(document, "manifest")


def manifest_digest(raw: bytes) -> bytes:
    """SHA-256 over the manifest's exact bytes: what every signature commits to."""
    return hashlib.sha256(raw).digest()


# ---------------------------------------------------------------------------------------------
# Result and the client's signer configuration


@dataclass(frozen=True)
class VerifiedRelease:
    """A manifest whose signature verified under a signer the client configured.

    ``digest`` is the SHA-256 (hex) of the manifest bytes that were signed; for a Sigstore
    statement that carries the measurements in its predicate (no separate manifest file), it is the
    in-toto subject's SHA-256, the digest the publisher's release names.
    """

    manifest: ReleaseManifest
    signer: str
    digest: str
    integrated_time: datetime | None = None

    @property
    def release(self) -> str:
        return self.manifest.release


def _b64_key(value: object) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64") from None
    else:
        raise ValueError("must be a base64 string")
    if len(raw) != 32:
        raise ValueError(f"must be a 32-byte Ed25519 public key, found {len(raw)} bytes")
    return raw


PublicKey32 = Annotated[
    bytes,
    BeforeValidator(_b64_key),
    PlainSerializer(
        lambda raw: base64.b64encode(raw).decode(), return_type=str, when_used="always"
    ),
]


class ReleaseSigner(BaseModel):
    """A release signer the client trusts (policy key ``release_signers``), in one of two forms::

    {"sigstore_identity": "https://github.com/ORG/REPO/.github/workflows/release.yml@refs/tags/v1.2.3",
     "sigstore_issuer": "https://token.actions.githubusercontent.com"}
    {"ed25519_public_key": "<base64 of the 32-byte key>"}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sigstore_identity: str | None = Field(default=None, min_length=1)
    sigstore_issuer: str | None = Field(default=None, min_length=1)
    ed25519_public_key: PublicKey32 | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ReleaseSigner:
        sigstore = self.sigstore_identity is not None or self.sigstore_issuer is not None
        if sigstore and self.ed25519_public_key is not None:
            raise ValueError(
                "a release signer is either a Sigstore identity or an Ed25519 key, not both"
            )
        if sigstore and (self.sigstore_identity is None or self.sigstore_issuer is None):
            raise ValueError(
                "a Sigstore release signer needs both sigstore_identity and sigstore_issuer"
            )
        if not sigstore and self.ed25519_public_key is None:
            raise ValueError(
                "a release signer needs sigstore_identity + sigstore_issuer, or ed25519_public_key"
            )
        return self

    @property
    def is_sigstore(self) -> bool:
        return self.sigstore_identity is not None

    def describe(self) -> str:
        if self.sigstore_identity is not None:
            return _sigstore_signer(self.sigstore_identity, self.sigstore_issuer or "")
        assert self.ed25519_public_key is not None
        return _ed25519_signer(self.ed25519_public_key)


def _sigstore_signer(identity: str, issuer: str) -> str:
    return f"sigstore: {identity} (issuer {issuer})"


def _ed25519_signer(public_key: bytes) -> str:
    return f"ed25519: {base64.b64encode(public_key).decode()}"


# ---------------------------------------------------------------------------------------------
# Ed25519 release key


def _signed_message(manifest_sha256: bytes) -> bytes:
    # Domain separation: an Ed25519 release key signs nothing else under this prefix.
    return SIGNATURE_DOMAIN + manifest_sha256


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> dict[str, str]:
    """Sign a manifest's exact bytes; the manifest must be valid (a typo is caught before release)."""
    parse_manifest(manifest_bytes)
    digest = manifest_digest(manifest_bytes)
    return {
        "format": SIGNATURE_FORMAT,
        "manifest_sha256": digest.hex(),
        "public_key": base64.b64encode(_raw_public(private_key.public_key())).decode(),
        "signature": base64.b64encode(private_key.sign(_signed_message(digest))).decode(),
    }


def _doc_bytes(signature_doc: Mapping[str, Any], name: str, size: int) -> bytes:
    value = signature_doc.get(name)
    if not isinstance(value, str):
        raise ReleaseVerificationError(f"signature document: {name} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseVerificationError(f"signature document: {name} is not base64") from None
    if len(raw) != size:
        raise ReleaseVerificationError(
            f"signature document: {name} must be {size} bytes, found {len(raw)}"
        )
    return raw


def verify_ed25519(
    manifest_bytes: bytes,
    signature_doc: Mapping[str, Any],
    trusted_public_keys: Sequence[bytes],
) -> VerifiedRelease:
    """Verify an Ed25519 signature document over ``manifest_bytes`` by one of the trusted keys.

    Steps: (1) sizes and document format; (2) the document names this manifest's digest; (3) its
    key is one the client trusts; (4) the signature over the domain-separated digest verifies;
    (5) the signed bytes are a valid manifest.
    """
    # (1)
    if len(manifest_bytes) > MAX_MANIFEST_SIZE:
        raise ReleaseManifestError(
            f"manifest is {len(manifest_bytes)} bytes, more than the {MAX_MANIFEST_SIZE} allowed"
        )
    if not isinstance(signature_doc, Mapping):
        raise ReleaseVerificationError("signature document must be a JSON object")
    found_format = signature_doc.get("format")
    if found_format != SIGNATURE_FORMAT:
        raise ReleaseVerificationError(
            f"signature document format: expected {SIGNATURE_FORMAT!r}, found {found_format!r}"
        )
    public_key = _doc_bytes(signature_doc, "public_key", 32)
    signature = _doc_bytes(signature_doc, "signature", 64)
    claimed = signature_doc.get("manifest_sha256")
    if not isinstance(claimed, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", claimed):
        raise ReleaseVerificationError("signature document: manifest_sha256 must be 64 hex digits")
    # (2)
    digest = manifest_digest(manifest_bytes)
    if not _same(bytes.fromhex(claimed), digest):
        raise ReleaseVerificationError(
            f"signature is for manifest sha256 {claimed.lower()}, this manifest is {digest.hex()}"
        )
    # (3) every configured key is compared, each in constant time
    trusted = False
    for candidate in trusted_public_keys:
        trusted |= len(candidate) == 32 and _same(bytes(candidate), public_key)
    if not trusted:
        configured = len(trusted_public_keys)
        raise ReleaseVerificationError(
            f"release signer is not trusted: signed by {_ed25519_signer(public_key)}, "
            f"which is not one of the {configured} Ed25519 key(s) configured"
        )
    # (4)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _signed_message(digest))
    except (InvalidSignature, ValueError):
        raise ReleaseVerificationError(
            f"Ed25519 signature by {_ed25519_signer(public_key)} does not verify over manifest "
            f"sha256 {digest.hex()}"
        ) from None
    # (5)
    manifest = parse_manifest(manifest_bytes)
    return VerifiedRelease(
        manifest=manifest, signer=_ed25519_signer(public_key), digest=digest.hex()
    )


# ---------------------------------------------------------------------------------------------
# Sigstore keyless (offline)


def embedded_trusted_root_path() -> Path:
    """The Sigstore public-good trusted root that the installed ``sigstore`` package ships.

    sigstore-python bootstraps its TUF client from this copy; Veil reads it directly and never
    refreshes it over the network, so it is as current as the installed package. Pass an explicit
    trusted root (``trusted_root_path``) to pin a specific one.
    """
    store = resources.files("sigstore") / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    path = Path(str(store / "trusted_root.json"))
    if not path.is_file():
        raise ReleaseVerificationError(
            "no trusted root given and the installed sigstore package ships none; pass a trusted_root.json"
        )
    return path


def _cert_extension(cert: Any, oid: str) -> str | None:
    for extension in cert.extensions:
        if extension.oid.dotted_string == oid:
            raw = getattr(extension.value, "value", None)
            if isinstance(raw, bytes):
                return raw.decode("utf-8", errors="replace")
    return None


def _cert_identity(cert: Any) -> str:
    from cryptography.x509 import RFC822Name, SubjectAlternativeName, UniformResourceIdentifier

    try:
        san = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
    except Exception:
        return "(no SAN)"
    names = san.get_values_for_type(UniformResourceIdentifier) + san.get_values_for_type(RFC822Name)
    return ", ".join(names) or "(no SAN)"


def _release_name_from_cert(cert: Any, fallback: str) -> str:
    repository = _cert_extension(cert, _OID_GITHUB_REPOSITORY)
    ref = _cert_extension(cert, _OID_GITHUB_REF)
    if repository and ref:
        return f"{repository}@{ref.removeprefix('refs/tags/')}"
    return fallback


def _load_trusted_root(trusted_root_path: str | Path | None) -> Any:
    from sigstore.models import TrustedRoot

    path = (
        Path(trusted_root_path) if trusted_root_path is not None else embedded_trusted_root_path()
    )
    try:
        return TrustedRoot.from_file(str(path))
    except OSError as exc:
        raise ReleaseVerificationError(
            f"cannot read trusted root {path}: {exc.strerror or exc}"
        ) from None
    except Exception as exc:
        raise ReleaseVerificationError(
            f"trusted root {path} is not a Sigstore trusted root: {_line(exc)}"
        ) from None


def _line(exc: BaseException, limit: int = 160) -> str:
    """The first line of a library's error, cut short (some embed whole inclusion proofs)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _tinfoil_manifest(predicate: Mapping[str, Any], release: str) -> ReleaseManifest:
    """Turn Tinfoil's multi-platform predicate into a Veil manifest (measurements only).

    ``snp_measurement`` becomes the SEV-SNP set; ``tdx_measurement`` (RTMR1, RTMR2: kernel, initrd
    and command line) becomes one TDX set pinning exactly those registers. The other keys (cmdline,
    image hashes, config) are what produced those measurements and are not needed to compare them.
    """
    document: dict[str, Any] = {"release": release, "tdx": [], "sev_snp": []}
    snp = predicate.get("snp_measurement")
    if snp is not None:
        document["sev_snp"].append({"measurement": snp})
    tdx = predicate.get("tdx_measurement")
    if tdx is not None:
        if not isinstance(tdx, Mapping):
            raise ReleaseManifestError("Tinfoil predicate: tdx_measurement must be an object")
        unknown = set(tdx) - set(TDX_FIELDS)
        if unknown:
            raise ReleaseManifestError(
                f"Tinfoil predicate: unknown tdx_measurement field(s) {', '.join(sorted(unknown))}"
            )
        document["tdx"].append(dict(tdx))
    return _manifest_from_object(document, "Tinfoil predicate")


def verify_sigstore(
    bundle_bytes: bytes,
    signers: Iterable[ReleaseSigner],
    *,
    manifest_bytes: bytes | None = None,
    trusted_root_path: str | Path | None = None,
    at: datetime | None = None,
) -> VerifiedRelease:
    """Verify a Sigstore bundle offline under one of the client's Sigstore signer identities.

    Steps: (1) sizes, bundle and trusted root parse; (2) the signing certificate's identity and
    issuer are one the client configured; (3) sigstore verifies the Fulcio chain at the log's
    time, the SCT, the identity policy, the Rekor inclusion proof / checkpoint / SET and the DSSE
    signature; (4) the payload is an in-toto statement; (5) the release: with ``manifest_bytes``,
    a subject's SHA-256 must equal the manifest's; without, the predicate must carry it
    (``VEIL_PREDICATE`` or ``TINFOIL_PREDICATE``); (6) the log time is not after ``at``.
    """
    try:
        from sigstore.errors import Error as SigstoreError
        from sigstore.models import Bundle
        from sigstore.verify import Verifier
        from sigstore.verify.policy import Identity
    except ImportError:  # fail closed, as a verification failure the report can show
        raise ReleaseVerificationError(
            "cannot verify a Sigstore bundle: the sigstore package is not installed"
        ) from None

    # (1)
    if len(bundle_bytes) > MAX_BUNDLE_SIZE:
        raise ReleaseVerificationError(
            f"Sigstore bundle is {len(bundle_bytes)} bytes, more than the {MAX_BUNDLE_SIZE} allowed"
        )
    if manifest_bytes is not None and len(manifest_bytes) > MAX_MANIFEST_SIZE:
        raise ReleaseManifestError(
            f"manifest is {len(manifest_bytes)} bytes, more than the {MAX_MANIFEST_SIZE} allowed"
        )
    try:
        bundle = Bundle.from_json(bundle_bytes)
    except Exception as exc:
        raise ReleaseVerificationError(f"not a readable Sigstore bundle: {_line(exc)}") from None
    trusted_root = _load_trusted_root(trusted_root_path)

    # (2) choose the configured identity that this certificate claims (step 3 re-checks it)
    cert = bundle.signing_certificate
    found = _sigstore_signer(_cert_identity(cert), _cert_extension(cert, _OID_ISSUER) or "(none)")
    candidates = [signer for signer in signers if signer.is_sigstore]
    chosen: ReleaseSigner | None = None
    for signer in candidates:
        policy = Identity(identity=signer.sigstore_identity or "", issuer=signer.sigstore_issuer)
        try:
            policy.verify(cert)
        except SigstoreError:
            continue
        chosen = signer
        break
    if chosen is None:
        expected = "; ".join(s.describe() for s in candidates) or "no Sigstore signer configured"
        raise ReleaseVerificationError(
            f"release signer is not trusted: bundle signed by {found}, expected {expected}"
        )
    identity, issuer = chosen.sigstore_identity or "", chosen.sigstore_issuer or ""

    # (3) offline: the Verifier is built from the root file, not from TUF
    try:
        verifier = Verifier(trusted_root=trusted_root)
        payload_type, payload = verifier.verify_dsse(
            bundle, Identity(identity=identity, issuer=issuer)
        )
    except SigstoreError as exc:
        raise ReleaseVerificationError(
            f"Sigstore bundle does not verify for {chosen.describe()}: {_line(exc)}"
        ) from None
    integrated = bundle.log_entry._inner.integrated_time
    integrated_time = datetime.fromtimestamp(integrated, tz=UTC) if integrated else None

    # (4)
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise ReleaseVerificationError(
            f"DSSE payload type: expected {IN_TOTO_PAYLOAD_TYPE}, found {payload_type[:80]}"
        )
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ReleaseVerificationError("DSSE payload is not a JSON in-toto statement") from None
    if not isinstance(statement, dict) or statement.get("_type") not in IN_TOTO_STATEMENT_TYPES:
        found_type = statement.get("_type") if isinstance(statement, dict) else None
        raise ReleaseVerificationError(
            f"in-toto statement type: expected {IN_TOTO_STATEMENT_TYPES[0]}, found {found_type!r}"
        )
    predicate_type = statement.get("predicateType")
    predicate = statement.get("predicate")
    subjects = statement.get("subject")
    digests: list[str] = []
    if isinstance(subjects, list):
        for subject in subjects:
            value = subject.get("digest", {}).get("sha256") if isinstance(subject, dict) else None
            if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value):
                digests.append(value.lower())

    # (5)
    signer_text = _sigstore_signer(identity, issuer)
    if manifest_bytes is not None:
        digest = manifest_digest(manifest_bytes)
        matched = False
        for value in digests:
            matched |= _same(bytes.fromhex(value), digest)
        if not matched:
            raise ReleaseVerificationError(
                f"manifest sha256 {digest.hex()} is not a subject of the signed statement "
                f"(subjects: {', '.join(digests) or 'none'})"
            )
        manifest = parse_manifest(manifest_bytes)
        if predicate_type == VEIL_PREDICATE and (
            _manifest_from_object(predicate, "statement predicate") != manifest
        ):
            raise ReleaseVerificationError(
                "the statement's Veil predicate differs from the manifest it names as subject"
            )
        digest_hex = digest.hex()
    else:
        if not isinstance(predicate, dict):
            raise ReleaseVerificationError("in-toto statement has no predicate object")
        if len(digests) != 1:
            raise ReleaseVerificationError(
                f"in-toto statement must name exactly one sha256 subject, found {len(digests)}"
            )
        digest_hex = digests[0]
        if predicate_type == VEIL_PREDICATE:
            manifest = _manifest_from_object(predicate, "statement predicate")
        elif predicate_type == TINFOIL_PREDICATE:
            first_name = subjects[0].get("name") if isinstance(subjects, list) else None
            fallback = str(first_name or digest_hex)
            manifest = _tinfoil_manifest(predicate, _release_name_from_cert(cert, fallback))
        else:
            raise ReleaseVerificationError(
                f"predicate type: expected {VEIL_PREDICATE} or {TINFOIL_PREDICATE} (or a separate "
                f"manifest file), found {str(predicate_type)[:120]}"
            )

    # (6)
    if at is not None and integrated_time is not None and integrated_time > at:
        raise ReleaseVerificationError(
            f"bundle was logged at {integrated_time.isoformat()}, after the verification time "
            f"{at.isoformat()}"
        )
    return VerifiedRelease(
        manifest=manifest, signer=signer_text, digest=digest_hex, integrated_time=integrated_time
    )


# ---------------------------------------------------------------------------------------------
# One entry point for the client


def _as_document(value: bytes | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if len(value) > MAX_BUNDLE_SIZE:
        raise ReleaseVerificationError(f"{what} is {len(value)} bytes, more than {MAX_BUNDLE_SIZE}")
    try:
        document = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ReleaseVerificationError(f"{what} is not valid JSON") from None
    if not isinstance(document, dict):
        raise ReleaseVerificationError(f"{what} must be a JSON object")
    return document


def verify_release(
    manifest_or_bundle_bytes: bytes,
    signature_or_none: bytes | Mapping[str, Any] | None,
    signers: Sequence[ReleaseSigner],
    *,
    trusted_root_path: str | Path | None = None,
    at: datetime | None = None,
) -> VerifiedRelease:
    """Verify a release under the client's configured signers; fail closed.

    - manifest bytes + an Ed25519 signature document (``format`` = SIGNATURE_FORMAT);
    - manifest bytes + a Sigstore bundle whose in-toto subject is the manifest's SHA-256;
    - a Sigstore bundle alone (``signature_or_none`` None) whose predicate carries the release.

    Raises ReleaseVerificationError (one line) for anything else, including no configured signer.
    """
    if not signers:
        raise ReleaseVerificationError(
            "no release signer configured: set release_signers to a Sigstore identity or an Ed25519 key"
        )
    if signature_or_none is None:
        return verify_sigstore(
            manifest_or_bundle_bytes, signers, trusted_root_path=trusted_root_path, at=at
        )
    document = _as_document(signature_or_none, "release signature")
    if document.get("format") == SIGNATURE_FORMAT:
        keys = [s.ed25519_public_key for s in signers if s.ed25519_public_key is not None]
        return verify_ed25519(manifest_or_bundle_bytes, document, keys)
    media_type = str(document.get("mediaType", ""))
    if media_type.startswith("application/vnd.dev.sigstore.bundle"):
        raw = (
            signature_or_none
            if isinstance(signature_or_none, bytes)
            else json.dumps(dict(document)).encode()
        )
        return verify_sigstore(
            raw,
            signers,
            manifest_bytes=manifest_or_bundle_bytes,
            trusted_root_path=trusted_root_path,
            at=at,
        )
    raise ReleaseVerificationError(
        f"release signature: expected a {SIGNATURE_FORMAT} document or a Sigstore bundle, found "
        f"format {str(document.get('format'))[:60]!r} / mediaType {media_type[:60]!r}"
    )


def _signer_from_config(entry: Any) -> ReleaseSigner:
    """A ReleaseSigner from any object with the three signer fields (e.g. the policy's own)."""
    if isinstance(entry, ReleaseSigner):
        return entry
    fields = {
        name: getattr(entry, name, None)
        for name in ("sigstore_identity", "sigstore_issuer", "ed25519_public_key")
    }
    try:
        return ReleaseSigner.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise ReleaseVerificationError(
            f"release signer in the policy is invalid: {_validation_summary(exc)}"
        ) from None


def verify_shown_release(shown: Any, policy: Any, *, at: datetime | None = None) -> VerifiedRelease:
    """Verify the release a node shows (``Evidence.release``) under the policy's signers only.

    ``shown`` has ``manifest`` (exact bytes or None), ``signature`` (an Ed25519 signature document)
    and ``sigstore_bundle`` (a parsed bundle); ``policy`` has ``release_signers`` and
    ``sigstore_trusted_root``. Whatever the node shows, only signers from the policy are tried; the
    first form that verifies wins, and when none does the failure names each reason.
    """
    signers = [_signer_from_config(entry) for entry in getattr(policy, "release_signers", ())]
    if not signers:
        raise ReleaseVerificationError(
            "no release signer configured: set release_signers to a Sigstore identity or an Ed25519 key"
        )
    root = getattr(policy, "sigstore_trusted_root", None)
    manifest, signature, bundle = shown.manifest, shown.signature, shown.sigstore_bundle
    has_ed25519 = any(not s.is_sigstore for s in signers)
    has_sigstore = any(s.is_sigstore for s in signers)
    reasons: list[str] = []
    if signature is not None and has_ed25519:
        if manifest is None:
            reasons.append("the node shows an Ed25519 signature but no manifest")
        else:
            try:
                return verify_release(bytes(manifest), signature, signers, at=at)
            except ReleaseVerificationError as exc:
                reasons.append(exc.reason)
    if bundle is not None and has_sigstore:
        # The bundle arrives parsed; re-encoding it is harmless: what it signs (the DSSE payload)
        # is base64 inside it, and the manifest, when given, is digested as the exact bytes.
        raw_bundle = json.dumps(bundle).encode()
        try:
            if manifest is None:
                return verify_release(raw_bundle, None, signers, trusted_root_path=root, at=at)
            return verify_release(
                bytes(manifest), raw_bundle, signers, trusted_root_path=root, at=at
            )
        except ReleaseVerificationError as exc:
            reasons.append(exc.reason)
    if not reasons:
        shown_forms = [
            name
            for name, value in (("an Ed25519 signature", signature), ("a Sigstore bundle", bundle))
            if value is not None
        ]
        raise ReleaseVerificationError(
            f"the node shows {' and '.join(shown_forms) or 'no release signature'}, but the policy "
            f"trusts only {'; '.join(s.describe() for s in signers)}"
        )
    raise ReleaseVerificationError("; ".join(reasons))
