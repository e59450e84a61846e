"""Signed statements between gateway and node: tickets (gateway -> node) and usage receipts
(node -> gateway). Neither can decrypt anything; both are Ed25519 over canonical JSON.

Ticket: the gateway's word that this exact envelope is paid for, up to ``units``, until
``expires_at``. It travels in the ``X-Veil-Ticket`` header as ``<b64 json>.<b64 signature>`` and
binds the envelope by the SHA-256 of its bytes, so it cannot be moved to another envelope.

Usage receipt: the node's word about what a request consumed. JSON answers carry it in the
``X-Veil-Receipt`` header; streams carry it as an SSE comment line ``: veil-receipt <token>`` after
every chunk (cumulative, so a stream cut short still has a signed account of what was produced;
SSE clients ignore comment lines).

Receipt query: a gateway's signed request for the receipts a node kept (``POST /v1/receipts``,
body ``{"query": "<token>"}``), by ticket id: how a gateway that restarts after a crash charges
the requests a dead gateway answered but never wrote to the ledger. It is read-only and names its
kind, so it can never pass as a ticket, and the node answers it only within
``RECEIPT_QUERY_WINDOW_SECONDS`` of its ``issued_at``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Annotated, Any, Literal, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from veil.wire.envelopes import MAX_ID

TICKET_HEADER = "x-veil-ticket"
RECEIPT_HEADER = "x-veil-receipt"
RECEIPT_COMMENT = b": veil-receipt "
RECEIPTS_PATH = "/v1/receipts"
MAX_RECEIPT_QUERY_IDS = 1000
RECEIPT_QUERY_WINDOW_SECONDS = 300.0

Count = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]


class Ticket(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ticket_id: Annotated[str, Field(min_length=16, max_length=64)]
    stack_small_id: Count
    node_small_id: Count
    units: Count
    expires_at: float
    envelope_sha256: Annotated[str, Field(min_length=64, max_length=64)]
    # Unix time by which the node must stop the engine and answer what it produced (set by the
    # gateway on non-streamed requests, so its answer arrives within the gateway's node timeout;
    # a stream runs as long as its reader reads, covered by the gateway's lease heartbeats).
    deadline: float | None = None
    # The lock's reservation (its opaque id): a veil-v3 request is sealed bound to it, and the
    # node refuses one whose binding names another.
    reservation_id: str | None = None


class UsageReceipt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ticket_id: Annotated[str, Field(max_length=64)]
    model: str
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    compute_units: Count = 0
    final: bool = True
    # veil-v3: the request's id and the running hash of the answer so far (base64).
    request_id: str | None = None
    response_hash: str | None = None


TicketId = Annotated[str, Field(min_length=16, max_length=64)]


class ReceiptQuery(BaseModel):
    """A gateway asks a node for the receipts it signed for these tickets (see the module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["receipt-query"] = "receipt-query"
    ticket_ids: Annotated[list[TicketId], Field(min_length=1, max_length=MAX_RECEIPT_QUERY_IDS)]
    issued_at: float


class SignatureInvalid(Exception):
    """A signed token did not verify or did not parse (the message is safe to show)."""


M = TypeVar("M", bound=BaseModel)


def canonical(model: BaseModel) -> bytes:
    return json.dumps(model.model_dump(), sort_keys=True, separators=(",", ":")).encode()


def sign_token(model: BaseModel, key: Ed25519PrivateKey) -> str:
    payload = canonical(model)
    signature = key.sign(payload)
    return f"{base64.b64encode(payload).decode()}.{base64.b64encode(signature).decode()}"


def verify_token(token: str, cls: type[M], keys: list[Ed25519PublicKey]) -> M:
    """Parse and verify ``token`` against any of ``keys``; raises ``SignatureInvalid``."""
    try:
        payload_b64, signature_b64 = token.strip().split(".", 1)
        payload = base64.b64decode(payload_b64, validate=True)
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error):
        raise SignatureInvalid("malformed signed token") from None
    if len(signature) != 64:
        raise SignatureInvalid("signature must be 64 bytes")
    for key in keys:
        try:
            key.verify(signature, payload)
            break
        except InvalidSignature:
            continue
    else:
        raise SignatureInvalid("signature does not verify against any trusted key")
    try:
        return cls.model_validate(json.loads(payload))
    except (ValidationError, json.JSONDecodeError, UnicodeDecodeError):
        raise SignatureInvalid("signed token has an unexpected shape") from None


def envelope_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def public_key_from_b64(value: Any) -> Ed25519PublicKey:
    raw = base64.b64decode(str(value), validate=True)
    if len(raw) != 32:
        raise ValueError("Ed25519 public key must be 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)
