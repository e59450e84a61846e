"""The veil-v3 suite: post-quantum prompts on cryptography's native HPKE, one signature per answer.

Request (client -> node)::

    kem     = MLKEM768-X25519 (X-Wing, HPKE KEM id 0x647a; the default) or DHKEM(X25519) where a
              policy allows it; KDF HKDF-SHA256, AEAD AES-256-GCM                 (RFC 9180 base mode)
    info    = b"veil-v3 request" || 0x00 || canonical({protocol, kem, key_id, endpoint, model_name,
              stack_small_id, num_compute_units, stream, request_id, timestamp, reservation_id})
    sealed  = HPKE.Seal(node_kem_public_key, info, response_secret || body)     single shot: enc || ct
    envelope.ciphertext = sealed;  response_secret = random(32), known to client and node only

HPKE authenticates ``info``, so every field the gateway sees and could swap is bound without an AAD.
The single-shot API has no exporter, so the answer's keys come from the secret inside the request.

Response (node -> client)::

    response_nonce = random(32), drawn by the node, fixed for the whole answer
    key || base_nonce = HKDF-SHA256(ikm = response_secret, salt = response_nonce,
                                    info = b"veil-v3 response" || request_id, length 44)
    chunk i: nonce_i = base_nonce XOR I2OSP(i, 12)
             ct_i    = AES-256-GCM(key).Encrypt(nonce_i, pt_i, aad = b"veil-v3 chunk" || u64(i) || final)
             h_i     = SHA-256(h_{i-1} || u64(i) || final || ct_i)     (response_hash of chunk i)
             h_-1    = SHA-256(b"veil-v3 answer" || response_nonce || SHA-256(info))
    final chunk only: signature = Ed25519(b"veil-v3 signature" || h_final || canonical(usage))

Every chunk is authenticated by a key only the two ends hold; the node's identity covers the whole
answer through the one signature over the running hash, which also binds the answer to its request
(``info``) and the usage it reports. The client refuses a dropped, reordered, duplicated, foreign
or truncated chunk, and a final chunk whose signature does not verify.

The v1-shaped envelope fields v3 does not use (``client_dh_public_key``, ``nonce``, ``salt``,
``plaintext_body_hash``) carry fresh random bytes of their v1 sizes, so every v1 parser accepts the
shape and nothing about the body is in clear. ``node_dh_public_key`` is the X25519 part of the node
key (all of it for the X25519 KEM).

Node keys, the two KEMs and their HPKE suites: ``veil.hazmat.kem``.

This module does no I/O (the keyring and the replay cache are the node's business).
"""

from veil.hazmat.common import ResponseHashMismatch, StreamOrderError
from veil.hazmat.kem import (
    MLKEM768_PUBLIC_KEY_SIZE,
    SEED_SIZE,
    Kem,
    NodeKemKey,
    hpke_public_key,
    parse_kem,
)
from veil.hazmat.v3.client import ClientSession, seal_request
from veil.hazmat.v3.node import ServerSession, open_request
from veil.hazmat.v3.schedule import (
    ANSWER_LABEL,
    CHUNK_LABEL,
    DEFAULT_WINDOW_SECONDS,
    REQUEST_LABEL,
    RESPONSE_LABEL,
    SECRET_SIZE,
    SIGNATURE_LABEL,
    SUITE,
    SUITES,
    AnswerCipher,
    AnswerSignatureInvalid,
    info_of,
    request_info,
    signed_message,
)

__all__ = [
    "ANSWER_LABEL",
    "CHUNK_LABEL",
    "DEFAULT_WINDOW_SECONDS",
    "MLKEM768_PUBLIC_KEY_SIZE",
    "REQUEST_LABEL",
    "RESPONSE_LABEL",
    "SECRET_SIZE",
    "SEED_SIZE",
    "SIGNATURE_LABEL",
    "SUITE",
    "SUITES",
    "AnswerCipher",
    "AnswerSignatureInvalid",
    "ClientSession",
    "Kem",
    "NodeKemKey",
    "ResponseHashMismatch",
    "ServerSession",
    "StreamOrderError",
    "hpke_public_key",
    "info_of",
    "open_request",
    "parse_kem",
    "request_info",
    "seal_request",
    "signed_message",
]
