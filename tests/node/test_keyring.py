"""Keyring: persistence, 0600 files, rotation with a grace window, key ids, signatures."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.node.keyring import Keyring, key_id
from veil.wire.errors import StaleNodeKey


def test_keys_persist_across_restarts(tmp_path: Path) -> None:
    first = Keyring(tmp_path)
    again = Keyring(tmp_path)
    assert again.current.public_key == first.current.public_key
    assert again.signing_public_key == first.signing_public_key


def test_every_key_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    keyring.rotate()
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    files = list((tmp_path / "keys").iterdir())
    assert {f.name for f in files} >= {
        "x25519-current.key",
        "x25519-previous.key",
        "ed25519-signing.key",
        "keyring.json",
    }
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_loosened_permissions_are_tightened_on_load(tmp_path: Path) -> None:
    Keyring(tmp_path)
    secret = tmp_path / "keys" / "ed25519-signing.key"
    secret.chmod(0o644)
    Keyring(tmp_path)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_key_id_is_first_8_bytes_of_blake2b_256_hex(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    expected = hashlib.blake2b(keyring.current.public_key, digest_size=32).hexdigest()[:16]
    assert keyring.current.key_id == expected == key_id(keyring.current.public_key)


def test_previous_key_accepted_inside_grace_then_stale(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path, grace_seconds=600)
    old = keyring.current
    new = keyring.rotate(now=1_000_000.0)
    assert new.public_key != old.public_key
    assert keyring.lookup(old.public_key, now=1_000_000.0 + 599).key_id == old.key_id
    assert keyring.lookup(new.public_key, now=1_000_000.0 + 10_000).key_id == new.key_id
    with pytest.raises(StaleNodeKey):
        keyring.lookup(old.public_key, now=1_000_000.0 + 601)


def test_only_one_previous_key_survives_two_rotations(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    oldest = keyring.current
    keyring.rotate()
    keyring.rotate()
    with pytest.raises(StaleNodeKey):
        keyring.lookup(oldest.public_key)


def test_unknown_key_is_stale(tmp_path: Path) -> None:
    with pytest.raises(StaleNodeKey, match="re-encrypt"):
        Keyring(tmp_path).lookup(bytes(32))


def test_rotation_in_another_process_is_picked_up(tmp_path: Path) -> None:
    serving = Keyring(tmp_path)
    before = serving.current.key_id
    rotated = Keyring(tmp_path).rotate()  # what `veil node rotate-key` does
    assert serving.lookup(rotated.public_key).key_id == rotated.key_id
    assert serving.current.key_id == rotated.key_id != before


def test_signature_verifies_with_published_key(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    signature = keyring.sign(b"x" * 32)
    Ed25519PublicKey.from_public_bytes(keyring.signing_public_key).verify(signature, b"x" * 32)


def test_describe_and_repr_hold_no_private_material(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    keyring.rotate()
    text = repr(keyring.current) + repr(keyring.describe())
    for name in ("x25519-current.key", "x25519-previous.key", "ed25519-signing.key"):
        raw = (tmp_path / "keys" / name).read_bytes()
        assert raw.hex() not in text
        import base64

        assert base64.b64encode(raw).decode() not in text
    described = keyring.describe()
    assert [k["status"] for k in described["keys"]] == ["current", "previous"]
