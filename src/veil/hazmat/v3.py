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

Node keys: one 32-byte seed per key id. For X-Wing it expands, as the X-Wing draft specifies, with
SHAKE256 to 96 bytes: the ML-KEM-768 seed (d || z, 64 bytes) and the X25519 private key (32); the
public key is the ML-KEM public key (1184 bytes) followed by the X25519 one (32). The key id is
``veil.wire.keyid.key_id`` of that public key.

This module does no I/O (the keyring and the replay cache are the node's business).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.hazmat.v2 import ResponseHashMismatch, StreamOrderError, canonical_json, chunk_nonce
from veil.wire.envelopes import (
    HASH_SIZE,
    NONCE_SIZE,
    REQUEST_ID_SIZE,
    RESPONSE_NONCE_SIZE,
    SALT_SIZE,
    X25519_KEY_SIZE,
    ConfidentialComputeRequest,
    ConfidentialComputeResponse,
    Usage,
)
from veil.wire.errors import DecryptionFailed, InvalidBody, Replayed
from veil.wire.keyid import key_id as key_id_of

__all__ = [
    "SUITE",
    "AnswerSignatureInvalid",
    "ClientSession",
    "Kem",
    "NodeKemKey",
    "ResponseHashMismatch",
    "ServerSession",
    "StreamOrderError",
    "open_request",
    "request_info",
    "seal_request",
]

SUITE: Final = "veil-v3"
SECRET_SIZE: Final = 32
SEED_SIZE: Final = 32
MLKEM768_PUBLIC_KEY_SIZE: Final = 1184
DEFAULT_WINDOW_SECONDS: Final = 120.0

REQUEST_LABEL: Final = b"veil-v3 request\x00"
RESPONSE_LABEL: Final = b"veil-v3 response"
CHUNK_LABEL: Final = b"veil-v3 chunk"
ANSWER_LABEL: Final = b"veil-v3 answer"
SIGNATURE_LABEL: Final = b"veil-v3 signature"

_MAX_INDEX = 2**63 - 1


class AnswerSignatureInvalid(DecryptionFailed):
    """The final chunk is unsigned, or its signature does not verify under the node key.

    (Like ``ResponseHashMismatch``, a running hash that is not the chunks', it is a
    ``DecryptionFailed`` a client can tell apart from a failed tag.)"""


class Kem(StrEnum):
    """The KEM a v3 request was sealed with (the envelope's ``kem`` field says which)."""

    HYBRID = "mlkem768-x25519"  # X-Wing: post-quantum; the default
    X25519 = "x25519"  # classical; only where a policy allows it

    @property
    def public_key_size(self) -> int:
        return MLKEM768_PUBLIC_KEY_SIZE + X25519_KEY_SIZE if self is Kem.HYBRID else X25519_KEY_SIZE

    @property
    def enc_size(self) -> int:
        return _HPKE_KEM[self].enc_length()

    @property
    def hpke_suite(self) -> hpke.Suite:
        return _SUITES[self]


_HPKE_KEM: Final = {Kem.HYBRID: hpke.KEM.MLKEM768_X25519, Kem.X25519: hpke.KEM.X25519}
_SUITES: Final = {
    kem: hpke.Suite(value, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    for kem, value in _HPKE_KEM.items()
}

_HpkePublic = hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey
_HpkePrivate = hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey


def parse_kem(value: str | None) -> Kem:
    """The envelope's ``kem``; anything else (or none) is a 400."""
    try:
        return Kem(value or "")
    except ValueError:
        raise InvalidBody(f"unknown {SUITE} kem (expected one of: {_KEM_NAMES})") from None


_KEM_NAMES = ", ".join(k.value for k in Kem)


def hpke_public_key(kem: Kem, raw: bytes) -> _HpkePublic:
    """A node's published public key as cryptography's HPKE key; wrong sizes are a 400."""
    if len(raw) != kem.public_key_size:
        raise InvalidBody(f"{kem.value} public key must be {kem.public_key_size} bytes")
    try:
        x = x25519.X25519PublicKey.from_public_bytes(raw[-X25519_KEY_SIZE:])
        if kem is Kem.X25519:
            return x
        m = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_KEY_SIZE])
        return hpke.MLKEM768X25519PublicKey(m, x)
    except ValueError:
        raise InvalidBody(f"not a valid {kem.value} public key") from None


@dataclass(frozen=True)
class NodeKemKey:
    """One node key of a KEM: its seed (the only secret to store), the derived pair, its id."""

    kem: Kem
    seed: bytes
    public_key: bytes
    key_id: str
    private_key: _HpkePrivate

    @classmethod
    def generate(cls, kem: Kem = Kem.HYBRID) -> NodeKemKey:
        return cls.from_seed(kem, os.urandom(SEED_SIZE))

    @classmethod
    def from_seed(cls, kem: Kem, seed: bytes) -> NodeKemKey:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"a {SUITE} key seed is {SEED_SIZE} bytes")
        private: _HpkePrivate
        if kem is Kem.HYBRID:
            expanded = hashlib.shake_256(seed).digest(96)
            m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
            x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
            public = m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()
            private = hpke.MLKEM768X25519PrivateKey(m, x)
        else:
            x = x25519.X25519PrivateKey.from_private_bytes(seed)
            public = x.public_key().public_bytes_raw()
            private = x
        return cls(kem, seed, public, key_id_of(public), private)

    @property
    def x25519_public_key(self) -> bytes:
        """What the envelope's ``node_dh_public_key`` carries."""
        return self.public_key[-X25519_KEY_SIZE:]

    def __repr__(self) -> str:  # never the seed
        return f"NodeKemKey(kem={self.kem.value}, key_id={self.key_id})"


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


def _info_of(envelope: ConfidentialComputeRequest, kem: Kem, endpoint: str) -> bytes:
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


class _AnswerCipher:
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
        self._cipher: _AnswerCipher | None = None
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
            cipher = _AnswerCipher(
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
    envelope = ConfidentialComputeRequest(
        ciphertext=kem.hpke_suite.encrypt(secret + body, public, info),
        client_dh_public_key=os.urandom(X25519_KEY_SIZE),  # unused by v3 (v1 shape only)
        model_name=model_name,
        node_dh_public_key=node_public_key[-X25519_KEY_SIZE:],
        nonce=os.urandom(NONCE_SIZE),  # unused by v3 (v1 shape only)
        plaintext_body_hash=os.urandom(HASH_SIZE),  # unused by v3 (v1 shape only)
        salt=os.urandom(SALT_SIZE),  # unused by v3 (v1 shape only)
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
        self._cipher = _AnswerCipher(
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
        if index > _MAX_INDEX:
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
    info = _info_of(envelope, kem, endpoint)
    try:
        plaintext = kem.hpke_suite.decrypt(envelope.ciphertext, key.private_key, info)
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
