"""The pipeline without HTTP: raw bytes in, an Answer of bytes out (sealed on confidential routes),
over the session's real engines. Plaintext stays inside; what it hands the app opens only with the
client's session."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.node.conftest import CHAT, EMBED
from veil.hazmat import v1, v3
from veil.node.keyring import Keyring
from veil.node.metrics import NodeMetrics
from veil.node.pipeline import Pipeline, StreamAnswer, WholeAnswer, _budget
from veil.node.replay import MemoryReplayCache
from veil.node.sealing import OpenedRequest
from veil.node.service import EngineRegistry
from veil.wire.envelopes import ConfidentialComputeResponse, b64decode
from veil.wire.errors import NotFound, Replayed
from veil.wire.routes import confidential_path
from veil.wire.tickets import RECEIPT_COMMENT, Ticket, UsageReceipt, verify_token

CANARY = "violet-anchor-7731"
T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring(tmp_path, 60)


@pytest.fixture
def pipeline(keyring: Keyring, node_registry: EngineRegistry) -> Pipeline:
    return Pipeline(
        keyring=keyring,
        engines=node_registry,
        replay=MemoryReplayCache(100),
        metrics=NodeMetrics(),
        default_units=4096,
        request_timeout_seconds=60,
    )


def receipt_of(token: str, keyring: Keyring) -> UsageReceipt:
    return verify_token(token, UsageReceipt, [keyring.signing_key.public_key()])


def test_a_confidential_answer_is_sealed_bytes_with_a_receipt_for_them(
    pipeline: Pipeline, keyring: Keyring
) -> None:
    body = json.dumps({"model": EMBED, "input": CANARY}).encode()
    envelope, session = v1.seal_request(
        keyring.current.public_key, body, model_name=EMBED, stack_small_id=1
    )
    answer = run(pipeline.confidential("embeddings", envelope.model_dump_json().encode(), None))
    assert isinstance(answer, WholeAnswer)
    sealed = ConfidentialComputeResponse.model_validate_json(answer.body)
    assert b"embedding" not in answer.body and CANARY.encode() not in answer.body
    opened = json.loads(v1.open_response(session, sealed))
    assert len(opened["data"][0]["embedding"]) == 384
    receipt = receipt_of(answer.receipt, keyring)
    assert receipt.ticket_id == "direct" and receipt.model == EMBED
    assert receipt.response_hash is not None
    assert b64decode(receipt.response_hash) == sealed.response_hash


def test_a_confidential_stream_yields_only_sealed_events_and_receipts(
    pipeline: Pipeline, keyring: Keyring
) -> None:
    chat = {
        "model": CHAT,
        "max_tokens": 4,
        "stream": True,
        "messages": [{"role": "user", "content": f"Say {CANARY}"}],
    }
    path = confidential_path("chat")
    hybrid = keyring.current.hybrid
    assert hybrid is not None
    envelope, session = v3.seal_request(
        hybrid.public_key,
        hybrid.key_id,
        json.dumps(chat).encode(),
        node_signing_key=keyring.signing_public_key,
        endpoint=path,
        model_name=CHAT,
        stack_small_id=1,
        num_compute_units=500,
        stream=True,
    )

    async def collect(events: AsyncIterator[bytes]) -> list[bytes]:
        return [event async for event in events]

    async def go() -> list[bytes]:
        answer = await pipeline.confidential("chat", envelope.model_dump_json().encode(), None)
        assert isinstance(answer, StreamAnswer)
        return await collect(answer.events)

    events = run(go())
    assert events[-1] == b"data: [DONE]\n\n"
    texts: list[dict[str, Any]] = []
    sealed_events: list[ConfidentialComputeResponse] = []
    receipts = []
    # A write may hold an event and the receipt after it: each is one SSE block ending "\n\n".
    assert all(write.endswith(b"\n\n") for write in events)
    blocks = [block + b"\n\n" for write in events[:-1] for block in write.split(b"\n\n") if block]
    for event in blocks:
        assert CANARY.encode() not in event
        if event.startswith(RECEIPT_COMMENT):
            receipt = event.removeprefix(RECEIPT_COMMENT).removesuffix(b"\n\n")
            receipts.append(receipt_of(receipt.decode(), keyring))
            continue
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        sealed = ConfidentialComputeResponse.model_validate_json(event[6:-2])
        texts.append(json.loads(session.open(sealed)))
        sealed_events.append(sealed)
    session.finish()
    assert texts[-1]["usage"]["completion_tokens"] >= 1
    # veil-v3 signs once per answer: the final chunk carries the signature and the signed usage.
    signed = [e.signature is not None for e in sealed_events]
    assert signed == [False] * (len(signed) - 1) + [True]
    assert session.usage is not None and session.usage.model_dump() == texts[-1]["usage"]
    assert receipts[-1].final and all(not r.final for r in receipts[:-1])
    assert receipts[-1].request_id is not None and receipts[-1].compute_units <= 500


def test_a_v3_envelope_is_opened_once(pipeline: Pipeline, keyring: Keyring) -> None:
    path = confidential_path("embeddings")
    hybrid = keyring.current.hybrid
    assert hybrid is not None
    envelope, _ = v3.seal_request(
        hybrid.public_key,
        hybrid.key_id,
        json.dumps({"model": EMBED, "input": "once"}).encode(),
        node_signing_key=keyring.signing_public_key,
        endpoint=path,
        model_name=EMBED,
        stack_small_id=1,
    )
    raw = envelope.model_dump_json().encode()
    assert isinstance(run(pipeline.confidential("embeddings", raw, None)), WholeAnswer)
    with pytest.raises(Replayed):
        run(pipeline.confidential("embeddings", raw, None))


def test_an_unserved_model_is_refused_before_decryption(
    pipeline: Pipeline, keyring: Keyring
) -> None:
    envelope, _ = v1.seal_request(
        keyring.current.public_key, b"not even json", model_name="nobody", stack_small_id=1
    )
    with pytest.raises(NotFound, match="nobody"):
        run(pipeline.confidential("chat", envelope.model_dump_json().encode(), None))


def test_a_plain_answer_is_openai_json_with_a_receipt(pipeline: Pipeline, keyring: Keyring) -> None:
    raw = json.dumps({"model": EMBED, "input": "plain"}).encode()
    answer = run(pipeline.plain("embeddings", raw, None))
    assert isinstance(answer, WholeAnswer)
    assert len(json.loads(answer.body)["data"][0]["embedding"]) == 384
    receipt = receipt_of(answer.receipt, keyring)
    assert receipt.response_hash is None and receipt.prompt_tokens >= 1


def opened(units: int | None, request_id: str | None) -> OpenedRequest:
    return OpenedRequest(
        endpoint="chat",
        request=None,  # type: ignore[arg-type]  # _budget reads only the envelope's numbers
        sealer=None,  # type: ignore[arg-type]
        key_id="k",
        units=units,
        stream=False,
        request_id=request_id,
    )


def ticket(units: int) -> Ticket:
    return Ticket(
        ticket_id="t" * 16,
        stack_small_id=1,
        node_small_id=1,
        units=units,
        expires_at=0,
        envelope_sha256="0" * 64,
    )


def test_the_budget_of_a_confidential_request() -> None:
    assert _budget(opened(70, None), None) == 70  # direct use: the envelope's claim
    assert _budget(opened(None, None), None) is None  # the node's default applies
    assert _budget(opened(70, None), ticket(500)) == 500  # v1: the ticket decides
    assert _budget(opened(70, "rid"), ticket(500)) == 70  # v3: the client's units cap it
    assert _budget(opened(900, "rid"), ticket(500)) == 500
    assert _budget(opened(None, "rid"), ticket(500)) == 500
