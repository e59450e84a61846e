"""Open -> check -> (engine) -> seal -> sign. The only place on the node where plaintext exists.

``open_request`` turns an envelope into a validated OpenAI request and the symmetric session that will
seal its answer; ``ResponseSealer`` turns answers (whole, or chunk by chunk) into signed envelopes.
Nothing here logs, and no error raised here carries decrypted bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from veil.node.keyring import Keyring
from veil.protocol import v1
from veil.protocol.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse, Usage
from veil.protocol.errors import DecryptionFailed, InvalidBody
from veil.protocol.openai import ChatCompletionRequest, EmbeddingRequest, ImageGenerationRequest
from veil.web import parse_model

Endpoint = Literal["chat", "embeddings", "images"]
OpenAIRequest = ChatCompletionRequest | EmbeddingRequest | ImageGenerationRequest

REQUEST_MODELS: dict[Endpoint, type[BaseModel]] = {
    "chat": ChatCompletionRequest,
    "embeddings": EmbeddingRequest,
    "images": ImageGenerationRequest,
}


def parse_openai_request(endpoint: Endpoint, raw: bytes) -> OpenAIRequest:
    """Validate an OpenAI-style body for ``endpoint`` (400 INVALID_BODY if it is not one)."""
    parsed = parse_model(raw, REQUEST_MODELS[endpoint], f"{endpoint} request")
    assert isinstance(parsed, ChatCompletionRequest | EmbeddingRequest | ImageGenerationRequest)
    return parsed


@dataclass(frozen=True)
class OpenedRequest:
    endpoint: Endpoint
    request: OpenAIRequest
    session: v1.Session
    key_id: str
    units: int | None
    stream: bool


def open_request(
    envelope: ConfidentialComputeRequest,
    endpoint: Endpoint,
    keyring: Keyring,
    now: float | None = None,
) -> OpenedRequest:
    """Decrypt and check an envelope. Raises 409, 422 or 400; never returns unchecked plaintext."""
    node_key = keyring.lookup(envelope.node_dh_public_key, time.time() if now is None else now)
    session = v1.Session.from_exchange(
        node_key.private_key, envelope.client_dh_public_key, envelope.salt
    )
    plaintext = session.open(envelope.nonce, envelope.ciphertext)
    if not v1.hashes_equal(v1.body_hash(plaintext), envelope.plaintext_body_hash):
        raise DecryptionFailed("plaintext_body_hash does not match the decrypted body")
    request = parse_openai_request(endpoint, plaintext)
    if request.model != envelope.model_name:
        # The gateway routes and bills on model_name; a body for another model is a swap.
        raise InvalidBody("the encrypted body names a different model than model_name")
    stream = bool(envelope.stream)
    if endpoint == "chat":
        assert isinstance(request, ChatCompletionRequest)
        stream = bool(request.stream)
        if envelope.stream is not None and envelope.stream != stream:
            raise InvalidBody("envelope stream flag disagrees with the encrypted body")
    return OpenedRequest(
        endpoint=endpoint,
        request=request,
        session=session,
        key_id=node_key.key_id,
        units=envelope.num_compute_units,
        stream=stream,
    )


def encode_json(payload: Any) -> bytes:
    """Compact JSON: the exact bytes that are hashed, signed and sealed."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class ResponseSealer:
    """Seals one request's answers: fresh nonce per message, hash of the exact bytes, signature."""

    def __init__(self, session: v1.Session, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    def seal(
        self, payload: Any, usage: dict[str, int] | None = None
    ) -> ConfidentialComputeResponse:
        plaintext = encode_json(payload)
        digest = v1.body_hash(plaintext)
        nonce, ciphertext = self._session.seal(plaintext)
        return ConfidentialComputeResponse(
            ciphertext=ciphertext,
            nonce=nonce,
            response_hash=digest,
            signature=self._keyring.sign(digest),
            usage=Usage(**usage) if usage is not None else None,
        )

    def sse_event(self, payload: Any, usage: dict[str, int] | None = None) -> bytes:
        sealed = self.seal(payload, usage)
        return b"data: " + sealed.model_dump_json(exclude_none=True).encode() + b"\n\n"
