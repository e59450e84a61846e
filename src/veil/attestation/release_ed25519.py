"""Ed25519 release keys (private deployments): sign a manifest, verify a signature document.

``sign_manifest`` writes a small ``veil-release-signature-v1`` document over
``"veil release v1\\0" || SHA-256(manifest bytes)``; ``verify_ed25519`` checks it against the
client's trusted public keys.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veil.attestation.release_manifest import (
    MAX_MANIFEST_SIZE,
    ReleaseManifestError,
    ReleaseVerificationError,
    manifest_digest,
    parse_manifest,
    same_bytes,
)
from veil.attestation.release_signer import VerifiedRelease, ed25519_signer_text

__all__ = ["SIGNATURE_FORMAT", "sign_manifest", "verify_ed25519"]

SIGNATURE_FORMAT = "veil-release-signature-v1"
SIGNATURE_DOMAIN = b"veil release v1\0"


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
    if not same_bytes(bytes.fromhex(claimed), digest):
        raise ReleaseVerificationError(
            f"signature is for manifest sha256 {claimed.lower()}, this manifest is {digest.hex()}"
        )
    # (3) every configured key is compared, each in constant time
    trusted = False
    for candidate in trusted_public_keys:
        trusted |= len(candidate) == 32 and same_bytes(bytes(candidate), public_key)
    if not trusted:
        configured = len(trusted_public_keys)
        raise ReleaseVerificationError(
            f"release signer is not trusted: signed by {ed25519_signer_text(public_key)}, "
            f"which is not one of the {configured} Ed25519 key(s) configured"
        )
    # (4)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, _signed_message(digest))
    except (InvalidSignature, ValueError):
        raise ReleaseVerificationError(
            f"Ed25519 signature by {ed25519_signer_text(public_key)} does not verify over manifest "
            f"sha256 {digest.hex()}"
        ) from None
    # (5)
    manifest = parse_manifest(manifest_bytes)
    return VerifiedRelease(
        manifest=manifest, signer=ed25519_signer_text(public_key), digest=digest.hex()
    )
