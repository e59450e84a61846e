"""Plaintext canary: a unique string sent through every confidential route must never reach
anything the gateway operator can read.

Topology, all real servers on loopback::

    client --> [client-side recording proxy] --> gateway --> [node-side recording proxy] --> node
                                                   |                                          |
                                               ledger.db                       embedded SmolLM2 + MiniLM,
                                                                          images stand-in, echo upstream

Requests carrying the canary go through every confidential route (chat, streamed chat, embeddings,
images) in both suites (atoma-v1 and veil-v3). Chat goes both to the embedded model and to a small
echo upstream whose answer repeats the prompt, so the canary travels in both directions.

The canary — raw, hex, and base64 at each of the three byte alignments (standard and URL-safe
alphabets) — must appear nowhere in: every byte either proxy saw, every log record of every logger
at DEBUG, the process's stdout/stderr (file-descriptor level: llama.cpp writes there), the ledger
database files (``ledger.db``, ``-wal``, ``-shm``; live and after shutdown), every file under the
gateway's and the node's data directories, and both ``/metrics`` pages.

Positive controls make the test able to fail for the right reason: the needles are checked to find
the canary where it is; the echo answers the client decrypted contain it; and the node's own keys,
applied to the exact envelopes the gateway forwarded, recover it.

The plain (non-confidential) routes document the opposite on purpose: their bytes carry the canary
through the gateway in clear, but it still reaches no log, no database and no metric.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.e2e.conftest import Deployment
from tests.engines.openai_stand_in import create_openai_stand_in
from tests.hostile.conftest import CHAT, EMBED, LogCapture
from tests.node.conftest import RunningNode, start_node
from tests.servers import ServerThread, wait_until
from veil.config import GatewaySettings
from veil.engines import (
    LlamaCppChatEngine,
    SentenceTransformerEmbeddingEngine,
    make_upstream_engine,
)
from veil.gateway.app import create_gateway_app
from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.hazmat import v1, v3
from veil.node.pipeline import open_request
from veil.node.replay import make_replay_cache
from veil.node.service import EngineRegistry
from veil.wire.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse
from veil.wire.tickets import TICKET_HEADER

pytestmark = pytest.mark.slow

IMAGES = "stand-in-images"
ECHO = "echo-chat"
ROUTES = {"chat": "chat/completions", "embeddings": "embeddings", "images": "images/generations"}


# --- the needles ---------------------------------------------------------------------------------


def needles(canary: str) -> dict[str, bytes]:
    """Every form the canary could leak in: raw, hex, and base64 of ``prefix + canary`` for
    prefixes of 0, 1 and 2 bytes (standard and URL-safe), cut to the characters that depend on
    canary bytes only."""
    raw = canary.encode()
    found = {"raw": raw, "hex": raw.hex().encode()}
    for prefix in (0, 1, 2):
        encoded = base64.b64encode(b"\x00" * prefix + raw)
        first_group = -(-prefix // 3)  # the first 3-byte group holding no prefix byte
        last_group = (prefix + len(raw)) // 3  # groups past this one hold padding
        core = encoded[4 * first_group : 4 * last_group]
        found[f"base64+{prefix}"] = core
        found[f"base64url+{prefix}"] = core.replace(b"+", b"-").replace(b"/", b"_")
    return found


def leaks(canary: str, haystack: bytes) -> list[str]:
    """The forms of ``canary`` found in ``haystack`` (raw and hex compared case-insensitively)."""
    lowered = haystack.lower()
    hits = []
    for name, needle in needles(canary).items():
        if name in ("raw", "hex"):
            if needle.lower() in lowered:
                hits.append(name)
        elif needle in haystack:
            hits.append(name)
    return hits


# --- a recording reverse proxy -------------------------------------------------------------------


@dataclass
class Exchange:
    method: str
    target: bytes
    request_headers: list[tuple[bytes, bytes]]
    request_body: bytes
    status: int = 0
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    response_body: bytearray = field(default_factory=bytearray)

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode()

    def request_bytes(self) -> bytes:
        head = b"".join(k + b": " + v + b"\r\n" for k, v in self.request_headers)
        return (
            self.method.encode() + b" " + self.target + b"\r\n" + head + b"\r\n" + self.request_body
        )

    def response_bytes(self) -> bytes:
        head = b"".join(k + b": " + v + b"\r\n" for k, v in self.response_headers)
        return str(self.status).encode() + b"\r\n" + head + b"\r\n" + bytes(self.response_body)

    def wire(self) -> bytes:
        return self.request_bytes() + b"\r\n" + self.response_bytes()


HOP_BY_HOP = {b"host", b"content-length", b"connection", b"keep-alive", b"transfer-encoding"}


class RecordingProxy:
    """An ASGI reverse proxy to ``upstream`` that keeps every byte of every exchange, both ways.

    Bodies are recorded after HTTP framing (de-chunked), so a needle cannot hide across a chunk
    boundary; the upstream's bytes are relayed raw (no content decoding) as they arrive.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self._client is not None:
                        await self._client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        target = scope["raw_path"] + (
            b"?" + scope["query_string"] if scope["query_string"] else b""
        )
        exchange = Exchange(scope["method"], target, list(scope["headers"]), bytes(body))
        self.exchanges.append(exchange)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=120)
        request = self._client.build_request(
            scope["method"],
            self.upstream + target.decode("latin-1"),
            headers=[(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP],
            content=bytes(body),
        )
        upstream = await self._client.send(request, stream=True)
        try:
            exchange.status = upstream.status_code
            exchange.response_headers = list(upstream.headers.raw)
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status_code,
                    "headers": [
                        (k, v) for k, v in upstream.headers.raw if k.lower() not in HOP_BY_HOP
                    ],
                }
            )
            async for chunk in upstream.aiter_raw():
                exchange.response_body += chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await upstream.aclose()


# --- an upstream chat server that repeats the prompt ---------------------------------------------


def create_echo_upstream() -> FastAPI:
    """A TEST SERVER: an OpenAI-compatible chat upstream whose answer is the last user message,
    in 8-character pieces (one "token" each), so a prompt travels back in the sealed answer."""
    app = FastAPI()

    def prompt_of(body: dict[str, Any]) -> str:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        content = users[-1].get("content") if users else ""
        return content if isinstance(content, str) else ""

    def count(messages: list[dict[str, Any]]) -> int:
        return sum(len(str(m.get("content") or "").encode()) + 8 for m in messages) + 32

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": ECHO, "object": "model"}]}

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        body = await request.json()
        if "messages" in body:
            n = count(body["messages"])
        else:
            n = len(str(body.get("prompt", "")).encode()) + 4
        return JSONResponse({"count": n, "max_model_len": 4096, "tokens": list(range(n))})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        text = prompt_of(body)
        pieces = [text[i : i + 8] for i in range(0, len(text), 8)][: int(body["max_tokens"])]
        usage = {
            "prompt_tokens": count(body["messages"]),
            "completion_tokens": len(pieces),
            "total_tokens": count(body["messages"]) + len(pieces),
        }
        head = {"id": "chatcmpl-echo", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(pieces)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse(
                {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            )

        def event(choices: list[dict[str, Any]], **more: Any) -> str:
            return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': choices, **more})}\n\n"

        async def events() -> AsyncIterator[str]:
            for piece in pieces:
                yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
            yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
            yield event([], usage=usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# --- process output at the file-descriptor level -------------------------------------------------


@contextlib.contextmanager
def captured_output(path: Path) -> Iterator[None]:
    """Send fds 1 and 2 (C libraries such as llama.cpp) and ``sys.stdout``/``sys.stderr`` to
    ``path`` until the block ends; everything is restored afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    old_out, old_err = sys.stdout, sys.stderr
    path.write_bytes(b"")
    # Both in append mode, so neither overwrites what the other wrote.
    with open(path, "ab") as sink, open(path, "a", encoding="utf-8", errors="replace") as text:
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            sys.stdout = sys.stderr = text
            yield
        finally:
            text.flush()
            sys.stdout, sys.stderr = old_out, old_err
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request the client made: what it was and what it decrypted."""

    suite: str
    route: str
    model: str
    stream: bool
    decrypted: list[bytes]


@dataclass
class Evidence:
    canary: str
    plain_canary: str
    sent: list[Sent]
    client_side: RecordingProxy
    node_side: RecordingProxy
    log_text: str
    output: bytes
    metrics: dict[str, bytes]
    files_live: dict[str, bytes]
    files_stopped: dict[str, bytes]
    opened_by_node: list[tuple[str, bytes]]  # (path, what the node's keys recover)
    plain_answers: list[httpx.Response]


def read_tree(*roots: Path) -> dict[str, bytes]:
    return {
        str(path): path.read_bytes() for root in roots for path in root.rglob("*") if path.is_file()
    }


def confidential_body(model: str, canary: str, stream: bool) -> dict[str, Any]:
    if model == CHAT:
        return {
            "model": CHAT,
            "max_tokens": 3,
            "stream": stream,
            "user": canary,
            "messages": [
                {"role": "system", "content": f"Remember {canary}."},
                {"role": "user", "content": f"Please repeat: {canary}"},
            ],
        }
    if model == ECHO:
        return {
            "model": ECHO,
            "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": f"Please repeat: {canary}"}],
        }
    if model == EMBED:
        return {"model": EMBED, "input": [canary, f"a sentence with {canary} inside"]}
    return {"model": IMAGES, "prompt": f"a picture of {canary}", "size": "8x8", "n": 1}


ROUTE_OF = {CHAT: "chat", ECHO: "chat", EMBED: "embeddings", IMAGES: "images"}
UNITS = {CHAT: 512, ECHO: 512, EMBED: 256, IMAGES: 64}


def sse_payloads(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def send_confidential(
    deployment: Deployment, key: str, suite: str, model: str, stream: bool, canary: str
) -> Sent:
    """Lock, seal, send through the client-side proxy, and decrypt every sealed message."""
    locked = deployment.lock(key, model, max_num_tokens=UNITS[model])
    assert locked.status_code == 200, locked.text
    lock = locked.json()
    route = f"/v1/confidential/{ROUTES[ROUTE_OF[model]]}"
    body = json.dumps(confidential_body(model, canary, stream)).encode()
    stream_flag = stream if ROUTE_OF[model] == "chat" else None
    session: v1.Session | v3.ClientSession
    if suite == "v1":
        envelope, session = v1.seal_request(
            base64.b64decode(lock["public_key"]),
            body,
            model_name=model,
            stack_small_id=lock["stack_small_id"],
            num_compute_units=UNITS[model],
            stream=stream_flag,
        )
    else:
        assert lock["kem"] == v3.Kem.HYBRID.value
        envelope, session = v3.seal_request(
            base64.b64decode(lock["kem_public_key"]),
            lock["kem_key_id"],
            body,
            node_signing_key=base64.b64decode(lock["node_signing_public_key"]),
            endpoint=route,
            model_name=model,
            stack_small_id=lock["stack_small_id"],
            num_compute_units=UNITS[model],
            stream=stream_flag,
            reservation_id=lock["reservation_id"],
        )
    # veil-v3 names its lock's reservation, as Veil's client does; atoma-v1 knows no handle.
    handle = lock["reservation_id"] if suite == "v3" else None
    response = deployment.post(key, route, envelope, handle)
    assert response.status_code == 200, response.text
    messages = sse_payloads(response.text) if stream else [response.json()]
    sealed = [ConfidentialComputeResponse.model_validate(m) for m in messages]
    if isinstance(session, v1.Session):
        decrypted = [v1.open_response(session, s) for s in sealed]
    else:
        decrypted = [session.open(s) for s in sealed]
        session.finish()
    return Sent(suite, route, model, stream, decrypted)


def open_as_the_node(node: RunningNode, exchange: Exchange) -> bytes:
    """What the node decrypts from the bytes the gateway forwarded (with a fresh replay cache)."""
    envelope = ConfidentialComputeRequest.model_validate_json(exchange.request_body)
    endpoint = next(kind for kind, path in ROUTES.items() if exchange.path.endswith(path))
    opened = asyncio.run(
        open_request(
            envelope,
            endpoint,  # type: ignore[arg-type]
            node.keyring,
            make_replay_cache("memory"),
            path=exchange.path,
        )
    )
    return opened.request.model_dump_json().encode()


def send_plain(deployment: Deployment, key: str, model: str, canary: str) -> httpx.Response:
    body = confidential_body(model, canary, stream=False)
    return httpx.post(
        f"{deployment.url}/v1/{ROUTES[ROUTE_OF[model]]}",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=120,
    )


@pytest.fixture(scope="module")
def evidence(
    tmp_path_factory: pytest.TempPathFactory,
    chat_engine: LlamaCppChatEngine,
    embedding_engine: SentenceTransformerEmbeddingEngine,
) -> Evidence:
    tmp = tmp_path_factory.mktemp("canary")
    canary = f"canary-{uuid.uuid4()}"
    plain_canary = f"plain-canary-{uuid.uuid4()}"

    stand_in = ServerThread(create_openai_stand_in(chat_engine, embedding_engine))
    echo = ServerThread(create_echo_upstream())
    registry = EngineRegistry()
    registry.add(chat_engine)
    registry.add(embedding_engine)
    registry.add(make_upstream_engine("images", IMAGES, stand_in.url))
    registry.add(make_upstream_engine("chat", ECHO, echo.url))
    gateway_dir = tmp / "gateway"
    gateway_key = load_or_create_gateway_key(gateway_dir)
    node_server, node = start_node(tmp / "node", registry, gateway_keys=[public_b64(gateway_key)])
    node_side = RecordingProxy(node.url)
    node_proxy = ServerThread(node_side)
    settings = GatewaySettings(
        data_dir=gateway_dir, nodes=[node_proxy.url], expire_interval_seconds=0.2
    )
    admin_keys: list[str] = []
    gateway = ServerThread(
        create_gateway_app(settings, gateway_key, on_admin_key=admin_keys.append)
    )
    client_side = RecordingProxy(gateway.url)
    client_proxy = ServerThread(client_side)
    servers = [stand_in, echo, node_server, node_proxy, gateway, client_proxy]

    deployment = Deployment(
        client_proxy.url, "", [node], gateway_key, printed_keys=admin_keys, gateway_dir=gateway_dir
    )
    logs = LogCapture()  # after every uvicorn.Config exists: they reset their loggers' levels
    output_path = tmp / "process-output.log"
    sent: list[Sent] = []
    with contextlib.ExitStack() as stack:
        logs.open()
        stack.callback(logs.close)
        stack.enter_context(captured_output(output_path))
        for server in servers:
            stack.enter_context(server)
        deployment.started()
        logs.refresh()
        key, stacks = deployment.new_user(
            "canary-user", {CHAT: 10**6, ECHO: 10**6, EMBED: 10**6, IMAGES: 10**6}
        )
        for suite in ("v1", "v3"):
            for model, stream in (
                (CHAT, False),
                (CHAT, True),
                (ECHO, False),
                (ECHO, True),
                (EMBED, False),
                (IMAGES, False),
            ):
                sent.append(send_confidential(deployment, key, suite, model, stream, canary))
        plain_answers = [
            send_plain(deployment, key, m, plain_canary) for m in (CHAT, ECHO, EMBED, IMAGES)
        ]

        def settled() -> bool:
            return all(deployment.stack(s)["reserved_units"] == 0 for s in stacks.values())

        wait_until(settled, 30, "settlement of every request")
        metrics = {
            "gateway": httpx.get(f"{gateway.url}/metrics", timeout=30).content,
            "node": httpx.get(f"{node.url}/metrics", timeout=30).content,
        }
        files_live = read_tree(gateway_dir, tmp / "node")
    # Everything stopped: the ledger's WAL is checkpointed into ledger.db.
    files_stopped = read_tree(gateway_dir, tmp / "node")
    # Forwarded requests carry a ticket; the gateway's unticketed probe of the node does not.
    node_bound = [
        e
        for e in node_side.exchanges
        if e.path.startswith("/v1/confidential/")
        and any(k.lower() == TICKET_HEADER.encode() for k, _ in e.request_headers)
    ]
    return Evidence(
        canary=canary,
        plain_canary=plain_canary,
        sent=sent,
        client_side=client_side,
        node_side=node_side,
        log_text=logs.text,
        output=output_path.read_bytes(),
        metrics=metrics,
        files_live=files_live,
        files_stopped=files_stopped,
        opened_by_node=[(e.path, open_as_the_node(node, e)) for e in node_bound],
        plain_answers=plain_answers,
    )


# --- positive controls ---------------------------------------------------------------------------


def test_the_needles_find_the_canary_in_every_encoding() -> None:
    canary = f"canary-{uuid.uuid4()}"
    raw = canary.encode()
    for prefix in (b"", b"x", b"xy", b"xyz"):
        assert leaks(canary, b"..." + base64.b64encode(prefix + raw + b"tail") + b"...")
        assert leaks(canary, base64.urlsafe_b64encode(prefix + raw))
    assert leaks(canary, b"<" + raw.hex().upper().encode() + b">")
    assert leaks(canary, b"xx" + raw.upper() + b"yy")
    other = f"canary-{uuid.uuid4()}".encode()
    # Separated: a canary cut short followed by another one's "c" would spell the canary again
    # whenever it ends in "c" (one run in sixteen).
    assert not leaks(
        canary, base64.b64encode(raw[:-3]) + b"|" + raw[:-1] + b"|" + other + other.hex().encode()
    )


def test_every_confidential_route_ran_in_both_suites(evidence: Evidence) -> None:
    ran = {(s.suite, s.route, s.model, s.stream) for s in evidence.sent}
    for suite in ("v1", "v3"):
        for route in ROUTES.values():
            assert any(r[0] == suite and r[1] == f"/v1/confidential/{route}" for r in ran), route
        assert (suite, "/v1/confidential/chat/completions", CHAT, True) in ran
    assert all(s.decrypted for s in evidence.sent)


def test_the_client_decrypted_the_canary(evidence: Evidence) -> None:
    """The canary really travelled: echoed answers carry it back to the client, and the node's
    keys recover it from every envelope the gateway forwarded."""
    echoed = [s for s in evidence.sent if s.model == ECHO]
    assert len(echoed) == 4  # v1/v3 x whole/streamed
    for sent in echoed:
        answer = b"".join(sent.decrypted)
        texts = []
        for message in sent.decrypted:
            document = json.loads(message)
            for choice in document.get("choices", []):
                part = choice.get("message") or choice.get("delta") or {}
                texts.append(part.get("content") or "")
        assert evidence.canary in "".join(texts), (sent.suite, sent.stream, answer[:300])
    forwarded = sorted(path for path, _ in evidence.opened_by_node)
    assert forwarded == sorted(s.route for s in evidence.sent)
    for path, plaintext in evidence.opened_by_node:
        assert "raw" in leaks(evidence.canary, plaintext), path


# --- nothing the gateway operator can read carries it --------------------------------------------


def test_no_byte_the_gateway_sent_or_received_carries_the_canary(evidence: Evidence) -> None:
    assert evidence.client_side.exchanges and evidence.node_side.exchanges
    for side, proxy in (
        ("client<->gateway", evidence.client_side),
        ("gateway<->node", evidence.node_side),
    ):
        for exchange in proxy.exchanges:
            found = leaks(evidence.canary, exchange.wire())
            assert not found, f"{side} {exchange.method} {exchange.path}: {found}"


def test_no_log_record_or_process_output_carries_the_canary(evidence: Evidence) -> None:
    assert "veil.gateway" in evidence.log_text and "uvicorn" in evidence.log_text  # captured
    assert not leaks(evidence.canary, evidence.log_text.encode())
    assert not leaks(evidence.canary, evidence.output)


def test_no_ledger_or_data_file_carries_the_canary(evidence: Evidence) -> None:
    live_names = {Path(name).name for name in evidence.files_live}
    assert "ledger.db" in live_names and "ledger.db-wal" in live_names
    for files in (evidence.files_live, evidence.files_stopped):
        for name, content in files.items():
            assert not leaks(evidence.canary, content), name


def test_no_metric_carries_the_canary(evidence: Evidence) -> None:
    for server, page in evidence.metrics.items():
        assert b"veil_" in page, server
        assert not leaks(evidence.canary, page), server


# --- plain routes: the opposite, by design --------------------------------------------------------


def test_plain_routes_show_the_gateway_plaintext_but_log_and_store_none(
    evidence: Evidence,
) -> None:
    """Non-confidential routes are plaintext to the gateway by the caller's choice: the canary
    crosses both proxies in clear. It still reaches no log, database file, data file or metric."""
    for answer in evidence.plain_answers:
        assert answer.status_code == 200, answer.text
    canary = evidence.plain_canary
    for proxy in (evidence.client_side, evidence.node_side):
        plain = [
            e
            for e in proxy.exchanges
            if e.method == "POST"
            and not e.path.startswith(("/v1/confidential", "/admin", "/v1/nodes"))
        ]
        assert {e.path for e in plain} == {f"/v1/{p}" for p in ROUTES.values()}
        assert all("raw" in leaks(canary, e.request_body) for e in plain)
    echo_answer = next(a for a in evidence.plain_answers if a.json().get("model") == ECHO)
    assert canary in echo_answer.text  # and the answer came back in clear
    assert not leaks(canary, evidence.log_text.encode())
    assert not leaks(canary, evidence.output)
    for files in (evidence.files_live, evidence.files_stopped):
        for name, content in files.items():
            assert not leaks(canary, content), name
    for server, page in evidence.metrics.items():
        assert not leaks(canary, page), server
