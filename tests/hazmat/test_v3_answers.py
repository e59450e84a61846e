"""What a veil-v3 client refuses in an answer: a chunk dropped, reordered, duplicated, relabelled,
tampered with or taken from another answer; a stream truncated; a forged, unsigned or re-signed
final chunk; usage changed beside the signature. And the node never reuses a chunk index."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.hazmat.parties import Node, answer, seal, stream
from veil.hazmat import v3
from veil.hazmat.common import canonical_json
from veil.wire.envelopes import Usage
from veil.wire.errors import DecryptionFailed

# -- order -----------------------------------------------------------------------------------------


def test_a_dropped_chunk_is_refused(node: Node) -> None:
    client, chunks = stream(node, 5)
    client.open(chunks[0])
    with pytest.raises(v3.StreamOrderError, match="chunk 2 arrived where chunk 1"):
        client.open(chunks[2])
    client, chunks = stream(node)
    with pytest.raises(v3.StreamOrderError, match="chunk 1 arrived where chunk 0"):
        client.open(chunks[1])  # the first one dropped


def test_reordered_chunks_are_refused(node: Node) -> None:
    client, chunks = stream(node, 5)
    with pytest.raises(v3.StreamOrderError):
        client.open(chunks[1])
    client.open(chunks[0])
    client.open(chunks[1])
    with pytest.raises(v3.StreamOrderError):
        client.open(chunks[3])
    client.open(chunks[2])  # a refused chunk changed nothing: the stream goes on
    client.open(chunks[3])
    client.open(chunks[4])
    client.finish()


def test_a_duplicated_chunk_is_refused(node: Node) -> None:
    client, chunks = stream(node)
    client.open(chunks[0])
    client.open(chunks[1])
    with pytest.raises(v3.StreamOrderError):
        client.open(chunks[1])
    with pytest.raises(v3.StreamOrderError):
        client.open(chunks[0])


def test_a_truncated_stream_is_refused(node: Node) -> None:
    client, chunks = stream(node)
    for chunk in chunks[:-1]:
        client.open(chunk)
    assert not client.complete
    with pytest.raises(v3.StreamOrderError, match="truncated"):
        client.finish()


def test_an_empty_answer_is_a_truncation(node: Node) -> None:
    _, client = seal(node)
    with pytest.raises(v3.StreamOrderError, match="after 0 chunk"):
        client.finish()


def test_nothing_is_accepted_after_the_final_chunk(node: Node) -> None:
    client, chunks = stream(node)
    for chunk in chunks:
        client.open(chunk)
    client.finish()
    for again in (chunks[-1], chunks[0]):
        with pytest.raises(v3.StreamOrderError, match="after the final"):
            client.open(again)


def test_a_relabelled_index_final_flag_or_nonce_fails(node: Node) -> None:
    client, chunks = stream(node)
    client.open(chunks[0])
    # Chunk 1 dropped, chunk 2 relabelled as index 1 (with chunk 1's nonce field).
    relabelled = chunks[2].model_copy(update={"index": 1, "nonce": chunks[1].nonce})
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        client.open(relabelled)
    # Truncated by marking chunk 1 final (the flag is in the AAD).
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        client.open(chunks[1].model_copy(update={"final": True}))
    # A nonce field that does not match the index is refused outright.
    with pytest.raises(DecryptionFailed, match="nonce"):
        client.open(chunks[1].model_copy(update={"nonce": chunks[2].nonce}))
    client.open(chunks[1])


# -- chunks of another answer ----------------------------------------------------------------------


def test_a_chunk_from_another_request_is_refused(node: Node) -> None:
    client, chunks = stream(node)
    _, others = stream(node)
    # As the first chunk: another response secret, so other keys.
    with pytest.raises(DecryptionFailed):
        client.open(others[0])
    client.open(chunks[0])
    # Spliced in mid-stream: another response nonce.
    with pytest.raises(v3.StreamOrderError, match="response nonce"):
        client.open(others[1])
    # Even with the response nonce field forged, the keys are not this answer's.
    with pytest.raises(DecryptionFailed):
        client.open(others[1].model_copy(update={"response_nonce": chunks[0].response_nonce}))
    for chunk in chunks[1:]:
        client.open(chunk)
    client.finish()


def test_a_changed_response_nonce_on_the_first_chunk_is_refused(node: Node) -> None:
    client, chunks = stream(node, 1)
    with pytest.raises(DecryptionFailed):
        client.open(chunks[0].model_copy(update={"response_nonce": b"\x00" * 32}))
    assert client.open(chunks[0]) == b"part 0"


def test_an_answer_from_another_node_to_the_same_request_id_is_refused(node: Node) -> None:
    """The client's request, sealed (same request id) to another node, answered by that node."""
    envelope, client = seal(node)
    node.open(envelope)
    other = Node(node.key.kem)
    moved, _ = seal(other, request_id=client.request_id)
    _, server = other.open(moved)
    (forged,) = answer(other, server, [b"forged"])
    with pytest.raises(DecryptionFailed):
        client.open(forged)


# -- tampering -------------------------------------------------------------------------------------


def test_a_tampered_chunk_is_refused(node: Node) -> None:
    client, chunks = stream(node, 1)
    final = chunks[0]
    ct = bytearray(final.ciphertext)
    ct[-1] ^= 1
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        client.open(final.model_copy(update={"ciphertext": bytes(ct)}))
    assert final.response_hash is not None
    bad_hash = bytes([final.response_hash[0] ^ 1]) + final.response_hash[1:]
    with pytest.raises(v3.ResponseHashMismatch, match="running hash"):
        client.open(final.model_copy(update={"response_hash": bad_hash}))
    for field in ("index", "final", "response_nonce"):
        with pytest.raises(DecryptionFailed, match="not a veil-v3"):
            client.open(final.model_copy(update={field: None}))
    with pytest.raises(DecryptionFailed, match="without response_hash"):
        client.open(final.model_copy(update={"response_hash": None}))
    assert client.open(final) == b"part 0"


def test_a_tampered_chunk_with_its_running_hash_recomputed_is_refused(node: Node) -> None:
    """The running hash is public arithmetic: a gateway can recompute it; the tag it cannot."""
    client, chunks = stream(node)
    client.open(chunks[0])
    ct = bytearray(chunks[1].ciphertext)
    ct[0] ^= 1
    assert chunks[0].response_hash is not None
    rehashed = hashlib.sha256(
        chunks[0].response_hash + struct.pack(">Q?", 1, False) + bytes(ct)
    ).digest()
    forged = chunks[1].model_copy(update={"ciphertext": bytes(ct), "response_hash": rehashed})
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        client.open(forged)


def test_a_running_hash_that_skips_a_chunk_is_refused(node: Node) -> None:
    client, chunks = stream(node)
    client.open(chunks[0])
    with pytest.raises(v3.ResponseHashMismatch, match="running hash"):
        client.open(chunks[1].model_copy(update={"response_hash": chunks[0].response_hash}))


def test_the_response_hash_is_not_a_clear_hash_of_the_plaintext(node: Node) -> None:
    _, chunks = stream(node, 1)
    assert chunks[0].response_hash not in (
        hashlib.sha256(b"part 0").digest(),
        hashlib.blake2b(b"part 0", digest_size=32).digest(),
        hashlib.sha256(chunks[0].ciphertext).digest(),
    )


# -- the one signature, on the final chunk ---------------------------------------------------------


def test_a_final_chunk_signed_by_another_key_or_unsigned_is_refused(node: Node) -> None:
    client, chunks = stream(node, 1)
    impostor = Ed25519PrivateKey.generate()
    message = v3.signed_message(chunks[0].response_hash or b"", chunks[0].usage)
    with pytest.raises(v3.AnswerSignatureInvalid, match="does not verify"):
        client.open(chunks[0].model_copy(update={"signature": impostor.sign(message)}))
    with pytest.raises(v3.AnswerSignatureInvalid, match="not signed"):
        client.open(chunks[0].model_copy(update={"signature": None}))
    client.open(chunks[0])
    assert client.usage == chunks[0].usage


def test_usage_altered_beside_the_signature_is_refused(node: Node) -> None:
    client, chunks = stream(node, 2)
    client.open(chunks[0])
    assert chunks[1].usage is not None
    for cheaper in (chunks[1].usage.model_copy(update={"total_tokens": 0}), None):
        with pytest.raises(v3.AnswerSignatureInvalid, match="signature"):
            client.open(chunks[1].model_copy(update={"usage": cheaper}))
    assert client.usage is None  # only a verified final chunk sets it


def test_a_forged_final_chunk_is_refused(node: Node) -> None:
    """A gateway ends the answer early with a final chunk of its own making: chunk 1 relabelled
    final and "signed" with a key it holds, or the genuine, node-signed final chunk of another
    answer by the same node."""
    client, chunks = stream(node)
    client.open(chunks[0])
    impostor = Ed25519PrivateKey.generate()
    relabelled = chunks[1].model_copy(update={"final": True, "usage": Usage(total_tokens=1)})
    signature = impostor.sign(v3.signed_message(chunks[1].response_hash or b"", relabelled.usage))
    with pytest.raises(DecryptionFailed, match="tag did not verify"):
        client.open(relabelled.model_copy(update={"signature": signature}))
    _, others = stream(node, 2)
    with pytest.raises(v3.StreamOrderError, match="response nonce"):
        client.open(others[1])
    with pytest.raises(DecryptionFailed):
        client.open(others[1].model_copy(update={"response_nonce": chunks[0].response_nonce}))
    assert not client.complete
    with pytest.raises(v3.StreamOrderError, match="truncated"):
        client.finish()


def test_only_the_final_chunk_carries_a_signature_or_usage(node: Node) -> None:
    client, chunks = stream(node)
    message = v3.signed_message(chunks[0].response_hash or b"", None)
    signed = chunks[0].model_copy(update={"signature": node.signer.sign(message)})
    with pytest.raises(DecryptionFailed, match="only the final chunk"):
        client.open(signed)
    with pytest.raises(DecryptionFailed, match="only the final chunk"):
        client.open(chunks[0].model_copy(update={"usage": Usage(total_tokens=1)}))
    client.open(chunks[0])


def test_the_signature_covers_the_final_running_hash_and_the_usage(node: Node) -> None:
    _, chunks = stream(node, 3)
    final = chunks[-1]
    assert final.signature is not None and final.response_hash is not None
    assert final.usage is not None
    expected = b"veil-v3 signature" + final.response_hash + canonical_json(final.usage.model_dump())
    assert v3.signed_message(final.response_hash, final.usage) == expected
    node.signer.public_key().verify(final.signature, expected)


# -- chunk keys and AAD ----------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "final"), [(0, True), (0, False), (7, False), (2**40, True)])
def test_the_chunk_aad_is_label_index_and_final_flag(index: int, final: bool) -> None:
    aad = v3.AnswerCipher.aad(index, final)
    assert aad == b"veil-v3 chunk" + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


# -- the node never reuses a chunk index -----------------------------------------------------------


def test_the_node_never_reuses_a_chunk_index(node: Node) -> None:
    envelope, _ = seal(node)
    _, server = node.open(envelope)
    first = server.seal(b"one", final=False, sign=node.signer.sign)
    with pytest.raises(ValueError, match="usage"):
        server.seal(b"x", final=False, sign=node.signer.sign, usage={"total_tokens": 1})
    assert server.next_index == 1  # the refused call spent no index
    second = server.seal(b"last", final=True, sign=node.signer.sign)
    with pytest.raises(ValueError, match="already sealed"):
        server.seal(b"more", final=True, sign=node.signer.sign)
    assert (first.index, second.index) == (0, 1) and first.nonce != second.nonce
