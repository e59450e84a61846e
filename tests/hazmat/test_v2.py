"""The veil-v2 suite: round trips, and every swap, replay, reorder and truncation it must refuse."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.hazmat import v1, v2
from veil.node.keyring import key_id as keyring_key_id
from veil.wire.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse
from veil.wire.errors import DecryptionFailed, InvalidBody, Replayed

CHAT = "/v1/confidential/chat/completions"
EMBED = "/v1/confidential/embeddings"
NOW = 1_750_000_000.0
BODY = b'{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"a secret prompt"}]}'

V2_REQUEST_FIELDS = ("protocol", "key_id", "request_id", "timestamp")

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


class Node:
    def __init__(self) -> None:
        self.private_key = X25519PrivateKey.generate()
        self.public_key = self.private_key.public_key().public_bytes_raw()
        self.key_id = v2.key_id_of(self.public_key)
        self.signing_key = Ed25519PrivateKey.generate()
        self.signing_public = self.signing_key.public_key().public_bytes_raw()

    def open(
        self, envelope: ConfidentialComputeRequest, endpoint: str = CHAT, now: float = NOW
    ) -> tuple[bytes, v2.ServerSession]:
        return v2.open_request(envelope, self.private_key, endpoint=endpoint, now=now)


@pytest.fixture
def node() -> Node:
    return Node()


def seal(
    node: Node, body: bytes = BODY, **overrides: Any
) -> tuple[ConfidentialComputeRequest, v2.ClientSession]:
    args: dict[str, Any] = {
        "endpoint": CHAT,
        "model_name": "smollm2-135m-instruct",
        "stack_small_id": 7,
        "num_compute_units": 256,
        "stream": True,
        "now": NOW,
    }
    args.update(overrides)
    return v2.seal_request(node.public_key, node.key_id, body, **args)


def stream(node: Node, session: v2.ServerSession, n: int) -> list[ConfidentialComputeResponse]:
    return [
        session.seal(
            f"chunk {i}".encode(),
            index=i,
            final=i == n - 1,
            sign=node.signing_key.sign,
            usage={"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}
            if i == n - 1
            else None,
        )
        for i in range(n)
    ]


# -- round trips -----------------------------------------------------------------------------------


def test_request_and_whole_response_round_trip(node: Node) -> None:
    envelope, client = seal(node, stream=False)
    assert envelope.protocol == "veil-v2" and envelope.key_id == node.key_id
    assert envelope.timestamp == int(NOW) and envelope.request_id == client.request_id
    plaintext, server = node.open(envelope)
    assert plaintext == BODY
    assert server.request_id == client.request_id and server.key_id == node.key_id
    assert server.expires_at > NOW + 120

    answer = server.seal(b'{"answer":42}', index=0, final=True, sign=node.signing_key.sign)
    assert answer.index == 0 and answer.final is True
    assert answer.response_nonce == server.response_nonce
    assert v2.open_response(client, answer) == b'{"answer":42}'
    v2.verify_signature(answer, node.signing_public)
    assert client.complete


def test_five_chunk_stream_round_trips(node: Node) -> None:
    envelope, client = seal(node)
    _, server = node.open(envelope)
    chunks = stream(node, server, 5)
    assert [c.index for c in chunks] == [0, 1, 2, 3, 4]
    assert [c.final for c in chunks] == [False, False, False, False, True]
    assert [c.usage is not None for c in chunks] == [False, False, False, False, True]
    assert len({c.response_nonce for c in chunks}) == 1
    assert len({c.nonce for c in chunks}) == 5
    opened = [client.open(c) for c in chunks]
    for c in chunks:
        v2.verify_signature(c, node.signing_public)
    client.finish()
    assert opened == [f"chunk {i}".encode() for i in range(5)]


def test_envelope_and_chunks_survive_their_json_wire_form(node: Node) -> None:
    envelope, client = seal(node)
    wire = json.loads(envelope.model_dump_json())
    assert {"protocol", "key_id", "request_id", "timestamp"} <= set(wire)
    # Shape a v1 parser accepts: v1 fields of the v1 sizes (salt and nonce unused by v2).
    v1_only = {k: v for k, v in wire.items() if k not in V2_REQUEST_FIELDS}
    parsed_as_v1 = ConfidentialComputeRequest.model_validate(v1_only)
    assert len(parsed_as_v1.salt) == 16 and len(parsed_as_v1.nonce) == 12
    plaintext, server = node.open(ConfidentialComputeRequest.model_validate(wire))
    assert plaintext == BODY
    for chunk in stream(node, server, 3):
        again = ConfidentialComputeResponse.model_validate_json(chunk.model_dump_json())
        assert again == chunk
        client.open(again)
    client.finish()


def test_the_spec_construction_from_primitives_is_accepted(node: Node) -> None:
    """An independent build of the envelope from the documented formulas opens on the node."""
    request_id = bytes(range(16))
    enc, ctx = v2.hpke_sender(node.public_key, b"veil-v2 request" + EMBED.encode())
    aad = json.dumps(
        {
            "endpoint": EMBED,
            "key_id": node.key_id,
            "model_name": "m",
            "num_compute_units": None,
            "protocol": "veil-v2",
            "request_id": "AAECAwQFBgcICQoLDA0ODw==",
            "stack_small_id": 1,
            "stream": None,
            "timestamp": int(NOW),
        },
        separators=(",", ":"),
    ).encode()
    envelope = ConfidentialComputeRequest(
        ciphertext=ctx.seal(b"body", aad),
        client_dh_public_key=enc,
        model_name="m",
        node_dh_public_key=node.public_key,
        nonce=bytes(12),
        plaintext_body_hash=hmac.digest(ctx.export(b"veil-v2 body hmac", 32), b"body", "sha256"),
        salt=bytes(16),
        stack_small_id=1,
        protocol="veil-v2",
        key_id=node.key_id,
        request_id=request_id,
        timestamp=int(NOW),
    )
    plaintext, server = node.open(envelope, endpoint=EMBED)
    assert plaintext == b"body"
    # And the answer, from the documented response key schedule.
    answer = server.seal(b"out", index=0, final=True, sign=node.signing_key.sign)
    assert answer.response_nonce is not None
    prk = HKDF.extract(
        hashes.SHA256(), enc + answer.response_nonce, ctx.export(b"veil-v2 response", 32)
    )
    key = HKDFExpand(hashes.SHA256(), 32, b"key").derive(prk)
    base_nonce = HKDFExpand(hashes.SHA256(), 12, b"nonce").derive(prk)
    mac_key = HKDFExpand(hashes.SHA256(), 32, b"mac").derive(prk)
    assert answer.nonce == base_nonce  # index 0
    raad = b'{"final":true,"index":0,"protocol":"veil-v2","request_id":"AAECAwQFBgcICQoLDA0ODw=="}'
    assert AESGCM(key).decrypt(answer.nonce, answer.ciphertext, raad) == b"out"
    assert answer.response_hash == hmac.digest(mac_key, b"out", "sha256")


def test_key_id_matches_the_keyring_formula(node: Node) -> None:
    assert v2.key_id_of(node.public_key) == keyring_key_id(node.public_key)
    assert len(node.key_id) == 16


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=4096), answer=st.binary(max_size=4096), n=st.integers(1, 4))
def test_random_bodies_round_trip(body: bytes, answer: bytes, n: int) -> None:
    node = Node()
    envelope, client = seal(node, body)
    plaintext, server = node.open(envelope)
    assert plaintext == body
    for i in range(n):
        chunk = server.seal(answer, index=i, final=i == n - 1, sign=node.signing_key.sign)
        assert client.open(chunk) == answer
    client.finish()


# -- the AAD binds every field the gateway sees ----------------------------------------------------

SWAPS: list[tuple[str, Any]] = [
    ("model_name", "another-model"),
    ("stack_small_id", 8),
    ("num_compute_units", 1_000_000),
    ("num_compute_units", None),
    ("stream", False),
    ("stream", None),
    ("request_id", b"\x01" * 16),
    ("timestamp", int(NOW) + 1),
]


@pytest.mark.parametrize(("field", "value"), SWAPS, ids=[f"{f}={v!r}" for f, v in SWAPS])
def test_swapping_a_metadata_field_fails_decryption(node: Node, field: str, value: Any) -> None:
    envelope, _ = seal(node)
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        node.open(envelope.model_copy(update={field: value}))


def test_swapping_key_id_fails_decryption(node: Node) -> None:
    envelope, _ = seal(node)
    other = v2.key_id_of(Node().public_key)
    with pytest.raises(DecryptionFailed):
        node.open(envelope.model_copy(update={"key_id": other}))


def test_replaying_to_another_endpoint_fails_decryption(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(DecryptionFailed):
        node.open(envelope, endpoint=EMBED)


@pytest.mark.parametrize("protocol", [None, "atoma-v1"])
def test_swapping_protocol_fails(node: Node, protocol: str | None) -> None:
    """A downgrade to v1 sends the envelope down the v1 path, where it cannot decrypt; v2 itself
    refuses anything not marked veil-v2."""
    envelope, _ = seal(node)
    downgraded = envelope.model_copy(update={"protocol": protocol})
    with pytest.raises(InvalidBody, match="not a veil-v2"):
        node.open(downgraded)
    session = v1.Session.from_exchange(
        node.private_key, downgraded.client_dh_public_key, downgraded.salt
    )
    with pytest.raises(DecryptionFailed):
        session.open(downgraded.nonce, downgraded.ciphertext)
    # And the protocol name is part of the authenticated data.
    assert b'"protocol":"veil-v2"' in v2.response_aad(b"\x00" * 16, 0, True)
    aad = v2.request_aad(
        key_id="k",
        endpoint=CHAT,
        model_name="m",
        stack_small_id=1,
        num_compute_units=None,
        stream=None,
        request_id=b"\x00" * 16,
        timestamp=1,
    )
    assert b'"protocol":"veil-v2"' in aad


def test_envelope_sealed_to_another_node_key_is_refused(node: Node) -> None:
    envelope, _ = seal(node)
    other = Node()
    with pytest.raises(InvalidBody, match="node_dh_public_key"):
        other.open(envelope)
    # Even when the gateway also rewrites node_dh_public_key, the HPKE context differs.
    moved = envelope.model_copy(update={"node_dh_public_key": other.public_key})
    with pytest.raises(DecryptionFailed):
        other.open(moved)


def test_authentic_envelope_with_a_wrong_key_id_is_refused(node: Node) -> None:
    """A client that bound the wrong key id (it passes the AEAD) is told so, 400."""
    wrong = v2.key_id_of(Node().public_key)
    enc, ctx = v2.hpke_sender(node.public_key, v2.request_info(CHAT))
    rid = b"\x05" * 16
    aad = v2.request_aad(
        key_id=wrong,
        endpoint=CHAT,
        model_name="m",
        stack_small_id=1,
        num_compute_units=None,
        stream=None,
        request_id=rid,
        timestamp=int(NOW),
    )
    envelope = ConfidentialComputeRequest(
        ciphertext=ctx.seal(b"x", aad),
        client_dh_public_key=enc,
        model_name="m",
        node_dh_public_key=node.public_key,
        nonce=bytes(12),
        plaintext_body_hash=v2.body_mac(ctx, b"x"),
        salt=bytes(16),
        stack_small_id=1,
        protocol="veil-v2",
        key_id=wrong,
        request_id=rid,
        timestamp=int(NOW),
    )
    with pytest.raises(InvalidBody, match="key_id"):
        node.open(envelope)


def test_client_refuses_a_key_id_that_is_not_the_keys(node: Node) -> None:
    with pytest.raises(InvalidBody, match="key_id"):
        v2.seal_request(
            node.public_key, "00" * 8, BODY, endpoint=CHAT, model_name="m", stack_small_id=1
        )


# -- the body MAC ----------------------------------------------------------------------------------


def test_plaintext_body_hash_is_a_keyed_mac_not_a_hash(node: Node) -> None:
    first, _ = seal(node)
    second, _ = seal(node)
    for envelope in (first, second):
        assert envelope.plaintext_body_hash != hashlib.blake2b(BODY, digest_size=32).digest()
        assert envelope.plaintext_body_hash != hashlib.sha256(BODY).digest()
    assert first.plaintext_body_hash != second.plaintext_body_hash


def test_tampered_body_mac_is_refused(node: Node) -> None:
    envelope, _ = seal(node)
    bad = bytes([envelope.plaintext_body_hash[0] ^ 1]) + envelope.plaintext_body_hash[1:]
    with pytest.raises(DecryptionFailed, match="plaintext_body_hash"):
        node.open(envelope.model_copy(update={"plaintext_body_hash": bad}))


# -- tampering, sizes, low-order keys --------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 10, -17, -1], ids=["first", "middle", "last-ct", "tag"])
def test_tampered_request_ciphertext_or_tag_is_refused(node: Node, position: int) -> None:
    envelope, _ = seal(node)
    ct = bytearray(envelope.ciphertext)
    ct[position] ^= 0x80
    with pytest.raises(DecryptionFailed) as caught:
        node.open(envelope.model_copy(update={"ciphertext": bytes(ct)}))
    assert b"secret prompt" not in str(caught.value).encode()


def test_truncated_request_ciphertext_is_refused(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(DecryptionFailed):
        node.open(envelope.model_copy(update={"ciphertext": envelope.ciphertext[:-1]}))


@pytest.mark.parametrize("point", LOW_ORDER, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_low_order_enc_is_refused(node: Node, point: bytes) -> None:
    envelope, _ = seal(node)
    with pytest.raises(InvalidBody, match="low-order"):
        node.open(envelope.model_copy(update={"client_dh_public_key": point}))


@pytest.mark.parametrize("point", LOW_ORDER[:4], ids=lambda p: p.hex()[:8])
def test_client_refuses_a_low_order_node_key(point: bytes) -> None:
    with pytest.raises(InvalidBody, match="low-order"):
        v2.seal_request(
            point, v2.key_id_of(point), BODY, endpoint=CHAT, model_name="m", stack_small_id=1
        )


def test_wrong_sizes_are_refused_before_use(node: Node) -> None:
    envelope, _ = seal(node)
    for field, value in (
        ("client_dh_public_key", b"\x09" * 31),
        ("request_id", b"\x09" * 15),
        ("plaintext_body_hash", b"\x09" * 31),
    ):
        # model_construct bypasses validation, as a buggy caller could.
        raw = envelope.model_construct(**{**dict(envelope), field: value})
        with pytest.raises(InvalidBody):
            node.open(raw)
    with pytest.raises(InvalidBody):
        v2.seal_request(b"\x09" * 31, "x", BODY, endpoint=CHAT, model_name="m", stack_small_id=1)


def test_non_v2_or_incomplete_envelopes_are_invalid(node: Node) -> None:
    envelope, _ = seal(node)
    for field in ("key_id", "request_id", "timestamp"):
        with pytest.raises(InvalidBody):
            node.open(envelope.model_copy(update={field: None}))
    v1_envelope, _ = v1.seal_request(node.public_key, BODY, model_name="m", stack_small_id=1)
    with pytest.raises(InvalidBody, match="not a veil-v2"):
        node.open(v1_envelope)


# -- timestamps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-121.0, 121.0, -10_000.0, 10_000.0])
def test_timestamp_outside_the_window_is_refused(node: Node, skew: float) -> None:
    envelope, _ = seal(node)
    with pytest.raises(Replayed, match="outside"):
        node.open(envelope, now=NOW + skew)


@pytest.mark.parametrize("skew", [-120.0, 0.0, 120.0])
def test_timestamp_inside_the_window_is_accepted(node: Node, skew: float) -> None:
    envelope, _ = seal(node)
    assert node.open(envelope, now=NOW + skew)[0] == BODY


def test_window_is_configurable(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(Replayed):
        v2.open_request(envelope, node.private_key, endpoint=CHAT, now=NOW + 31, window=30)
    _, server = v2.open_request(envelope, node.private_key, endpoint=CHAT, now=NOW, window=30)
    assert server.expires_at == int(NOW) + 30 + 1


# -- streams: drop, reorder, duplicate, truncate, foreign chunks -----------------------------------


@pytest.fixture
def streamed(node: Node) -> tuple[v2.ClientSession, list[ConfidentialComputeResponse]]:
    envelope, client = seal(node)
    _, server = node.open(envelope)
    return client, stream(node, server, 5)


def test_dropped_chunk_is_detected(
    streamed: tuple[v2.ClientSession, list[ConfidentialComputeResponse]],
) -> None:
    client, chunks = streamed
    client.open(chunks[0])
    with pytest.raises(v2.StreamOrderError, match="chunk 2 arrived where chunk 1"):
        client.open(chunks[2])


def test_reordered_chunks_are_detected(
    streamed: tuple[v2.ClientSession, list[ConfidentialComputeResponse]],
) -> None:
    client, chunks = streamed
    with pytest.raises(v2.StreamOrderError):
        client.open(chunks[1])
    client.open(chunks[0])
    client.open(chunks[1])
    with pytest.raises(v2.StreamOrderError):
        client.open(chunks[3])


def test_duplicated_chunk_is_detected(
    streamed: tuple[v2.ClientSession, list[ConfidentialComputeResponse]],
) -> None:
    client, chunks = streamed
    client.open(chunks[0])
    client.open(chunks[1])
    with pytest.raises(v2.StreamOrderError):
        client.open(chunks[1])


def test_truncated_stream_is_detected(
    streamed: tuple[v2.ClientSession, list[ConfidentialComputeResponse]],
) -> None:
    client, chunks = streamed
    for chunk in chunks[:4]:
        client.open(chunk)
    assert not client.complete
    with pytest.raises(v2.StreamOrderError, match="truncated"):
        client.finish()


def test_empty_response_is_truncation(node: Node) -> None:
    _, client = seal(node)
    with pytest.raises(v2.StreamOrderError):
        client.finish()


def test_nothing_is_accepted_after_the_final_chunk(
    node: Node, streamed: tuple[v2.ClientSession, list[ConfidentialComputeResponse]]
) -> None:
    client, chunks = streamed
    for chunk in chunks:
        client.open(chunk)
    client.finish()
    with pytest.raises(v2.StreamOrderError, match="after the final"):
        client.open(chunks[4])


def test_relabelled_index_or_final_flag_fails_authentication(
    streamed: tuple[v2.ClientSession, list[ConfidentialComputeResponse]],
) -> None:
    client, chunks = streamed
    client.open(chunks[0])
    # The gateway drops chunk 1 and relabels chunk 2 as index 1 (with chunk 1's nonce field).
    relabelled = chunks[2].model_copy(update={"index": 1, "nonce": chunks[1].nonce})
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        client.open(relabelled)
    # It truncates by marking chunk 1 final.
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        client.open(chunks[1].model_copy(update={"final": True}))
    # A nonce field that does not match the index is refused outright.
    with pytest.raises(DecryptionFailed, match="nonce"):
        client.open(chunks[1].model_copy(update={"nonce": chunks[2].nonce}))
    client.open(chunks[1])


def test_explicit_expected_index(
    streamed: tuple[v2.ClientSession, list[ConfidentialComputeResponse]],
) -> None:
    client, chunks = streamed
    with pytest.raises(v2.StreamOrderError):
        client.open(chunks[0], expected_index=1)
    assert client.open(chunks[0], expected_index=0) == b"chunk 0"
    assert client.next_index == 1


def test_chunk_from_another_request_is_refused(node: Node) -> None:
    env_a, client_a = seal(node)
    env_b, _ = seal(node)
    _, server_a = node.open(env_a)
    _, server_b = node.open(env_b)
    a = stream(node, server_a, 3)
    b = stream(node, server_b, 3)
    # As the first chunk: the keys (and AAD request id) differ.
    with pytest.raises(DecryptionFailed):
        client_a.open(b[0])
    client_a.open(a[0])
    # Spliced in mid-stream: another response nonce.
    with pytest.raises(v2.StreamOrderError, match="response nonce"):
        client_a.open(b[1])
    # Even with the response nonce field forged, the keys are not this answer's.
    with pytest.raises(DecryptionFailed):
        client_a.open(b[1].model_copy(update={"response_nonce": a[0].response_nonce}))
    client_a.open(a[1])
    client_a.open(a[2])
    client_a.finish()


def test_changed_response_nonce_on_the_first_chunk_is_refused(node: Node) -> None:
    envelope, client = seal(node)
    _, server = node.open(envelope)
    chunk = server.seal(b"x", index=0, final=True, sign=node.signing_key.sign)
    with pytest.raises(DecryptionFailed):
        client.open(chunk.model_copy(update={"response_nonce": b"\x00" * 32}))
    assert client.open(chunk) == b"x"


def test_response_sealed_under_a_different_node_key_is_refused(node: Node) -> None:
    envelope, client = seal(node)
    node.open(envelope)
    # The same request, sealed by the client to another node, answered by that node.
    other = Node()
    env_other, _ = v2.seal_request(
        other.public_key,
        other.key_id,
        BODY,
        endpoint=CHAT,
        model_name="smollm2-135m-instruct",
        stack_small_id=7,
        num_compute_units=256,
        stream=True,
        now=NOW,
        request_id=client.request_id,
    )
    _, server_other = other.open(env_other)
    answer = server_other.seal(b"forged", index=0, final=True, sign=other.signing_key.sign)
    with pytest.raises(DecryptionFailed):
        client.open(answer)


def test_tampered_response_is_refused(node: Node) -> None:
    envelope, client = seal(node)
    _, server = node.open(envelope)
    answer = server.seal(b'{"ok":true}', index=0, final=True, sign=node.signing_key.sign)
    ct = bytearray(answer.ciphertext)
    ct[-1] ^= 1
    with pytest.raises(DecryptionFailed):
        client.open(answer.model_copy(update={"ciphertext": bytes(ct)}))
    assert answer.response_hash is not None
    bad_hash = bytes([answer.response_hash[0] ^ 1]) + answer.response_hash[1:]
    with pytest.raises(DecryptionFailed, match="response_hash"):
        client.open(answer.model_copy(update={"response_hash": bad_hash}))
    with pytest.raises(DecryptionFailed, match="not a veil-v2"):
        client.open(answer.model_copy(update={"index": None}))
    assert client.open(answer) == b'{"ok":true}'


def test_signature_checks(node: Node) -> None:
    envelope, client = seal(node)
    _, server = node.open(envelope)
    answer = server.seal(b"x", index=0, final=True, sign=node.signing_key.sign)
    client.open(answer)
    v2.verify_signature(answer, node.signing_public)
    with pytest.raises(DecryptionFailed):
        v2.verify_signature(answer, Node().signing_public)
    with pytest.raises(DecryptionFailed):
        v2.verify_signature(answer.model_copy(update={"signature": None}), node.signing_public)


def test_response_hash_is_not_a_clear_hash(node: Node) -> None:
    envelope, _ = seal(node)
    _, server = node.open(envelope)
    answer = server.seal(b"x", index=0, final=True, sign=node.signing_key.sign)
    assert answer.response_hash not in (
        hashlib.blake2b(b"x", digest_size=32).digest(),
        hashlib.sha256(b"x").digest(),
    )


# -- the node never reuses a chunk nonce -----------------------------------------------------------


def test_server_refuses_out_of_order_or_post_final_sealing(node: Node) -> None:
    envelope, _ = seal(node)
    _, server = node.open(envelope)
    sign = node.signing_key.sign
    with pytest.raises(ValueError, match="out of order"):
        server.seal(b"x", index=1, final=False, sign=sign)
    server.seal(b"x", index=0, final=False, sign=sign)
    with pytest.raises(ValueError, match="out of order"):
        server.seal(b"y", index=0, final=False, sign=sign)
    with pytest.raises(ValueError, match="usage"):
        server.seal(b"y", index=1, final=False, sign=sign, usage={"total_tokens": 1})
    server.seal(b"y", index=1, final=True, sign=sign)
    with pytest.raises(ValueError, match="final"):
        server.seal(b"z", index=2, final=True, sign=sign)


def test_chunk_nonce_is_base_xor_index() -> None:
    base = bytes.fromhex("00112233445566778899aabb")
    assert v2.chunk_nonce(base, 0) == base
    assert v2.chunk_nonce(base, 1) == bytes.fromhex("00112233445566778899aaba")
    assert v2.chunk_nonce(base, 0x0102) == bytes.fromhex("00112233445566778899abb9")
    with pytest.raises(ValueError):
        v2.chunk_nonce(base, -1)


@pytest.mark.parametrize(("index", "final"), [(0, True), (0, False), (7, False), (2**40, True)])
def test_precomputed_response_aad_is_the_canonical_one(index: int, final: bool) -> None:
    request_id = bytes(range(100, 116))
    cipher = v2._ResponseCipher(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, request_id)
    assert cipher.aad(index, final) == v2.response_aad(request_id, index, final)
    assert cipher.aad(index, final) == v2.canonical_json(
        {"request_id": request_id, "index": index, "protocol": "veil-v2", "final": final}
    )


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
    assert first.request_id == second.request_id
    assert first.response_nonce != second.response_nonce
