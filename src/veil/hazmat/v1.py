"""The atoma-v1 suite (docs/PROTOCOL.md section 6), byte-compatible with atoma-sdk 0.1.3.

    shared = X25519(sk, peer_pk)
    key    = HKDF-SHA256(ikm=shared, salt=salt, info=b"", length=32)
    ct     = AES-256-GCM(key).encrypt(nonce, plaintext, aad=None)
    hash   = BLAKE2b-256(plaintext)

Both directions use the same key; every sealed message (each stream chunk included) gets a fresh
random 96-bit nonce. Unlike Atoma, an all-zero shared secret (a low-order peer key) is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.wire.envelopes import (
    HASH_SIZE,
    NONCE_SIZE,
    SALT_SIZE,
    X25519_KEY_SIZE,
    ConfidentialComputeRequest,
    ConfidentialComputeResponse,
)
from veil.wire.errors import DecryptionFailed, InvalidBody

SUITE = "atoma-v1"
KEY_SIZE = 32
_ZERO_SECRET = bytes(X25519_KEY_SIZE)


def body_hash(data: bytes) -> bytes:
    """BLAKE2b with a 32-byte digest (not a truncated BLAKE2b-512)."""
    return hashlib.blake2b(data, digest_size=HASH_SIZE).digest()


def hashes_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def exchange(private_key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 with the peer's raw key; refuses wrong sizes and low-order points."""
    if len(peer_public) != X25519_KEY_SIZE:
        raise InvalidBody(f"X25519 public key must be {X25519_KEY_SIZE} bytes")
    try:
        shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        # OpenSSL refuses to output the all-zero secret of a low-order point.
        raise InvalidBody("X25519 public key is a low-order point") from None
    if hmac.compare_digest(shared, _ZERO_SECRET):
        raise InvalidBody("X25519 public key is a low-order point")
    return shared


def derive_key(shared_secret: bytes, salt: bytes) -> bytes:
    if len(shared_secret) != X25519_KEY_SIZE:
        raise InvalidBody("shared secret has the wrong size")
    if len(salt) != SALT_SIZE:
        raise InvalidBody(f"salt must be {SALT_SIZE} bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=b"")
    return hkdf.derive(shared_secret)


class Session:
    """One request's symmetric state: the key is derived once, then every message reuses it."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"AES-256-GCM key must be {KEY_SIZE} bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_exchange(
        cls, private_key: X25519PrivateKey, peer_public: bytes, salt: bytes
    ) -> Session:
        return cls(derive_key(exchange(private_key, peer_public), salt))

    def seal(self, plaintext: bytes, nonce: bytes | None = None) -> tuple[bytes, bytes]:
        """Encrypt under a fresh random nonce (or the given one, for test vectors)."""
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        elif len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        return nonce, self._aead.encrypt(nonce, plaintext, None)

    def open(self, nonce: bytes, ciphertext: bytes) -> bytes:
        if len(nonce) != NONCE_SIZE:
            raise DecryptionFailed(f"nonce must be {NONCE_SIZE} bytes")
        try:
            return self._aead.decrypt(nonce, ciphertext, None)
        except InvalidTag:
            raise DecryptionFailed(
                "authentication tag did not verify: ciphertext, nonce, salt or key was altered"
            ) from None


def seal_request(
    node_public_key: bytes,
    body: bytes,
    *,
    model_name: str,
    stack_small_id: int,
    num_compute_units: int | None = None,
    stream: bool | None = None,
    client_private_key: X25519PrivateKey | None = None,
) -> tuple[ConfidentialComputeRequest, Session]:
    """Client side of a v1 request: the envelope, and the session that opens its answer."""
    client = client_private_key or X25519PrivateKey.generate()
    salt = os.urandom(SALT_SIZE)
    session = Session.from_exchange(client, node_public_key, salt)
    nonce, ciphertext = session.seal(body)
    envelope = ConfidentialComputeRequest(
        ciphertext=ciphertext,
        client_dh_public_key=client.public_key().public_bytes_raw(),
        model_name=model_name,
        node_dh_public_key=node_public_key,
        nonce=nonce,
        plaintext_body_hash=body_hash(body),
        salt=salt,
        stack_small_id=stack_small_id,
        num_compute_units=num_compute_units,
        stream=stream,
    )
    return envelope, session


def open_response(session: Session, response: ConfidentialComputeResponse) -> bytes:
    """Decrypt a sealed response and check its hash (the signature is checked by the caller)."""
    plaintext = session.open(response.nonce, response.ciphertext)
    if response.response_hash is not None and not hashes_equal(
        body_hash(plaintext), response.response_hash
    ):
        raise DecryptionFailed("response_hash does not match the decrypted response")
    return plaintext
