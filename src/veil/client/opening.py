"""Opening what the node sends back: each sealed message, checked before its plaintext is used.

Every message goes through an opener, which returns plaintext only after these checks, each with
its own exception:

- **veil-v3** (``V3ResponseOpener``, the default suite): the message carries the v3 fields
  (``MalformedResponse`` / ``StreamCorrupt`` otherwise); ``v3.ClientSession.open`` checks its
  index is the next one, its response nonce is this answer's, nothing follows the final chunk
  (``StreamCorrupt``), the AES-GCM tag with the index and final flag in the AAD, under keys
  derived from a secret only the client and the node hold (``DecryptionError``), and that
  ``response_hash`` is the running hash of every chunk so far (``ResponseHashMismatch``). Only
  the final chunk is signed: the node's one Ed25519 signature over the running hash and the
  usage, with the key the lock named (``SignatureInvalid`` if it is missing or does not verify,
  or if an earlier chunk carries one; ``UsageMismatch`` for usage beside an earlier chunk). A
  stream must end with its final chunk (``StreamTruncated`` otherwise).
- **atoma-v1** (``ResponseOpener``): the AES-GCM tag (``DecryptionError``), ``response_hash`` equal
  to BLAKE2b-256 of the decrypted bytes (``ResponseHashMismatch``), then the signature as above.
  v1 chunks carry no sequence number, so what can be caught is what their content and nonces
  reveal: a repeated chunk (same nonce), anything after the final usage chunk, a chunk from
  another completion (``id``), the opening ``role`` chunk moved later, content after a
  ``finish_reason``, and a stream that ends before its usage chunk. Two content chunks swapped
  in the middle are not detectable in v1; v3 binds each chunk's index for that.

For both, usage sent in clear must equal the usage in the signed plaintext (``UsageMismatch``; in
v3 the node's signature covers it as well), and the content checks of v1 run on v3 streams too. Comment lines (``: veil-receipt ...``) are ignored. Compared
hashes and nonces are compared in constant time; no message carries plaintext or key material.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from veil.client.errors import (
    DecryptionError,
    IntegrityError,
    MalformedResponse,
    ResponseHashMismatch,
    SignatureInvalid,
    StreamCorrupt,
    StreamTruncated,
    UsageMismatch,
)
from veil.client.receipt import Receipt
from veil.hazmat import v1, v3
from veil.wire.envelopes import ConfidentialComputeResponse, Usage
from veil.wire.errors import DecryptionFailed

__all__ = [
    "Opener",
    "ResponseOpener",
    "V3ResponseOpener",
    "open_single",
    "parse_json_object",
    "signed_usage",
]


class Opener:
    """Opens and verifies the sealed messages of one request; one subclass per suite."""

    __slots__ = ("_key", "receipt")
    protocol: str = ""
    #: v1 only: refuse a chunk whose nonce was already seen (v3 binds each chunk's index).
    dedupe_nonces: bool = False

    def __init__(self, signing_key: Ed25519PublicKey, receipt: Receipt) -> None:
        self._key = signing_key
        self.receipt = receipt
        receipt.protocol = self.protocol  # the suite whose checks the answer passes

    def open(
        self,
        sealed: ConfidentialComputeResponse,
        *,
        malformed: type[IntegrityError] = MalformedResponse,
    ) -> bytes:
        raise NotImplementedError

    def is_final(self, sealed: ConfidentialComputeResponse, usage: Usage | None) -> bool:
        """Whether this (opened) message is the last of the answer."""
        raise NotImplementedError

    def finish(self, usage: Usage | None) -> None:
        """The final message was opened: complete the receipt with the signed ``usage``."""
        self.receipt.finish(usage)

    def whole(self) -> None:
        """After opening a non-streamed answer: it must be complete."""

    def ended(self, final_seen: bool) -> None:
        """The stream's transport ended: refuse it unless its final chunk arrived."""
        if not final_seen:
            raise StreamTruncated("the stream ended before its final chunk (usage never arrived)")

    def _verify_signature(self, sealed: ConfidentialComputeResponse) -> None:
        if sealed.signature is None or sealed.response_hash is None:
            raise SignatureInvalid("the response is not signed by the node")
        try:
            self._key.verify(sealed.signature, sealed.response_hash)
        except InvalidSignature:
            raise SignatureInvalid(
                "the response signature is not the node's signature over response_hash"
            ) from None

    def _verified(self, started: float) -> None:
        self.receipt.crypto_seconds += time.thread_time() - started
        self.receipt.messages_verified += 1


class ResponseOpener(Opener):
    """atoma-v1: the request's key (derived once), BLAKE2b response hash, signature."""

    __slots__ = ("_session",)
    protocol = "atoma-v1"
    dedupe_nonces = True

    def __init__(self, session: v1.Session, signing_key: Ed25519PublicKey, receipt: Receipt):
        super().__init__(signing_key, receipt)
        self._session = session

    def open(
        self,
        sealed: ConfidentialComputeResponse,
        *,
        malformed: type[IntegrityError] = MalformedResponse,
    ) -> bytes:
        started = time.thread_time()
        try:
            plaintext = self._session.open(sealed.nonce, sealed.ciphertext)
        except DecryptionFailed:
            raise DecryptionError(
                "the response's AES-GCM tag did not verify: it was altered on the way"
            ) from None
        if sealed.response_hash is None:
            raise ResponseHashMismatch("the response carries no response_hash")
        if not hmac.compare_digest(v1.body_hash(plaintext), sealed.response_hash):
            raise ResponseHashMismatch("response_hash is not the BLAKE2b-256 of the response")
        self._verify_signature(sealed)
        self._verified(started)
        return plaintext

    def is_final(self, sealed: ConfidentialComputeResponse, usage: Usage | None) -> bool:
        return usage is not None


class V3ResponseOpener(Opener):
    """veil-v3: ``v3.ClientSession`` checks place, tag, running hash and the one signature."""

    __slots__ = ("_session",)
    protocol = v3.SUITE

    def __init__(
        self, session: v3.ClientSession, signing_key: Ed25519PublicKey, receipt: Receipt
    ) -> None:
        super().__init__(signing_key, receipt)
        self._session = session

    def open(
        self,
        sealed: ConfidentialComputeResponse,
        *,
        malformed: type[IntegrityError] = MalformedResponse,
    ) -> bytes:
        started = time.thread_time()
        if sealed.response_nonce is None or sealed.index is None or sealed.final is None:
            raise malformed(
                "the answer is not a veil-v3 message (response_nonce, index or final missing)"
            )
        if sealed.response_hash is None:
            raise ResponseHashMismatch("the response carries no response_hash")
        # Only the final chunk is signed: a signature (or usage) beside an earlier one is none
        # of the node's. The chunk is opened without it first, so a chunk that is also altered,
        # foreign or out of place is reported as such; the session is spent either way.
        extra = not sealed.final and (sealed.signature is not None or sealed.usage is not None)
        try:
            plaintext = self._session.open(
                sealed.model_copy(update={"signature": None, "usage": None}) if extra else sealed
            )
        except v3.StreamOrderError as exc:
            raise StreamCorrupt(exc.message) from None
        except v3.ResponseHashMismatch:
            raise ResponseHashMismatch(
                "response_hash is not the running hash of the answer's chunks"
            ) from None
        except v3.AnswerSignatureInvalid as exc:
            raise SignatureInvalid(exc.message) from None
        except DecryptionFailed:
            raise DecryptionError(
                "the response's AES-GCM tag did not verify: it was altered on the way, belongs to "
                "another request or position, or was sealed by another node"
            ) from None
        if extra and sealed.signature is not None:
            raise SignatureInvalid(
                "a chunk before the final one carries a signature the node never made"
            )
        if extra:
            raise UsageMismatch("a chunk before the final one carries usage the node never signed")
        self._verified(started)
        return plaintext

    def is_final(self, sealed: ConfidentialComputeResponse, usage: Usage | None) -> bool:
        return bool(sealed.final)

    def finish(self, usage: Usage | None) -> None:
        # The usage the node signed with the answer; the plaintext's, equal to it, otherwise.
        signed = self._session.usage
        self.receipt.finish(signed if signed is not None else usage)

    def whole(self) -> None:
        if not self._session.complete:
            raise MalformedResponse("the answer is not the node's complete (final) message")

    def ended(self, final_seen: bool) -> None:
        try:
            self._session.finish()
        except v3.StreamOrderError as exc:
            raise StreamTruncated(exc.message) from None


def parse_json_object(plaintext: bytes, error: type[Exception]) -> dict[str, Any]:
    try:
        document = json.loads(plaintext)
    except ValueError:
        raise error("the decrypted response is not JSON") from None
    if not isinstance(document, dict):
        raise error("the decrypted response is not a JSON object")
    return document


def signed_usage(
    clear: Usage | None, document: dict[str, Any], error: type[Exception]
) -> Usage | None:
    """The usage inside the signed plaintext; the usage sent in clear must agree with it."""
    raw = document.get("usage")
    usage: Usage | None = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise error("the signed usage is not an object")
        prompt = raw.get("prompt_tokens") or 0
        completion = raw.get("completion_tokens") or 0
        total = raw.get("total_tokens")
        try:
            usage = Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion if total is None else total,
            )
        except (ValidationError, TypeError):
            raise error("the signed usage is malformed") from None
    if clear is not None and clear != usage:
        raise UsageMismatch("the usage sent in clear differs from the usage the node signed")
    return usage


def open_single(opener: Opener, raw: bytes) -> tuple[bytes, dict[str, Any]]:
    """A non-streamed answer: verified plaintext and its JSON; the receipt is completed."""
    try:
        sealed = ConfidentialComputeResponse.model_validate_json(raw)
    except ValidationError:
        raise MalformedResponse("the answer is not a sealed ConfidentialComputeResponse") from None
    plaintext = opener.open(sealed)
    opener.whole()
    document = parse_json_object(plaintext, MalformedResponse)
    usage = signed_usage(sealed.usage, document, MalformedResponse)
    opener.finish(usage)
    return plaintext, document
