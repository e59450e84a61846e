"""A node as the gateway sees it, served for real on loopback, that answers as a test scripts it.

The gateway never opens what it forwards, so to test its forwarding, registry and routes what it
needs from a node is the node's HTTP contract: ``/v1/keys``, ``/v1/models``, ``/health``,
``/v1/attestation``, a ``401 AUTH_ERROR`` to a paid request without a ticket, and answers carrying
usage receipts signed with the node's Ed25519 key. This stand-in keeps that contract with the real
wire code (``veil.wire.tickets``) and can also break it on demand (hang past the deadline, cut a
stream, answer garbage, sign for another request), which a real node cannot be made to do. The
end-to-end tests (``tests/e2e``) run the gateway against real nodes and real models.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from tests.servers import ServerThread
from veil.attestation.evidence import report_data
from veil.wire.keyid import key_id
from veil.wire.tickets import (
    RECEIPT_COMMENT,
    RECEIPT_HEADER,
    RECEIPTS_PATH,
    TICKET_HEADER,
    ReceiptQuery,
    SignatureInvalid,
    Ticket,
    UsageReceipt,
    envelope_digest,
    sign_token,
    verify_token,
)

CHAT = "stand-in-chat"
EMBED = "stand-in-embed"


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass
class Seen:
    """One paid request the stand-in received: its path, the ticket and the body's bytes."""

    path: str
    ticket: Ticket
    body: bytes


@dataclass
class NodeStandIn:
    """Script what the node answers by setting attributes (from the test's thread) before a call.

    ``answer``: ``json`` (200 and a signed receipt for ``units``), ``error`` (``status`` with the
    error shape, a receipt only if ``units``), ``garbage`` (200, signed, not JSON), ``stream``
    (``chunks`` SSE events, each followed by a cumulative receipt), ``cut`` (a stream that breaks
    after its first event and receipt), ``runaway`` (a stream whose second line never ends),
    ``foreign`` (200 signed for another request), ``bloated`` (200, signed, 2 MiB of JSON),
    ``endless`` (a stream whose first line never ends).
    ``delay``: seconds to wait before answering a paid request. ``split``: a stream is written
    in pieces of that many bytes (0: an event or a receipt a write), so lines arrive cut.
    """

    gateway_key: Ed25519PublicKey | None
    models: dict[str, str] = field(default_factory=lambda: {CHAT: "chat", EMBED: "embeddings"})
    answer: str = "json"
    units: int = 7
    status: int = 400
    chunks: int = 3
    delay: float = 0.0
    split: int = 0
    healthy: bool = True
    require_tickets: bool = True  # False: a misconfigured node that serves anyone for free
    signing_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    public_key: bytes = field(default_factory=lambda: os.urandom(32))
    key_id: str = "0123456789abcdef"
    # Set: a stream waits for it after its first event (so a test can act while it is open).
    gate: threading.Event | None = None
    evidence_key: bytes | None = None  # the X25519 key the evidence names (default: public_key)
    # veil-v3: the post-quantum key listed at /v1/keys (None: a node without one), and the one
    # the evidence binds (default: kem_public_key)
    kem_public_key: bytes | None = None
    evidence_kem_key: bytes | None = None
    seen: list[Seen] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # ticket ids whose answer was fully sent
    # POST /v1/receipts (a gateway recovering orphans): ``kept`` answers these tokens by ticket
    # id; ``receipts`` scripts the answer: ``kept``, ``status`` (500), ``huge`` (past what a
    # gateway reads), ``garbage`` (not JSON). ``queries``: the ticket ids each query named.
    kept: dict[str, str] = field(default_factory=dict)
    receipts: str = "kept"
    queries: list[list[str]] = field(default_factory=list)

    def receipt(self, ticket_id: str, units: int, *, final: bool = True) -> str:
        receipt = UsageReceipt(
            ticket_id=ticket_id,
            model=CHAT,
            prompt_tokens=2,
            completion_tokens=units,
            compute_units=units,
            final=final,
        )
        return sign_token(receipt, self.signing_key)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> Response:
            return JSONResponse({"status": "ok"}, status_code=200 if self.healthy else 503)

        @app.get("/v1/keys")
        async def keys() -> Response:
            entry = {"key_id": self.key_id, "public_key": b64(self.public_key)}
            if self.kem_public_key is not None:
                entry["kem"] = "mlkem768-x25519"
                entry["kem_public_key"] = b64(self.kem_public_key)
                entry["kem_key_id"] = key_id(self.kem_public_key)
            return JSONResponse(
                {"keys": [entry], "signing_public_key": b64(raw_public(self.signing_key))}
            )

        @app.get("/v1/models")
        async def models() -> Response:
            return JSONResponse({"data": [{"id": m, "kind": k} for m, k in self.models.items()]})

        @app.get("/v1/attestation")
        async def attestation(nonce: str) -> Response:
            # A real "none" bundle (no TEE), as a development node makes one: it binds the
            # evidence key, the signing key and the caller's nonce.
            key = self.evidence_key or self.public_key
            raw_nonce = base64.b64decode(nonce)
            kem = self.evidence_kem_key or self.kem_public_key
            bound = report_data(key, raw_public(self.signing_key), raw_nonce, kem_public_key=kem)
            document = {
                "format": "none",
                "report_data": b64(bound),
                "nonce": nonce,
                "x25519_public_key": b64(key),
                "ed25519_public_key": b64(raw_public(self.signing_key)),
                "warning": "no TEE: development only",
            }
            if kem is not None:
                document["kem_public_key"] = b64(kem)
            return JSONResponse(document)

        @app.post(RECEIPTS_PATH)
        async def receipts(request: Request) -> Response:
            token = (await request.json()).get("query")
            try:
                query = verify_token(
                    token, ReceiptQuery, [self.gateway_key] if self.gateway_key else []
                )
            except SignatureInvalid:
                return error(401, "AUTH_ERROR", "receipt query refused")
            self.queries.append(list(query.ticket_ids))
            if self.receipts == "status":
                return error(500, "INTERNAL_ERROR", "the node is unwell")
            if self.receipts == "huge":
                return JSONResponse({"receipts": {"x" * 16: "y" * (3 * 1024 * 1024)}})
            if self.receipts == "garbage":
                return Response(b"\x00not json", media_type="application/json")
            found = {t: self.kept[t] for t in query.ticket_ids if t in self.kept}
            return JSONResponse({"receipts": found})

        @app.post("/v1/{path:path}")
        async def paid(path: str, request: Request) -> Response:
            body = await request.body()
            ticket = self._ticket(request.headers.get(TICKET_HEADER), body)
            if ticket is None and not self.require_tickets:
                return JSONResponse({"served": "for free"})
            if ticket is None:
                return error(401, "AUTH_ERROR", "a gateway ticket is required")
            self.seen.append(Seen(f"/v1/{path}", ticket, body))
            if self.delay:
                await asyncio.sleep(self.delay)
            return self._answer(ticket.ticket_id)

        return app

    def _ticket(self, token: str | None, body: bytes) -> Ticket | None:
        if token is None or self.gateway_key is None:
            return None
        try:
            ticket = verify_token(token, Ticket, [self.gateway_key])
        except SignatureInvalid:
            return None
        return ticket if ticket.envelope_sha256 == envelope_digest(body) else None

    def _answer(self, ticket_id: str) -> Response:
        signed = {RECEIPT_HEADER: self.receipt(ticket_id, self.units)}
        if self.answer == "json":
            self.finished.append(ticket_id)
            return JSONResponse({"answer": "sealed bytes"}, headers=signed)
        if self.answer == "foreign":
            return JSONResponse(
                {"answer": "x"}, headers={RECEIPT_HEADER: self.receipt("f" * 32, self.units)}
            )
        if self.answer == "garbage":
            return Response(b"\x00not json", media_type="application/json", headers=signed)
        if self.answer == "bloated":  # signed, JSON, and far larger than any answer
            return JSONResponse({"answer": "x" * (2 << 20)}, headers=signed)
        if self.answer == "error":
            headers = signed if self.units else {}
            return error(self.status, "INVALID_BODY", "the node refuses this", headers)
        return StreamingResponse(self._pieces(ticket_id), media_type="text/event-stream")

    async def _pieces(self, ticket_id: str) -> AsyncIterator[bytes]:
        async for data in self._events(ticket_id):
            if not self.split:
                yield data
                continue
            for at in range(0, len(data), self.split):
                yield data[at : at + self.split]
                await asyncio.sleep(0)  # let each piece go out on its own

    async def _events(self, ticket_id: str) -> AsyncIterator[bytes]:
        if self.answer == "endless":  # a first line that never ends, no receipt before it
            yield b"data: "
            while True:
                yield b"x" * 65536
                await asyncio.sleep(0)
        if self.answer == "runaway":  # one event and its receipt, then a line that never ends
            yield b'data: {"chunk": 1}\n\n'
            yield RECEIPT_COMMENT + self.receipt(ticket_id, self.units, final=False).encode()
            yield b"\n\ndata: "
            while True:
                yield b"x" * 65536
                await asyncio.sleep(0)
        for n in range(1, self.chunks + 1):
            yield f'data: {{"chunk": {n}}}\n\n'.encode()
            token = self.receipt(ticket_id, n * self.units, final=n == self.chunks)
            yield RECEIPT_COMMENT + token.encode() + b"\n\n"
            if self.gate is not None and n == 1:
                await anyio.to_thread.run_sync(self.gate.wait, 30)
            if self.answer == "cut":
                raise ConnectionResetError("the stand-in cuts its stream")  # uvicorn hangs up
        yield b"data: [DONE]\n\n"
        self.finished.append(ticket_id)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


@contextlib.contextmanager
def serve_stand_in(
    gateway_key: Ed25519PrivateKey | None, **script: Any
) -> Iterator[tuple[NodeStandIn, str]]:
    """A stand-in node on a real uvicorn on loopback that accepts tickets of ``gateway_key``."""
    node = NodeStandIn(None if gateway_key is None else gateway_key.public_key(), **script)
    with ServerThread(node.app()) as server:
        yield node, server.url
