"""Step 2's entry points: the release signers a policy names, and a release a node shows verified
under them only."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.attestation.release_samples import (
    IDENTITY,
    ISSUER,
    SUBJECT_SHA256,
    TINFOIL_SIGNER,
    TRUSTED_ROOT,
    bundle_bytes,
    manifest_bytes,
    raw_public,
)
from veil.attestation.release import (
    ReleaseSigner,
    ReleaseVerificationError,
    sign_manifest,
    verify_shown_release,
)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"sigstore_identity": IDENTITY}, "needs both sigstore_identity and sigstore_issuer"),
        ({"sigstore_issuer": ISSUER}, "needs both"),
        ({}, "needs sigstore_identity + sigstore_issuer, or ed25519_public_key"),
        (
            {
                "sigstore_identity": IDENTITY,
                "sigstore_issuer": ISSUER,
                "ed25519_public_key": "A" * 43 + "=",
            },
            "not both",
        ),
        ({"ed25519_public_key": base64.b64encode(bytes(31)).decode()}, "found 31 bytes"),
        ({"ed25519_public_key": "not base64!"}, "must be base64"),
        ({"ed25519_key": "x"}, "Extra inputs"),
    ],
)
def test_release_signer_config_is_validated(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ReleaseSigner.model_validate(document)


class Shown:
    """The shape of ``Evidence.release`` (manifest bytes, signature document, parsed bundle)."""

    def __init__(self, manifest: bytes | None = None, signature: Any = None, bundle: Any = None):
        self.manifest, self.signature, self.sigstore_bundle = manifest, signature, bundle


class PolicyLike:
    def __init__(self, *signers: ReleaseSigner, root: Path | None = TRUSTED_ROOT):
        self.release_signers = signers
        self.sigstore_trusted_root = None if root is None else str(root)


def test_shown_release_is_verified_under_the_policy_signers_only() -> None:
    key = Ed25519PrivateKey.generate()
    manifest = manifest_bytes()
    signature = sign_manifest(manifest, key)
    bundle = json.loads(bundle_bytes())
    ed_signer = ReleaseSigner(ed25519_public_key=raw_public(key))

    by_key = verify_shown_release(Shown(manifest, signature), PolicyLike(ed_signer))
    assert by_key.release == "veil-node 1.4.2"
    by_sigstore = verify_shown_release(Shown(bundle=bundle), PolicyLike(TINFOIL_SIGNER))
    assert by_sigstore.digest == SUBJECT_SHA256
    # A node showing both forms: the one the policy trusts verifies.
    both = Shown(manifest, signature, bundle)
    assert verify_shown_release(both, PolicyLike(ed_signer)).signer.startswith("ed25519: ")

    # The node's own key is not trusted just because the node shows it.
    stranger = ReleaseSigner(ed25519_public_key=raw_public(Ed25519PrivateKey.generate()))
    with pytest.raises(ReleaseVerificationError, match="release signer is not trusted"):
        verify_shown_release(Shown(manifest, signature), PolicyLike(stranger))
    with pytest.raises(ReleaseVerificationError, match="the node shows an Ed25519 signature, but"):
        verify_shown_release(Shown(manifest, signature), PolicyLike(TINFOIL_SIGNER))
    with pytest.raises(ReleaseVerificationError, match="no release signer configured"):
        verify_shown_release(Shown(manifest, signature), PolicyLike())
    # The Tinfoil bundle with a foreign manifest: the manifest is not the statement's subject.
    with pytest.raises(ReleaseVerificationError, match="is not a subject"):
        verify_shown_release(Shown(manifest, bundle=bundle), PolicyLike(TINFOIL_SIGNER))
