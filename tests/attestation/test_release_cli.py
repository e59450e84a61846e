"""``veil release keygen``, ``sign`` and ``verify``."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from typer.testing import CliRunner

from tests.attestation.release_samples import (
    BUNDLE,
    GENOA_MEASUREMENT,
    IDENTITY,
    INTEGRATED_AT,
    ISSUER,
    TRUSTED_ROOT,
    manifest_bytes,
    raw_public,
)
from veil.attestation.release import verify_ed25519
from veil.attestation.release_cli import release_app

runner = CliRunner()


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


def test_release_commands_are_mounted_on_veil() -> None:
    from veil.cli import app

    result = runner.invoke(app, ["release", "--help"])
    assert result.exit_code == 0 and "sign" in result.stdout and "verify" in result.stdout
