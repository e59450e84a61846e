"""What a veil-v3 node refuses: every envelope field a hostile gateway can swap or tamper with, a
downgrade, another node's or a retired key, a replay outside the window, and malformed envelopes.
(The replay cache itself is the node's: tests/node/test_replay.py.)"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.hazmat.parties import BODY, CHAT, EMBED, NOW, RESERVATION, SECRET_TEXT, Node, seal
from veil.hazmat import v1, v3
from veil.hazmat.kem import Kem
from veil.node.keyring import Keyring
from veil.wire.errors import DecryptionFailed, InvalidBody, Replayed, StaleNodeKey
from veil.wire.keyid import key_id

# Low-order X25519 points (canonical, non-canonical and with the ignored top bit set).
LOW_ORDER = [
    bytes.fromhex(x)
    for x in (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    )
]

# -- every field bound in the HPKE info ------------------------------------------------------------

SWAPS: list[tuple[str, Any]] = [
    ("model_name", "another-model"),
    ("stack_small_id", 8),
    ("num_compute_units", 100_000),
    ("num_compute_units", None),
    ("stream", False),
    ("stream", None),
    ("timestamp", int(NOW) + 1),
    ("request_id", b"\x01" * 16),
]


@pytest.mark.parametrize(("field", "value"), SWAPS, ids=[f"{f}={v!r}" for f, v in SWAPS])
def test_every_bound_field_swapped_by_a_gateway_fails_to_open(
    node: Node, field: str, value: object
) -> None:
    envelope, _ = seal(node)
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        node.open(envelope.model_copy(update={field: value}))


def test_another_endpoint_fails_to_open(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        node.open(envelope, endpoint=EMBED)


def test_a_reservation_swapped_in_the_envelope_or_the_ticket_is_refused(node: Node) -> None:
    envelope, _ = seal(node)
    other = "f" * 32
    with pytest.raises(DecryptionFailed, match="another reservation"):
        node.open(envelope, reservation_id=other)  # the ticket names another reservation
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        node.open(envelope.model_copy(update={"reservation_id": other}), reservation_id=other)
    # Stripped, with no ticket to compare: the sealed binding still differs.
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        node.open(envelope.model_copy(update={"reservation_id": None}), reservation_id=None)
    # And one added to a request sealed without any.
    unbound, _ = seal(node, reservation_id=None)
    assert node.open(unbound, reservation_id=None)[0] == BODY
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        node.open(unbound.model_copy(update={"reservation_id": RESERVATION}))


@pytest.mark.parametrize("protocol", [None, "atoma-v1", "veil-v2"])
def test_a_protocol_downgrade_is_refused_and_opens_on_no_other_path(
    node: Node, protocol: str | None
) -> None:
    """Relabelled, the envelope is not v3 to the node; down the v1 path (X25519 with the node's
    key and the envelope's random v1 fields) it cannot decrypt; and v3 binds its own name."""
    envelope, _ = seal(node)
    downgraded = envelope.model_copy(update={"protocol": protocol})
    with pytest.raises(InvalidBody, match="not a veil-v3"):
        node.open(downgraded)
    session = v1.Session.from_exchange(
        node.x25519_private, downgraded.client_dh_public_key, downgraded.salt
    )
    with pytest.raises(DecryptionFailed):
        session.open(downgraded.nonce, downgraded.ciphertext)
    info = v3.info_of(envelope, node.key.kem, CHAT)
    assert b'"protocol":"veil-v3"' in info and info.startswith(b"veil-v3 request\x00")


def test_a_v1_envelope_is_not_a_v3_one(node: Node) -> None:
    v1_envelope, _ = v1.seal_request(
        node.key.x25519_public_key, BODY, model_name="m", stack_small_id=1
    )
    with pytest.raises(InvalidBody, match="not a veil-v3"):
        node.open(v1_envelope)


# -- the KEM, and whose key ------------------------------------------------------------------------


def test_a_kem_the_node_does_not_allow_is_refused_before_decryption() -> None:
    node = Node(Kem.X25519)
    envelope, _ = seal(node)
    with pytest.raises(InvalidBody, match="does not accept"):
        node.open(envelope, allowed_kems=frozenset({Kem.HYBRID}))


def test_the_kem_field_cannot_be_changed_by_a_gateway() -> None:
    hybrid = Node(Kem.HYBRID)
    envelope, _ = seal(hybrid)
    with pytest.raises(InvalidBody):  # the hybrid key is not an X25519 key
        hybrid.open(envelope.model_copy(update={"kem": "x25519"}), allowed_kems=frozenset(Kem))
    classical = Node(Kem.X25519)
    envelope, _ = seal(classical)
    with pytest.raises(InvalidBody):  # too short for an X-Wing encapsulation, and no such key
        classical.open(
            envelope.model_copy(update={"kem": "mlkem768-x25519"}), allowed_kems=frozenset(Kem)
        )
    with pytest.raises(InvalidBody, match="unknown veil-v3 kem"):
        classical.open(envelope.model_copy(update={"kem": "x448"}))


def test_unknown_key_id_and_foreign_node_key_are_refused(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(InvalidBody, match="no current"):
        node.open(envelope.model_copy(update={"key_id": "00" * 8}))
    with pytest.raises(InvalidBody, match="node_dh_public_key"):
        node.open(envelope.model_copy(update={"node_dh_public_key": b"\x09" * 32}))


def test_an_envelope_moved_to_another_node_is_refused(node: Node) -> None:
    envelope, _ = seal(node)
    other = Node(node.key.kem)
    with pytest.raises(InvalidBody, match="no current"):
        other.open(envelope)  # sent on unchanged: not a key of this node
    # Relabelled to the other node's key id and X25519 key: its key cannot open it.
    moved = envelope.model_copy(
        update={"key_id": other.key.key_id, "node_dh_public_key": other.key.x25519_public_key}
    )
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        other.open(moved)


def test_the_client_refuses_a_lying_lock(node: Node) -> None:
    args: dict[str, Any] = {
        "node_signing_key": node.signing_public,
        "endpoint": CHAT,
        "model_name": "m",
        "stack_small_id": 1,
        "kem": node.key.kem,
    }
    with pytest.raises(InvalidBody, match="key_id"):
        v3.seal_request(node.key.public_key, "00" * 8, BODY, **args)
    with pytest.raises(InvalidBody, match="public key must be"):
        v3.seal_request(node.key.public_key[:-1], node.key.key_id, BODY, **args)
    with pytest.raises(InvalidBody, match="signing key"):
        v3.seal_request(
            node.key.public_key, node.key.key_id, BODY, **{**args, "node_signing_key": b"\x01"}
        )


def test_keys_rotate_with_grace_then_the_old_one_is_refused(tmp_path: Path) -> None:
    """With the node's own keyring: a request sealed to the key before a rotation opens during the
    grace, not after (409, re-lock), and cannot be relabelled onto the new key."""
    ring = Keyring(tmp_path, grace_seconds=60)
    signer = ring.signing_key.public_key()
    before = ring.current.hybrid
    assert before is not None

    def sealed_to(key: v3.NodeKemKey) -> Any:
        return v3.seal_request(
            key.public_key,
            key.key_id,
            BODY,
            node_signing_key=signer,
            endpoint=CHAT,
            model_name="m",
            stack_small_id=1,
            now=NOW,
        )[0]

    def opened(envelope: Any, at: float) -> bytes:
        body, _ = v3.open_request(
            envelope, lambda kid: ring.kem_key(kid, at), endpoint=CHAT, now=at
        )
        return body

    old = sealed_to(before)
    ring.rotate(now=NOW)
    after = ring.current.hybrid
    assert after is not None and after.key_id != before.key_id
    assert opened(old, NOW + 30) == BODY  # within the grace
    assert opened(sealed_to(after), NOW + 90) == BODY
    with pytest.raises(StaleNodeKey):
        opened(old, NOW + 90)  # the grace is over (the timestamp window is not)
    relabelled = old.model_copy(
        update={"key_id": after.key_id, "node_dh_public_key": after.x25519_public_key}
    )
    with pytest.raises(DecryptionFailed):
        opened(relabelled, NOW + 30)


# -- the ciphertext and the encapsulation ----------------------------------------------------------


def test_a_tampered_ciphertext_byte_anywhere_fails_to_open(node: Node) -> None:
    envelope, _ = seal(node)
    size, enc = len(envelope.ciphertext), node.key.kem.enc_size
    for position in (0, enc - 1, enc, enc + 10, size - 17, size - 1):
        flipped = bytearray(envelope.ciphertext)
        flipped[position] ^= 0x80
        with pytest.raises(DecryptionFailed) as caught:
            node.open(envelope.model_copy(update={"ciphertext": bytes(flipped)}))
        assert SECRET_TEXT not in str(caught.value).encode()


def test_a_truncated_ciphertext_is_refused(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(DecryptionFailed):
        node.open(envelope.model_copy(update={"ciphertext": envelope.ciphertext[:-1]}))
    with pytest.raises(InvalidBody, match="shorter"):
        node.open(envelope.model_copy(update={"ciphertext": envelope.ciphertext[:40]}))


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_a_low_order_x25519_encapsulation_is_refused(node: Node, point: bytes) -> None:
    """The X25519 share of the encapsulation (all of it for X25519, X-Wing's last 32 bytes)."""
    envelope, _ = seal(node)
    start = node.key.kem.enc_size - 32
    ciphertext = bytearray(envelope.ciphertext)
    ciphertext[start : start + 32] = point
    with pytest.raises(DecryptionFailed):
        node.open(envelope.model_copy(update={"ciphertext": bytes(ciphertext)}))


@pytest.mark.parametrize("point", LOW_ORDER[:4], ids=lambda p: p.hex()[:8])
def test_the_client_refuses_a_low_order_node_key(point: bytes) -> None:
    """cryptography refuses the exchange (ValueError; the client maps it to UnverifiableNode)."""
    hybrid = Node(Kem.HYBRID).key.public_key[:-32] + point
    for kem, public in ((Kem.X25519, point), (Kem.HYBRID, hybrid)):
        with pytest.raises(ValueError):
            v3.seal_request(
                public,
                key_id(public),
                BODY,
                node_signing_key=Node().signing_public,
                endpoint=CHAT,
                model_name="m",
                stack_small_id=1,
                kem=kem,
            )


# -- the v1-shaped fields v3 does not use ----------------------------------------------------------

UNUSED = ("client_dh_public_key", "nonce", "salt", "plaintext_body_hash")


def test_the_unused_v1_fields_are_fresh_random_not_a_hash_of_the_body(node: Node) -> None:
    first, _ = seal(node)
    second, _ = seal(node)
    for name in UNUSED:
        assert getattr(first, name) != getattr(second, name), name
    for envelope in (first, second):
        assert envelope.plaintext_body_hash not in (
            hashlib.sha256(BODY).digest(),
            hashlib.blake2b(BODY, digest_size=32).digest(),
        )


def test_the_unused_v1_fields_carry_nothing_a_gateway_could_change(node: Node) -> None:
    """Rewritten, they change neither the request the node opens nor the answer's keys."""
    envelope, client = seal(node)
    rewritten = envelope.model_copy(
        update={name: os.urandom(len(getattr(envelope, name))) for name in UNUSED}
    )
    body, server = node.open(rewritten)
    assert body == BODY
    final = server.seal(b"x", final=True, sign=node.signer.sign)
    assert client.open(final) == b"x"


# -- malformed envelopes ---------------------------------------------------------------------------


def test_missing_fields_are_a_bad_request(node: Node) -> None:
    envelope, _ = seal(node)
    for field in ("key_id", "request_id", "timestamp", "kem"):
        with pytest.raises(InvalidBody):
            node.open(envelope.model_copy(update={field: None}))


def test_a_request_id_of_the_wrong_size_does_not_open(node: Node) -> None:
    envelope, _ = seal(node)
    # model_construct bypasses the wire model's size checks, as a buggy caller could.
    raw = envelope.model_construct(**{**dict(envelope), "request_id": b"\x09" * 15})
    with pytest.raises(DecryptionFailed):
        node.open(raw)


# -- timestamps and replays ------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-121.0, 121.0, -10_000.0, 10_000.0])
def test_a_request_outside_the_window_is_refused_as_a_replay(node: Node, skew: float) -> None:
    envelope, _ = seal(node)
    with pytest.raises(Replayed, match="outside"):
        node.open(envelope, now=NOW + skew)


@pytest.mark.parametrize("skew", [-120.0, 0.0, 120.0])
def test_a_request_inside_the_window_is_accepted(node: Node, skew: float) -> None:
    envelope, _ = seal(node)
    assert node.open(envelope, now=NOW + skew)[0] == BODY


def test_the_window_is_configurable(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(Replayed):
        node.open(envelope, now=NOW + 31, window=30)
    _, server = node.open(envelope, now=NOW + 30, window=30)
    assert server.expires_at == int(NOW) + 30 + 1


def test_stale_and_tampered_is_a_decryption_failure_not_a_replay(node: Node) -> None:
    """The window is judged on authentic timestamps only."""
    envelope, _ = seal(node)
    ct = bytes([envelope.ciphertext[0] ^ 1]) + envelope.ciphertext[1:]
    with pytest.raises(DecryptionFailed):
        node.open(envelope.model_copy(update={"ciphertext": ct}), now=NOW + 10_000)
    with pytest.raises(DecryptionFailed):
        node.open(envelope.model_copy(update={"timestamp": int(NOW) + 10_000}))


def test_opening_twice_gives_the_same_request_id_for_the_replay_cache(node: Node) -> None:
    envelope, _ = seal(node)
    _, first = node.open(envelope)
    _, second = node.open(envelope)
    assert first.request_id == second.request_id == envelope.request_id
    assert first.expires_at == second.expires_at
    assert first.response_nonce != second.response_nonce  # and never the same answer keys
