"""Users and API keys: keys stored only as hashes, refused alike however they are wrong."""

from __future__ import annotations

import hashlib

import pytest

from tests.gateway.conftest import LedgerHarness
from veil.wire.errors import AuthError, InvalidBody, NotFound


def test_api_keys_are_stored_only_as_hashes(h: LedgerHarness) -> None:
    user, key = h.create_user("alice")
    assert key.startswith("veil_") and len(key) == 48
    rows = h.sql("SELECT * FROM api_keys")
    assert len(rows) == 1
    row = rows[0]._mapping
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert row["prefix"] == key[:12]
    for value in row.values():
        assert key not in str(value)
        assert key.encode() not in (value if isinstance(value, bytes) else b"")
    assert h.authenticate(key) == user


def test_wrong_unknown_and_revoked_keys_are_refused(h: LedgerHarness) -> None:
    _, key = h.create_user("alice")
    same_prefix = key[:12] + ("A" if key[12] != "A" else "B") + key[13:]
    for bad in (same_prefix, "veil_" + "x" * 43, "", "Bearer nonsense", key + "x"):
        with pytest.raises(AuthError) as refused:
            h.authenticate(bad)
        assert key[5:] not in refused.value.message
    assert h.revoke_api_key(key[:12]) is True
    assert h.revoke_api_key(key) is False
    with pytest.raises(AuthError, match="revoked"):
        h.authenticate(key)
    with pytest.raises(NotFound):
        h.revoke_api_key("veil_zzzzzzz")
    with pytest.raises(NotFound):
        h.revoke_api_key(same_prefix)  # a whole key must match its hash, not only the prefix


def test_a_user_can_hold_several_keys(h: LedgerHarness) -> None:
    alice, first = h.create_user("alice")
    second = h.create_api_key("alice", admin=True)
    assert h.authenticate(first).is_admin is False
    assert h.authenticate(second).is_admin is True
    assert h.get_user("alice").is_admin is True
    h.revoke_api_key(second)
    assert h.get_user("alice").is_admin is False
    assert h.authenticate(first) == alice
    with pytest.raises(NotFound):
        h.create_api_key("nobody")
    with pytest.raises(InvalidBody):
        h.create_user("alice")


def test_admin_key_is_created_once(h: LedgerHarness) -> None:
    key = h.ensure_admin_key()
    assert key is not None
    admin = h.authenticate(key)
    assert admin.name == "admin" and admin.is_admin
    assert h.ensure_admin_key() is None
    h.reopen()
    assert h.ensure_admin_key() is None
    h.revoke_api_key(key)
    assert h.ensure_admin_key() is None
