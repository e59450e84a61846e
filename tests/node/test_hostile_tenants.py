"""Issue 12, node side: a tenant out to pay less, or to knock others off, against real nodes.

Everything is real: uvicorn nodes on loopback over the session's engines (SmolLM2 on llama.cpp,
MiniLM), the OpenAI stand-in of ``tests.engines.openai_stand_in`` as an upstream (itself over the
same real engines), a real gateway app, and the real Redis at 127.0.0.1:6379 (a unique key prefix
per test).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import TEST_MODEL_DIR
from tests.engines.openai_stand_in import create_openai_stand_in
from tests.node.conftest import CHAT, EMBED, RunningNode, start_node
from tests.servers import ServerThread, free_port, wait_until
from veil import config
from veil.config import GatewaySettings
from veil.engines import LlamaCppChatEngine, UpstreamChatEngine, make_upstream_engine
from veil.engines.upstream_tokens import IMAGE_PART_TOKENS
from veil.gateway.app import create_gateway_app
from veil.gateway.identity import public_b64
from veil.hazmat import v3
from veil.node.replay import RedisReplayCache
from veil.node.service import EngineRegistry
from veil.wire.errors import TooManyRequests
from veil.wire.openai import ChatCompletionRequest
from veil.wire.tickets import (
    RECEIPT_COMMENT,
    RECEIPT_HEADER,
    TICKET_HEADER,
    Ticket,
    UsageReceipt,
    envelope_digest,
    sign_token,
    verify_token,
)

REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CONFIDENTIAL_CHAT = "/v1/confidential/chat/completions"
CONFIDENTIAL_EMBED = "/v1/confidential/embeddings"
PAID_ROUTES = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    CONFIDENTIAL_CHAT,
    CONFIDENTIAL_EMBED,
    "/v1/confidential/images/generations",
]


# --- helpers -------------------------------------------------------------------------------------


def ticket(
    key: Ed25519PrivateKey,
    body: bytes,
    *,
    stack: int = 1,
    units: int = 4000,
    ttl: float = 60,
    deadline: float | None = None,
) -> str:
    """A gateway ticket for exactly ``body``, signed as the gateway signs it."""
    return sign_token(
        Ticket(
            ticket_id=uuid.uuid4().hex,
            stack_small_id=stack,
            node_small_id=1,
            units=units,
            expires_at=time.time() + ttl,
            envelope_sha256=envelope_digest(body),
            deadline=deadline,
        ),
        key,
    )


def post(url: str, raw: bytes, token: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers[TICKET_HEADER] = token
    return httpx.post(url, content=raw, headers=headers, timeout=120)


def code_of(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def receipts(lines: list[str], node: RunningNode) -> list[UsageReceipt]:
    prefix = RECEIPT_COMMENT.decode()
    key = node.signing_key()
    return [
        verify_token(line.removeprefix(prefix), UsageReceipt, [key])
        for line in lines
        if line.startswith(prefix)
    ]


def stream_lines(url: str, raw: bytes, token: str | None = None) -> list[str]:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers[TICKET_HEADER] = token
    with httpx.stream("POST", url, content=raw, headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        return [line for line in response.iter_lines() if line]


def v3_envelope(
    node: RunningNode, body: dict[str, Any] | bytes, path: str, *, stack: int, units: int = 100
) -> bytes:
    """A veil-v3 envelope sealed to the node's post-quantum key (bound to no reservation, as the
    tickets of these tests claim none)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    hybrid = node.keyring.current.hybrid
    assert hybrid is not None
    envelope, _ = v3.seal_request(
        hybrid.public_key,
        hybrid.key_id,
        raw,
        node_signing_key=node.keyring.signing_public_key,
        endpoint=path,
        model_name=EMBED,
        stack_small_id=stack,
        num_compute_units=units,
    )
    return envelope.model_dump_json().encode()


@pytest.fixture
def gateway_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def redis_prefix() -> str:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:  # a check that cannot run is a failure, not a skip
        pytest.fail(f"Redis unreachable at {REDIS_URL}: {exc}")
    return f"veil-test:{secrets.token_hex(6)}:"


# --- #3 an unticketed node serves anyone, free ------------------------------------------------


def test_a_node_without_gateway_key_refuses_every_paid_route(
    tmp_path: Path, node_registry: EngineRegistry
) -> None:
    server, node = start_node(tmp_path, node_registry, insecure_no_gateway=False)
    with server:
        body = json.dumps({"model": EMBED, "input": "free lunch"}).encode()
        for route in PAID_ROUTES:
            response = post(f"{node.url}{route}", body)
            assert response.status_code == 401, (route, response.text)
            assert code_of(response) == "AUTH_ERROR"
            assert "--gateway-key" in response.json()["error"]["message"]
        for route in ("/health", "/v1/models", "/v1/keys"):
            assert httpx.get(f"{node.url}{route}").status_code == 200, route


def test_insecure_no_gateway_serves_and_warns_at_start(
    tmp_path: Path, node_registry: EngineRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="veil.node")
    server, node = start_node(tmp_path, node_registry, insecure_no_gateway=True)
    with server:
        body = json.dumps({"model": EMBED, "input": "direct use"}).encode()
        assert post(f"{node.url}/v1/embeddings", body).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.name == "veil.node"]
    assert any("INSECURE" in w and "--insecure-no-gateway" in w for w in warnings), warnings


def test_veil_node_without_key_or_insecure_flag_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env["VEIL_MODELS_DIR"] = str(TEST_MODEL_DIR)
    command = [sys.executable, "-m", "veil.cli", "node", "--no-embedded"]
    command += ["--data-dir", str(tmp_path / "node"), "--port", str(free_port())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "--gateway-key" in lines[0] and "--insecure-no-gateway" in lines[0]


def test_gateway_refuses_to_route_to_a_node_that_serves_unticketed_requests(
    tmp_path: Path, node_registry: EngineRegistry, gateway_key: Ed25519PrivateKey
) -> None:
    honest_server, _ = start_node(
        tmp_path / "honest", node_registry, gateway_keys=[public_b64(gateway_key)]
    )
    open_server, _ = start_node(tmp_path / "open", node_registry, insecure_no_gateway=True)
    with honest_server, open_server:
        settings = GatewaySettings(
            data_dir=tmp_path / "gateway", nodes=[honest_server.url, open_server.url]
        )
        with ServerThread(create_gateway_app(settings, gateway_key)) as gateway:
            health = httpx.get(f"{gateway.url}/health").json()
    by_url = {n["url"]: n for n in health["nodes"]}
    assert by_url[honest_server.url]["healthy"] is True
    assert by_url[honest_server.url]["reason"] is None
    refused = by_url[open_server.url]
    assert refused["healthy"] is False
    assert "without a gateway ticket" in refused["reason"]
    assert "HTTP 400" in refused["reason"]  # the open node parsed the probe's body: it serves


# --- #2 the budget counts only message text -------------------------------------------------


@pytest.fixture(scope="module")
def upstream_node(
    tmp_path_factory: pytest.TempPathFactory, chat_engine: Any, embedding_engine: Any
) -> Iterator[RunningNode]:
    """A node whose chat model is an upstream (the stand-in) streaming 4 tokens a chunk."""
    stand_in = create_openai_stand_in(chat_engine, embedding_engine, merge=4)
    with ServerThread(stand_in) as upstream:
        registry = EngineRegistry()
        registry.add(make_upstream_engine("chat", "up-chat", upstream.url, upstream_model=CHAT))
        server, node = start_node(tmp_path_factory.mktemp("upstream-node"), registry)
        with server:
            yield node


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hi"}],
        **extra,
    }


def big_tools(n: int = 40) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": "Looks up the weather in a city, with many words of description "
                * 4,
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
        for i in range(n)
    ]


def test_upstream_tools_and_response_format_are_priced(upstream_node: RunningNode) -> None:
    url = f"{upstream_node.url}/v1/chat/completions"
    envelope, _ = upstream_node.seal(chat_body("up-chat"), units=1000)
    plain = upstream_node.post(CONFIDENTIAL_CHAT, envelope)
    assert plain.status_code == 200, plain.text  # the messages alone fit 1000 units
    for extra in (
        {"tools": big_tools()},
        {"response_format": {"type": "json_schema", "json_schema": {"schema": big_tools()}}},
        {"documents": [{"text": "a retrieved document " * 400}]},  # unknown: priced as JSON
    ):
        envelope, _ = upstream_node.seal(chat_body("up-chat", **extra), units=1000)
        response = upstream_node.post(CONFIDENTIAL_CHAT, envelope)
        assert response.status_code == 402, (list(extra), response.text)
        assert code_of(response) == "BALANCE_ERROR"
    # The plain route prices the same way (default units 4096; the tools here take more).
    raw = json.dumps(chat_body("up-chat", tools=big_tools(120))).encode()
    assert post(url, raw).status_code == 402


def test_upstream_images_cost_a_fixed_documented_price(
    upstream_node: RunningNode, chat_engine: Any, embedding_engine: Any
) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    content = [{"type": "text", "text": "What is this?"}, image, image]
    body = chat_body("up-chat", messages=[{"role": "user", "content": content}])
    text_only = chat_body("up-chat", messages=[{"role": "user", "content": content[:1]}])
    engine = UpstreamChatEngine("up-chat", "http://127.0.0.1:9", upstream_model=CHAT)  # no server

    async def counts() -> tuple[int, int]:
        with_images = await engine.count_prompt_tokens(ChatCompletionRequest(**body))
        without = await engine.count_prompt_tokens(ChatCompletionRequest(**text_only))
        return with_images, without

    with_images, without = asyncio.run(counts())
    assert with_images == without + 2 * IMAGE_PART_TOKENS
    envelope, _ = upstream_node.seal(body, units=2 * IMAGE_PART_TOKENS)
    response = upstream_node.post(CONFIDENTIAL_CHAT, envelope)
    assert response.status_code == 402 and code_of(response) == "BALANCE_ERROR"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tools": big_tools(1)}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "data:,x"}},
                        ],
                    }
                ]
            },
            "messages[0].content[1]",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"id": "1", "type": "function"}],
                    },
                ]
            },
            "messages[1].tool_calls",
        ),
    ],
)
def test_llamacpp_refuses_what_it_cannot_price_naming_the_field(
    node: RunningNode, extra: dict[str, Any], field: str
) -> None:
    for stream in (False, True):
        raw = json.dumps(chat_body(CHAT, stream=stream, **extra)).encode()
        response = post(f"{node.url}/v1/chat/completions", raw)
        assert response.status_code == 400, response.text
        assert code_of(response) == "INVALID_BODY"
        assert field in response.json()["error"]["message"]


def test_an_oversized_prompt_is_refused_before_any_tokenizer_runs(node: RunningNode) -> None:
    huge = "lorem ipsum " * 30_000  # 360 kB: far more than 4096 units can hold
    raw = json.dumps(chat_body(CHAT, messages=[{"role": "user", "content": huge}])).encode()
    response = post(f"{node.url}/v1/chat/completions", raw)
    assert response.status_code == 402, response.text
    assert "bytes" in response.json()["error"]["message"]  # the size check, not a token count
    raw = json.dumps({"model": EMBED, "input": [huge]}).encode()
    response = post(f"{node.url}/v1/embeddings", raw)
    assert response.status_code == 402 and "bytes" in response.json()["error"]["message"]


def test_pricing_a_request_does_not_wait_for_another_generation(
    chat_engine: LlamaCppChatEngine,
) -> None:
    long = ChatCompletionRequest(
        model=CHAT,
        messages=[{"role": "user", "content": "Write a very long story about the sea."}],
    )
    short = ChatCompletionRequest(model=CHAT, messages=[{"role": "user", "content": "Hi"}])

    async def scenario() -> tuple[int, bool]:
        stream = chat_engine.stream(long, 1500)
        try:
            async for chunk in stream:
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    break  # generating now, and holding the model
            assert chat_engine._lock.locked()
            counted = await asyncio.wait_for(chat_engine.count_prompt_tokens(short), 10)
            return counted, chat_engine._lock.locked()  # still generating: not waited for
        finally:
            await stream.aclose()

    counted, still_generating = asyncio.run(scenario())
    assert counted > 0
    assert still_generating


# --- #4 v3 request ids fill the replay cache; one tenant must not deny another ------------------------


def test_a_tenant_flooding_v3_requests_does_not_deny_another_tenant(
    tmp_path: Path, node_registry: EngineRegistry, gateway_key: Ed25519PrivateKey
) -> None:
    # A total of 8 live ids, 3 per tenant: without partitions tenant 1 alone fills the node.
    server, node = start_node(
        tmp_path,
        node_registry,
        gateway_keys=[public_b64(gateway_key)],
        replay_max_entries=8,
        replay_max_per_tenant=3,
    )
    url = f"{node.url}{CONFIDENTIAL_EMBED}"
    with server:
        replay = server.server.config.app.state.node.replay  # type: ignore[union-attr]
        # 1. Authentic envelopes of garbage never enter the cache.
        for _ in range(10):
            raw = v3_envelope(node, b"not json at all", CONFIDENTIAL_EMBED, stack=1)
            response = post(url, raw, ticket(gateway_key, raw, stack=1))
            assert response.status_code == 400 and code_of(response) == "INVALID_BODY"
        assert len(replay) == 0
        # 2. Authentic, parseable requests that fail their budget fill tenant 1's share only.
        codes = []
        for _ in range(10):
            raw = v3_envelope(
                node, {"model": EMBED, "input": "x " * 400}, CONFIDENTIAL_EMBED, stack=1, units=5
            )
            response = post(url, raw, ticket(gateway_key, raw, stack=1))
            codes.append((response.status_code, code_of(response)))
        assert codes[:3] == [(402, "BALANCE_ERROR")] * 3
        assert codes[3:] == [(429, "TOO_MANY_REQUESTS")] * 7
        # 3. Tenant 2 is served all the while.
        for _ in range(3):
            raw = v3_envelope(node, {"model": EMBED, "input": "hello"}, CONFIDENTIAL_EMBED, stack=2)
            response = post(url, raw, ticket(gateway_key, raw, stack=2))
            assert response.status_code == 200, response.text


def test_replay_partitions_per_tenant_in_redis_across_processes(redis_prefix: str) -> None:
    now = time.time()

    async def scenario() -> None:
        a = RedisReplayCache(REDIS_URL, redis_prefix, max_per_tenant=3)
        b = RedisReplayCache(REDIS_URL, redis_prefix, max_per_tenant=3)
        try:
            for i in range(3):
                cache = a if i % 2 else b
                assert await cache.check_and_add(bytes([i + 1]), now + 30, now, tenant=7)
            for cache in (a, b):
                with pytest.raises(TooManyRequests):
                    await cache.check_and_add(b"\x10", now + 30, now, tenant=7)
            assert not await b.check_and_add(b"\x01", now + 30, now, tenant=7)  # replay wins
            assert await a.check_and_add(b"\x01", now + 30, now, tenant=8)  # another tenant
            assert not await b.check_and_add(b"\x01", now + 30, now, tenant=8)
            # Expired ids free the tenant's share (the window passed).
            assert await a.check_and_add(b"\x20", now + 90, now + 31, tenant=7)
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


# --- #5 running receipts count tokens, not chunks ------------------------------------------


def test_running_receipts_carry_tokens_when_chunks_carry_several(
    upstream_node: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cadence of 2 chunks, so this short stream has several running receipts, and the engine
    # tokenizes what it relays every 2 content chunks (the default is RUNNING_RECEIPT_CHUNKS).
    monkeypatch.setattr(config, "RUNNING_RECEIPT_CHUNKS", 2)
    body = chat_body("up-chat", max_tokens=40, stream=True)
    body["messages"] = [
        {
            "role": "user",
            "content": "Write a very long story about a dragon. Use at least 1000 words.",
        }
    ]
    lines = stream_lines(f"{upstream_node.url}/v1/chat/completions", json.dumps(body).encode())
    signed = receipts(lines, upstream_node)
    running = [r for r in signed if not r.final]
    final = [r for r in signed if r.final]
    chunks = [
        json.loads(line[6:])
        for line in lines
        if line.startswith("data: {") and '"content":"' in line
    ]
    assert len(final) == 1 and len(running) >= 2
    produced = final[0].completion_tokens
    assert produced >= 8
    # Each chunk carries ~4 tokens: the running count follows the tokens, not the chunks (up to
    # the one batch not yet tokenized).
    assert running[-1].completion_tokens >= 2 * len(chunks)
    assert 0.75 * produced <= running[-1].completion_tokens <= produced + len(chunks)
    counts = [r.completion_tokens for r in running]
    assert counts == sorted(counts)
    assert all(r.compute_units == r.prompt_tokens + r.completion_tokens for r in running)


def test_an_upstream_stream_whose_reported_usage_passes_the_budget_is_stopped(
    tmp_path: Path, chat_engine: Any, embedding_engine: Any
) -> None:
    overrunning = create_openai_stand_in(
        chat_engine, embedding_engine, continuous_usage=True, ignore_max_tokens=True
    )
    with ServerThread(overrunning) as upstream:
        registry = EngineRegistry()
        registry.add(make_upstream_engine("chat", "up-chat", upstream.url, upstream_model=CHAT))
        server, node = start_node(tmp_path, registry, default_units=60)
        with server:
            body = chat_body("up-chat", max_tokens=40, stream=True)
            body["messages"] = [{"role": "user", "content": "Write a long story about the sea."}]
            lines = stream_lines(f"{node.url}/v1/chat/completions", json.dumps(body).encode())
            signed = receipts(lines, node)
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "ENGINE_ERROR"
    assert "passed the request's 60 compute units" in events[-1]["error"]["message"]
    assert signed[-1].final and sum(r.final for r in signed) == 1
    assert all(r.compute_units <= 60 for r in signed)
    assert signed[-1].compute_units == 60  # charged the budget, never the overrun


def test_running_receipts_count_the_embedded_engines_tokens_exactly(node: RunningNode) -> None:
    body = chat_body(CHAT, max_tokens=24, stream=True)
    lines = stream_lines(f"{node.url}/v1/chat/completions", json.dumps(body).encode())
    signed = receipts(lines, node)
    running, final = [r for r in signed if not r.final], [r for r in signed if r.final]
    assert len(final) == 1 and running
    # The last running receipt lags the final count by less than the cadence: what a client that
    # hung up just before the end would not pay.
    lag = final[0].completion_tokens - running[-1].completion_tokens
    assert 0 <= lag < config.RUNNING_RECEIPT_CHUNKS


def test_at_a_cadence_of_one_chunk_running_receipts_are_exact(
    node: RunningNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "RUNNING_RECEIPT_CHUNKS", 1)
    body = chat_body(CHAT, max_tokens=24, stream=True)
    lines = stream_lines(f"{node.url}/v1/chat/completions", json.dumps(body).encode())
    signed = receipts(lines, node)
    running, final = [r for r in signed if not r.final], [r for r in signed if r.final]
    assert len(final) == 1 and running
    assert running[-1].completion_tokens == final[0].completion_tokens


def test_running_receipts_come_at_the_cadence_and_never_charge_more_than_sent(
    upstream_node: RunningNode,
) -> None:
    body = chat_body("up-chat", max_tokens=200, stream=True)
    body["messages"] = [{"role": "user", "content": "Write a very long story about a dragon."}]
    lines = stream_lines(f"{upstream_node.url}/v1/chat/completions", json.dumps(body).encode())
    signed = receipts(lines, upstream_node)
    running, final = [r for r in signed if not r.final], [r for r in signed if r.final]
    events = [line for line in lines if line.startswith("data: {")]
    assert len(final) == 1 and 1 <= len(running) < len(events)
    # Between two receipts at most RUNNING_RECEIPT_CHUNKS events (the time bound may cut sooner).
    gaps, since = [], 0
    for line in lines:
        if line.startswith("data: {"):
            since += 1
        elif line.startswith(": veil-receipt "):
            gaps.append(since)
            since = 0
    assert gaps[0] == 1  # the first chunk is always followed by a receipt: the prompt is paid
    assert max(gaps) <= config.RUNNING_RECEIPT_CHUNKS
    counts = [r.completion_tokens for r in running]
    assert counts == sorted(counts) and counts[-1] <= final[0].completion_tokens


# --- #1 (node part) the deadline stops the engine; the receipt signs what was produced ------


def test_a_stream_past_the_node_deadline_is_stopped_with_a_final_receipt(
    tmp_path: Path, node_registry: EngineRegistry, chat_engine: LlamaCppChatEngine
) -> None:
    server, node = start_node(tmp_path, node_registry, request_timeout_seconds=1.5)
    with server:
        body = chat_body(CHAT, max_tokens=1500, stream=True)
        body["messages"] = [{"role": "user", "content": "Write a very long story about the sea."}]
        started = time.monotonic()
        lines = stream_lines(f"{node.url}/v1/chat/completions", json.dumps(body).encode())
        elapsed = time.monotonic() - started
        wait_until(lambda: not chat_engine._lock.locked(), 10, "the engine to stop")
        signed = receipts(lines, node)
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "ENGINE_ERROR"
    assert "deadline" in events[-1]["error"]["message"]
    final = [r for r in signed if r.final]
    assert len(final) == 1 and signed[-1].final
    running = [r for r in signed if not r.final]
    assert final[0].completion_tokens >= running[-1].completion_tokens > 0
    assert final[0].completion_tokens < 1500
    assert elapsed < 10


@pytest.mark.parametrize("whose", ["node timeout", "ticket deadline"])
def test_a_whole_completion_past_the_deadline_answers_what_was_produced(
    tmp_path: Path, node_registry: EngineRegistry, gateway_key: Ed25519PrivateKey, whose: str
) -> None:
    timeout = {"request_timeout_seconds": 1.5} if whose == "node timeout" else {}
    server, node = start_node(
        tmp_path, node_registry, gateway_keys=[public_b64(gateway_key)], **timeout
    )
    with server:
        body = chat_body(CHAT, max_tokens=1500)
        body["messages"] = [{"role": "user", "content": "Write a very long story about the sea."}]
        raw = json.dumps(body).encode()
        deadline = time.time() + 1.5 if whose == "ticket deadline" else None
        started = time.monotonic()
        token = ticket(gateway_key, raw, deadline=deadline)
        response = post(f"{node.url}/v1/chat/completions", raw, token)
        elapsed = time.monotonic() - started
        signing_key = node.signing_key()
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["finish_reason"] == "length"
    receipt = verify_token(response.headers[RECEIPT_HEADER], UsageReceipt, [signing_key])
    assert receipt.final
    assert 0 < receipt.completion_tokens == answer["usage"]["completion_tokens"] < 1500
    assert elapsed < 10


# --- #8 ticket replay state is shared by a node's processes and bounded ----------------------
# (the bound itself: tests/node/test_tickets.py; the per-tenant shares: tests/node/test_replay.py)


def test_a_replayed_ticket_to_a_second_node_process_is_refused(
    tmp_path: Path,
    node_registry: EngineRegistry,
    gateway_key: Ed25519PrivateKey,
    redis_prefix: str,
) -> None:
    shared = {
        "gateway_keys": [public_b64(gateway_key)],
        "replay_cache": REDIS_URL,
        "replay_prefix": redis_prefix,
    }
    first_server, first = start_node(tmp_path, node_registry, **shared)
    second_server, second = start_node(tmp_path, node_registry, **shared)  # same node, 2nd process
    with first_server, second_server:
        raw = json.dumps({"model": EMBED, "input": "paid once"}).encode()
        token = ticket(gateway_key, raw)
        assert post(f"{first.url}/v1/embeddings", raw, token).status_code == 200
        replayed = post(f"{second.url}/v1/embeddings", raw, token)
        assert replayed.status_code == 409, replayed.text
        assert code_of(replayed) == "REPLAYED"
        again = post(f"{first.url}/v1/embeddings", raw, token)
        assert again.status_code == 409 and code_of(again) == "REPLAYED"
