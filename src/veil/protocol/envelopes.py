"""The wire objects of PROTOCOL.md sections 1-3, as strict pydantic models.

Binary fields travel as standard base64 (RFC 4648, ``+/``, padded). On the way in they are decoded
with ``validate=True`` and their length is checked before anything uses them; on the way out they are
encoded back the same way, so a model round-trips byte for byte.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)

X25519_KEY_SIZE = 32
SALT_SIZE = 16
NONCE_SIZE = 12
HASH_SIZE = 32
TAG_SIZE = 16
ED25519_SIGNATURE_SIZE = 64

MAX_ID = 2**63 - 1  # ids and units live in signed 64-bit database columns


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

SmallId = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
Units = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ConfidentialComputeRequest(_Wire):
    """What a client sends to a ``/v1/confidential/*`` route (PROTOCOL.md section 1)."""

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


class Usage(_Wire):
    prompt_tokens: Units = 0
    completion_tokens: Units = 0
    total_tokens: Units = 0


class ConfidentialComputeResponse(_Wire):
    """A sealed response, or one sealed chunk of a stream (PROTOCOL.md section 2)."""

    ciphertext: Ciphertext
    nonce: Nonce12
    response_hash: Hash32 | None = None
    signature: Signature64 | None = None
    usage: Usage | None = None


class NodesCreateLockRequest(_Wire):
    model: ModelName
    max_num_tokens: Units | None = None
    timeout: Annotated[StrictInt, Field(ge=1, le=3600)] | None = None


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
