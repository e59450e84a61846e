"""veil-v3's key schedule, shared by both ends: labels, the request ``info``, the answer's keys,
chunk nonces and AAD, the running hash and what the one signature covers (see ``veil.hazmat.v3``)."""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.hazmat.common import (
    canonical_json,
    chunk_nonce,
)
from veil.hazmat.kem import HPKE_KEM, Kem
from veil.wire.envelopes import (
    NONCE_SIZE,
    RESPONSE_NONCE_SIZE,
    ConfidentialComputeRequest,
    Usage,
)
from veil.wire.errors import DecryptionFailed

SUITE: Final = "veil-v3"
#: The HPKE suite of each KEM: base mode, HKDF-SHA256, AES-256-GCM.
SUITES: Final = {
    kem: hpke.Suite(value, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    for kem, value in HPKE_KEM.items()
}
SECRET_SIZE: Final = 32
DEFAULT_WINDOW_SECONDS: Final = 120.0

REQUEST_LABEL: Final = b"veil-v3 request\x00"
RESPONSE_LABEL: Final = b"veil-v3 response"
CHUNK_LABEL: Final = b"veil-v3 chunk"
ANSWER_LABEL: Final = b"veil-v3 answer"
SIGNATURE_LABEL: Final = b"veil-v3 signature"


class AnswerSignatureInvalid(DecryptionFailed):
    """The final chunk is unsigned, or its signature does not verify under the node key.

    (Like ``ResponseHashMismatch``, a running hash that is not the chunks', it is a
    ``DecryptionFailed`` a client can tell apart from a failed tag.)"""


def request_info(
    *,
    kem: Kem,
    key_id: str,
    endpoint: str,
    model_name: str,
    stack_small_id: int,
    num_compute_units: int | None,
    stream: bool | None,
    request_id: bytes,
    timestamp: int,
    reservation_id: str | None,
) -> bytes:
    """The HPKE ``info`` of a request: every field the gateway sees and could otherwise swap."""
    return REQUEST_LABEL + canonical_json(
        {
            "protocol": SUITE,
            "kem": kem.value,
            "key_id": key_id,
            "endpoint": endpoint,
            "model_name": model_name,
            "stack_small_id": stack_small_id,
            "num_compute_units": num_compute_units,
            "stream": stream,
            "request_id": request_id,
            "timestamp": timestamp,
            "reservation_id": reservation_id,
        }
    )


def info_of(envelope: ConfidentialComputeRequest, kem: Kem, endpoint: str) -> bytes:
    assert envelope.key_id is not None and envelope.request_id is not None
    assert envelope.timestamp is not None
    return request_info(
        kem=kem,
        key_id=envelope.key_id,
        endpoint=endpoint,
        model_name=envelope.model_name,
        stack_small_id=envelope.stack_small_id,
        num_compute_units=envelope.num_compute_units,
        stream=envelope.stream,
        request_id=envelope.request_id,
        timestamp=envelope.timestamp,
        reservation_id=envelope.reservation_id,
    )


def signed_message(final_hash: bytes, usage: Usage | None) -> bytes:
    """What the node's one Ed25519 signature per answer covers."""
    fields = {} if usage is None else usage.model_dump()
    return SIGNATURE_LABEL + final_hash + canonical_json(fields)


class AnswerCipher:
    """The keys and running hash of one answer, shared by both ends."""

    __slots__ = ("_aead", "_base_nonce", "hash", "response_nonce")

    def __init__(
        self, secret: bytes, request_id: bytes, response_nonce: bytes, info_digest: bytes
    ) -> None:
        if len(response_nonce) != RESPONSE_NONCE_SIZE:
            raise ValueError(f"response nonce must be {RESPONSE_NONCE_SIZE} bytes")
        okm = HKDF(
            hashes.SHA256(), 32 + NONCE_SIZE, salt=response_nonce, info=RESPONSE_LABEL + request_id
        ).derive(secret)
        self._aead = AESGCM(okm[:32])
        self._base_nonce = okm[32:]
        self.response_nonce = response_nonce
        self.hash = hashlib.sha256(ANSWER_LABEL + response_nonce + info_digest).digest()

    def nonce(self, index: int) -> bytes:
        return chunk_nonce(self._base_nonce, index)

    @staticmethod
    def aad(index: int, final: bool) -> bytes:
        return CHUNK_LABEL + struct.pack(">Q?", index, final)

    def chain(self, index: int, final: bool, ciphertext: bytes) -> bytes:
        """The running hash after chunk ``index`` (not stored: the caller commits it)."""
        return hashlib.sha256(self.hash + struct.pack(">Q?", index, final) + ciphertext).digest()

    def seal(self, index: int, final: bool, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self.nonce(index), plaintext, self.aad(index, final))

    def open(self, index: int, final: bool, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(self.nonce(index), ciphertext, self.aad(index, final))
        except InvalidTag:
            raise DecryptionFailed(
                "response authentication tag did not verify: the chunk was altered, belongs to "
                "another request or position, or was sealed for another request"
            ) from None
