"""Open and seal: the node's side of both suites (atoma-v1, veil-v2), over ``veil.hazmat``.

``open_request`` turns an envelope into a validated OpenAI request and the ``Sealer`` that will
seal its answer, whole or chunk by chunk, into signed envelopes. Plaintext: part of the pipeline.
Nothing here logs, and no error raised here carries decrypted bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from veil.hazmat import v1, v2
from veil.node.bodies import OpenAIRequest, encode_json, parse_openai_request
from veil.node.keyring import Keyring
from veil.node.replay import ReplayCache, Tenant
from veil.wire.envelopes import (
    ConfidentialComputeRequest,
    ConfidentialComputeResponse,
    Usage,
    b64encode,
)
from veil.wire.errors import DecryptionFailed, InvalidBody, Replayed
from veil.wire.openai import ChatCompletionRequest
from veil.wire.routes import Endpoint

__all__ = ["OpenedRequest", "Sealer", "V1Sealer", "V2Sealer", "open_request", "sse_event"]


class Sealer(Protocol):
    """Seals one request's answers (whole, or chunk by chunk) into signed envelopes."""

    #: What ends a stream for this suite's clients (v1: nothing; Atoma never sends [DONE]).
    done: bytes | None
    #: ``response_hash`` of the last sealed message (what a usage receipt vouches for).
    last_hash: bytes | None

    def seal(
        self, payload: Any, usage: dict[str, int] | None = None, *, final: bool = True
    ) -> ConfidentialComputeResponse: ...


@dataclass(frozen=True)
class OpenedRequest:
    endpoint: Endpoint
    request: OpenAIRequest
    sealer: Sealer
    key_id: str
    units: int | None
    stream: bool
    request_id: str | None  # v2 only (base64); v1 has none


async def open_request(
    envelope: ConfidentialComputeRequest,
    endpoint: Endpoint,
    keyring: Keyring,
    replay: ReplayCache,
    *,
    path: str,
    now: float | None = None,
    tenant: Tenant = None,
) -> OpenedRequest:
    """Decrypt and check an envelope of either suite. Raises 409, 422, 400 (429 when ``tenant``
    holds its share of the replay space, 503 when the replay cache cannot answer); never returns
    unchecked plaintext.

    A v2 request id enters the replay cache only once the envelope authenticated and its body
    parsed, in ``tenant``'s partition (the ticket's stack), so a tenant's garbage fills at most
    its own share."""
    now = time.time() if now is None else now
    node_key = keyring.lookup(envelope.node_dh_public_key, now)
    sealer: Sealer
    request_id: str | None = None
    server: v2.ServerSession | None = None
    if envelope.protocol == v2.SUITE:
        plaintext, server = v2.open_request(envelope, node_key.private_key, endpoint=path, now=now)
        sealer = V2Sealer(server, keyring)
        request_id = b64encode(server.request_id)
    else:
        session = v1.Session.from_exchange(
            node_key.private_key, envelope.client_dh_public_key, envelope.salt
        )
        plaintext = session.open(envelope.nonce, envelope.ciphertext)
        if not v1.hashes_equal(v1.body_hash(plaintext), envelope.plaintext_body_hash):
            raise DecryptionFailed("plaintext_body_hash does not match the decrypted body")
        sealer = V1Sealer(session, keyring)
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
    if server is not None and not await replay.check_and_add(
        server.request_id, server.expires_at, now, tenant
    ):
        raise Replayed("this request_id was already used: send a fresh request")
    return OpenedRequest(
        endpoint=endpoint,
        request=request,
        sealer=sealer,
        key_id=node_key.key_id,
        units=envelope.num_compute_units,
        stream=stream,
        request_id=request_id,
    )


class V1Sealer:
    """atoma-v1: the request's key, a fresh random nonce per message, BLAKE2b hash, signature."""

    def __init__(self, session: v1.Session, keyring: Keyring) -> None:
        self.done: bytes | None = None
        self._session = session
        self._keyring = keyring
        self.last_hash: bytes | None = None

    def seal(
        self, payload: Any, usage: dict[str, int] | None = None, *, final: bool = True
    ) -> ConfidentialComputeResponse:
        plaintext = encode_json(payload)
        digest = v1.body_hash(plaintext)
        nonce, ciphertext = self._session.seal(plaintext)
        self.last_hash = digest
        return ConfidentialComputeResponse(
            ciphertext=ciphertext,
            nonce=nonce,
            response_hash=digest,
            signature=self._keyring.sign(digest),
            usage=Usage(**usage) if usage is not None else None,
        )


class V2Sealer:
    """veil-v2: response key exported from the HPKE context, counter nonces, index and final
    flag in the AAD, HMAC response hash (PROTOCOL.md section 5)."""

    def __init__(self, session: v2.ServerSession, keyring: Keyring) -> None:
        self.done: bytes | None = b"data: [DONE]\n\n"
        self._session = session
        self._keyring = keyring
        self.last_hash: bytes | None = None

    def seal(
        self, payload: Any, usage: dict[str, int] | None = None, *, final: bool = True
    ) -> ConfidentialComputeResponse:
        sealed = self._session.seal(
            encode_json(payload),
            index=self._session.next_index,
            final=final,
            sign=self._keyring.sign,
            usage=usage if final else None,
        )
        self.last_hash = sealed.response_hash
        return sealed


def sse_event(sealed: ConfidentialComputeResponse) -> bytes:
    return b"data: " + sealed.model_dump_json(exclude_none=True).encode() + b"\n\n"
