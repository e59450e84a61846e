"""A confidential chat stream: the node's sealed events in, verified plaintext events out.

::

    node's SSE  --event_data()-->  StreamChecker.event()  --VerifiedEvents-->  openai's SSE
                (httpx-sse: the     opens each message, checks    ``data: <plaintext>`` per chunk,
                one SSE parser)     its place in the stream       the node's exact signed bytes

``data: [DONE]`` goes out only once the final chunk has been verified and the node's stream has
ended, so a reader that sees it knows the answer is whole. A check that fails raises its own
``IntegrityError`` from the body iterator, before any byte of the faulty chunk is handed on; a
network failure mid-stream is ``StreamTruncated``. Comment lines (``: veil-receipt ...``) are
ignored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent
from pydantic import ValidationError

from veil.client.errors import StreamCorrupt, StreamTruncated, api_error
from veil.client.opening import Opener, parse_json_object, signed_usage
from veil.wire.envelopes import ConfidentialComputeResponse

__all__ = ["DONE_EVENT", "StreamChecker", "VerifiedEvents", "aevent_data", "event_data"]

DONE_DATA = "[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"


def _carries_data(sse: ServerSentEvent) -> bool:
    # httpx-sse also dispatches a block that only set an id, a retry or an event name (and every
    # blank line after an id, which persists); such a block carries no data and is no event here.
    # An empty ``data:`` line alone is an event (of empty data), as the SSE specification says.
    if sse.data:
        return True
    return sse.event == "message" and not sse.id and sse.retry is None


def event_data(response: httpx.Response) -> Iterator[str]:
    """The ``data`` of each server-sent event of ``response``, read as it arrives."""
    return (sse.data for sse in EventSource(response).iter_sse() if _carries_data(sse))


async def aevent_data(response: httpx.Response) -> AsyncIterator[str]:
    """``event_data`` for a response read asynchronously."""
    async for sse in EventSource(response).aiter_sse():
        if _carries_data(sse):
            yield sse.data


class StreamChecker:
    """Opens each event of a chat stream and checks its place in the stream."""

    def __init__(self, opener: Opener) -> None:
        self.opener = opener
        self.final = False
        self.done = False
        self._nonces: set[bytes] = set()
        self._completion_id: str | None = None
        self._events = 0
        self._finished: set[int] = set()

    def event(self, data: str) -> tuple[bytes, dict[str, Any]] | None:
        """One event's data -> (verified plaintext, its JSON), or None for the ``[DONE]`` that may
        follow the final chunk. Raises on anything out of place."""
        if data.strip() == DONE_DATA:
            if not self.final:
                raise StreamTruncated("the stream said [DONE] before its final chunk arrived")
            if self.done:
                raise StreamCorrupt("[DONE] arrived twice")
            self.done = True
            return None
        if self.final:
            raise StreamCorrupt("an event arrived after the stream's final chunk")
        try:
            sealed = ConfidentialComputeResponse.model_validate_json(data)
        except ValidationError:
            raise StreamCorrupt("a stream event is not a sealed chunk") from None
        if self.opener.dedupe_nonces:
            if sealed.nonce in self._nonces:
                raise StreamCorrupt("a chunk arrived twice (its nonce was already used)")
            self._nonces.add(sealed.nonce)
        plaintext = self.opener.open(sealed, malformed=StreamCorrupt)
        chunk = parse_json_object(plaintext, StreamCorrupt)
        if "error" in chunk and "choices" not in chunk:
            # The node's own sealed, signed account of a failure mid-stream.
            self.final = True
            raise api_error(502, chunk)
        self._check_place(chunk)
        usage = signed_usage(sealed.usage, chunk, StreamCorrupt)
        if self.opener.is_final(sealed, usage):
            self.final = True
            self.opener.finish(usage)
        self._events += 1
        return plaintext, chunk

    def _check_place(self, chunk: dict[str, Any]) -> None:
        completion_id = chunk.get("id")
        if self._completion_id is None:
            self._completion_id = completion_id if isinstance(completion_id, str) else None
        elif completion_id != self._completion_id:
            raise StreamCorrupt("a chunk belongs to another completion")
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise StreamCorrupt("a chunk has no choices list")
        for choice in choices:
            if not isinstance(choice, dict):
                raise StreamCorrupt("a chunk's choice is not an object")
            index = choice.get("index", 0)
            delta = choice.get("delta") or {}
            if "role" in delta and self._events > 0:
                raise StreamCorrupt("the stream's opening chunk arrived out of order")
            if index in self._finished and (delta.get("content") or delta.get("tool_calls")):
                raise StreamCorrupt("content arrived after its choice had finished")
            if choice.get("finish_reason") is not None:
                self._finished.add(index)

    def end(self) -> None:
        """The transport ended: the final chunk must have arrived."""
        self.opener.ended(self.final)

    def frame(self, data: str) -> bytes | None:
        """One event of the node's stream -> the verified plaintext event to hand on, if any."""
        opened = self.event(data)
        return None if opened is None else b"data: " + opened[0] + b"\n\n"

    def finish(self) -> bytes:
        """The node's stream ended: the closing ``[DONE]``, if its final chunk arrived."""
        self.end()
        return DONE_EVENT


@contextmanager
def _reading() -> Iterator[None]:
    try:
        yield
    except httpx.HTTPError as exc:
        raise StreamTruncated(
            f"the stream broke before its final chunk ({type(exc).__name__})"
        ) from exc


class VerifiedEvents(httpx.SyncByteStream, httpx.AsyncByteStream):
    """The body of a verified stream: plaintext events, each only after its chunk passed every
    check. Closing it closes the node's stream."""

    def __init__(self, upstream: httpx.Response, checker: StreamChecker) -> None:
        self._upstream = upstream
        self.checker = checker

    def __iter__(self) -> Iterator[bytes]:
        with _reading():
            for data in event_data(self._upstream):
                if (frame := self.checker.frame(data)) is not None:
                    yield frame
        yield self.checker.finish()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _reading():
            async for data in aevent_data(self._upstream):
                if (frame := self.checker.frame(data)) is not None:
                    yield frame
        yield self.checker.finish()

    def close(self) -> None:
        self._upstream.close()

    async def aclose(self) -> None:
        await self._upstream.aclose()
