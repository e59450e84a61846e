"""veil-v3, the client's side: seal a request, then open and check its answer chunk by chunk."""

from __future__ import annotations

import hashlib
import hmac
import os
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.hazmat.common import (
    ResponseHashMismatch,
    StreamOrderError,
)
from veil.hazmat.kem import Kem, hpke_public_key
from veil.hazmat.v3.schedule import (
    SECRET_SIZE,
    SUITE,
    SUITES,
    AnswerCipher,
    AnswerSignatureInvalid,
    request_info,
    signed_message,
)
from veil.wire.envelopes import (
    HASH_SIZE,
    NONCE_SIZE,
    REQUEST_ID_SIZE,
    SALT_SIZE,
    X25519_KEY_SIZE,
    ConfidentialComputeRequest,
    ConfidentialComputeResponse,
    Usage,
)
from veil.wire.errors import DecryptionFailed, InvalidBody
from veil.wire.keyid import key_id as key_id_of

# -- client side -----------------------------------------------------------------------------------


class ClientSession:
    """The client's state for one request: opens its answer chunk by chunk, in order, and checks
    the node's one signature on the final chunk (fail closed: a final chunk without a valid
    signature, or a stream that ends without its final chunk, is refused)."""

    __slots__ = (
        "_cipher",
        "_final_seen",
        "_info_digest",
        "_next_index",
        "_secret",
        "_signing_key",
        "request_id",
        "timestamp",
        "usage",
    )

    def __init__(
        self,
        *,
        response_secret: bytes,
        request_id: bytes,
        timestamp: int,
        info: bytes,
        node_signing_key: Ed25519PublicKey,
    ) -> None:
        self._secret = response_secret
        self._info_digest = hashlib.sha256(info).digest()
        self._signing_key = node_signing_key
        self._cipher: AnswerCipher | None = None
        self._next_index = 0
        self._final_seen = False
        self.request_id = request_id
        self.timestamp = timestamp
        self.usage: Usage | None = None  # the signed usage, once the final chunk verified

    @property
    def complete(self) -> bool:
        return self._final_seen

    @property
    def next_index(self) -> int:
        return self._next_index

    def open(self, response: ConfidentialComputeResponse) -> bytes:
        """Verify and decrypt one answer or chunk. Raises DecryptionFailed / StreamOrderError."""
        if response.response_nonce is None or response.index is None or response.final is None:
            raise DecryptionFailed(
                f"not a {SUITE} response: response_nonce, index or final missing"
            )
        if response.response_hash is None:
            raise DecryptionFailed(f"{SUITE} response without response_hash")
        if self._final_seen:
            raise StreamOrderError("a chunk arrived after the final chunk of the response")
        if response.index != self._next_index:
            raise StreamOrderError(
                f"response chunk {response.index} arrived where chunk {self._next_index} was "
                "expected (dropped, reordered or duplicated)"
            )
        cipher = self._cipher
        if cipher is None:
            cipher = AnswerCipher(
                self._secret, self.request_id, response.response_nonce, self._info_digest
            )
        elif not hmac.compare_digest(cipher.response_nonce, response.response_nonce):
            raise StreamOrderError(
                "chunk carries another response nonce: it is not from this answer"
            )
        if not hmac.compare_digest(cipher.nonce(response.index), response.nonce):
            raise DecryptionFailed("chunk nonce does not match its index")
        plaintext = cipher.open(response.index, response.final, response.ciphertext)
        running = cipher.chain(response.index, response.final, response.ciphertext)
        if not hmac.compare_digest(running, response.response_hash):
            raise ResponseHashMismatch(
                "response_hash is not the running hash of the chunks received"
            )
        if response.final:
            if response.signature is None:
                raise AnswerSignatureInvalid("the final chunk of the answer is not signed")
            try:
                self._signing_key.verify(
                    response.signature, signed_message(running, response.usage)
                )
            except InvalidSignature:
                raise AnswerSignatureInvalid(
                    "the answer's signature does not verify under the node key"
                ) from None
            self.usage = response.usage
        elif response.signature is not None or response.usage is not None:
            raise DecryptionFailed("only the final chunk carries a signature and usage")
        cipher.hash = running
        self._cipher = cipher
        self._next_index = response.index + 1
        self._final_seen = response.final
        return plaintext

    def finish(self) -> None:
        """Call when the transport ended: a missing final chunk means the answer was truncated."""
        if not self._final_seen:
            raise StreamOrderError(
                f"response ended after {self._next_index} chunk(s) without its final chunk "
                "(truncated)"
            )


def seal_request(
    node_public_key: bytes,
    key_id: str,
    body: bytes,
    *,
    node_signing_key: Ed25519PublicKey | bytes,
    endpoint: str,
    model_name: str,
    stack_small_id: int,
    kem: Kem = Kem.HYBRID,
    num_compute_units: int | None = None,
    stream: bool | None = None,
    reservation_id: str | None = None,
    now: float | None = None,
    request_id: bytes | None = None,
    response_secret: bytes | None = None,
) -> tuple[ConfidentialComputeRequest, ClientSession]:
    """Client side of a v3 request: the envelope, and the session that opens its answer.

    ``node_public_key`` is the node's key for ``kem`` and ``key_id`` the id the lock announced
    for it (checked here). ``node_signing_key`` is the attested Ed25519 key the answer's one
    signature must verify under. ``request_id`` and ``response_secret`` exist for test vectors."""
    public = hpke_public_key(kem, node_public_key)
    if not hmac.compare_digest(key_id_of(node_public_key), key_id):
        raise InvalidBody("key_id does not belong to the node public key")
    if not isinstance(node_signing_key, Ed25519PublicKey):
        try:
            node_signing_key = Ed25519PublicKey.from_public_bytes(node_signing_key)
        except ValueError:
            raise InvalidBody("node signing key must be 32 bytes of Ed25519") from None
    request_id = os.urandom(REQUEST_ID_SIZE) if request_id is None else request_id
    secret = os.urandom(SECRET_SIZE) if response_secret is None else response_secret
    if len(request_id) != REQUEST_ID_SIZE or len(secret) != SECRET_SIZE:
        raise ValueError("request_id or response secret has the wrong size")
    timestamp = int(time.time() if now is None else now)
    info = request_info(
        kem=kem,
        key_id=key_id,
        endpoint=endpoint,
        model_name=model_name,
        stack_small_id=stack_small_id,
        num_compute_units=num_compute_units,
        stream=stream,
        request_id=request_id,
        timestamp=timestamp,
        reservation_id=reservation_id,
    )
    # The v1 shape's fields v3 does not use carry random bytes (drawn at once), nothing else.
    filler = memoryview(os.urandom(X25519_KEY_SIZE + NONCE_SIZE + HASH_SIZE + SALT_SIZE))
    unused_dh, filler = bytes(filler[:X25519_KEY_SIZE]), filler[X25519_KEY_SIZE:]
    unused_nonce, filler = bytes(filler[:NONCE_SIZE]), filler[NONCE_SIZE:]
    unused_hash, unused_salt = bytes(filler[:HASH_SIZE]), bytes(filler[HASH_SIZE:])
    envelope = ConfidentialComputeRequest(
        ciphertext=SUITES[kem].encrypt(secret + body, public, info),
        client_dh_public_key=unused_dh,
        model_name=model_name,
        node_dh_public_key=node_public_key[-X25519_KEY_SIZE:],
        nonce=unused_nonce,
        plaintext_body_hash=unused_hash,
        salt=unused_salt,
        stack_small_id=stack_small_id,
        num_compute_units=num_compute_units,
        stream=stream,
        protocol=SUITE,
        kem=kem.value,
        key_id=key_id,
        request_id=request_id,
        timestamp=timestamp,
        reservation_id=reservation_id,
    )
    session = ClientSession(
        response_secret=secret,
        request_id=request_id,
        timestamp=timestamp,
        info=info,
        node_signing_key=node_signing_key,
    )
    return envelope, session
