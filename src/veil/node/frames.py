"""How an answer leaves the pipeline: sealed into envelopes, or as plain OpenAI JSON.

A ``Frame`` turns one answer (whole) or one stream chunk (an SSE event) into the bytes the app
sends, so the pipeline runs the engines once for both kinds of route. Plaintext goes in, and for
confidential routes only ciphertext comes out: part of the pipeline.
"""

from __future__ import annotations

from typing import Any, Protocol

from veil.node.bodies import encode_json
from veil.node.metrics import NodeMetrics
from veil.node.sealing import Sealer, sse_event

__all__ = ["DONE", "Frame", "PlainFrame", "SealedFrame"]

DONE = b"data: [DONE]\n\n"


class Frame(Protocol):
    #: The event that ends a stream (None: the stream just ends).
    done: bytes | None
    #: Whether an images answer reports the engine's usage (v1 envelopes carry none for images).
    reports_image_usage: bool

    @property
    def last_hash(self) -> bytes | None:
        """``response_hash`` of the last message framed, for receipts (None: not sealed)."""
        ...

    def whole(self, payload: dict[str, Any], usage: dict[str, int] | None) -> bytes: ...

    def event(self, payload: dict[str, Any], usage: dict[str, int] | None, final: bool) -> bytes:
        """One SSE event: ``final`` marks the stream's last message (it carries the usage)."""
        ...


class PlainFrame:
    """The plain routes: OpenAI JSON, SSE ending with ``[DONE]``, nothing sealed."""

    done: bytes | None = DONE
    reports_image_usage = True
    last_hash: bytes | None = None

    def whole(self, payload: dict[str, Any], usage: dict[str, int] | None) -> bytes:
        return encode_json(payload)

    def event(self, payload: dict[str, Any], usage: dict[str, int] | None, final: bool) -> bytes:
        return b"data: " + encode_json(payload) + b"\n\n"


class SealedFrame:
    """The confidential routes: every message sealed and signed by the request's ``Sealer``."""

    reports_image_usage = False

    def __init__(self, sealer: Sealer, metrics: NodeMetrics) -> None:
        self._sealer = sealer
        self._chunks = metrics.stream_chunks.labels("confidential_chat")  # looked up once
        self.done = sealer.done

    @property
    def last_hash(self) -> bytes | None:
        return self._sealer.last_hash

    def whole(self, payload: dict[str, Any], usage: dict[str, int] | None) -> bytes:
        return self._sealer.seal(payload, usage).model_dump_json(exclude_none=True).encode()

    def event(self, payload: dict[str, Any], usage: dict[str, int] | None, final: bool) -> bytes:
        self._chunks.inc()
        return sse_event(self._sealer.seal(payload, usage, final=final))
