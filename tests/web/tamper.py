"""A tampering proxy between the page and the gateway (a stand-in for a hostile gateway or
network: a real gateway cannot be made to misbehave on demand). It serves the page and forwards
every request untouched, except the confidential chat route when ``mode`` says otherwise:

    flip      one byte of chunk 1's ciphertext flipped
    drop      chunk 1 left out of the stream
    truncate  the stream cut after chunk 1 (no final chunk)
    model     another model swapped into the lock request, so the gateway locks (and would
              route to) that model's stack, as a router passing a cheaper model off would. (A
              model swapped in the envelope itself is refused by the gateway, whose reservation
              names the model, and by the node, whose HPKE info binds it.)
    swap-key  the lock's post-quantum key replaced by one the proxy holds, in the lock and in
              its evidence alike, as a gateway that wants to read the prompt would
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Literal

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from veil.hazmat import v3
from veil.wire.keyid import key_id

Mode = Literal["pass", "flip", "drop", "truncate", "model", "swap-key"]
CHAT = "/v1/confidential/chat/completions"
LOCK = "/v1/nodes/lock"
HOP = {"content-length", "transfer-encoding", "connection", "content-encoding", "host"}


class TamperingProxy:
    def __init__(self, upstream: str, swap_model: str) -> None:
        self.upstream = upstream
        self.swap_model = swap_model
        self.mode: Mode = "pass"
        self.own_key = v3.NodeKemKey.generate().public_key  # the proxy's own X-Wing key
        self.tampered = 0  # how many times the mode was applied
        self.app = Starlette(
            routes=[Route("/{path:path}", self.forward, methods=["GET", "POST", "PATCH"])]
        )

    async def forward(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        if path == LOCK and self.mode == "model":
            ask = json.loads(body)
            ask["model"] = self.swap_model
            body = json.dumps(ask).encode()
            self.tampered += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        client = httpx.AsyncClient(timeout=120)
        upstream = await client.send(
            client.build_request(
                request.method,
                f"{self.upstream}{path}",
                params=request.query_params,
                headers=headers,
                content=body,
            ),
            stream=True,
        )
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP}
        stream = upstream.aiter_bytes()
        if path == LOCK and self.mode == "swap-key" and upstream.is_success:
            lock = json.loads(await upstream.aread())
            lock["kem_public_key"] = base64.b64encode(self.own_key).decode()
            lock["kem_key_id"] = key_id(self.own_key)
            lock["evidence"]["kem_public_key"] = lock["kem_public_key"]
            self.tampered += 1
            stream = _once(json.dumps(lock).encode())
        if path == CHAT and self.mode in ("flip", "drop", "truncate") and upstream.is_success:
            stream = self._events(upstream)
        return StreamingResponse(
            _closing(stream, upstream, client),
            status_code=upstream.status_code,
            headers=out_headers,
        )

    async def _events(self, upstream: httpx.Response) -> AsyncIterator[bytes]:
        buffer = b""
        async for piece in upstream.aiter_bytes():
            buffer += piece
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if not event.startswith(b"data: {"):
                    yield event + b"\n\n"
                    continue
                chunk = json.loads(event[len(b"data: ") :])
                if chunk.get("index") != 1:
                    yield event + b"\n\n"
                    continue
                self.tampered += 1
                if self.mode == "drop":
                    continue
                if self.mode == "truncate":
                    yield event + b"\n\n"
                    return  # the stream ends here, before its final chunk
                ciphertext = bytearray(base64.b64decode(chunk["ciphertext"]))
                ciphertext[0] ^= 0x01
                chunk["ciphertext"] = base64.b64encode(bytes(ciphertext)).decode()
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        if buffer:
            yield buffer


async def _closing(
    stream: AsyncIterator[bytes], upstream: httpx.Response, client: httpx.AsyncClient
) -> AsyncIterator[bytes]:
    try:
        async for piece in stream:
            yield piece
    finally:
        await upstream.aclose()
        await client.aclose()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
