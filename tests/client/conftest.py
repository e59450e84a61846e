"""A real deployment for the client tests, and a hostile relay to put between client and gateway.

The deployment is the e2e one (``tests.e2e.conftest.deploy``: a real node and gateway on loopback)
over the session's embedded chat and embeddings engines, plus an images engine
(``UpstreamImageEngine``) pointed at the test stand-in of ``tests.engines.openai_stand_in`` - a
loopback OpenAI-compatible server standing in for a remote images service.

The relay (``HostileRelay``) is an ASGI app that proxies everything to the real gateway and, when
told, does what a hostile gateway or network could do to the answers: flip a ciphertext byte, swap
``response_hash`` or ``signature``, change the usage sent in clear, drop, duplicate or reorder
stream chunks, end a stream early with ``[DONE]``, strip or replay the lock's attestation evidence,
strip the lock's post-quantum key or put its own in, or answer a confidential POST with an error
of its choice without forwarding it. It records every
request body it sees, so tests can also assert what went over the wire.

The nodes here run without a TEE (their evidence has format "none"), so every client that talks to
them passes ``insecure_no_tee=True`` explicitly; that the strict default refuses them is a test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.e2e.conftest import CHAT, EMBED, Deployment, deploy
from tests.engines.openai_stand_in import create_openai_stand_in
from tests.servers import ServerThread
from veil.engines import UpstreamImageEngine
from veil.hazmat.v3 import NodeKemKey
from veil.node.service import EngineRegistry
from veil.wire.envelopes import RESERVATION_HEADER

IMAGES = "stand-in-images"

__all__ = ["CHAT", "EMBED", "IMAGES", "HostileRelay", "Seen"]


@pytest.fixture(scope="module")
def client_deployment(
    tmp_path_factory: pytest.TempPathFactory, chat_engine: Any, embedding_engine: Any
) -> Iterator[Deployment]:
    with ServerThread(create_openai_stand_in(chat_engine, embedding_engine)) as stand_in:
        registry = EngineRegistry()
        registry.add(chat_engine)
        registry.add(embedding_engine)
        registry.add(UpstreamImageEngine(IMAGES, stand_in.url))
        servers, deployed = deploy(tmp_path_factory.mktemp("client-deploy"), [registry])
        with servers[0], servers[1]:
            yield deployed.started()


# -- the hostile relay ------------------------------------------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    body: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _flip_ciphertext(message: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(message["ciphertext"]))
    raw[0] ^= 0x01
    message["ciphertext"] = _b64(bytes(raw))


def _swap_hash(message: dict[str, Any]) -> None:
    message["response_hash"] = _b64(hashlib.blake2b(b"another answer", digest_size=32).digest())


@dataclass
class HostileRelay:
    """Proxy to ``upstream``; ``mode`` says what to do to the next answers (``"pass"``: nothing)."""

    upstream: str
    url: str = ""  # where the relay listens, once started
    mode: str = "pass"
    errors: list[tuple[int, str]] = field(default_factory=list)  # answer the next POSTs with these
    seen: list[Seen] = field(default_factory=list)
    last_signature: str | None = None
    last_evidence: dict[str, Any] | None = None

    def reset(self, mode: str = "pass") -> HostileRelay:
        self.mode, self.errors, self.seen = mode, [], []
        return self

    def confidential_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(s.body) for s in self.seen if s.path.startswith("/v1/confidential/")]

    def locks(self) -> list[dict[str, Any]]:
        return [json.loads(s.body) for s in self.seen if s.path == "/v1/nodes/lock"]

    # -- tampering ------------------------------------------------------------------------
    def tamper_message(self, message: dict[str, Any]) -> None:
        if self.mode == "flip_ciphertext":
            _flip_ciphertext(message)
        elif self.mode == "swap_hash":
            _swap_hash(message)
        elif self.mode == "swap_signature":
            # A genuine node signature, but over another response's hash.
            other = self.last_signature
            if other is None or other == message["signature"]:
                other = _b64(os.urandom(64))
            message["signature"] = other
        elif self.mode == "usage_in_clear" and message.get("usage"):
            message["usage"]["completion_tokens"] += 100
            message["usage"]["total_tokens"] += 100

    def tamper_events(self, blocks: list[str]) -> list[str]:
        """``blocks``: the stream's SSE events (comment-only blocks included), in order."""
        data = [i for i, b in enumerate(blocks) if b.startswith("data:") and b != "data: [DONE]"]
        events = [json.loads(blocks[i][len("data:") :].strip()) for i in data]

        def put(position: int, message: dict[str, Any]) -> None:
            blocks[data[position]] = "data: " + json.dumps(message)

        mode = self.mode
        if mode in ("flip_ciphertext", "swap_hash"):
            self.tamper_message(events[1])
            put(1, events[1])
        elif mode == "swap_signature":
            if "signature" in events[2]:  # atoma-v1: every chunk is signed
                events[1]["signature"] = events[2]["signature"]
                put(1, events[1])
            else:  # v3: only the final chunk, and it gets a genuine signature of another answer
                other = self.last_signature
                if other is None or other == events[-1]["signature"]:
                    other = _b64(os.urandom(64))
                events[-1]["signature"] = other
                put(-1, events[-1])
        elif mode == "usage_in_clear":
            self.tamper_message(events[-1])
            put(-1, events[-1])
        elif mode == "drop_final":
            del blocks[data[-1] :]
        elif mode == "drop_middle_and_final":
            del blocks[data[2] :]
        elif mode == "reorder":  # the opening chunk and the first content chunk change places
            blocks[data[0]], blocks[data[1]] = blocks[data[1]], blocks[data[0]]
        elif mode == "final_early":  # the usage chunk moved before the finish chunk
            blocks[data[-1]], blocks[data[-2]] = blocks[data[-2]], blocks[data[-1]]
        elif mode == "duplicate":
            blocks.insert(data[1] + 1, blocks[data[1]])
        elif mode == "garbage":
            blocks.insert(data[1], "data: {not json")
        elif mode == "drop_middle":  # one content chunk vanishes; the stream goes on
            del blocks[data[1]]
        elif mode == "done_early":  # the rest replaced by the end-of-stream marker
            blocks[data[2] :] = ["data: [DONE]"]
        elif mode == "after_done":  # a (genuine) chunk sent again after the end
            blocks.append(blocks[data[1]])
        return blocks

    # -- the ASGI app ---------------------------------------------------------------------
    def app(self) -> Starlette:
        client = httpx.AsyncClient(base_url=self.upstream, timeout=300)

        async def proxy(request: Request) -> Response:
            body = await request.body()
            path = request.url.path
            self.seen.append(Seen(request.method, path, body))
            if path.startswith("/v1/confidential/") and self.errors:
                status, code = self.errors.pop(0)
                return JSONResponse({"error": {"code": code, "message": "relay says so"}}, status)
            # The lock's handle goes on too: a veil-v3 request is sealed bound to its reservation.
            forwarded = ("authorization", "content-type", RESERVATION_HEADER.lower())
            headers = {k: v for k, v in request.headers.items() if k in forwarded}
            upstream = await client.request(
                request.method,
                path,
                params=dict(request.query_params),
                content=body,
                headers=headers,
            )
            content_type = upstream.headers.get("content-type", "")
            if path == "/v1/nodes/lock" and upstream.status_code == 200:
                lock = upstream.json()
                previous, self.last_evidence = self.last_evidence, lock.get("evidence")
                if self.mode == "strip_signing_key":
                    del lock["node_signing_public_key"]
                elif self.mode == "swap_key_id":
                    lock["key_id"] = "00" * 8
                elif self.mode == "strip_evidence":
                    lock.pop("evidence", None)
                elif self.mode == "stale_evidence":  # the evidence an earlier lock received
                    lock["evidence"] = previous
                elif self.mode == "strip_kem":  # a downgrade: no post-quantum key offered
                    for name in ("kem", "kem_public_key", "kem_key_id"):
                        lock.pop(name, None)
                elif self.mode == "swap_kem":  # the gateway's own ML-KEM key, to open prompts
                    own = NodeKemKey.generate()
                    lock["kem_public_key"], lock["kem_key_id"] = _b64(own.public_key), own.key_id
                return JSONResponse(lock)
            if upstream.status_code != 200 or not path.startswith("/v1/confidential/"):
                return Response(
                    upstream.content, upstream.status_code, media_type=content_type or None
                )
            if content_type.startswith("text/event-stream"):
                blocks = [b for b in upstream.text.split("\n\n") if b]
                if self.mode != "pass":
                    blocks = self.tamper_events(blocks)
                text = "".join(b + "\n\n" for b in blocks)
                return Response(text, 200, media_type="text/event-stream")
            message = upstream.json()
            if self.mode != "pass":
                self.tamper_message(message)
            else:
                self.last_signature = message.get("signature")
            return Response(json.dumps(message), 200, media_type="application/json")

        return Starlette(routes=[Route("/{path:path}", proxy, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def relay(client_deployment: Deployment) -> Iterator[HostileRelay]:
    hostile = HostileRelay(client_deployment.url)
    with ServerThread(hostile.app()) as server:
        hostile.url = server.url
        yield hostile
