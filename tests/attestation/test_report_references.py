"""Step "release": a release the node shows pins measurements only under a signer the client
named."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.attestation.bundles import GENOA_MEASUREMENT, SNP_AT, genoa_evidence
from veil.attestation.policy import Policy
from veil.attestation.release import sign_manifest
from veil.attestation.report import verify_evidence


def test_a_release_the_node_shows_counts_only_under_a_signer_the_client_named() -> None:
    node_key = Ed25519PrivateKey.generate()
    manifest = json.dumps(
        {"release": "node-chosen@1", "sev_snp": [{"measurement": GENOA_MEASUREMENT}]}
    ).encode()
    shown = {"manifest": manifest, "signature": sign_manifest(manifest, node_key)}
    # No signer configured: the release is "not checked" and pins nothing.
    report = verify_evidence(genoa_evidence(release=shown), Policy(), at=SNP_AT)
    assert report.step("release").outcome == "not checked"
    assert report.step("measurements").outcome == "FAIL"
    # A signer configured, but not the node's key: refused.
    client_key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    policy = Policy(release_signers=[{"ed25519_public_key": base64.b64encode(client_key).decode()}])
    report = verify_evidence(genoa_evidence(release=shown), policy, at=SNP_AT)
    assert report.step("release").outcome == "FAIL"
    # The client's own key signed it: the release pins the measurement.
    trusted = base64.b64encode(node_key.public_key().public_bytes_raw()).decode()
    policy = Policy(release_signers=[{"ed25519_public_key": trusted}])
    report = verify_evidence(genoa_evidence(release=shown), policy, at=SNP_AT)
    assert report.step("release").outcome == "pass"
    assert report.step("measurements").outcome == "pass"
    assert report.facts["release"] == "node-chosen@1"


def test_a_policy_requiring_a_release_refuses_a_node_that_shows_none() -> None:
    trusted = base64.b64encode(bytes(range(32))).decode()
    policy = Policy(release_signers=[{"ed25519_public_key": trusted}])
    report = verify_evidence(genoa_evidence(), policy, at=SNP_AT)
    assert report.step("release").outcome == "FAIL"
    assert "the node shows none" in report.step("release").detail
