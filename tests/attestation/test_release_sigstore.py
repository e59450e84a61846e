"""Sigstore release bundles verified offline: the real Tinfoil release (``release_samples.py``),
tampered, under other identities, at other times."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.attestation.release_samples import (
    GENOA_MEASUREMENT,
    GENOA_REPORT,
    IDENTITY,
    INTEGRATED_AT,
    ISSUER,
    MILAN_REPORT,
    SNP_MEASUREMENT_SLICE,
    SUBJECT_SHA256,
    TINFOIL_SIGNER,
    TRUSTED_ROOT,
    bundle_bytes,
    flip_b64,
    manifest_bytes,
    with_bundle,
)
from veil.attestation.release import (
    TINFOIL_PREDICATE,
    ReleaseSigner,
    ReleaseVerificationError,
    verify_release,
    verify_sigstore,
)


def test_real_bundle_verifies_offline_under_its_workflow_identity() -> None:
    result = verify_release(bundle_bytes(), None, [TINFOIL_SIGNER], trusted_root_path=TRUSTED_ROOT)
    assert result.signer == f"sigstore: {IDENTITY} (issuer {ISSUER})"
    assert result.integrated_time == INTEGRATED_AT
    assert result.digest == SUBJECT_SHA256
    assert result.release == "tinfoilsh/confidential-model-router@v0.0.110"
    manifest = result.manifest
    assert [s.measurement.hex() for s in manifest.sev_snp] == [GENOA_MEASUREMENT]
    assert len(manifest.tdx) == 1 and manifest.tdx[0].pinned() == {"rtmr1", "rtmr2"}
    assert manifest.tdx[0].rtmr1 is not None and manifest.tdx[0].rtmr1.hex().startswith("46658ae5")


def test_real_bundle_verifies_with_the_root_the_sigstore_package_ships() -> None:
    # No trusted root given: the public-good root inside the installed package, read from disk.
    result = verify_release(bundle_bytes(), None, [TINFOIL_SIGNER])
    assert result.digest == SUBJECT_SHA256


def test_release_measurement_is_the_running_genoa_enclave() -> None:
    """Release -> running enclave: the signed SNP measurement is the Genoa report's MEASUREMENT."""
    report = GENOA_REPORT.read_bytes()
    measurement = report[SNP_MEASUREMENT_SLICE]
    from veil.attestation.abi_snp import parse_snp_report

    assert parse_snp_report(report).measurement == measurement
    result = verify_release(bundle_bytes(), None, [TINFOIL_SIGNER], trusted_root_path=TRUSTED_ROOT)
    assert result.manifest.snp_match(measurement)
    assert not result.manifest.snp_match(MILAN_REPORT.read_bytes()[SNP_MEASUREMENT_SLICE])
    altered = bytearray(measurement)
    altered[-1] ^= 0x01
    assert not result.manifest.snp_match(bytes(altered))
    assert not result.manifest.snp_match(measurement[:47])


@pytest.mark.parametrize(
    ("identity", "issuer"),
    [
        # another workflow of the same repository
        (IDENTITY.replace("tinfoil-release-publish.yml", "build.yml"), ISSUER),
        # the same workflow at another tag: identities match exactly, not by prefix
        (IDENTITY.replace("v0.0.110", "v0.0.111"), ISSUER),
        (IDENTITY.replace("tinfoilsh", "evil-fork"), ISSUER),
        (IDENTITY, "https://accounts.google.com"),
    ],
)
def test_real_bundle_fails_under_another_identity_or_issuer(identity: str, issuer: str) -> None:
    signer = ReleaseSigner(sigstore_identity=identity, sigstore_issuer=issuer)
    with pytest.raises(ReleaseVerificationError) as caught:
        verify_release(bundle_bytes(), None, [signer], trusted_root_path=TRUSTED_ROOT)
    reason = caught.value.reason
    assert reason.startswith("release signer is not trusted: bundle signed by ")
    assert f"sigstore: {IDENTITY} (issuer {ISSUER})" in reason  # what was found
    assert f"expected sigstore: {identity} (issuer {issuer})" in reason  # what was expected


def test_tampered_dsse_payload_fails() -> None:
    def tamper(document: dict[str, Any]) -> None:
        envelope = document["dsseEnvelope"]
        envelope["payload"] = flip_b64(envelope["payload"], 200)

    with pytest.raises(
        ReleaseVerificationError, match=r"does not verify for sigstore: .*DSSE: invalid signature"
    ):
        verify_release(with_bundle(tamper), None, [TINFOIL_SIGNER], trusted_root_path=TRUSTED_ROOT)


def test_tampered_dsse_signature_fails() -> None:
    def tamper(document: dict[str, Any]) -> None:
        signature = document["dsseEnvelope"]["signatures"][0]
        signature["sig"] = flip_b64(signature["sig"], 40)

    with pytest.raises(
        ReleaseVerificationError, match=r"does not verify for sigstore: .*DSSE: invalid signature"
    ):
        verify_release(with_bundle(tamper), None, [TINFOIL_SIGNER], trusted_root_path=TRUSTED_ROOT)


def test_tampered_log_entry_fails() -> None:
    def later(document: dict[str, Any]) -> None:
        entry = document["verificationMaterial"]["tlogEntries"][0]
        entry["integratedTime"] = str(int(entry["integratedTime"]) + 1)

    def proof(document: dict[str, Any]) -> None:
        hashes = document["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["hashes"]
        hashes[0] = flip_b64(hashes[0], 3)

    with pytest.raises(ReleaseVerificationError, match="invalid log entry: SET"):
        verify_release(with_bundle(later), None, [TINFOIL_SIGNER], trusted_root_path=TRUSTED_ROOT)
    with pytest.raises(
        ReleaseVerificationError, match="invalid log entry: inclusion proof"
    ) as caught:
        verify_release(with_bundle(proof), None, [TINFOIL_SIGNER], trusted_root_path=TRUSTED_ROOT)
    assert "checkpoint=" not in caught.value.reason  # one short line, not the whole proof
    assert len(caught.value.reason) < 450


def test_verification_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("release verification tried to use the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert verify_release(bundle_bytes(), None, [TINFOIL_SIGNER]).digest == SUBJECT_SHA256


def test_untouched_reencoded_bundle_still_verifies() -> None:
    # Control for the two tests above: re-encoding the JSON alone changes nothing that is signed.
    verify_release(
        with_bundle(lambda _: None), None, [TINFOIL_SIGNER], trusted_root_path=TRUSTED_ROOT
    )


def test_bundle_for_another_digest_fails() -> None:
    # A separate manifest file must be the statement's subject; this one is not.
    other = manifest_bytes()
    with pytest.raises(ReleaseVerificationError) as caught:
        verify_release(other, bundle_bytes(), [TINFOIL_SIGNER], trusted_root_path=TRUSTED_ROOT)
    digest = hashlib.sha256(other).hexdigest()
    assert caught.value.reason == (
        f"manifest sha256 {digest} is not a subject of the signed statement "
        f"(subjects: {SUBJECT_SHA256})"
    )


def test_bundle_logged_after_the_verification_time_fails() -> None:
    before = datetime(2026, 6, 1, tzinfo=UTC)
    with pytest.raises(ReleaseVerificationError, match="after the verification time"):
        verify_sigstore(bundle_bytes(), [TINFOIL_SIGNER], trusted_root_path=TRUSTED_ROOT, at=before)
    after = datetime(2026, 7, 1, tzinfo=UTC)
    result = verify_sigstore(
        bundle_bytes(), [TINFOIL_SIGNER], trusted_root_path=TRUSTED_ROOT, at=after
    )
    assert result.manifest.sev_snp


def test_bundle_needs_a_configured_sigstore_signer() -> None:
    key_only = ReleaseSigner(ed25519_public_key=bytes(32))
    with pytest.raises(ReleaseVerificationError, match="no Sigstore signer configured"):
        verify_release(bundle_bytes(), None, [key_only], trusted_root_path=TRUSTED_ROOT)
    with pytest.raises(ReleaseVerificationError, match="no release signer configured"):
        verify_release(bundle_bytes(), None, [], trusted_root_path=TRUSTED_ROOT)


def test_trusted_root_without_the_fulcio_ca_fails(tmp_path: Path) -> None:
    root = json.loads(TRUSTED_ROOT.read_text())
    root["certificateAuthorities"] = root["certificateAuthorities"][:1]  # only the oldest CA
    path = tmp_path / "trusted_root.json"
    path.write_text(json.dumps(root))
    with pytest.raises(ReleaseVerificationError, match=r"does not verify.*certificate chain"):
        verify_release(bundle_bytes(), None, [TINFOIL_SIGNER], trusted_root_path=path)


def test_tinfoil_predicate_type_is_the_one_supported() -> None:
    payload = json.loads(base64.b64decode(json.loads(bundle_bytes())["dsseEnvelope"]["payload"]))
    assert payload["predicateType"] == TINFOIL_PREDICATE
