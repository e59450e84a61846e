"""Signed release manifests: the real Tinfoil Sigstore bundle, Ed25519 release keys, the CLI.

The Sigstore bundle in ../shared/attestation-samples/sigstore/ is a genuine release of Tinfoil's
model router, signed keylessly by its GitHub Actions workflow; it is verified fully offline against
the trusted_root.json beside it. Its SEV-SNP measurement is the one the Genoa report in sev-snp/
carries, so the chain release -> running enclave is tested on real bytes end to end.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from typer.testing import CliRunner

from tests.attestation import SAMPLE_MR_TD, SAMPLES, quote_bytes
from veil.attestation.abi_tdx import parse_tdx_quote
from veil.attestation.release import (
    TINFOIL_PREDICATE,
    ReleaseManifest,
    ReleaseManifestError,
    ReleaseSigner,
    ReleaseVerificationError,
    parse_manifest,
    sign_manifest,
    tdx_fields,
    verify_ed25519,
    verify_release,
    verify_shown_release,
    verify_sigstore,
)
from veil.attestation.release_cli import release_app

BUNDLE = SAMPLES / "sigstore" / "tinfoil_confidential-model-router_v0.0.110.sigstore.json"
TRUSTED_ROOT = SAMPLES / "sigstore" / "trusted_root.json"
GENOA_REPORT = SAMPLES / "sev-snp" / "teep_tinfoil_genoa_report.bin"
MILAN_REPORT = SAMPLES / "sev-snp" / "gosevguest_report.bin"
IDENTITY = (
    "https://github.com/tinfoilsh/confidential-model-router/.github/workflows/"
    "tinfoil-release-publish.yml@refs/tags/v0.0.110"
)
ISSUER = "https://token.actions.githubusercontent.com"
TINFOIL_SIGNER = ReleaseSigner(sigstore_identity=IDENTITY, sigstore_issuer=ISSUER)
# What the bundle's transparency-log entry and in-toto subject say (read from the sample by hand).
INTEGRATED_AT = datetime.fromtimestamp(1782251465, tz=UTC)
SUBJECT_SHA256 = "59239f442bcc5814c5981c1d424e25ab190784c6d3162b76fa90bbce88a4e4c9"
GENOA_MEASUREMENT = (
    "7adcb574b1e22ab579f3c883da3e5b6e632ef06775dd13fdb16850640135a5f6"
    "3c7eb8741fe340c672edaf241bd1ed7c"
)
SNP_MEASUREMENT_SLICE = slice(0x90, 0xC0)  # MEASUREMENT in the SEV-SNP ATTESTATION_REPORT

runner = CliRunner()


def bundle_bytes() -> bytes:
    return BUNDLE.read_bytes()


def with_bundle(change: Any) -> bytes:
    """The sample bundle with one change applied to its parsed JSON."""
    document = json.loads(bundle_bytes())
    change(document)
    return json.dumps(document).encode()


def flip_b64(value: str, index: int) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def manifest_document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "release": "veil-node 1.4.2",
        "tdx": [{"mr_td": SAMPLE_MR_TD, "rtmr3": "00" * 48}],
        "sev_snp": [{"measurement": GENOA_MEASUREMENT}],
        "gpu": [{"driver_version": "550.90.07", "vbios_version": "96.00.9F.00.01"}],
        "models": {"smollm2-135m-instruct": "sha256:" + "ab" * 32},
        "created_at": "2026-06-01T00:00:00Z",
    }
    document.update(changes)
    return document


def manifest_bytes(**changes: Any) -> bytes:
    return json.dumps(manifest_document(**changes), indent=2).encode()


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# --- Sigstore: the real Tinfoil release ------------------------------------------------------


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


# --- Ed25519 release key ----------------------------------------------------------------------


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


# --- Manifest model and matching --------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (manifest_document(tdx=[{"mr_td": "ab" * 47}]), "tdx.0.mr_td"),
        (manifest_document(tdx=[{"rtmr1": "ab" * 49}]), "48 bytes"),
        (manifest_document(sev_snp=[{"measurement": "zz" * 48}]), "must be hex"),
        (manifest_document(sev_snp=[{"measurement": "ab" * 32}]), "found 32 bytes"),
        (manifest_document(signature="x"), "signature: Extra inputs are not permitted"),
        (manifest_document(tdx=[{"mr_td": SAMPLE_MR_TD, "mrtd": SAMPLE_MR_TD}]), "tdx.0.mrtd"),
        (
            manifest_document(gpu=[{"driver_version": "550", "vbios_version": "9", "x": 1}]),
            "gpu.0.x",
        ),
        (manifest_document(tdx=[{}]), "must pin at least one of mr_td"),
        (manifest_document(models={"m": "sha256:" + "AB" * 32}), "64 lowercase hex"),
        (manifest_document(models={"m": "md5:" + "ab" * 16}), "digest must be 'sha256:'"),
        (manifest_document(tdx=[], sev_snp=[]), "at least one TDX or SEV-SNP"),
        (manifest_document(release=""), "release"),
    ],
)
def test_invalid_manifests_are_rejected(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ReleaseManifestError, match="not a valid release manifest") as caught:
        parse_manifest(json.dumps(document).encode())
    assert message in caught.value.reason


def test_manifest_that_is_not_json_is_rejected() -> None:
    with pytest.raises(ReleaseManifestError, match="not valid JSON"):
        parse_manifest(b"release = 'x'")


def test_manifest_round_trips_as_hex() -> None:
    manifest = parse_manifest(manifest_bytes())
    dumped = manifest.model_dump(mode="json")
    assert dumped["tdx"][0]["mr_td"] == SAMPLE_MR_TD
    assert ReleaseManifest.model_validate(dumped) == manifest
    with pytest.raises(Exception):
        manifest.release = "changed"  # type: ignore[misc]


def test_tdx_match_on_a_real_quote() -> None:
    quote = parse_tdx_quote(quote_bytes())
    manifest = parse_manifest(manifest_bytes())
    assert manifest.tdx_match(quote) == {"mr_td", "rtmr3"}
    assert manifest.tdx_match(tdx_fields(quote)) == {"mr_td", "rtmr3"}
    wrong_rtmr = manifest_document(tdx=[{"mr_td": SAMPLE_MR_TD, "rtmr3": "01" * 48}])
    assert parse_manifest(json.dumps(wrong_rtmr).encode()).tdx_match(quote) is None
    # A second set that matches is found after one that does not.
    two = manifest_document(tdx=wrong_rtmr["tdx"] + [{"mr_td": SAMPLE_MR_TD}])
    assert parse_manifest(json.dumps(two).encode()).tdx_match(quote) == {"mr_td"}
    # A field the quote does not report never matches.
    fields = tdx_fields(quote)
    del fields["rtmr3"]
    assert manifest.tdx_match(fields) is None


def test_gpu_and_model_match() -> None:
    manifest = parse_manifest(manifest_bytes())
    assert manifest.gpu_match("550.90.07", "96.00.9f.00.01")
    assert not manifest.gpu_match("550.90.08", "96.00.9F.00.01")
    assert not manifest.gpu_match("550.90.07", "96.00.5E.00.01")
    assert manifest.model_match("smollm2-135m-instruct", "sha256:" + "ab" * 32)
    assert not manifest.model_match("smollm2-135m-instruct", "sha256:" + "ab" * 31 + "ac")
    assert not manifest.model_match("other-model", "sha256:" + "ab" * 32)


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


# --- CLI --------------------------------------------------------------------------------------


def test_cli_keygen_sign_verify(tmp_path: Path) -> None:
    key_file, manifest, sig = tmp_path / "release.key", tmp_path / "m.json", tmp_path / "m.sig"
    result = runner.invoke(release_app, ["keygen", "--out", str(key_file)])
    assert result.exit_code == 0, result.output
    public = result.stdout.strip()
    assert len(base64.b64decode(public)) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # keygen never overwrites a key
    again = runner.invoke(release_app, ["keygen", "--out", str(key_file)])
    assert again.exit_code == 2 and "error: cannot create key file" in again.output

    manifest.write_bytes(manifest_bytes())
    signed = runner.invoke(
        release_app, ["sign", str(manifest), "--key", str(key_file), "--out", str(sig)]
    )
    assert signed.exit_code == 0, signed.output
    assert json.loads(sig.read_text())["public_key"] == public

    ok = runner.invoke(
        release_app,
        ["verify", str(manifest), "--signature", str(sig), "--trusted-key", public, "--json"],
    )
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["verified"] is True and report["release"] == "veil-node 1.4.2"
    assert report["signer"] == f"ed25519: {public}"

    stranger = base64.b64encode(raw_public(Ed25519PrivateKey.generate())).decode()
    refused = runner.invoke(
        release_app, ["verify", str(manifest), "--signature", str(sig), "--trusted-key", stranger]
    )
    assert refused.exit_code == 1
    assert refused.stdout.startswith("FAIL: release signer is not trusted")

    manifest.write_bytes(manifest_bytes(release="veil-node 1.4.3"))
    tampered = runner.invoke(
        release_app, ["verify", str(manifest), "--signature", str(sig), "--trusted-key", public]
    )
    assert tampered.exit_code == 1 and "signature is for manifest sha256" in tampered.stdout


def test_cli_sign_accepts_a_raw_key_and_prints_to_stdout(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    key_file, manifest = tmp_path / "raw.key", tmp_path / "m.json"
    key_file.write_bytes(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))
    manifest.write_bytes(manifest_bytes())
    result = runner.invoke(release_app, ["sign", str(manifest), "--key", str(key_file)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    verify_ed25519(manifest.read_bytes(), document, [raw_public(key)])


def test_cli_unreadable_inputs_exit_2(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_bytes(manifest_bytes())
    key_b64 = base64.b64encode(bytes(32)).decode()
    missing = runner.invoke(
        release_app,
        ["verify", str(manifest), "--signature", str(tmp_path / "nope"), "--trusted-key", key_b64],
    )
    assert missing.exit_code == 2 and "error: cannot read signature" in missing.output
    (tmp_path / "bad.sig").write_text("not json")
    bad_json = runner.invoke(
        release_app,
        [
            "verify",
            str(manifest),
            "--signature",
            str(tmp_path / "bad.sig"),
            "--trusted-key",
            key_b64,
        ],
    )
    assert bad_json.exit_code == 2 and "is not valid JSON" in bad_json.output
    bad_key = runner.invoke(
        release_app,
        ["verify", str(manifest), "--signature", str(tmp_path / "bad.sig"), "--trusted-key", "%%"],
    )
    assert bad_key.exit_code == 2
    no_mode = runner.invoke(release_app, ["verify", str(manifest)])
    assert no_mode.exit_code == 2 and "error: give --signature" in no_mode.output
    (tmp_path / "k").write_bytes(b"short")
    bad_key_file = runner.invoke(release_app, ["sign", str(manifest), "--key", str(tmp_path / "k")])
    assert (
        bad_key_file.exit_code == 2 and "neither a raw 32-byte Ed25519 key" in bad_key_file.output
    )
    (tmp_path / "invalid.json").write_text('{"release": "x", "tdx": [{"mr_td": "00"}]}')
    key_file = tmp_path / "good.key"
    runner.invoke(release_app, ["keygen", "--out", str(key_file)])
    invalid = runner.invoke(
        release_app, ["sign", str(tmp_path / "invalid.json"), "--key", str(key_file)]
    )
    assert invalid.exit_code == 2 and "tdx.0.mr_td" in invalid.output


def test_cli_verifies_the_real_bundle(tmp_path: Path) -> None:
    base = ["verify", "--bundle", str(BUNDLE), "--trusted-root", str(TRUSTED_ROOT)]
    ok = runner.invoke(release_app, [*base, "--identity", IDENTITY, "--issuer", ISSUER, "--json"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["manifest"]["sev_snp"] == [{"measurement": GENOA_MEASUREMENT}]
    assert report["integrated_time"] == INTEGRATED_AT.isoformat()

    embedded_root = runner.invoke(
        release_app, ["verify", "--bundle", str(BUNDLE), "--identity", IDENTITY, "--issuer", ISSUER]
    )
    assert embedded_root.exit_code == 0, embedded_root.output
    assert embedded_root.stdout.startswith(
        "PASS: release tinfoilsh/confidential-model-router@v0.0.110 signed by sigstore: "
    )

    other = IDENTITY.replace("v0.0.110", "v0.0.109")
    refused = runner.invoke(release_app, [*base, "--identity", other, "--issuer", ISSUER])
    assert refused.exit_code == 1 and "release signer is not trusted" in refused.stdout
    as_json = runner.invoke(release_app, [*base, "--identity", other, "--issuer", ISSUER, "--json"])
    assert as_json.exit_code == 1
    failure = json.loads(as_json.stdout)
    assert failure["verified"] is False and "not trusted" in failure["error"]

    wrong_subject = tmp_path / "m.json"
    wrong_subject.write_bytes(manifest_bytes())
    not_subject = runner.invoke(
        release_app, [*base, str(wrong_subject), "--identity", IDENTITY, "--issuer", ISSUER]
    )
    assert not_subject.exit_code == 1 and "is not a subject" in not_subject.stdout

    half = runner.invoke(release_app, [*base, "--identity", IDENTITY])
    assert (
        half.exit_code == 2 and "error: --bundle needs both --identity and --issuer" in half.output
    )
    (tmp_path / "b.json").write_text("{")
    bad = runner.invoke(
        release_app,
        [
            "verify",
            "--bundle",
            str(tmp_path / "b.json"),
            "--identity",
            IDENTITY,
            "--issuer",
            ISSUER,
        ],
    )
    assert bad.exit_code == 2 and "is not valid JSON" in bad.output


# --- What a node shows, under the client's policy ---------------------------------------------


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
