"""A stand-in for vLLM on a GPU: an OpenAI-compatible HTTP server on loopback that streams a fixed
token sequence at a configurable aggregate rate: ``python -m benchmarks.upstream_standin --port P``.

No GPU runs here, so the benchmarks that ask what Veil does at GPU rates point a real ``veil node
--upstream chat:MODEL=URL`` at this server instead of at vLLM. It is a stand-in, named as one in
every report that uses it: it generates nothing, it replays the words ``tok0 tok1 ...`` one token
per chunk, so the node, the gateway and the client do all their real work while the upstream costs
as little as a GPU server's HTTP front end.

What it speaks, in vLLM's shapes (only what Veil's upstream engine uses):

- ``GET /health``, ``GET /v1/models``;
- ``POST /v1/chat/completions``: ``max_tokens`` tokens; ``stream: true`` sends one SSE chunk per
  token, the usage chunk (``stream_options.include_usage``) and ``[DONE]``, HTTP/1.1 chunked;
  otherwise one completion with its usage;
- ``POST /v1/embeddings``: one fixed 8-dimensional vector per input, with its usage;
- ``POST /tokenize`` (vLLM's: ``prompt`` or ``messages``, answers ``{"count", "tokens"}``), one
  token per whitespace-separated word, so the node counts exactly as it does against vLLM;
- ``POST /standin/rate`` ``{"chunks_per_second": R}`` (0: as fast as it can) sets the aggregate
  rate shared by every open stream; ``GET /standin/stats`` says how many chunks it has sent and how many streams are open.

The rate is one schedule for all streams together (each chunk takes the next free slot, 1/R s
after the previous one), as a GPU batching many requests emits tokens at an aggregate rate.
The server is plain ``asyncio`` streams (HTTP/1.1 with keep-alive), so that on a 2-core machine it
takes as little CPU from the parts being measured as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

MODEL = "standin-chat"
EMBED_MODEL = "standin-embed"
EMBED_DIMENSIONS = 8
CREATED = 1750000000
MAX_BODY = 1 << 20


class Schedule:
    """The aggregate rate: each chunk waits for the next slot of one shared clock."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next = 0.0
        self.sent = 0
        self.active = 0  # streams open now

    async def slot(self) -> None:
        self.sent += 1
        if self.rate <= 0:
            await asyncio.sleep(0)  # unthrottled, but every stream gets its turn
            return
        now = time.monotonic()
        at = max(now, self.next)
        self.next = at + 1.0 / self.rate
        if at - now > 0.0005:  # below that, sleeping costs more than it paces
            await asyncio.sleep(at - now)


SCHEDULE = Schedule(0.0)
TOKENIZE = {"on": True}


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _json(status: str, document: Any) -> bytes:
    return _response(status, json.dumps(document, separators=(",", ":")).encode())


_EVENT_HEAD = (
    b'data: {"id":"chatcmpl-standin","object":"chat.completion.chunk","created":'
    + str(CREATED).encode()
    + b',"model":"'
    + MODEL.encode()
    + b'","choices":[{"index":0,"delta":{"content":" tok'
)
_EVENT_TAIL = b'"},"finish_reason":null}]}\n\n'


def _chunk_event(index: int) -> bytes:
    return _EVENT_HEAD + str(index).encode() + _EVENT_TAIL


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        return len(text.split()) + 4 * len(messages) + 2
    return len(str(body.get("prompt", "")).split())


async def _stream(writer: asyncio.StreamWriter, tokens: int, prompt: int) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    SCHEDULE.active += 1
    try:
        for i in range(tokens):
            await SCHEDULE.slot()
            writer.write(_http_chunk(_chunk_event(i)))
            await writer.drain()
    finally:
        SCHEDULE.active -= 1
    usage = {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}
    last = {
        "id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": CREATED,
        "model": MODEL, "choices": [], "usage": usage,
    }  # fmt: skip
    tail = b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n"
    writer.write(_http_chunk(tail) + b"0\r\n\r\n")
    await writer.drain()


def _completion(tokens: int, prompt: int) -> bytes:
    text = "".join(f" tok{i}" for i in range(tokens))
    return _json("200 OK", {
        "id": "chatcmpl-standin", "object": "chat.completion", "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": tokens,
                  "total_tokens": prompt + tokens},
    })  # fmt: skip


def _embeddings(body: bytes) -> bytes:
    try:
        document = json.loads(body)
        texts = document["input"]
        texts = [texts] if isinstance(texts, str) else list(texts)
    except (ValueError, KeyError, TypeError):
        return _json("400 Bad Request", {"error": {"message": "input is required"}})
    tokens = sum(len(str(t).split()) for t in texts)
    return _json("200 OK", {
        "object": "list", "model": EMBED_MODEL,
        "data": [{"object": "embedding", "index": i, "embedding": [0.125] * EMBED_DIMENSIONS}
                 for i in range(len(texts))],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })  # fmt: skip


async def _answer(method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
    if method == "GET" and path == "/health":
        writer.write(_json("200 OK", {"status": "ok"}))
    elif method == "GET" and path == "/v1/models":
        writer.write(
            _json(
                "200 OK",
                {
                    "object": "list",
                    "data": [{"id": m, "object": "model"} for m in (MODEL, EMBED_MODEL)],
                },
            )
        )
    elif method == "GET" and path == "/standin/stats":
        writer.write(
            _json(
                "200 OK",
                {
                    "chunks_sent": SCHEDULE.sent,
                    "rate": SCHEDULE.rate,
                    "active_streams": SCHEDULE.active,
                },
            )
        )
    elif method == "POST" and path == "/tokenize" and not TOKENIZE["on"]:
        writer.write(_json("404 Not Found", {"error": {"message": "not found"}}))
    elif method == "POST" and path == "/v1/embeddings":
        writer.write(_embeddings(body))
    elif method == "POST" and path in ("/v1/chat/completions", "/tokenize", "/standin/rate"):
        try:
            document = json.loads(body)
            assert isinstance(document, dict)
        except (ValueError, AssertionError):
            writer.write(_json("400 Bad Request", {"error": {"message": "not a JSON object"}}))
            return
        if path == "/standin/rate":
            SCHEDULE.rate = float(document.get("chunks_per_second", 0))
            SCHEDULE.next = 0.0
            writer.write(_json("200 OK", {"rate": SCHEDULE.rate}))
        elif path == "/tokenize":
            count = _prompt_tokens(document)
            writer.write(_json("200 OK", {"count": count, "tokens": list(range(count))}))
        else:
            tokens = int(document.get("max_tokens") or 16)
            prompt = _prompt_tokens(document)
            if document.get("stream"):
                await _stream(writer, tokens, prompt)
            else:
                writer.write(_completion(tokens, prompt))
    else:
        writer.write(_json("404 Not Found", {"error": {"message": "not found"}}))


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:  # HTTP/1.1 keep-alive: one request after another on the connection
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            length = int(headers.get("content-length", "0"))
            if length > MAX_BODY:
                writer.write(_json("413 Payload Too Large", {"error": {"message": "too large"}}))
                break
            body = await reader.readexactly(length) if length else b""
            await _answer(method, target.split("?", 1)[0], body, writer)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(_connection, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="chunks/s over all streams")
    parser.add_argument("--no-tokenize", action="store_true", help="answer /tokenize with 404")
    args = parser.parse_args(argv)
    SCHEDULE.rate = args.rate
    TOKENIZE["on"] = not args.no_tokenize
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
