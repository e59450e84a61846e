"""The veil-v2 suite (PROTOCOL.md section 5): HPKE base mode plus OHTTP-style response keys.

Request (client -> node)::

    suite   = DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM          (RFC 9180)
    info    = b"veil-v2 request" || endpoint                             e.g. "/v1/confidential/embeddings"
    enc, ctx = SetupBaseS(node_pk, info)                                 enc -> client_dh_public_key
    aad     = canonical({protocol, key_id, endpoint, model_name, stack_small_id,
                         num_compute_units, stream, request_id, timestamp})
    ct      = ctx.Seal(aad, body)                                        (sequence number 0)
    plaintext_body_hash = HMAC-SHA256(ctx.Export("veil-v2 body hmac", 32), body)

Response (node -> client), as RFC 9458 section 4.4 derives it::

    secret  = ctx.Export("veil-v2 response", 32)
    response_nonce = random(32)                                          fixed for the whole answer
    prk     = HKDF-Extract(salt = enc || response_nonce, ikm = secret)
    key     = HKDF-Expand(prk, "key", 32)
    base_nonce = HKDF-Expand(prk, "nonce", 12)
    mac_key = HKDF-Expand(prk, "mac", 32)
    chunk i: nonce_i = base_nonce XOR I2OSP(i, 12)
             ct_i    = AES-256-GCM(key).Encrypt(nonce_i, pt_i, aad = canonical({protocol,
                         request_id, index: i, final}))
             response_hash_i = HMAC-SHA256(mac_key, pt_i);  signature_i = Ed25519(response_hash_i)

A whole (non-streamed) answer is chunk 0 with ``final`` true; a stream is chunks 0..n with only the
last marked final (it also carries ``usage`` in clear). The client checks index continuity, the
response nonce and the final flag, so a dropped, reordered, duplicated, foreign or truncated chunk is
refused.

``canonical`` is JSON with sorted keys, ``(",", ":")`` separators, UTF-8 without ``\\u`` escaping of
non-ASCII text, ``null`` for absent optional values, integers in decimal, booleans as ``true/false``
and byte strings as standard padded base64 (:func:`canonical_json`).

This module does no I/O: the node's keyring lookup and its replay cache (``veil.node.replay``) are
the pipeline's business. :func:`open_request` hands back the request id, timestamp and the instant
until which the id must be remembered.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from pyhpke import (
    AEADId,
    CipherSuite,
    ContextInterface,
    KDFId,
    KEMId,
    KEMKey,
    KEMKeyPair,
    PyHPKEError,
)

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
    b64encode,
)
from veil.wire.errors import DecryptionFailed, InvalidBody, Replayed
from veil.wire.keyid import key_id as key_id_of

SUITE: Final = "veil-v2"
KEY_SIZE: Final = 32
MAC_KEY_SIZE: Final = 32
ED25519_PUBLIC_KEY_SIZE: Final = 32
DEFAULT_WINDOW_SECONDS: Final = 120.0

INFO_PREFIX: Final = b"veil-v2 request"
BODY_HMAC_LABEL: Final = b"veil-v2 body hmac"
RESPONSE_LABEL: Final = b"veil-v2 response"

CIPHER_SUITE: Final = CipherSuite.new(
    KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM
)

_SHA256 = hashes.SHA256()
_MAX_INDEX = 2**63 - 1  # the envelope's integer range; far below the 2**96 nonce space


class StreamOrderError(DecryptionFailed):
    """A response chunk arrived out of place: dropped, reordered, duplicated, foreign or truncated."""


class ResponseHashMismatch(DecryptionFailed):
    """A chunk decrypted, but its ``response_hash`` is not the HMAC of what it decrypted to."""


# -- primitives shared by both sides ---------------------------------------------------------------


def request_info(endpoint: str) -> bytes:
    """The HPKE ``info``: binds the context to the route the request was sealed for."""
    return INFO_PREFIX + endpoint.encode("utf-8")


# Built once: ``json.dumps`` with non-default options builds a new encoder on every call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(fields: Mapping[str, object]) -> bytes:
    """Sorted-key compact UTF-8 JSON; byte strings become standard base64."""
    try:
        return _CANONICAL.encode(
            {k: b64encode(v) if isinstance(v, bytes) else v for k, v in fields.items()}
        ).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError):
        raise InvalidBody("envelope metadata cannot be canonically encoded") from None


def request_aad(
    *,
    key_id: str,
    endpoint: str,
    model_name: str,
    stack_small_id: int,
    num_compute_units: int | None,
    stream: bool | None,
    request_id: bytes,
    timestamp: int,
) -> bytes:
    """The AAD of a request: every field the gateway sees and could otherwise swap."""
    return canonical_json(
        {
            "protocol": SUITE,
            "key_id": key_id,
            "endpoint": endpoint,
            "model_name": model_name,
            "stack_small_id": stack_small_id,
            "num_compute_units": num_compute_units,
            "stream": stream,
            "request_id": request_id,
            "timestamp": timestamp,
        }
    )


def response_aad(request_id: bytes, index: int, final: bool) -> bytes:
    """The AAD of response chunk ``index``."""
    return canonical_json(
        {"protocol": SUITE, "request_id": request_id, "index": index, "final": final}
    )


def chunk_nonce(base_nonce: bytes, index: int) -> bytes:
    """``base_nonce XOR I2OSP(index, 12)``, as RFC 9180 ``ComputeNonce``."""
    if len(base_nonce) != NONCE_SIZE:
        raise ValueError(f"base nonce must be {NONCE_SIZE} bytes")
    if not 0 <= index <= _MAX_INDEX:
        raise ValueError("chunk index out of range")
    return (int.from_bytes(base_nonce, "big") ^ index).to_bytes(NONCE_SIZE, "big")


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def body_mac(context: ContextInterface, body: bytes) -> bytes:
    """``plaintext_body_hash`` of v2: a keyed MAC only the two ends can compute."""
    return _mac(context.export(BODY_HMAC_LABEL, MAC_KEY_SIZE), body)


def hpke_sender(
    node_public_key: bytes, info: bytes, eks: KEMKeyPair | None = None
) -> tuple[bytes, ContextInterface]:
    """SetupBaseS: ``(enc, context)``. ``eks`` fixes the ephemeral key (test vectors only)."""
    if len(node_public_key) != X25519_KEY_SIZE:
        raise InvalidBody(f"node public key must be {X25519_KEY_SIZE} bytes")
    try:
        pkr = CIPHER_SUITE.kem.deserialize_public_key(node_public_key)
        return CIPHER_SUITE.create_sender_context(pkr, info, eks=eks)
    except (ValueError, PyHPKEError):
        # cryptography refuses the all-zero shared secret of a low-order point.
        raise InvalidBody("node public key is a low-order point") from None


def hpke_recipient(enc: bytes, private_key: X25519PrivateKey, info: bytes) -> ContextInterface:
    """SetupBaseR for the node; a malformed or low-order ``enc`` is a 400."""
    if len(enc) != X25519_KEY_SIZE:
        raise InvalidBody(f"client_dh_public_key must be {X25519_KEY_SIZE} bytes")
    skr = KEMKey.from_pyca_cryptography_key(private_key)
    try:
        return CIPHER_SUITE.create_recipient_context(enc, skr, info)
    except (ValueError, PyHPKEError):
        raise InvalidBody("client_dh_public_key (HPKE enc) is a low-order point") from None


class _ResponseCipher:
    """The keys of one answer: derived once from (secret, enc, response_nonce), used per chunk."""

    __slots__ = ("_aad_tail", "_aead", "_base_nonce", "_mac_key", "request_id", "response_nonce")

    def __init__(self, secret: bytes, enc: bytes, response_nonce: bytes, request_id: bytes) -> None:
        if len(secret) != KEY_SIZE or len(enc) != X25519_KEY_SIZE:
            raise ValueError("response secret or enc has the wrong size")
        if len(response_nonce) != RESPONSE_NONCE_SIZE:
            raise ValueError(f"response nonce must be {RESPONSE_NONCE_SIZE} bytes")
        prk = HKDF.extract(_SHA256, enc + response_nonce, secret)
        key = HKDFExpand(_SHA256, KEY_SIZE, b"key").derive(prk)
        self._base_nonce = HKDFExpand(_SHA256, NONCE_SIZE, b"nonce").derive(prk)
        self._mac_key = HKDFExpand(_SHA256, MAC_KEY_SIZE, b"mac").derive(prk)
        self._aead = AESGCM(key)
        self.response_nonce = response_nonce
        self.request_id = request_id
        # response_aad() with the constant part encoded once (keys sort as final, index, ...);
        # test_v2 checks the two agree.
        self._aad_tail = (
            b',"protocol":"' + SUITE.encode() + b'","request_id":"' + base64.b64encode(request_id)
        ) + b'"}'

    def aad(self, index: int, final: bool) -> bytes:
        head = b'{"final":true,"index":' if final else b'{"final":false,"index":'
        return head + str(index).encode("ascii") + self._aad_tail

    def nonce(self, index: int) -> bytes:
        return chunk_nonce(self._base_nonce, index)

    def seal(self, index: int, final: bool, plaintext: bytes) -> tuple[bytes, bytes, bytes]:
        nonce = self.nonce(index)
        ciphertext = self._aead.encrypt(nonce, plaintext, self.aad(index, final))
        return nonce, ciphertext, _mac(self._mac_key, plaintext)

    def open(self, index: int, final: bool, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(self.nonce(index), ciphertext, self.aad(index, final))
        except InvalidTag:
            raise DecryptionFailed(
                "response authentication tag did not verify: the chunk was altered, belongs to "
                "another request or position, or was sealed under another node key"
            ) from None

    def response_hash(self, plaintext: bytes) -> bytes:
        return _mac(self._mac_key, plaintext)


# -- client side -----------------------------------------------------------------------------------


class ClientSession:
    """The client's state for one request: opens its answer chunk by chunk, in order.

    ``open`` checks, for every chunk: the v2 fields are present, the response nonce is the one the
    first chunk fixed, the index is the expected one, nothing follows the final chunk, the AEAD tag
    (whose AAD carries the request id, index and final flag) and ``response_hash`` (an HMAC under a
    key only the two ends hold). ``finish`` refuses a stream that ended without its final chunk.

    The node's Ed25519 signature over ``response_hash`` is left to the caller, who holds the node's
    signing key: once ``open`` returned, ``response.response_hash`` is proven to be this chunk's MAC,
    so :func:`verify_signature` on the same response completes the check.
    """

    __slots__ = (
        "_cipher",
        "_enc",
        "_final_seen",
        "_next_index",
        "_secret",
        "endpoint",
        "key_id",
        "request_id",
        "timestamp",
    )

    def __init__(
        self,
        *,
        enc: bytes,
        response_secret: bytes,
        request_id: bytes,
        timestamp: int,
        key_id: str,
        endpoint: str,
    ) -> None:
        if len(enc) != X25519_KEY_SIZE or len(response_secret) != KEY_SIZE:
            raise ValueError("enc or response secret has the wrong size")
        if len(request_id) != REQUEST_ID_SIZE:
            raise ValueError(f"request_id must be {REQUEST_ID_SIZE} bytes")
        self._enc = enc
        self._secret = response_secret
        self._cipher: _ResponseCipher | None = None
        self._next_index = 0
        self._final_seen = False
        self.request_id = request_id
        self.timestamp = timestamp
        self.key_id = key_id
        self.endpoint = endpoint

    @property
    def next_index(self) -> int:
        """The index the next chunk must carry."""
        return self._next_index

    @property
    def complete(self) -> bool:
        """True once the final chunk has been opened."""
        return self._final_seen

    @property
    def response_nonce(self) -> bytes | None:
        """The response nonce fixed by the first chunk opened, if any."""
        return None if self._cipher is None else self._cipher.response_nonce

    def open(
        self, response: ConfidentialComputeResponse, *, expected_index: int | None = None
    ) -> bytes:
        """Verify and decrypt one answer or chunk. Raises DecryptionFailed / StreamOrderError."""
        if response.response_nonce is None or response.index is None or response.final is None:
            raise DecryptionFailed("not a veil-v2 response: response_nonce, index or final missing")
        if response.response_hash is None:
            raise DecryptionFailed("veil-v2 response without response_hash")
        if self._final_seen:
            raise StreamOrderError("a chunk arrived after the final chunk of the response")
        expected = self._next_index if expected_index is None else expected_index
        if response.index != expected:
            raise StreamOrderError(
                f"response chunk {response.index} arrived where chunk {expected} was expected "
                "(dropped, reordered or duplicated)"
            )
        cipher = self._cipher
        if cipher is None:
            cipher = _ResponseCipher(
                self._secret, self._enc, response.response_nonce, self.request_id
            )
        elif not hmac.compare_digest(cipher.response_nonce, response.response_nonce):
            raise StreamOrderError(
                "chunk carries another response nonce: it is not from this answer"
            )
        if not hmac.compare_digest(cipher.nonce(response.index), response.nonce):
            raise DecryptionFailed("chunk nonce does not match its index")
        plaintext = cipher.open(response.index, response.final, response.ciphertext)
        if not hmac.compare_digest(cipher.response_hash(plaintext), response.response_hash):
            raise ResponseHashMismatch("response_hash does not match the decrypted response")
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
    endpoint: str,
    model_name: str,
    stack_small_id: int,
    num_compute_units: int | None = None,
    stream: bool | None = None,
    now: float | None = None,
    eks: KEMKeyPair | X25519PrivateKey | None = None,
    request_id: bytes | None = None,
) -> tuple[ConfidentialComputeRequest, ClientSession]:
    """Client side of a v2 request: the envelope, and the session that opens its answer.

    ``key_id`` is what the lock response announced for ``node_public_key``; it must be that key's
    id (checked here, so a lying gateway is caught before anything is sent). ``eks`` (a fixed HPKE
    ephemeral key) and ``request_id`` exist for tests and vectors; leave them unset otherwise.

    The v1 fields ``salt`` and ``nonce`` are not used by v2: they are filled with fresh random bytes
    of the v1 sizes only so that the envelope keeps a shape every v1 parser accepts.
    """
    if len(node_public_key) != X25519_KEY_SIZE:
        raise InvalidBody(f"node public key must be {X25519_KEY_SIZE} bytes")
    if not hmac.compare_digest(key_id_of(node_public_key), key_id):
        raise InvalidBody("key_id does not belong to the node public key")
    if request_id is None:
        request_id = os.urandom(REQUEST_ID_SIZE)
    elif len(request_id) != REQUEST_ID_SIZE:
        raise ValueError(f"request_id must be {REQUEST_ID_SIZE} bytes")
    timestamp = int(time.time() if now is None else now)
    if isinstance(eks, X25519PrivateKey):
        eks = KEMKeyPair(
            KEMKey.from_pyca_cryptography_key(eks),
            KEMKey.from_pyca_cryptography_key(eks.public_key()),
        )
    enc, context = hpke_sender(node_public_key, request_info(endpoint), eks)
    aad = request_aad(
        key_id=key_id,
        endpoint=endpoint,
        model_name=model_name,
        stack_small_id=stack_small_id,
        num_compute_units=num_compute_units,
        stream=stream,
        request_id=request_id,
        timestamp=timestamp,
    )
    envelope = ConfidentialComputeRequest(
        ciphertext=context.seal(body, aad),
        client_dh_public_key=enc,
        model_name=model_name,
        node_dh_public_key=node_public_key,
        nonce=os.urandom(NONCE_SIZE),  # unused by v2 (v1 shape only)
        plaintext_body_hash=body_mac(context, body),
        salt=os.urandom(SALT_SIZE),  # unused by v2 (v1 shape only)
        stack_small_id=stack_small_id,
        num_compute_units=num_compute_units,
        stream=stream,
        protocol=SUITE,
        key_id=key_id,
        request_id=request_id,
        timestamp=timestamp,
    )
    session = ClientSession(
        enc=enc,
        response_secret=context.export(RESPONSE_LABEL, KEY_SIZE),
        request_id=request_id,
        timestamp=timestamp,
        key_id=key_id,
        endpoint=endpoint,
    )
    return envelope, session


def open_response(session: ClientSession, response: ConfidentialComputeResponse) -> bytes:
    """A whole (non-streamed) answer: chunk 0, which must be final."""
    plaintext = session.open(response)
    session.finish()
    return plaintext


def verify_signature(
    response: ConfidentialComputeResponse, node_signing_key: Ed25519PublicKey | bytes
) -> None:
    """Check the node's Ed25519 signature over ``response_hash`` (after ``ClientSession.open``).

    Pass the key object (not its 32 raw bytes) when verifying many chunks: parsing it is not free.
    """
    if response.signature is None or response.response_hash is None:
        raise DecryptionFailed("response is not signed")
    try:
        if not isinstance(node_signing_key, Ed25519PublicKey):
            if len(node_signing_key) != ED25519_PUBLIC_KEY_SIZE:
                raise DecryptionFailed(f"node signing key must be {ED25519_PUBLIC_KEY_SIZE} bytes")
            node_signing_key = Ed25519PublicKey.from_public_bytes(node_signing_key)
        node_signing_key.verify(response.signature, response.response_hash)
    except (InvalidSignature, ValueError):
        raise DecryptionFailed("response signature does not verify under the node key") from None


# -- node side -------------------------------------------------------------------------------------


class ServerSession:
    """The node's state for one opened request: seals its answer, chunk by chunk.

    The response nonce is drawn once and kept for every chunk. Indices must be sealed in order
    from 0 and nothing after the final chunk: a repeated index would reuse an AES-GCM nonce, so
    ``seal`` refuses it (``ValueError``, a programming error on the node).
    """

    __slots__ = ("_cipher", "_closed", "_next_index", "expires_at", "key_id", "timestamp")

    def __init__(
        self,
        *,
        enc: bytes,
        response_secret: bytes,
        request_id: bytes,
        timestamp: int,
        key_id: str,
        expires_at: float,
        response_nonce: bytes | None = None,
    ) -> None:
        if len(request_id) != REQUEST_ID_SIZE:
            raise ValueError(f"request_id must be {REQUEST_ID_SIZE} bytes")
        if response_nonce is None:
            response_nonce = os.urandom(RESPONSE_NONCE_SIZE)
        self._cipher = _ResponseCipher(response_secret, enc, response_nonce, request_id)
        self._next_index = 0
        self._closed = False
        self.timestamp = timestamp
        self.key_id = key_id
        self.expires_at = expires_at

    @property
    def request_id(self) -> bytes:
        return self._cipher.request_id

    @property
    def response_nonce(self) -> bytes:
        return self._cipher.response_nonce

    @property
    def next_index(self) -> int:
        return self._next_index

    def seal(
        self,
        payload: bytes,
        *,
        index: int,
        final: bool,
        sign: Callable[[bytes], bytes],
        usage: Usage | Mapping[str, int] | None = None,
    ) -> ConfidentialComputeResponse:
        """Seal chunk ``index`` (0 and final for a whole answer); ``usage`` goes on the final one."""
        if self._closed:
            raise ValueError("the final chunk was already sealed")
        if index != self._next_index:
            raise ValueError(f"chunk {index} sealed out of order (expected {self._next_index})")
        if usage is not None and not final:
            raise ValueError("usage belongs on the final chunk")
        if usage is not None and not isinstance(usage, Usage):
            usage = Usage(**usage)
        nonce, ciphertext, digest = self._cipher.seal(index, final, payload)
        # The index is spent from here on, whatever happens next: its nonce is never reused.
        self._next_index = index + 1
        self._closed = final
        return ConfidentialComputeResponse(
            ciphertext=ciphertext,
            nonce=nonce,
            response_hash=digest,
            signature=sign(digest),
            usage=usage,
            response_nonce=self._cipher.response_nonce,
            index=index,
            final=final,
        )


def open_request(
    envelope: ConfidentialComputeRequest,
    private_key: X25519PrivateKey,
    *,
    endpoint: str,
    now: float | None = None,
    window: float = DEFAULT_WINDOW_SECONDS,
) -> tuple[bytes, ServerSession]:
    """Node side: decrypt and check a v2 envelope sealed to ``private_key`` for ``endpoint``.

    Raises InvalidBody (400: not v2, missing fields, wrong sizes, low-order ``enc``),
    DecryptionFailed (422: any AAD field, the ciphertext or the body MAC altered) or Replayed
    (409: authentic but its timestamp is outside ``now +/- window``). The caller then records
    ``session.request_id`` in its replay cache until ``session.expires_at``.
    """
    if envelope.protocol != SUITE:
        raise InvalidBody(f"envelope is not a {SUITE} envelope")
    if envelope.key_id is None or envelope.request_id is None or envelope.timestamp is None:
        raise InvalidBody(f"{SUITE} envelope lacks key_id, request_id or timestamp")
    if len(envelope.request_id) != REQUEST_ID_SIZE:
        raise InvalidBody(f"request_id must be {REQUEST_ID_SIZE} bytes")
    if len(envelope.plaintext_body_hash) != HASH_SIZE:
        raise InvalidBody(f"plaintext_body_hash must be {HASH_SIZE} bytes")
    node_public = private_key.public_key().public_bytes_raw()
    if not hmac.compare_digest(node_public, envelope.node_dh_public_key):
        raise InvalidBody("node_dh_public_key is not the key used to open the envelope")

    context = hpke_recipient(envelope.client_dh_public_key, private_key, request_info(endpoint))
    aad = request_aad(
        key_id=envelope.key_id,
        endpoint=endpoint,
        model_name=envelope.model_name,
        stack_small_id=envelope.stack_small_id,
        num_compute_units=envelope.num_compute_units,
        stream=envelope.stream,
        request_id=envelope.request_id,
        timestamp=envelope.timestamp,
    )
    try:
        plaintext = context.open(envelope.ciphertext, aad)
    except PyHPKEError:
        raise DecryptionFailed(
            "authentication tag did not verify: the ciphertext or its metadata (model, stack, "
            "units, stream, endpoint, key id, request id or timestamp) was altered"
        ) from None
    if not hmac.compare_digest(body_mac(context, plaintext), envelope.plaintext_body_hash):
        raise DecryptionFailed("plaintext_body_hash does not match the decrypted body")

    # Authentic from here on: what remains are the client's own claims.
    if not hmac.compare_digest(key_id_of(node_public), envelope.key_id):
        raise InvalidBody("key_id does not belong to the node key the envelope is sealed to")
    now = time.time() if now is None else now
    if abs(now - envelope.timestamp) > window:
        raise Replayed(
            f"request timestamp is outside the +/-{int(window)} s window: "
            "check the client clock and send a fresh request"
        )
    session = ServerSession(
        enc=envelope.client_dh_public_key,
        response_secret=context.export(RESPONSE_LABEL, KEY_SIZE),
        request_id=envelope.request_id,
        timestamp=envelope.timestamp,
        key_id=envelope.key_id,
        # Remembered one second past the window's end: an id is never forgotten while acceptable.
        expires_at=envelope.timestamp + window + 1,
    )
    return plaintext, session
