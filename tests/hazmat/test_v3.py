"""The veil-v3 suite: X-Wing is what cryptography calls MLKEM768_X25519, round trips on both KEMs,
an independent build from the documented formulas, and the published vectors. What a node refuses
is in test_v3_requests.py, what a client refuses in test_v3_answers.py."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hazmat.parties import (
    BODY,
    CHAT,
    EMBED,
    NOW,
    RESERVATION,
    SECRET_TEXT,
    Node,
    answer,
    seal,
)
from veil.hazmat import v3
from veil.hazmat.kem import Kem, NodeKemKey
from veil.wire.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse
from veil.wire.keyid import key_id

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "veil-v3.json"
V3_REQUEST_FIELDS = ("protocol", "kem", "key_id", "request_id", "timestamp", "reservation_id")


def cryptography_vectors() -> Path:
    import cryptography_vectors

    return Path(cryptography_vectors.__file__).parent / "HPKE" / "hpke-pq-test-vectors.json"


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
    assert key.key_id == key_id(m + x) and len(key.key_id) == 16
    assert seed.hex() not in repr(key) and "seed" not in repr(key)


# -- round trips -----------------------------------------------------------------------------------


def test_whole_answer_round_trip(node: Node) -> None:
    envelope, client = seal(node, stream=None)
    assert envelope.protocol == "veil-v3" and envelope.kem == node.key.kem.value
    assert envelope.key_id == node.key.key_id and envelope.reservation_id == RESERVATION
    assert envelope.timestamp == int(NOW) and envelope.request_id == client.request_id
    assert envelope.node_dh_public_key == node.key.x25519_public_key
    body, server = node.open(envelope)
    assert body == BODY
    assert server.request_id == client.request_id and server.key_id == node.key.key_id
    assert server.expires_at == int(NOW) + v3.DEFAULT_WINDOW_SECONDS + 1
    (response,) = answer(node, server, [b'{"answer":"Paris"}'], {"prompt_tokens": 5})
    assert response.index == 0 and response.final is True
    assert response.response_nonce == server.response_nonce and response.signature is not None
    assert client.open(response) == b'{"answer":"Paris"}'
    client.finish()
    assert client.complete
    assert client.usage is not None and client.usage.prompt_tokens == 5


def test_stream_round_trip_signs_only_the_final_chunk(node: Node) -> None:
    envelope, client = seal(node)
    _, server = node.open(envelope)
    parts = [f"chunk {i}".encode() for i in range(5)]
    sealed = answer(node, server, parts, {"completion_tokens": 5})
    assert [c.index for c in sealed] == [0, 1, 2, 3, 4]
    assert [c.final for c in sealed] == [False] * 4 + [True]
    assert [c.signature is None for c in sealed] == [True] * 4 + [False]
    assert [c.usage is None for c in sealed] == [True] * 4 + [False]
    assert len({c.response_nonce for c in sealed}) == 1
    assert len({c.nonce for c in sealed}) == 5 and len({c.response_hash for c in sealed}) == 5
    opened = []
    for c in sealed:
        assert not client.complete
        opened.append(client.open(c))
    client.finish()
    assert opened == parts and client.complete and client.next_index == 5
    assert server.running_hash == sealed[-1].response_hash


def test_envelope_and_chunks_survive_their_json_wire_form(node: Node) -> None:
    envelope, client = seal(node)
    wire = envelope.model_dump_json().encode()
    assert SECRET_TEXT not in wire
    document = json.loads(wire)
    assert set(V3_REQUEST_FIELDS) <= set(document)
    # The shape a v1 parser accepts: every v1 field, of its v1 size.
    v1_only = {k: v for k, v in document.items() if k not in V3_REQUEST_FIELDS}
    as_v1 = ConfidentialComputeRequest.model_validate(v1_only)
    assert len(as_v1.salt) == 16 and len(as_v1.nonce) == 12
    assert len(as_v1.client_dh_public_key) == 32 and len(as_v1.plaintext_body_hash) == 32
    again = ConfidentialComputeRequest.model_validate_json(wire)
    assert again == envelope
    body, server = node.open(again)
    assert body == BODY
    for chunk in answer(node, server, [b"a", b"b", b"c"], {"total_tokens": 3}):
        relayed = ConfidentialComputeResponse.model_validate_json(chunk.model_dump_json())
        assert relayed == chunk
        client.open(relayed)
    client.finish()


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


@settings(max_examples=40, deadline=None)
@given(
    kem=st.sampled_from(list(Kem)),
    body=st.binary(max_size=4096),
    parts=st.lists(st.binary(max_size=2048), min_size=1, max_size=4),
)
def test_random_bodies_and_answers_round_trip(kem: Kem, body: bytes, parts: list[bytes]) -> None:
    node = Node(kem)
    envelope, client = seal(node, body)
    opened, server = node.open(envelope)
    assert opened == body
    assert [client.open(c) for c in answer(node, server, parts)] == parts
    client.finish()


def _hpke_public(kem: Kem, raw: bytes) -> hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey:
    x = x25519.X25519PublicKey.from_public_bytes(raw[-32:])
    if kem is Kem.X25519:
        return x
    return hpke.MLKEM768X25519PublicKey(mlkem.MLKEM768PublicKey.from_public_bytes(raw[:1184]), x)


def test_the_spec_construction_from_primitives_is_accepted(node: Node) -> None:
    """An envelope built from the documented formulas opens on the node, and its answer opens with
    the documented response key schedule, running hash and signature."""
    kem = node.key.kem
    request_id = bytes(range(16))
    secret = bytes(range(100, 132))
    fields = (
        f'"endpoint":"{EMBED}","kem":"{kem.value}","key_id":"{node.key.key_id}","model_name":"m",'
        '"num_compute_units":null,"protocol":"veil-v3","request_id":"AAECAwQFBgcICQoLDA0ODw==",'
        f'"reservation_id":"{RESERVATION}","stack_small_id":1,"stream":true,"timestamp":{int(NOW)}'
    )
    info = b"veil-v3 request\x00" + ("{" + fields + "}").encode()
    hpke_kem = {Kem.HYBRID: hpke.KEM.MLKEM768_X25519, Kem.X25519: hpke.KEM.X25519}[kem]
    suite = hpke.Suite(hpke_kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    envelope = ConfidentialComputeRequest(
        ciphertext=suite.encrypt(secret + b"body", _hpke_public(kem, node.key.public_key), info),
        client_dh_public_key=os.urandom(32),
        model_name="m",
        node_dh_public_key=node.key.public_key[-32:],
        nonce=os.urandom(12),
        plaintext_body_hash=os.urandom(32),
        salt=os.urandom(16),
        stack_small_id=1,
        stream=True,
        protocol="veil-v3",
        kem=kem.value,
        key_id=node.key.key_id,
        request_id=request_id,
        timestamp=int(NOW),
        reservation_id=RESERVATION,
    )
    assert v3.info_of(envelope, kem, EMBED) == info
    body, server = node.open(envelope, endpoint=EMBED)
    assert body == b"body"
    chunks = answer(node, server, [b"out-0", b"out-1"], {"total_tokens": 3})
    response_nonce = chunks[0].response_nonce
    assert response_nonce is not None and len(response_nonce) == 32
    okm = HKDF(hashes.SHA256(), 44, salt=response_nonce, info=b"veil-v3 response" + request_id)
    keys = okm.derive(secret)
    aead, base_nonce = AESGCM(keys[:32]), keys[32:]
    running = hashlib.sha256(
        b"veil-v3 answer" + response_nonce + hashlib.sha256(info).digest()
    ).digest()
    for i, chunk in enumerate(chunks):
        final = i == len(chunks) - 1
        position = struct.pack(">Q", i) + (b"\x01" if final else b"\x00")
        assert chunk.nonce == (int.from_bytes(base_nonce, "big") ^ i).to_bytes(12, "big")
        assert aead.decrypt(chunk.nonce, chunk.ciphertext, b"veil-v3 chunk" + position) == (
            b"out-%d" % i
        )
        running = hashlib.sha256(running + position + chunk.ciphertext).digest()
        assert chunk.response_hash == running
    usage = b'{"completion_tokens":0,"prompt_tokens":0,"total_tokens":3}'
    assert chunks[-1].signature is not None
    node.signer.public_key().verify(chunks[-1].signature, b"veil-v3 signature" + running + usage)


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
        info = v3.info_of(envelope, kem, vector["endpoint"])
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
        # And the client opens that answer under the vector's signing key.
        client = v3.ClientSession(
            response_secret=bytes.fromhex(vector["response_secret"]),
            request_id=envelope.request_id or b"",
            timestamp=envelope.timestamp or 0,
            info=info,
            node_signing_key=signer.public_key(),
        )
        for expected in chunks:
            response = ConfidentialComputeResponse.model_validate(expected["response"])
            assert client.open(response).decode() == expected["plaintext"]
        client.finish()
