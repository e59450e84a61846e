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


# -- veil-v3: the post-quantum key of each generation ----------------------------------------------


def test_each_generation_holds_an_xwing_seed_0600_that_persists(tmp_path: Path) -> None:
    from veil.hazmat.v3 import Kem, NodeKemKey

    keyring = Keyring(tmp_path)
    hybrid = keyring.current.hybrid
    assert hybrid is not None and hybrid.kem is Kem.HYBRID
    seed_path = tmp_path / "keys" / "xwing-current.seed"
    assert stat.S_IMODE(seed_path.stat().st_mode) == 0o600
    assert NodeKemKey.from_seed(Kem.HYBRID, seed_path.read_bytes()).public_key == hybrid.public_key
    again = Keyring(tmp_path)
    assert again.current.hybrid is not None
    assert again.current.hybrid.public_key == hybrid.public_key
    assert len(hybrid.public_key) == 1216
    # v3's classical KEM is the generation's X25519 key itself, under the same key id.
    classical = keyring.kem_key(keyring.current.key_id)
    assert classical.kem is Kem.X25519 and classical.public_key == keyring.current.public_key


def test_the_xwing_key_rotates_with_the_x25519_key_and_shares_its_grace(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path, grace_seconds=600)
    old = keyring.current
    assert old.hybrid is not None
    new = keyring.rotate(now=1_000_000.0)
    assert new.hybrid is not None and new.hybrid.public_key != old.hybrid.public_key
    assert keyring.previous is not None and keyring.previous.hybrid is not None
    assert keyring.previous.hybrid.public_key == old.hybrid.public_key
    seed = tmp_path / "keys" / "xwing-previous.seed"
    assert stat.S_IMODE(seed.stat().st_mode) == 0o600
    inside = keyring.kem_key(old.hybrid.key_id, now=1_000_000.0 + 599)
    assert inside.public_key == old.hybrid.public_key
    later = keyring.kem_key(new.hybrid.key_id, now=1_000_000.0 + 10_000)
    assert later.public_key == new.hybrid.public_key
    with pytest.raises(StaleNodeKey, match="re-encrypt"):
        keyring.kem_key(old.hybrid.key_id, now=1_000_000.0 + 601)
    with pytest.raises(StaleNodeKey):
        keyring.kem_key("0123456789abcdef")
    # Another process's rotation brings the new post-quantum key too.
    rotated = Keyring(tmp_path).rotate()
    assert rotated.hybrid is not None
    assert keyring.kem_key(rotated.hybrid.key_id).public_key == rotated.hybrid.public_key


def test_keys_lists_the_kem_fields_of_each_generation(tmp_path: Path) -> None:
    import base64

    keyring = Keyring(tmp_path)
    keyring.rotate()
    entries = keyring.describe()["keys"]
    assert [e["status"] for e in entries] == ["current", "previous"]
    generations = [keyring.current, keyring.previous]
    for entry, generation in zip(entries, generations, strict=True):
        assert generation is not None and generation.hybrid is not None
        kem_public_key = base64.b64decode(entry["kem_public_key"], validate=True)
        assert entry["kem"] == "mlkem768-x25519"
        assert len(kem_public_key) == 1216
        assert kem_public_key == generation.hybrid.public_key
        assert entry["kem_key_id"] == key_id(kem_public_key) == generation.hybrid.key_id
    for slot in ("current", "previous"):
        seed = (tmp_path / "keys" / f"xwing-{slot}.seed").read_bytes()
        assert seed.hex() not in repr(entries) and base64.b64encode(seed).decode() not in repr(
            entries
        )


def test_a_keyring_from_before_v3_gains_an_xwing_key_and_keeps_its_x25519_key(
    tmp_path: Path,
) -> None:
    first = Keyring(tmp_path)
    first.rotate()
    keys = tmp_path / "keys"
    (keys / "xwing-current.seed").unlink()
    (keys / "xwing-previous.seed").unlink()
    loaded = Keyring(tmp_path)
    assert loaded.current.public_key == first.current.public_key
    assert loaded.current.hybrid is not None
    assert stat.S_IMODE((keys / "xwing-current.seed").stat().st_mode) == 0o600
    # The old previous generation has no post-quantum key: atoma-v1 (and veil-v3 over X25519, where
    # allowed) only, and listed without one.
    assert loaded.previous is not None and loaded.previous.hybrid is None
    assert [("kem" in e) for e in loaded.describe()["keys"]] == [True, False]
    reloaded = Keyring(tmp_path).current.hybrid
    assert reloaded is not None and reloaded.public_key == loaded.current.hybrid.public_key
    # Rotating it carries the absence over cleanly: no stale seed is left in the previous slot.
    loaded.rotate()
    assert (keys / "xwing-previous.seed").exists()
    assert Keyring(tmp_path).previous is not None
