"""What every Veil suite's key schedule shares: the canonical metadata encoding, the per-chunk
nonce, and the two stream errors a client can see.

``canonical_json`` is JSON with sorted keys, ``(",", ":")`` separators, UTF-8 without ``\\u``
escaping of non-ASCII text, ``null`` for absent optional values, integers in decimal, booleans as
``true/false`` and byte strings as standard padded base64. It is what veil-v3 authenticates as HPKE
``info`` and as each chunk's AES-GCM AAD, so both ends (and the browser console) must produce the
same bytes for the same fields; ``tests/vectors/veil-v3.json`` pins them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from veil.wire.envelopes import NONCE_SIZE, b64encode
from veil.wire.errors import DecryptionFailed, InvalidBody

__all__ = [
    "MAX_CHUNK_INDEX",
    "ResponseHashMismatch",
    "StreamOrderError",
    "canonical_json",
    "chunk_nonce",
]

MAX_CHUNK_INDEX: Final = 2**63 - 1  # the envelope's integer range; far below the 2**96 nonces


class StreamOrderError(DecryptionFailed):
    """A response chunk arrived out of place: dropped, reordered, duplicated, foreign or truncated."""


class ResponseHashMismatch(DecryptionFailed):
    """A chunk decrypted, but it is not what the node's running hash says it sent."""


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


def chunk_nonce(base_nonce: bytes, index: int) -> bytes:
    """``base_nonce XOR I2OSP(index, 12)``, as RFC 9180 ``ComputeNonce``."""
    if len(base_nonce) != NONCE_SIZE:
        raise ValueError(f"base nonce must be {NONCE_SIZE} bytes")
    if not 0 <= index <= MAX_CHUNK_INDEX:
        raise ValueError("chunk index out of range")
    return (int.from_bytes(base_nonce, "big") ^ index).to_bytes(NONCE_SIZE, "big")
