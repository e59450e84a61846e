"""A chat stream through the pipeline: frame each chunk, sign running receipts at a bounded
cadence, stop at the budget or the deadline, and turn a mid-stream engine failure into a last
(framed) error event.

Running receipts: one after the first chunk (the prompt is paid for as soon as the answer
starts), then one once ``RUNNING_RECEIPT_CHUNKS`` chunks or ``RUNNING_RECEIPT_SECONDS``
have passed since the last (``veil.config``), and one for whatever is left when the stream ends
without the engine's usage; the final receipt is always signed. So a client that hangs up pays
at least up to the last running receipt: at most ``RUNNING_RECEIPT_CHUNKS - 1`` chunks,
all sent within ``RUNNING_RECEIPT_SECONDS`` of it, go unbilled, and it never pays more than it
was sent. (A receipt after every chunk cost an Ed25519 signature per chunk here and a
verification per chunk at the gateway: most of a core at GPU rates.)

``start_chat_stream`` waits for the engine's first chunk, so a stream that fails before it fails
with a status (502/503); after that the status is sent and every failure is an event. What it
returns yields only framed bytes (sealed, on confidential routes). Plaintext: part of the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from veil import config
from veil.engines.base import TOKENS_SO_FAR, EngineFailure
from veil.node.bodies import has_content, wire_usage
from veil.node.frames import Frame
from veil.node.metrics import NodeMetrics
from veil.node.receipts import Receipts
from veil.node.service import ChatPlan, engine_failure_message
from veil.wire.errors import EngineError

log = logging.getLogger("veil.node")


async def start_chat_stream(
    chunks: AsyncGenerator[dict[str, Any], None],
    *,
    plan: ChatPlan,
    frame: Frame,
    receipts: Receipts,
    deadline: float,
    metrics: NodeMetrics,
) -> AsyncIterator[bytes]:
    """Run the engine's ``chunks`` until ``deadline`` (``time.monotonic()``).

    Content chunks are followed by signed running receipts of the completion tokens produced so
    far (the engine's count, ``TOKENS_SO_FAR``, or one per content chunk) at the cadence of the
    module docstring (``veil.config``'s, read when the stream starts). A
    stream that passes its deadline or its budget is stopped: the engine is closed and a final
    receipt signs what was produced (at most the budget).
    """
    every = max(1, config.RUNNING_RECEIPT_CHUNKS)
    interval = config.RUNNING_RECEIPT_SECONDS
    model = receipts.request.model
    loop_deadline = asyncio.get_running_loop().time() + (deadline - time.monotonic())
    try:
        async with asyncio.timeout_at(loop_deadline):
            first = await anext(chunks)
    except EngineFailure as exc:
        await chunks.aclose()
        raise EngineError(engine_failure_message(exc)) from None
    except StopAsyncIteration:
        raise EngineError("the model backend produced no output") from None
    except TimeoutError:
        await chunks.aclose()
        raise EngineError("the model produced nothing before the request's deadline") from None

    def so_far(completion: int) -> dict[str, int]:
        total = plan.prompt_tokens + completion
        return {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": total,
        }

    def stopped(why: str, produced: int) -> list[bytes]:
        """The last event and final receipt of a stream the node ended itself."""
        usage = so_far(produced)
        metrics.count_usage(model, usage)
        log.warning("stream for %s stopped: %s", model, why)
        failure = EngineError(f"the stream was stopped: {why}")
        return [frame.event(failure.to_body(), usage, True), receipts.comment(usage, final=True)]

    async def events() -> AsyncIterator[bytes]:
        chunk: dict[str, Any] | None = first
        produced = 0  # completion tokens so far: the engine's count, or one per content chunk
        unsigned = 0  # chunks with choices sent since the last running receipt
        signed_at = 0.0  # when it was signed (0: none yet, so the first chunk gets one)
        finished = False  # a final receipt was signed
        try:
            while chunk is not None:
                counted = chunk.pop(TOKENS_SO_FAR, None)
                usage = wire_usage(chunk.get("usage"))
                if usage is not None:
                    metrics.count_usage(model, usage)
                    yield frame.event(chunk, usage, True) + receipts.comment(usage, final=True)
                    finished = True
                elif chunk.get("choices"):
                    if isinstance(counted, int) and not isinstance(counted, bool):
                        produced = max(produced, counted)
                    elif has_content(chunk):
                        produced += 1
                    if plan.prompt_tokens + produced > plan.units:
                        why = f"its usage passed the request's {plan.units} compute units"
                        for event in stopped(why, produced):
                            yield event
                        return
                    event = frame.event(chunk, None, False)
                    unsigned += 1
                    now = time.monotonic()
                    if signed_at == 0.0 or unsigned >= every or now - signed_at >= interval:
                        event += receipts.comment(so_far(produced), final=False)  # one write
                        unsigned, signed_at = 0, now
                    yield event
                else:
                    yield frame.event(chunk, None, False)
                try:
                    async with asyncio.timeout_at(loop_deadline):
                        chunk = await anext(chunks, None)
                except TimeoutError:
                    for event in stopped("it ran past the request's deadline", produced):
                        yield event
                    return
            if unsigned and not finished:  # ended without the engine's usage: sign the rest
                yield receipts.comment(so_far(produced), final=False)
            if frame.done is not None:
                yield frame.done
        except EngineFailure as exc:
            partial = exc.usage.as_dict() if exc.usage is not None else None
            metrics.count_usage(model, partial)
            failure = EngineError(engine_failure_message(exc))
            yield frame.event(failure.to_body(), partial, True)
            if unsigned:  # what was sent since the last running receipt is paid for too
                yield receipts.comment(so_far(produced), final=False)
            log.warning("stream for %s ended by an engine failure", model)
        finally:
            await chunks.aclose()

    return events()
