"""The node serves the release it runs beside its evidence, byte for byte, and a client accepts it
only under a signer its own policy names."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.servers import ServerThread
from veil.attestation.evidence import AttestationError, Evidence
from veil.attestation.policy import Policy
from veil.attestation.release import ReleaseVerificationError, sign_manifest, verify_shown_release
from veil.config import NodeSettings
from veil.node.app import create_app
from veil.node.keyring import Keyring
from veil.node.service import EngineRegistry

MANIFEST = {"release": "veil-node@1.0.0", "sev_snp": [{"measurement": "ab" * 48}]}


def test_the_node_serves_its_signed_release_in_every_evidence_bundle(tmp_path: Path) -> None:
    manifest = json.dumps(MANIFEST, indent=1).encode()  # served as written, never re-encoded
    key = Ed25519PrivateKey.generate()
    (tmp_path / "manifest.json").write_bytes(manifest)
    (tmp_path / "manifest.sig.json").write_text(json.dumps(sign_manifest(manifest, key)))
    settings = NodeSettings(
        data_dir=tmp_path / "node",
        embedded=False,
        insecure_no_gateway=True,
        release_manifest=tmp_path / "manifest.json",
        release_signature=tmp_path / "manifest.sig.json",
    )
    keyring = Keyring(settings.data_dir)
    app = create_app(settings, EngineRegistry(), keyring, manage_engines=False)
    with ServerThread(app) as server:
        nonce = base64.b64encode(bytes(range(32))).decode()
        answer = httpx.get(f"{server.url}/v1/attestation", params={"nonce": nonce}, timeout=30)
    assert answer.status_code == 200
    evidence = Evidence.model_validate_json(answer.content)
    assert evidence.release is not None and evidence.release.manifest == manifest

    trusted = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    verified = verify_shown_release(
        evidence.release, Policy(release_signers=[{"ed25519_public_key": trusted}])
    )
    assert verified.manifest.release == "veil-node@1.0.0"
    stranger = base64.b64encode(bytes(32)).decode()
    with pytest.raises(ReleaseVerificationError):
        verify_shown_release(
            evidence.release, Policy(release_signers=[{"ed25519_public_key": stranger}])
        )


def test_a_manifest_without_its_signature_stops_the_node_at_start(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST))
    settings = NodeSettings(
        data_dir=tmp_path / "node",
        embedded=False,
        insecure_no_gateway=True,
        release_manifest=tmp_path / "manifest.json",
    )
    with pytest.raises(AttestationError, match="needs its signature"):
        create_app(settings, EngineRegistry(), Keyring(settings.data_dir), manage_engines=False)
