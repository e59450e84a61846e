"""Every error Veil puts on the wire, one class per code.

The hierarchy, with the HTTP status each class answers with::

    VeilError                       (base; never raised itself)
    +-- InvalidBody          400  INVALID_BODY         malformed JSON, missing fields, bad base64,
    |                                                  wrong sizes, plaintext not valid for the route
    +-- AuthError            401  AUTH_ERROR           missing, unknown or revoked credentials
    +-- BalanceError         402  BALANCE_ERROR        the units carried cannot pay for the request
    +-- NotFound             404  NOT_FOUND            unknown model, route or object
    +-- StaleNodeKey         409  STALE_NODE_KEY       envelope sealed to a node key no longer
    |                                                  accepted: re-lock and re-encrypt
    +-- Replayed             409  REPLAYED             a ticket or request id already used
    +-- Conflict             409  CONFLICT             the object's state forbids it (a node
    |                                                  already added; removing a busy node)
    +-- PayloadTooLarge      413  PAYLOAD_TOO_LARGE    body over the configured limit
    +-- DecryptionFailed     422  DECRYPTION_FAILED    AEAD tag or body hash check failed
    +-- Locked               423  LOCKED               stack locked or settling
    +-- UnavailableStack     425  UNAVAILABLE_STACK    no live reservation for this request
    +-- TooManyRequests      429  TOO_MANY_REQUESTS
    +-- InternalError        500  INTERNAL_ERROR       a bug; the message never carries details
    +-- EngineError          502  ENGINE_ERROR         the model backend failed while answering
    +-- ServiceUnavailable   503  SERVICE_UNAVAILABLE  backend or dependency unreachable

The codes Atoma uses keep Atoma's spelling and status (docs/PROTOCOL.md section 10); Veil adds
STALE_NODE_KEY, REPLAYED, CONFLICT, PAYLOAD_TOO_LARGE, DECRYPTION_FAILED, ENGINE_ERROR and
INTERNAL_ERROR.
No other module invents a status code: routes raise one of these and the app renders it.

Messages are written for the person reading them and must never contain plaintext, key material or
anything decrypted: they are built from constant strings and sizes only.
"""

from __future__ import annotations

from typing import Any, ClassVar


class VeilError(Exception):
    """Base class: an error with a wire code and an HTTP status."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidBody(VeilError):
    status = 400
    code = "INVALID_BODY"


class AuthError(VeilError):
    status = 401
    code = "AUTH_ERROR"


class BalanceError(VeilError):
    status = 402
    code = "BALANCE_ERROR"


class NotFound(VeilError):
    status = 404
    code = "NOT_FOUND"


class StaleNodeKey(VeilError):
    status = 409
    code = "STALE_NODE_KEY"


class Replayed(VeilError):
    status = 409
    code = "REPLAYED"


class Conflict(VeilError):
    status = 409
    code = "CONFLICT"


class PayloadTooLarge(VeilError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class DecryptionFailed(VeilError):
    status = 422
    code = "DECRYPTION_FAILED"


class Locked(VeilError):
    status = 423
    code = "LOCKED"


class UnavailableStack(VeilError):
    status = 425
    code = "UNAVAILABLE_STACK"


class TooManyRequests(VeilError):
    status = 429
    code = "TOO_MANY_REQUESTS"


class InternalError(VeilError):
    status = 500
    code = "INTERNAL_ERROR"


class EngineError(VeilError):
    status = 502
    code = "ENGINE_ERROR"


class ServiceUnavailable(VeilError):
    status = 503
    code = "SERVICE_UNAVAILABLE"


ALL_ERRORS: tuple[type[VeilError], ...] = (
    InvalidBody,
    AuthError,
    BalanceError,
    NotFound,
    StaleNodeKey,
    Replayed,
    Conflict,
    PayloadTooLarge,
    DecryptionFailed,
    Locked,
    UnavailableStack,
    TooManyRequests,
    InternalError,
    EngineError,
    ServiceUnavailable,
)

ERRORS_BY_CODE: dict[str, type[VeilError]] = {cls.code: cls for cls in ALL_ERRORS}


def error_from_body(status: int, body: Any) -> VeilError:
    """Rebuild the error a peer sent (used by clients and the gateway when relaying)."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            cls = ERRORS_BY_CODE.get(str(err.get("code")))
            if cls is not None:
                return cls(str(err.get("message", "")))
    for cls in ALL_ERRORS:
        if cls.status == status:
            return cls(f"HTTP {status}")
    return InternalError(f"HTTP {status}")
