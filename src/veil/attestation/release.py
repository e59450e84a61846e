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

The steps live in their own modules; this one holds the client's entry points and names them all:

- ``release_manifest``  the manifest model, its parsing and digest
- ``release_signer``    the client's signer configuration, ``VerifiedRelease``
- ``release_ed25519``   Ed25519 signature documents
- ``release_sigstore``  Sigstore bundles, offline
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from veil.attestation.release_ed25519 import SIGNATURE_FORMAT, sign_manifest, verify_ed25519
from veil.attestation.release_manifest import (
    GpuFirmwareSet,
    ReleaseManifest,
    ReleaseManifestError,
    ReleaseVerificationError,
    SnpMeasurementSet,
    TdxMeasurementSet,
    manifest_digest,
    parse_manifest,
    tdx_fields,
    validation_summary,
)
from veil.attestation.release_signer import ReleaseSigner, VerifiedRelease
from veil.attestation.release_sigstore import (
    MAX_BUNDLE_SIZE,
    TINFOIL_PREDICATE,
    VEIL_PREDICATE,
    embedded_trusted_root_path,
    verify_sigstore,
)

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
            f"release signer in the policy is invalid: {validation_summary(exc)}"
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
