"""Opening what the node sends back: one sealed response, or a stream of sealed chunks.

Every message goes through an opener, which returns plaintext only after these checks, each with
its own exception:

- **veil-v2** (``V2ResponseOpener``, the default suite): the message carries the v2 fields
  (``MalformedResponse`` / ``StreamCorrupt`` otherwise); ``v2.ClientSession.open`` checks its
  index is the next one, its response nonce is this answer's, nothing follows the final chunk
  (``StreamCorrupt``), the AES-GCM tag with the request id, index and final flag in the AAD
  (``DecryptionError``) and ``response_hash``, an HMAC under a key only the two ends hold
  (``ResponseHashMismatch``); then the node's Ed25519 ``signature`` over ``response_hash``, with
  the key the lock named (``SignatureInvalid``). A stream must end with the chunk the node sealed
  as final (``StreamTruncated`` otherwise); ``data: [DONE]`` after it is accepted and ignored.
- **atoma-v1** (``ResponseOpener``): the AES-GCM tag (``DecryptionError``), ``response_hash`` equal
  to BLAKE2b-256 of the decrypted bytes (``ResponseHashMismatch``), then the signature as above.
  v1 chunks carry no sequence number, so what can be caught is what their content and nonces
  reveal: a repeated chunk (same nonce), anything after the final usage chunk, a chunk from
  another completion (``id``), the opening ``role`` chunk moved later, content after a
  ``finish_reason``, and a stream that ends before its usage chunk. Two content chunks swapped
  in the middle are not detectable in v1; v2 binds each chunk's index for that.

For both, usage sent in clear must equal the signed usage (``UsageMismatch``), and the content
checks of v1 run on v2 streams too. Comment lines (``: veil-receipt ...``) are ignored. Compared
hashes and nonces are compared in constant time; no message carries plaintext or key material.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from openai.types.chat import ChatCompletionChunk
from pydantic import ValidationError

from veil.attestation.report import Step, VerificationReport
from veil.client.errors import (
    DecryptionError,
    IntegrityError,
    MalformedResponse,
    ResponseHashMismatch,
    SignatureInvalid,
    StreamCorrupt,
    StreamTruncated,
    UsageMismatch,
    api_error,
)
from veil.hazmat import v1, v2
from veil.wire.envelopes import ConfidentialComputeResponse, Usage
from veil.wire.errors import DecryptionFailed

DONE_DATA = "[DONE]"


@dataclass(frozen=True)
class AttestationVerdict:
    """What the client concluded from the node's evidence, before it encrypted anything.

    ``steps`` are the verifier's named checks (format, quote, TCB status, binding, expected keys,
    nonce...) with their outcome; ``report`` is the full ``VerificationReport`` (``.render()``).
    ``insecure`` is True when the node has no TEE and was accepted only because the policy allows
    that (``insecure_no_tee``): nothing then protects the node's keys or the plaintext on it.
    """

    format: str
    ok: bool
    steps: tuple[Step, ...]
    tcb_status: str | None = None
    insecure: bool = False
    report: VerificationReport | None = field(default=None, repr=False, compare=False)
    # The release the node proved (a manifest signed by a signer the client's policy names).
    release: str | None = None
    release_signer: str | None = None

    @classmethod
    def of(cls, evidence_format: str, report: VerificationReport) -> AttestationVerdict:
        release = report.facts.get("release")
        signer = report.facts.get("release_signer")
        return cls(
            format=evidence_format,
            ok=report.ok,
            steps=tuple(report.steps),
            tcb_status=report.tcb_status,
            insecure=report.ok and evidence_format == "none",
            report=report,
            release=None if release is None else str(release),
            release_signer=None if signer is None else str(signer),
        )

    def describe(self) -> str:
        if not self.ok:
            failed = ", ".join(step.name for step in self.steps if not step.ok)
            return f"attestation FAILED ({self.format}: {failed})"
        if self.insecure:
            return "NO TEE (evidence 'none', accepted by insecure_no_tee)"
        status = f" {self.tcb_status}" if self.tcb_status else ""
        release = f", release {self.release} proved" if self.release else ", pinned measurements"
        return f"attested {self.format}{status}{release}"


@dataclass
class Receipt:
    """What the client knows, and has checked, about one confidential request.

    ``usage`` is the signed usage (read from the decrypted, signature-verified plaintext), set once
    the response (or the stream's final chunk) has been verified. ``units_charged`` is what the
    node's signed usage charges: total tokens for chat and embeddings, n x width x height for images.
    ``protocol`` is the suite the request was sealed with; ``attestation`` is the verdict on the
    node's evidence that was checked before sealing. ``crypto_seconds`` is the CPU time the
    calling thread spent sealing, opening and verifying (``time.thread_time``: time the thread
    spent preempted or waiting does not count); ``elapsed_seconds`` is the wall time of the call.
    """

    endpoint: str
    model: str
    node_small_id: int
    node_key_id: str
    stack_small_id: int
    reserved_units: int | None
    attempts: int = 1
    image_units: int | None = None  # n x width x height, for images
    usage: Usage | None = None
    units_charged: int | None = None
    messages_verified: int = 0
    signature_verified: bool = False
    crypto_seconds: float = 0.0
    started_at: float = field(default_factory=time.perf_counter)
    elapsed_seconds: float = 0.0
    protocol: str = v2.SUITE
    attestation: AttestationVerdict | None = None

    def finish(self, usage: Usage | None) -> None:
        self.usage = usage
        if self.image_units is not None:
            self.units_charged = self.image_units
        elif usage is not None:
            self.units_charged = usage.total_tokens
        self.signature_verified = self.messages_verified > 0
        self.elapsed_seconds = time.perf_counter() - self.started_at

    def summary(self) -> str:
        """One line for a person: tokens, units charged, node key, signature, attestation."""
        parts = []
        if self.usage is not None:
            parts.append(
                f"tokens {self.usage.prompt_tokens} prompt / {self.usage.completion_tokens} "
                "completion"
            )
        if self.units_charged is not None:
            parts.append(f"units charged {self.units_charged}")
        parts.append(f"node key {self.node_key_id}")
        parts.append("signature verified" if self.signature_verified else "NOT VERIFIED")
        parts.append(self.protocol)
        if self.attestation is not None:
            parts.append(self.attestation.describe())
        return " | ".join(parts)


class Opener:
    """Opens and verifies the sealed messages of one request; one subclass per suite."""

    __slots__ = ("_key", "receipt")
    protocol: str = ""
    #: v1 only: refuse a chunk whose nonce was already seen (v2 binds each chunk's index).
    dedupe_nonces: bool = False

    def __init__(self, signing_key: Ed25519PublicKey, receipt: Receipt) -> None:
        self._key = signing_key
        self.receipt = receipt

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


class V2ResponseOpener(Opener):
    """veil-v2: ``v2.ClientSession`` checks place, tag and HMAC; then the node's signature."""

    __slots__ = ("_session",)
    protocol = v2.SUITE

    def __init__(
        self, session: v2.ClientSession, signing_key: Ed25519PublicKey, receipt: Receipt
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
                "the answer is not a veil-v2 message (response_nonce, index or final missing)"
            )
        if sealed.response_hash is None:
            raise ResponseHashMismatch("the response carries no response_hash")
        if sealed.signature is None:
            raise SignatureInvalid("the response is not signed by the node")
        try:
            plaintext = self._session.open(sealed)
        except v2.StreamOrderError as exc:
            raise StreamCorrupt(exc.message) from None
        except DecryptionFailed as exc:
            if "response_hash" in exc.message:
                raise ResponseHashMismatch(
                    "response_hash is not the HMAC of the decrypted response"
                ) from None
            raise DecryptionError(
                "the response's AES-GCM tag did not verify: it was altered on the way, belongs to "
                "another request or position, or was sealed by another node"
            ) from None
        self._verify_signature(sealed)
        self._verified(started)
        return plaintext

    def is_final(self, sealed: ConfidentialComputeResponse, usage: Usage | None) -> bool:
        return bool(sealed.final)

    def whole(self) -> None:
        if not self._session.complete:
            raise MalformedResponse("the answer is not the node's complete (final) message")

    def ended(self, final_seen: bool) -> None:
        try:
            self._session.finish()
        except v2.StreamOrderError as exc:
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
    opener.receipt.finish(usage)
    return plaintext, document


class SSEParser:
    """The ``data`` of server-sent events, fed line by line (lines without their newline).

    Comment lines (``:``) and fields other than ``data`` are ignored; an event is dispatched at
    the blank line that ends it, as the SSE specification says (an unterminated event is dropped).
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


class StreamChecker:
    """Opens each event of a chat stream and checks its place in the stream."""

    def __init__(self, opener: Opener) -> None:
        self.opener = opener
        self.final = False
        self.done = False
        self._nonces: set[bytes] = set()
        self._completion_id: str | None = None
        self._events = 0
        self._finished: set[int] = set()

    def event(self, data: str) -> tuple[bytes, dict[str, Any]] | None:
        """One event's data -> (verified plaintext, its JSON), or None for the ``[DONE]`` that may
        follow the final chunk. Raises on anything out of place."""
        if data.strip() == DONE_DATA:
            if not self.final:
                raise StreamTruncated("the stream said [DONE] before its final chunk arrived")
            if self.done:
                raise StreamCorrupt("[DONE] arrived twice")
            self.done = True
            return None
        if self.final:
            raise StreamCorrupt("an event arrived after the stream's final chunk")
        try:
            sealed = ConfidentialComputeResponse.model_validate_json(data)
        except ValidationError:
            raise StreamCorrupt("a stream event is not a sealed chunk") from None
        if self.opener.dedupe_nonces:
            if sealed.nonce in self._nonces:
                raise StreamCorrupt("a chunk arrived twice (its nonce was already used)")
            self._nonces.add(sealed.nonce)
        plaintext = self.opener.open(sealed, malformed=StreamCorrupt)
        chunk = parse_json_object(plaintext, StreamCorrupt)
        if "error" in chunk and "choices" not in chunk:
            # The node's own sealed, signed account of a failure mid-stream.
            self.final = True
            raise api_error(502, chunk)
        self._check_place(chunk)
        usage = signed_usage(sealed.usage, chunk, StreamCorrupt)
        if self.opener.is_final(sealed, usage):
            self.final = True
            self.opener.receipt.finish(usage)
        self._events += 1
        return plaintext, chunk

    def _check_place(self, chunk: dict[str, Any]) -> None:
        completion_id = chunk.get("id")
        if self._completion_id is None:
            self._completion_id = completion_id if isinstance(completion_id, str) else None
        elif completion_id != self._completion_id:
            raise StreamCorrupt("a chunk belongs to another completion")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise StreamCorrupt("a chunk has no choices list")
        for choice in choices:
            if not isinstance(choice, dict):
                raise StreamCorrupt("a chunk's choice is not an object")
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            if "role" in delta and self._events > 0:
                raise StreamCorrupt("the stream's opening chunk arrived out of order")
            if index in self._finished and (delta.get("content") or delta.get("tool_calls")):
                raise StreamCorrupt("content arrived after its choice had finished")
            if choice.get("finish_reason") is not None:
                self._finished.add(index)

    def end(self) -> None:
        """The transport ended: the final chunk must have arrived."""
        self.opener.ended(self.final)


def _broken(exc: httpx.HTTPError) -> StreamTruncated:
    return StreamTruncated(f"the stream broke before its final chunk ({type(exc).__name__})")


def plain_chunks(
    response: httpx.Response, checker: StreamChecker
) -> Generator[tuple[bytes, dict[str, Any]], None, None]:
    """Verified (plaintext, JSON) of each chunk of an open streaming response; closes it."""
    parser = SSEParser()
    try:
        for line in response.iter_lines():
            data = parser.feed(line)
            if data is not None and (opened := checker.event(data)) is not None:
                yield opened
        checker.end()
    except httpx.HTTPError as exc:
        raise _broken(exc) from exc
    finally:
        response.close()


async def aplain_chunks(
    response: httpx.Response, checker: StreamChecker
) -> AsyncGenerator[tuple[bytes, dict[str, Any]], None]:
    """Async twin of ``plain_chunks``."""
    parser = SSEParser()
    try:
        async for line in response.aiter_lines():
            data = parser.feed(line)
            if data is not None and (opened := checker.event(data)) is not None:
                yield opened
        checker.end()
    except httpx.HTTPError as exc:
        raise _broken(exc) from exc
    finally:
        await response.aclose()


def _chunk(document: dict[str, Any]) -> ChatCompletionChunk:
    try:
        return ChatCompletionChunk.model_validate(document)
    except ValidationError:
        raise StreamCorrupt("a decrypted chunk is not a chat.completion.chunk") from None


class ChatStream:
    """Iterator of verified ``ChatCompletionChunk``s; ``veil`` is the request's receipt.

    The last chunk is the usage chunk (``choices == []``), as OpenAI sends with
    ``stream_options.include_usage``. Close it (or use ``with``) to stop early.
    """

    def __init__(
        self,
        chunks: Iterator[tuple[bytes, dict[str, Any]]],
        receipt: Receipt,
        close: Callable[[], None],
    ) -> None:
        self._chunks = chunks
        self._close = close
        self.veil = receipt

    @property
    def usage(self) -> Usage | None:
        return self.veil.usage

    def verified_plaintexts(self) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """The node's exact plaintext bytes of each verified chunk, with their JSON."""
        return self._chunks

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> ChatCompletionChunk:
        _, document = next(self._chunks)
        return _chunk(document)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncChatStream:
    """Async twin of ``ChatStream``."""

    def __init__(
        self,
        chunks: AsyncIterator[tuple[bytes, dict[str, Any]]],
        receipt: Receipt,
        close: Callable[[], Any],
    ) -> None:
        self._chunks = chunks
        self._close = close
        self.veil = receipt

    @property
    def usage(self) -> Usage | None:
        return self.veil.usage

    def verified_plaintexts(self) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
        return self._chunks

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        _, document = await anext(self._chunks)
        return _chunk(document)

    async def aclose(self) -> None:
        await self._close()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
