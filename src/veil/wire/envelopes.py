"""The wire objects of docs/PROTOCOL.md sections 4, 5 and 8, as strict pydantic models.

Binary fields travel as standard base64 (RFC 4648, ``+/``, padded). On the way in they are decoded
with ``validate=True`` and their length is checked before anything uses them; on the way out they are
encoded back the same way, so a model round-trips byte for byte.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    WithJsonSchema,
    model_serializer,
)

X25519_KEY_SIZE = 32
SALT_SIZE = 16
NONCE_SIZE = 12
HASH_SIZE = 32
TAG_SIZE = 16
ED25519_SIGNATURE_SIZE = 64
REQUEST_ID_SIZE = 16
RESPONSE_NONCE_SIZE = 32

MAX_ID = 2**63 - 1  # ids and units live in signed 64-bit database columns
MAX_REQUEST_UNITS = 2**62
"""The most units one request may ask for (a lock, ``max_tokens``): whatever the gateway adds on
top (the prompt's bytes) still fits a signed 64-bit column."""

RESERVATION_HEADER = "x-veil-reservation"
"""The header carrying the lock's ``reservation_id`` on the request that uses it."""
RESERVATION_ID_PATTERN = r"^[0-9a-f]{32}$"


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(value: object, *, field: str = "value") -> bytes:
    """Strict standard base64; the error names the field, never its content."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(f"{field} is not valid standard base64") from None


def _exact(size: int) -> Any:
    def decode(value: object) -> bytes:
        raw = b64decode(value)
        if len(raw) != size:
            raise ValueError(f"must decode to exactly {size} bytes, got {len(raw)}")
        return raw

    return BeforeValidator(decode)


def _at_least(size: int) -> Any:
    def decode(value: object) -> bytes:
        raw = b64decode(value)
        if len(raw) < size:
            raise ValueError(f"must decode to at least {size} bytes, got {len(raw)}")
        return raw

    return BeforeValidator(decode)


_AS_B64 = PlainSerializer(b64encode, return_type=str, when_used="always")
_B64_SCHEMA = WithJsonSchema({"type": "string", "contentEncoding": "base64"})

Key32 = Annotated[bytes, _exact(X25519_KEY_SIZE), _AS_B64, _B64_SCHEMA]
Salt16 = Annotated[bytes, _exact(SALT_SIZE), _AS_B64, _B64_SCHEMA]
Nonce12 = Annotated[bytes, _exact(NONCE_SIZE), _AS_B64, _B64_SCHEMA]
Hash32 = Annotated[bytes, _exact(HASH_SIZE), _AS_B64, _B64_SCHEMA]
Signature64 = Annotated[bytes, _exact(ED25519_SIGNATURE_SIZE), _AS_B64, _B64_SCHEMA]
Ciphertext = Annotated[bytes, _at_least(TAG_SIZE), _AS_B64, _B64_SCHEMA]
RequestId16 = Annotated[bytes, _exact(REQUEST_ID_SIZE), _AS_B64, _B64_SCHEMA]
ResponseNonce32 = Annotated[bytes, _exact(RESPONSE_NONCE_SIZE), _AS_B64, _B64_SCHEMA]
MLKEM768_X25519_PUBLIC_KEY_SIZE = 1184 + 32
KemPublicKey = Annotated[bytes, _exact(MLKEM768_X25519_PUBLIC_KEY_SIZE), _AS_B64, _B64_SCHEMA]

SmallId = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
Units = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
RequestUnits = Annotated[StrictInt, Field(ge=0, le=MAX_REQUEST_UNITS)]
ReservationId = Annotated[str, Field(pattern=RESERVATION_ID_PATTERN)]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]
KeyId = Annotated[str, Field(min_length=1, max_length=64)]
Protocol = Literal["atoma-v1", "veil-v3"]  # veil-v2 was replaced by veil-v3 before any release
KemName = Literal["mlkem768-x25519", "x25519"]


def _omit_absent(
    model: BaseModel, handler: SerializerFunctionWrapHandler, fields: tuple[str, ...]
) -> Any:
    """Serialize as usual, then drop the named (Veil-only) fields while they are None, so an
    atoma-v1 object serializes exactly as Atoma's does."""
    data = handler(model)
    if isinstance(data, dict):
        for name in fields:
            if name in data and data[name] is None:
                del data[name]
    return data


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


_REQUEST_VEIL_FIELDS = ("protocol", "key_id", "request_id", "timestamp", "kem", "reservation_id")
_RESPONSE_VEIL_FIELDS = ("response_nonce", "index", "final")


class ConfidentialComputeRequest(_Wire):
    """What a client sends to a ``/v1/confidential/*`` route (docs/PROTOCOL.md section 5)."""

    ciphertext: Ciphertext
    client_dh_public_key: Key32
    model_name: ModelName
    node_dh_public_key: Key32
    nonce: Nonce12
    plaintext_body_hash: Hash32
    salt: Salt16
    stack_small_id: SmallId
    num_compute_units: Units | None = None
    stream: StrictBool | None = None
    # veil-v3 only (docs/PROTOCOL.md); omitted from the output while unset.
    protocol: Protocol | None = None
    key_id: KeyId | None = None
    request_id: RequestId16 | None = None
    timestamp: Units | None = None
    # The KEM the request was sealed with, and the lock's reservation it is bound to.
    kem: KemName | None = None
    reservation_id: ReservationId | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _omit_absent(self, handler, _REQUEST_VEIL_FIELDS)


class Usage(_Wire):
    prompt_tokens: Units = 0
    completion_tokens: Units = 0
    total_tokens: Units = 0


class ConfidentialComputeResponse(_Wire):
    """A sealed response, or one sealed chunk of a stream (docs/PROTOCOL.md section 5)."""

    ciphertext: Ciphertext
    nonce: Nonce12
    response_hash: Hash32 | None = None
    signature: Signature64 | None = None
    usage: Usage | None = None
    # veil-v3 only (docs/PROTOCOL.md); omitted from the output while unset.
    response_nonce: ResponseNonce32 | None = None
    index: Units | None = None
    final: StrictBool | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _omit_absent(self, handler, _RESPONSE_VEIL_FIELDS)


AttestationNonce = Annotated[bytes, _at_least(16), _AS_B64, _B64_SCHEMA]


class NodesCreateLockRequest(_Wire):
    model: ModelName
    max_num_tokens: RequestUnits | None = None
    timeout: Annotated[StrictInt, Field(ge=1, le=3600)] | None = None
    # Veil: ask the gateway to relay the node's attestation evidence bound to this nonce.
    attestation_nonce: AttestationNonce | None = None


class NodesCreateLockResponse(_Wire):
    """Atoma's four fields, then Veil's additions (ignored by atoma-sdk, used by Veil's client)."""

    public_key: Key32
    node_small_id: SmallId
    stack_small_id: SmallId
    stack_entry_digest: str | None = None
    key_id: str | None = None
    node_signing_public_key: Key32 | None = None
    reserved_units: Units | None = None
    expires_at: float | None = None
    evidence: dict[str, Any] | None = None
    # The lock's handle: sent back as the X-Veil-Reservation header, it makes the request claim
    # exactly this reservation (an opaque random id, good only for the caller who locked).
    reservation_id: ReservationId | None = None
    # veil-v3: the node's post-quantum key for this lock (ML-KEM-768 + X25519, X-Wing: the
    # ML-KEM public key then the X25519 one), its key id, and the KEM's name.
    kem: KemName | None = None
    kem_public_key: KemPublicKey | None = None
    kem_key_id: KeyId | None = None
