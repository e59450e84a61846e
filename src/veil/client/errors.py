"""Every exception the Veil client raises, in one hierarchy.

::

    VeilClientError                     base: catch this to catch anything the client raises
    +-- APIError                        the gateway or node answered with a wire error
    |   |                               (.status, .code, .message as sent; docs/PROTOCOL.md section 10)
    |   +-- InvalidRequestError         400 INVALID_BODY
    |   +-- AuthenticationError         401 AUTH_ERROR
    |   +-- BalanceError                402 BALANCE_ERROR      (.model, .remaining_units)
    |   +-- NotFoundError               404 NOT_FOUND
    |   +-- StaleNodeKeyError           409 STALE_NODE_KEY     retried: re-lock, re-encrypt
    |   +-- ReplayedError               409 REPLAYED
    |   +-- PayloadTooLargeError        413 PAYLOAD_TOO_LARGE
    |   +-- EnvelopeRejectedError       422 DECRYPTION_FAILED  the node could not open what we sent
    |   +-- LockedError                 423 LOCKED
    |   +-- UnavailableStackError       425 UNAVAILABLE_STACK  retried: re-lock, re-encrypt
    |   +-- RateLimitError              429 TOO_MANY_REQUESTS
    |   +-- InternalServerError         500 INTERNAL_ERROR
    |   +-- EngineError                 502 ENGINE_ERROR       (also a sealed error ending a stream)
    |   +-- ServiceUnavailableError     503 SERVICE_UNAVAILABLE retried: re-lock, re-encrypt
    +-- IntegrityError                  a response failed a check: none of its data is returned
    |   +-- AttestationFailed           the node's evidence failed the policy (.report); raised
    |   |                               before anything was encrypted or sent
    |   +-- UnverifiableNode            the lock response lacks the node's signing key (or is bad)
    |   |   +-- NoPostQuantumKey        veil-v3: the lock names no ML-KEM-768 + X25519 key (and
    |   |                               the policy does not allow_classical_kem); nothing sent
    |   +-- MalformedResponse           a 200 answer that is not a sealed envelope / expected JSON
    |   +-- DecryptionError             the AES-GCM tag did not verify (alias: TagMismatch)
    |   +-- ResponseHashMismatch        response_hash missing, or not the hash (v1: BLAKE2b-256 of
    |   |                               the plaintext; v3: the chunks' running hash)
    |   +-- SignatureInvalid            signature missing, or not the node's Ed25519 signature
    |   |                               over response_hash (v3: one, on the final chunk, over
    |   |                               the running hash and the usage)
    |   +-- UsageMismatch               the usage sent in clear differs from the signed usage
    |   +-- StreamTruncated             a stream ended before its final chunk
    |   +-- StreamCorrupt               a stream event out of place: unparsable, dropped (v3),
    |                                   duplicated, reordered, foreign, or after the final
    |                                   chunk
    +-- PlaintextRefused                the openai drop-in was asked to send a body it cannot
    |                                   seal (a route other than chat, embeddings, images)
    +-- TransportError                  the network failed (connect, read, timeout)

Retries: only the three classes marked above are retried (``retryable``), each time with a new
lock and a new encryption; every other error is raised at once.

Every class has a ``code`` (the wire code for ``APIError``s, a fixed name otherwise) so a CLI can
print one line ``error: CODE: message``. Messages never contain plaintext or key material.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from veil.wire.errors import error_from_body

if TYPE_CHECKING:
    from veil.attestation.report import VerificationReport


class VeilClientError(Exception):
    """Base class of everything the Veil client raises."""

    code: str = "CLIENT_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- errors the server sent -----------------------------------------------------------------
class APIError(VeilClientError):
    """The gateway or node answered with ``{"error": {"code", "message"}}``."""

    status: int = 500
    code: str = "API_ERROR"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidRequestError(APIError):
    status, code = 400, "INVALID_BODY"


class AuthenticationError(APIError):
    status, code = 401, "AUTH_ERROR"


class BalanceError(APIError):
    """The caller's stacks cannot pay for the request.

    ``remaining_units`` is the sum of ``free_units`` over the caller's stacks for ``model``, read
    from ``GET /v1/stacks`` when the error arrived (None if that could not be read).
    """

    status, code = 402, "BALANCE_ERROR"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        model: str | None = None,
        remaining_units: int | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.model = model
        self.remaining_units = remaining_units

    def __str__(self) -> str:
        if self.remaining_units is None:
            return super().__str__()
        return f"{super().__str__()} ({self.remaining_units} units left for {self.model})"


class NotFoundError(APIError):
    status, code = 404, "NOT_FOUND"


class StaleNodeKeyError(APIError):
    status, code = 409, "STALE_NODE_KEY"
    retryable = True


class ReplayedError(APIError):
    status, code = 409, "REPLAYED"


class PayloadTooLargeError(APIError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class EnvelopeRejectedError(APIError):
    """The node could not open the request envelope (its tag or body hash did not verify)."""

    status, code = 422, "DECRYPTION_FAILED"


class LockedError(APIError):
    status, code = 423, "LOCKED"


class UnavailableStackError(APIError):
    status, code = 425, "UNAVAILABLE_STACK"
    retryable = True


class RateLimitError(APIError):
    status, code = 429, "TOO_MANY_REQUESTS"


class InternalServerError(APIError):
    status, code = 500, "INTERNAL_ERROR"


class EngineError(APIError):
    status, code = 502, "ENGINE_ERROR"


class ServiceUnavailableError(APIError):
    status, code = 503, "SERVICE_UNAVAILABLE"
    retryable = True


API_ERRORS: tuple[type[APIError], ...] = (
    InvalidRequestError,
    AuthenticationError,
    BalanceError,
    NotFoundError,
    StaleNodeKeyError,
    ReplayedError,
    PayloadTooLargeError,
    EnvelopeRejectedError,
    LockedError,
    UnavailableStackError,
    RateLimitError,
    InternalServerError,
    EngineError,
    ServiceUnavailableError,
)
API_ERRORS_BY_CODE: dict[str, type[APIError]] = {cls.code: cls for cls in API_ERRORS}


def api_error(status: int, body: Any) -> APIError:
    """The client exception for an error the server sent (``body``: the decoded JSON, if any)."""
    wire = error_from_body(status, body)
    cls = API_ERRORS_BY_CODE.get(wire.code, APIError)
    return cls(wire.message, status=status, code=wire.code)


# -- responses that failed a check ----------------------------------------------------------
class IntegrityError(VeilClientError):
    """A response failed a check. Nothing from it is returned to the caller."""

    code = "INTEGRITY_ERROR"


class AttestationFailed(IntegrityError):
    """The node's attestation evidence did not satisfy the client's policy.

    Raised after the lock and before anything is sealed: no envelope was built or sent. ``report``
    is the ``VerificationReport`` (every step and its outcome; ``report.render()`` draws it), or
    None when the lock response carried no readable evidence at all.
    """

    code = "ATTESTATION_FAILED"

    def __init__(self, message: str, *, report: VerificationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class UnverifiableNode(IntegrityError):
    code = "UNVERIFIABLE_NODE"


class NoPostQuantumKey(UnverifiableNode):
    """veil-v3 was asked for, and the lock names no post-quantum key for the node: nothing was
    encrypted or sent (``Policy.allow_classical_kem`` accepts sealing with X25519 instead)."""

    code = "NO_POST_QUANTUM_KEY"


class MalformedResponse(IntegrityError):
    code = "MALFORMED_RESPONSE"


class DecryptionError(IntegrityError):
    code = "TAG_MISMATCH"


TagMismatch = DecryptionError


class ResponseHashMismatch(IntegrityError):
    code = "RESPONSE_HASH_MISMATCH"


class SignatureInvalid(IntegrityError):
    code = "SIGNATURE_INVALID"


class UsageMismatch(IntegrityError):
    code = "USAGE_MISMATCH"


class StreamTruncated(IntegrityError):
    code = "STREAM_TRUNCATED"


class StreamCorrupt(IntegrityError):
    code = "STREAM_CORRUPT"


# -- the openai drop-in ---------------------------------------------------------------------
class PlaintextRefused(VeilClientError):
    """A request body the drop-in cannot seal; it was not sent."""

    code = "PLAINTEXT_REFUSED"


# -- the network ----------------------------------------------------------------------------
class TransportError(VeilClientError):
    """Connecting, sending or reading failed; ``__cause__`` is the httpx error."""

    code = "TRANSPORT_ERROR"
