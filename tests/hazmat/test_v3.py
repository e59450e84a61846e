"""The veil-v3 suite: X-Wing is what cryptography calls MLKEM768_X25519, round trips on both KEMs,
and every swap, replay, reorder, truncation and forgery it must refuse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.hazmat import v3
from veil.hazmat.v3 import Kem, NodeKemKey
from veil.wire.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse
from veil.wire.errors import DecryptionFailed, InvalidBody, Replayed
from veil.wire.keyid import key_id

CHAT = "/v1/confidential/chat/completions"
EMBED = "/v1/confidential/embeddings"
NOW = 1_750_000_000.0
BODY = b'{"model":"smollm2-135m-instruct","messages":[{"role":"user","content":"a secret"}]}'
RESERVATION = "0123456789abcdef0123456789abcdef"
VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "veil-v3.json"


def cryptography_vectors() -> Path:
    import cryptography_vectors

    return Path(cryptography_vectors.__file__).parent / "HPKE" / "hpke-pq-test-vectors.json"


class Node:
    def __init__(self, kem: Kem = Kem.HYBRID) -> None:
        self.key = NodeKemKey.generate(kem)
        self.signer = Ed25519PrivateKey.generate()
        self.signing_public = self.signer.public_key().public_bytes_raw()

    def keys(self, wanted: str) -> NodeKemKey | None:
        return self.key if wanted == self.key.key_id else None

    def open(
        self, envelope: ConfidentialComputeRequest, **kwargs: Any
    ) -> tuple[bytes, v3.ServerSession]:
        args: dict[str, Any] = {
            "endpoint": CHAT,
            "now": NOW,
            "allowed_kems": frozenset({self.key.kem}),
            "reservation_id": RESERVATION,
        }
        args.update(kwargs)
        return v3.open_request(envelope, self.keys, **args)


def seal(
    node: Node, body: bytes = BODY, **overrides: Any
) -> tuple[ConfidentialComputeRequest, v3.ClientSession]:
    args: dict[str, Any] = {
        "node_signing_key": node.signing_public,
        "endpoint": CHAT,
        "model_name": "smollm2-135m-instruct",
        "stack_small_id": 7,
        "num_compute_units": 256,
        "stream": True,
        "reservation_id": RESERVATION,
        "kem": node.key.kem,
        "now": NOW,
    }
    args.update(overrides)
    return v3.seal_request(node.key.public_key, node.key.key_id, body, **args)


def answer(
    node: Node, server: v3.ServerSession, parts: list[bytes], usage: dict[str, int] | None = None
) -> list[ConfidentialComputeResponse]:
    sealed = [server.seal(p, final=False, sign=node.signer.sign) for p in parts[:-1]]
    sealed.append(server.seal(parts[-1], final=True, sign=node.signer.sign, usage=usage))
    return sealed


@pytest.fixture(params=list(Kem), ids=lambda k: k.value)
def node(request: pytest.FixtureRequest) -> Node:
    return Node(request.param)


# -- the KEM is X-Wing -----------------------------------------------------------------------------


def test_cryptography_mlkem768_x25519_is_x_wing_with_our_seed_expansion() -> None:
    """The IETF vectors for KEM 0x647a (X-Wing) decrypt with cryptography's MLKEM768_X25519 key
    built by NodeKemKey's expansion of the 32-byte seed: the browser's X-Wing is the same KEM."""
    checked = 0
    for vector in json.loads(cryptography_vectors().read_text()):
        if vector["kem_id"] != 0x647A:
            continue
        key = NodeKemKey.from_seed(Kem.HYBRID, bytes.fromhex(vector["skRm"]))
        assert key.public_key.hex() == vector["pkRm"]
        kdf = {1: hpke.KDF.HKDF_SHA256, 17: hpke.KDF.SHAKE256}[vector["kdf_id"]]
        suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, kdf, hpke.AEAD.CHACHA20_POLY1305)
        for encryption in vector["encryptions"][:3]:
            plaintext = rust_openssl.hpke._decrypt_with_aad(
                suite,
                bytes.fromhex(vector["enc"]) + bytes.fromhex(encryption["ct"]),
                key.private_key,
                info=bytes.fromhex(vector["info"]),
                aad=bytes.fromhex(encryption["aad"]),
            )
            assert plaintext.hex() == encryption["pt"]
            break  # only sequence number 0 is reachable through the single-shot API
        checked += 1
    assert checked >= 2
    assert Kem.HYBRID.enc_size == 1088 + 32 and Kem.HYBRID.public_key_size == 1184 + 32


def test_a_seed_expands_to_the_components_x_wing_names() -> None:
    seed = bytes(range(32))
    key = NodeKemKey.from_seed(Kem.HYBRID, seed)
    expanded = hashlib.shake_256(seed).digest(96)
    m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]).public_key().public_bytes_raw()
    x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:]).public_key().public_bytes_raw()
    assert key.public_key == m + x
    assert key.x25519_public_key == x
    assert key.key_id == key_id(m + x)
    assert seed.hex() not in repr(key) and "seed" not in repr(key)


# -- round trips -----------------------------------------------------------------------------------


def test_whole_answer_round_trip(node: Node) -> None:
    envelope, client = seal(node, stream=None)
    body, server = node.open(envelope)
    assert body == BODY
    (response,) = answer(node, server, [b'{"answer":"Paris"}'], {"prompt_tokens": 5})
    assert client.open(response) == b'{"answer":"Paris"}'
    client.finish()
    assert client.usage is not None and client.usage.prompt_tokens == 5
    assert response.signature is not None


def test_stream_round_trip_signs_only_the_final_chunk(node: Node) -> None:
    envelope, client = seal(node)
    _, server = node.open(envelope)
    parts = [f"chunk {i}".encode() for i in range(5)]
    sealed = answer(node, server, parts, {"completion_tokens": 5})
    assert [c.signature is None for c in sealed] == [True] * 4 + [False]
    assert [client.open(c) for c in sealed] == parts
    client.finish()
    assert server.running_hash == sealed[-1].response_hash


def test_the_envelope_carries_nothing_of_the_body_in_clear(node: Node) -> None:
    envelope, _ = seal(node)
    wire = envelope.model_dump_json().encode()
    assert b"a secret" not in wire
    assert envelope.plaintext_body_hash != hashlib.sha256(BODY).digest()
    assert envelope.kem == node.key.kem.value and envelope.protocol == "veil-v3"
    again = ConfidentialComputeRequest.model_validate_json(wire)
    assert again == envelope


def test_the_hybrid_kem_is_the_default() -> None:
    node = Node(Kem.HYBRID)
    envelope, _ = v3.seal_request(
        node.key.public_key,
        node.key.key_id,
        BODY,
        node_signing_key=node.signing_public,
        endpoint=CHAT,
        model_name="m",
        stack_small_id=1,
    )
    assert envelope.kem == "mlkem768-x25519"
    assert len(envelope.ciphertext) >= Kem.HYBRID.enc_size + 32 + len(BODY)


# -- what the node refuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_name", "another-model"),
        ("stack_small_id", 8),
        ("num_compute_units", 100_000),
        ("stream", False),
        ("timestamp", int(NOW) + 1),
        ("request_id", b"\x01" * 16),
    ],
)
def test_every_bound_field_swapped_by_a_gateway_fails_to_open(
    node: Node, field: str, value: object
) -> None:
    envelope, _ = seal(node)
    with pytest.raises(DecryptionFailed):
        node.open(envelope.model_copy(update={field: value}))


def test_another_endpoint_fails_to_open(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(DecryptionFailed):
        node.open(envelope, endpoint=EMBED)


def test_a_reservation_swapped_in_the_envelope_or_the_ticket_is_refused(node: Node) -> None:
    envelope, _ = seal(node)
    other = "f" * 32
    with pytest.raises(DecryptionFailed):
        node.open(envelope, reservation_id=other)  # the ticket names another reservation
    with pytest.raises(DecryptionFailed):
        node.open(envelope.model_copy(update={"reservation_id": other}), reservation_id=other)


def test_a_tampered_ciphertext_byte_anywhere_fails_to_open(node: Node) -> None:
    envelope, _ = seal(node)
    size = len(envelope.ciphertext)
    for position in (0, node.key.kem.enc_size - 1, node.key.kem.enc_size, size - 1):
        flipped = bytearray(envelope.ciphertext)
        flipped[position] ^= 0x01
        with pytest.raises(DecryptionFailed):
            node.open(envelope.model_copy(update={"ciphertext": bytes(flipped)}))


def test_a_kem_the_node_does_not_allow_is_refused_before_decryption() -> None:
    node = Node(Kem.X25519)
    envelope, _ = seal(node)
    with pytest.raises(InvalidBody, match="does not accept"):
        node.open(envelope, allowed_kems=frozenset({Kem.HYBRID}))


def test_the_kem_field_cannot_be_downgraded_by_a_gateway() -> None:
    node = Node(Kem.HYBRID)
    envelope, _ = seal(node)
    with pytest.raises(InvalidBody):  # the hybrid key is not an X25519 key
        node.open(envelope.model_copy(update={"kem": "x25519"}), allowed_kems=frozenset(Kem))


def test_unknown_key_id_and_foreign_node_key_are_refused(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(InvalidBody, match="no current"):
        node.open(envelope.model_copy(update={"key_id": "00" * 8}))
    with pytest.raises(InvalidBody, match="node_dh_public_key"):
        node.open(envelope.model_copy(update={"node_dh_public_key": b"\x09" * 32}))


def test_a_request_outside_the_window_is_refused_as_a_replay(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(Replayed):
        node.open(envelope, now=NOW + v3.DEFAULT_WINDOW_SECONDS + 1)
    _, server = node.open(envelope)
    assert server.expires_at == int(NOW) + v3.DEFAULT_WINDOW_SECONDS + 1


def test_a_v2_envelope_or_missing_fields_are_a_bad_request(node: Node) -> None:
    envelope, _ = seal(node)
    with pytest.raises(InvalidBody):
        node.open(envelope.model_copy(update={"protocol": "veil-v2"}))
    with pytest.raises(InvalidBody):
        node.open(envelope.model_copy(update={"kem": None}))
    with pytest.raises(InvalidBody):
        node.open(envelope.model_copy(update={"ciphertext": envelope.ciphertext[:40]}))


def test_the_client_refuses_a_lying_lock(node: Node) -> None:
    with pytest.raises(InvalidBody, match="key_id"):
        v3.seal_request(
            node.key.public_key,
            "00" * 8,
            BODY,
            node_signing_key=node.signing_public,
            endpoint=CHAT,
            model_name="m",
            stack_small_id=1,
            kem=node.key.kem,
        )
    with pytest.raises(InvalidBody, match="public key must be"):
        v3.seal_request(
            node.key.public_key[:-1],
            node.key.key_id,
            BODY,
            node_signing_key=node.signing_public,
            endpoint=CHAT,
            model_name="m",
            stack_small_id=1,
            kem=node.key.kem,
        )


# -- what the client refuses -----------------------------------------------------------------------


def stream(node: Node, n: int = 4) -> tuple[v3.ClientSession, list[ConfidentialComputeResponse]]:
    envelope, client = seal(node)
    _, server = node.open(envelope)
    return client, answer(
        node, server, [f"part {i}".encode() for i in range(n)], {"total_tokens": n}
    )


def test_dropped_reordered_and_duplicated_chunks_are_refused(node: Node) -> None:
    client, chunks = stream(node)
    with pytest.raises(v3.StreamOrderError):
        client.open(chunks[1])  # chunk 0 dropped
    client.open(chunks[0])
    with pytest.raises(v3.StreamOrderError):
        client.open(chunks[0])  # duplicated
    with pytest.raises(v3.StreamOrderError):
        client.open(chunks[2])  # reordered


def test_a_truncated_stream_is_refused(node: Node) -> None:
    client, chunks = stream(node)
    for chunk in chunks[:-1]:
        client.open(chunk)
    with pytest.raises(v3.StreamOrderError, match="truncated"):
        client.finish()


def test_a_chunk_relabelled_as_final_is_refused(node: Node) -> None:
    client, chunks = stream(node)
    client.open(chunks[0])
    forged = chunks[1].model_copy(update={"final": True})
    with pytest.raises(DecryptionFailed):
        client.open(forged)


def test_a_final_chunk_signed_by_another_key_or_unsigned_is_refused(node: Node) -> None:
    client, chunks = stream(node, 1)
    impostor = Ed25519PrivateKey.generate()
    message = v3.signed_message(chunks[0].response_hash or b"", chunks[0].usage)
    with pytest.raises(DecryptionFailed, match="signature"):
        client.open(chunks[0].model_copy(update={"signature": impostor.sign(message)}))
    client, chunks = stream(node, 1)
    with pytest.raises(DecryptionFailed, match="not signed"):
        client.open(chunks[0].model_copy(update={"signature": None}))


def test_usage_altered_on_the_final_chunk_is_refused(node: Node) -> None:
    client, chunks = stream(node, 2)
    client.open(chunks[0])
    cheaper = chunks[1].usage.model_copy(update={"total_tokens": 0})  # type: ignore[union-attr]
    with pytest.raises(DecryptionFailed, match="signature"):
        client.open(chunks[1].model_copy(update={"usage": cheaper}))


def test_a_chunk_of_another_answer_is_refused(node: Node) -> None:
    client, chunks = stream(node)
    _, others = stream(node)
    client.open(chunks[0])
    with pytest.raises((DecryptionFailed, v3.StreamOrderError)):
        client.open(others[1])


def test_a_running_hash_that_skips_a_chunk_is_refused(node: Node) -> None:
    client, chunks = stream(node)
    client.open(chunks[0])
    with pytest.raises(DecryptionFailed, match="running hash"):
        client.open(chunks[1].model_copy(update={"response_hash": chunks[0].response_hash}))


def test_the_node_never_reuses_a_chunk_index() -> None:
    node = Node()
    envelope, _ = seal(node)
    _, server = node.open(envelope)
    server.seal(b"last", final=True, sign=node.signer.sign)
    with pytest.raises(ValueError, match="already sealed"):
        server.seal(b"more", final=True, sign=node.signer.sign)
    _, another = node.open(seal(node)[0])
    with pytest.raises(ValueError, match="usage"):
        another.seal(b"x", final=False, sign=node.signer.sign, usage={"total_tokens": 1})


# -- published vectors -----------------------------------------------------------------------------


def test_published_vectors_reproduce_byte_for_byte() -> None:
    """tests/vectors/veil-v3.json: the request opens to its body under the fixed key; the answer
    (fixed response secret, response nonce and signing key) seals to the same bytes."""
    document = json.loads(VECTORS.read_text())
    assert {v["kem"] for v in document["vectors"]} == {k.value for k in Kem}
    for vector in document["vectors"]:
        kem = Kem(vector["kem"])
        key = NodeKemKey.from_seed(kem, bytes.fromhex(vector["node_key_seed"]))
        assert key.public_key.hex() == vector["node_public_key"]
        assert key.key_id == vector["key_id"]
        signer = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["node_signing_seed"]))
        envelope = ConfidentialComputeRequest.model_validate(vector["request_envelope"])
        info = v3._info_of(envelope, kem, vector["endpoint"])
        assert info.hex() == vector["info"]
        ring = {key.key_id: key}
        body, server = v3.open_request(
            envelope,
            ring.get,
            endpoint=vector["endpoint"],
            allowed_kems=frozenset({kem}),
            reservation_id=envelope.reservation_id,
            now=envelope.timestamp,
        )
        assert body.decode() == vector["body"]
        server = v3.ServerSession(
            response_secret=bytes.fromhex(vector["response_secret"]),
            request_id=envelope.request_id or b"",
            info=info,
            key_id=key.key_id,
            expires_at=0,
            response_nonce=bytes.fromhex(vector["response_nonce"]),
        )
        chunks = vector["response_chunks"]
        for i, expected in enumerate(chunks):
            final = i == len(chunks) - 1
            sealed = server.seal(
                expected["plaintext"].encode(),
                final=final,
                sign=signer.sign,
                usage=vector["usage"] if final else None,
            )
            assert sealed.model_dump(mode="json") == expected["response"]
