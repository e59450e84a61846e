"""Ed25519 release keys: signing a manifest and verifying a signature document."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.attestation.release_samples import (
    TINFOIL_SIGNER,
    flip_b64,
    manifest_bytes,
    raw_public,
)
from veil.attestation.release import (
    ReleaseManifestError,
    ReleaseSigner,
    ReleaseVerificationError,
    parse_manifest,
    sign_manifest,
    verify_ed25519,
    verify_release,
)


def test_ed25519_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    manifest = manifest_bytes()
    document = sign_manifest(manifest, key)
    assert set(document) == {"format", "manifest_sha256", "public_key", "signature"}
    assert document["format"] == "veil-release-signature-v1"
    assert document["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    result = verify_ed25519(
        manifest,
        document,
        [
            Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            raw_public(key),
        ],
    )
    assert result.signer == "ed25519: " + base64.b64encode(raw_public(key)).decode()
    assert result.digest == hashlib.sha256(manifest).hexdigest()
    assert result.integrated_time is None
    assert result.manifest == parse_manifest(manifest)
    via_policy = verify_release(
        manifest,
        json.dumps(document).encode(),
        [
            TINFOIL_SIGNER,
            ReleaseSigner.model_validate({"ed25519_public_key": document["public_key"]}),
        ],
    )
    assert via_policy == result


def test_ed25519_signature_covers_the_domain_separated_digest() -> None:
    key = Ed25519PrivateKey.generate()
    manifest = manifest_bytes()
    digest = hashlib.sha256(manifest).digest()
    document = sign_manifest(manifest, key)
    assert (
        key.public_key().verify(
            base64.b64decode(document["signature"]), b"veil release v1\0" + digest
        )
        is None
    )
    # A signature by the same key over the bare digest (no domain prefix) is refused.
    bare = dict(document, signature=base64.b64encode(key.sign(digest)).decode())
    with pytest.raises(ReleaseVerificationError, match="does not verify"):
        verify_ed25519(manifest, bare, [raw_public(key)])


def test_ed25519_untrusted_key_fails() -> None:
    key, trusted = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    manifest = manifest_bytes()
    document = sign_manifest(manifest, key)
    with pytest.raises(ReleaseVerificationError) as caught:
        verify_ed25519(manifest, document, [raw_public(trusted)])
    assert caught.value.reason == (
        f"release signer is not trusted: signed by ed25519: {document['public_key']}, "
        "which is not one of the 1 Ed25519 key(s) configured"
    )
    with pytest.raises(ReleaseVerificationError, match="not trusted"):
        verify_ed25519(manifest, document, [])


def test_ed25519_manifest_changed_by_one_byte_fails() -> None:
    key = Ed25519PrivateKey.generate()
    manifest = manifest_bytes()
    document = sign_manifest(manifest, key)
    altered = bytearray(manifest)
    altered[manifest.index(b"1.4.2") + 4] ^= 0x01  # "1.4.2" -> "1.4.3": still a valid manifest
    altered_bytes = bytes(altered)
    parse_manifest(altered_bytes)
    with pytest.raises(ReleaseVerificationError, match="signature is for manifest sha256"):
        verify_ed25519(altered_bytes, document, [raw_public(key)])
    # Also naming the altered digest in the document does not help: the signature is over the old.
    forged = dict(document, manifest_sha256=hashlib.sha256(altered_bytes).hexdigest())
    with pytest.raises(ReleaseVerificationError, match="does not verify"):
        verify_ed25519(altered_bytes, forged, [raw_public(key)])


def test_ed25519_signature_of_another_manifest_fails() -> None:
    key = Ed25519PrivateKey.generate()
    other = sign_manifest(manifest_bytes(release="veil-node 0.9.0"), key)
    with pytest.raises(ReleaseVerificationError, match="signature is for manifest sha256"):
        verify_ed25519(manifest_bytes(), other, [raw_public(key)])


def test_ed25519_tampered_signature_fails() -> None:
    key = Ed25519PrivateKey.generate()
    manifest = manifest_bytes()
    document = sign_manifest(manifest, key)
    document["signature"] = flip_b64(document["signature"], 10)
    with pytest.raises(ReleaseVerificationError, match="does not verify over manifest sha256"):
        verify_ed25519(manifest, document, [raw_public(key)])


def test_ed25519_malformed_documents_fail() -> None:
    key = Ed25519PrivateKey.generate()
    manifest = manifest_bytes()
    document = sign_manifest(manifest, key)
    with pytest.raises(ReleaseVerificationError, match="expected 'veil-release-signature-v1'"):
        verify_ed25519(manifest, dict(document, format="v0"), [raw_public(key)])
    short = base64.b64encode(b"x" * 31).decode()
    with pytest.raises(ReleaseVerificationError, match="public_key must be 32 bytes, found 31"):
        verify_ed25519(manifest, dict(document, public_key=short), [raw_public(key)])
    with pytest.raises(ReleaseVerificationError, match="expected a veil-release-signature-v1"):
        verify_release(
            manifest, b'{"format": "other"}', [ReleaseSigner(ed25519_public_key=raw_public(key))]
        )


def test_signing_an_invalid_manifest_is_refused() -> None:
    with pytest.raises(ReleaseManifestError, match="not a valid release manifest"):
        sign_manifest(b'{"release": "x"}', Ed25519PrivateKey.generate())
