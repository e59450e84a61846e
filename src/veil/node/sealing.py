"""Open and seal: the node's side of both suites (atoma-v1, veil-v3), over ``veil.hazmat``.

``open_request`` turns an envelope into a validated OpenAI request and the ``Sealer`` that will
seal its answer, whole or chunk by chunk, into signed envelopes. Plaintext: part of the pipeline.
Nothing here logs, and no error raised here carries decrypted bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from veil.hazmat import v1, v3
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

__all__ = [
    "DEFAULT_KEMS",
    "OpenedRequest",
    "Sealer",
    "V1Sealer",
    "V3Sealer",
    "open_request",
    "sse_event",
]

#: What a node accepts for veil-v3 unless configured otherwise (``NodeSettings.kems``).
DEFAULT_KEMS: frozenset[v3.Kem] = frozenset({v3.Kem.HYBRID})


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
    request_id: str | None  # v3 (base64); v1 has none


async def open_request(
    envelope: ConfidentialComputeRequest,
    endpoint: Endpoint,
    keyring: Keyring,
    replay: ReplayCache,
    *,
    path: str,
    now: float | None = None,
    tenant: Tenant = None,
    allowed_kems: frozenset[v3.Kem] = DEFAULT_KEMS,
    reservation_id: str | None = None,
) -> OpenedRequest:
    """Decrypt and check an envelope of any suite. Raises 409, 422, 400 (429 when ``tenant``
    holds its share of the replay space, 503 when the replay cache cannot answer); never returns
    unchecked plaintext.

    A v3 request id enters the replay cache only once the envelope authenticated and its body
    parsed, in ``tenant``'s partition (the ticket's stack), so a tenant's garbage fills at most
    its own share. veil-v3: a KEM outside ``allowed_kems`` is a 400 before any decryption, and
    ``reservation_id`` (the gateway ticket's) must be the one the client sealed the request to
    (422; checked after the replay check, so a replay is a 409 under any reservation)."""
    now = time.time() if now is None else now
    sealer: Sealer
    request_id: str | None = None
    replay_id: tuple[bytes, float] | None = None  # (request id, remembered until)
    if envelope.protocol == v3.SUITE:
        # The reservation is compared after the replay check (below): a replayed request is a
        # 409 REPLAYED whichever reservation a gateway now claims for it. (The comparison is
        # the same as open_request's: envelope.reservation_id is authenticated by the HPKE info.)
        plaintext, server3 = v3.open_request(
            envelope,
            lambda kem_key_id: keyring.kem_key(kem_key_id, now),
            endpoint=path,
            allowed_kems=allowed_kems,
            now=now,
        )
        sealer = V3Sealer(server3, keyring)
        request_id = b64encode(server3.request_id)
        replay_id = (server3.request_id, server3.expires_at)
        key_id = server3.key_id
    else:
        node_key = keyring.lookup(envelope.node_dh_public_key, now)
        session = v1.Session.from_exchange(
            node_key.private_key, envelope.client_dh_public_key, envelope.salt
        )
        plaintext = session.open(envelope.nonce, envelope.ciphertext)
        if not v1.hashes_equal(v1.body_hash(plaintext), envelope.plaintext_body_hash):
            raise DecryptionFailed("plaintext_body_hash does not match the decrypted body")
        sealer = V1Sealer(session, keyring)
        key_id = node_key.key_id
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
    if replay_id is not None and not await replay.check_and_add(*replay_id, now, tenant):
        raise Replayed("this request_id was already used: send a fresh request")
    v3_bound = envelope.protocol == v3.SUITE and reservation_id is not None
    if v3_bound and envelope.reservation_id != reservation_id:
        # The gateway's ticket and the client's sealed binding disagree: someone swapped them.
        raise DecryptionFailed("the request is bound to another reservation than it claims")
    return OpenedRequest(
        endpoint=endpoint,
        request=request,
        sealer=sealer,
        key_id=key_id,
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


class V3Sealer:
    """veil-v3: keys from the response secret sealed inside the request, counter nonces, index
    and final flag in the AAD, a running hash over every chunk, and one signature on the final
    chunk (``veil.hazmat.v3``). A running receipt vouches for ``last_hash``: the running hash."""

    def __init__(self, session: v3.ServerSession, keyring: Keyring) -> None:
        self.done: bytes | None = b"data: [DONE]\n\n"
        self._session = session
        self._keyring = keyring
        self.last_hash: bytes | None = None

    def seal(
        self, payload: Any, usage: dict[str, int] | None = None, *, final: bool = True
    ) -> ConfidentialComputeResponse:
        sealed = self._session.seal(
            encode_json(payload),
            final=final,
            sign=self._keyring.sign,
            usage=usage if final else None,
        )
        self.last_hash = self._session.running_hash
        return sealed


def sse_event(sealed: ConfidentialComputeResponse) -> bytes:
    return b"data: " + sealed.model_dump_json(exclude_none=True).encode() + b"\n\n"
