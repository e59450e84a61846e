"""veil-v3, the node's side: open a request (KEM allowed, fresh, well formed), seal its answer."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidTag

from veil.hazmat.common import (
    MAX_CHUNK_INDEX,
)
from veil.hazmat.kem import Kem, NodeKemKey, parse_kem
from veil.hazmat.v3.schedule import (
    DEFAULT_WINDOW_SECONDS,
    SECRET_SIZE,
    SUITE,
    SUITES,
    AnswerCipher,
    info_of,
    signed_message,
)
from veil.wire.envelopes import (
    RESPONSE_NONCE_SIZE,
    ConfidentialComputeRequest,
    ConfidentialComputeResponse,
    Usage,
)
from veil.wire.errors import DecryptionFailed, InvalidBody, Replayed

# -- node side -------------------------------------------------------------------------------------


class ServerSession:
    """The node's state for one opened request: seals its answer in order, signs the final chunk.

    A repeated index would reuse an AES-GCM nonce, so chunks are numbered here, never by the
    caller, and nothing is sealed after the final chunk."""

    __slots__ = ("_cipher", "_closed", "_next_index", "expires_at", "key_id", "request_id")

    def __init__(
        self,
        *,
        response_secret: bytes,
        request_id: bytes,
        info: bytes,
        key_id: str,
        expires_at: float,
        response_nonce: bytes | None = None,
    ) -> None:
        nonce = os.urandom(RESPONSE_NONCE_SIZE) if response_nonce is None else response_nonce
        self._cipher = AnswerCipher(
            response_secret, request_id, nonce, hashlib.sha256(info).digest()
        )
        self._next_index = 0
        self._closed = False
        self.request_id = request_id
        self.key_id = key_id
        self.expires_at = expires_at

    @property
    def response_nonce(self) -> bytes:
        return self._cipher.response_nonce

    @property
    def next_index(self) -> int:
        return self._next_index

    @property
    def running_hash(self) -> bytes:
        """The hash of every chunk sealed so far (what a running usage receipt can vouch for)."""
        return self._cipher.hash

    def seal(
        self,
        payload: bytes,
        *,
        final: bool,
        sign: Callable[[bytes], bytes],
        usage: Usage | Mapping[str, int] | None = None,
    ) -> ConfidentialComputeResponse:
        """Seal the next chunk (a whole answer is one final chunk); the final one is signed and
        carries ``usage``."""
        if self._closed:
            raise ValueError("the final chunk was already sealed")
        if usage is not None and not final:
            raise ValueError("usage belongs on the final chunk")
        if usage is not None and not isinstance(usage, Usage):
            usage = Usage(**usage)
        index = self._next_index
        if index > MAX_CHUNK_INDEX:
            raise ValueError("chunk index out of range")
        ciphertext = self._cipher.seal(index, final, payload)
        running = self._cipher.chain(index, final, ciphertext)
        # The index is spent from here on, whatever happens next: its nonce is never reused.
        self._cipher.hash = running
        self._next_index = index + 1
        self._closed = final
        return ConfidentialComputeResponse(
            ciphertext=ciphertext,
            nonce=self._cipher.nonce(index),
            response_hash=running,
            signature=sign(signed_message(running, usage)) if final else None,
            usage=usage,
            response_nonce=self._cipher.response_nonce,
            index=index,
            final=final,
        )


def open_request(
    envelope: ConfidentialComputeRequest,
    keys: Callable[[str], NodeKemKey | None],
    *,
    endpoint: str,
    allowed_kems: frozenset[Kem] = frozenset({Kem.HYBRID}),
    reservation_id: str | None = None,
    now: float | None = None,
    window: float = DEFAULT_WINDOW_SECONDS,
) -> tuple[bytes, ServerSession]:
    """Node side: decrypt and check a v3 envelope sent to ``endpoint``.

    ``keys`` looks a key id up in the node's keyring (None: unknown or retired). A KEM outside
    ``allowed_kems`` is refused before any decryption. ``reservation_id`` is what the gateway's
    ticket says the request claims; when given, the envelope must be bound to the same one.

    Raises InvalidBody (400: not v3, missing fields, wrong sizes, a KEM not allowed, an unknown
    key), DecryptionFailed (422: the ciphertext or any bound field altered) or Replayed (409:
    authentic but its timestamp is outside ``now +/- window``). The caller records
    ``session.request_id`` in its replay cache until ``session.expires_at``."""
    if envelope.protocol != SUITE:
        raise InvalidBody(f"envelope is not a {SUITE} envelope")
    if envelope.key_id is None or envelope.request_id is None or envelope.timestamp is None:
        raise InvalidBody(f"{SUITE} envelope lacks key_id, request_id or timestamp")
    kem = parse_kem(envelope.kem)
    if kem not in allowed_kems:
        raise InvalidBody(f"this node does not accept {SUITE} requests sealed with {kem.value}")
    if len(envelope.ciphertext) < kem.enc_size + SECRET_SIZE + 16:
        raise InvalidBody(f"{SUITE} ciphertext is shorter than its {kem.value} encapsulation")
    key = keys(envelope.key_id)
    if key is None or key.kem is not kem:
        raise InvalidBody(f"no current {kem.value} key of this node has id {envelope.key_id}")
    if not hmac.compare_digest(key.x25519_public_key, envelope.node_dh_public_key):
        raise InvalidBody("node_dh_public_key is not the key named by key_id")
    if reservation_id is not None and envelope.reservation_id != reservation_id:
        # The gateway's ticket and the client's sealed binding disagree: someone swapped them.
        raise DecryptionFailed("the request is bound to another reservation than it claims")
    info = info_of(envelope, kem, endpoint)
    try:
        plaintext = SUITES[kem].decrypt(envelope.ciphertext, key.private_key, info)
    except (InvalidTag, ValueError):
        raise DecryptionFailed(
            "authentication tag did not verify: the ciphertext or its metadata (model, stack, "
            "units, stream, endpoint, key id, request id, timestamp or reservation) was altered"
        ) from None
    if len(plaintext) < SECRET_SIZE:
        raise DecryptionFailed(f"{SUITE} plaintext lacks its response secret")
    now = time.time() if now is None else now
    if abs(now - envelope.timestamp) > window:
        raise Replayed(
            f"request timestamp is outside the +/-{int(window)} s window: "
            "check the client clock and send a fresh request"
        )
    session = ServerSession(
        response_secret=plaintext[:SECRET_SIZE],
        request_id=envelope.request_id,
        info=info,
        key_id=envelope.key_id,
        # Remembered one second past the window's end: an id is never forgotten while acceptable.
        expires_at=envelope.timestamp + window + 1,
    )
    return plaintext[SECRET_SIZE:], session
