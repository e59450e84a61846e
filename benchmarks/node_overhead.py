"""What confidentiality costs on the node itself: ``python -m benchmarks.node_overhead [--quick]``.

One real ``veil node`` subprocess on the embedded models (``smollm2-135m-instruct`` on llama.cpp,
``all-minilm-l6-v2`` on CPU torch) on a free loopback port, started without ``--gateway-key``, so
it accepts envelopes sent to it directly and spends each envelope's ``num_compute_units``. No
gateway is involved: the same requests go to the node's confidential routes and to its plain
OpenAI routes, and the plain route of the same node, in the same run, is the baseline.

1. Embeddings: one input to ``POST /v1/confidential/embeddings``, sealed client-side with
   ``veil.hazmat.v1.seal_request`` (atoma-v1) and, separately, ``veil.hazmat.v3.seal_request``
   (veil-v3), against ``POST /v1/embeddings``. Latency is client-side, from before the request
   body is built (and sealed) until the answer has been read and, for the confidential routes,
   opened and checked (AEAD tag, response hash, the node's Ed25519 signature from ``GET /v1/keys``,
   clear usage equal to the signed usage); every vector must equal the plain route's (within
   1e-4). p50 and p95 per variant; target: confidential p50 / plain p50 <= 1.10, for each suite.
2. Streamed chat: the same prompt, ``max_tokens`` 32, ``temperature`` 0, streamed through
   ``/v1/confidential/chat/completions`` (v1 and v3) and the plain ``/v1/chat/completions``.
   tokens/s = the completion tokens the node reports in usage (signed usage on the confidential
   routes) / client-side time from before the request is built until the stream has ended and
   every sealed chunk was opened and checked. Median per variant; target: confidential / plain
   >= 0.97, for each suite.
3. Node RSS with both models loaded: VmRSS of the node process and its children (from
   ``/proc/PID/status``), after the warm-up and after the run; target <= 1.5 GB (10^9 bytes)
   for the larger reading.

The variants run one after another, never concurrently, and are interleaved round by round (the
order rotating each round), so machine noise hits them alike. Prints one table per part and one
headline line per target and suite. Exits 0 when the benchmark ran, whether or not the targets
were met; 1 if the node did not start, a request failed or an answer did not verify. ``--quick``
runs few rounds (under a minute once the models are loaded). ``--json PATH`` writes the run as JSON;
the printed report is rendered from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx
from tests.harness import (
    TEST_MODEL_DIR,
    NodeKeys,
    SealedRequest,
    child_env,
    free_port,
    seal_to,
    veil_process,
    wait_healthy,
)

from benchmarks.memory import Memory, node_memory
from benchmarks.report import Report
from veil.client.errors import VeilClientError, api_error
from veil.client.streaming import event_data
from veil.wire.routes import confidential_path, plain_path

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
EMBED_INPUT = "The quarterly figures stay private until the board meets on Thursday morning."
PROMPT = [{"role": "user", "content": "Write one short sentence about the sea."}]
MAX_TOKENS = 32
UNITS = {CHAT: 512, EMBED: 256}  # num_compute_units of each envelope: prompt + completion fit
STACK_SMALL_ID = 1  # any id: a node used directly does not check stacks
OP_TIMEOUT = 120.0  # one request, end to end, on a busy 2-core machine
EMBED_TOLERANCE = 1e-4  # largest difference allowed between a route's vector and the plain one
RSS_TARGET = 1.5e9  # bytes
EMBED_TARGET = 1.10  # confidential p50 / plain p50, at most
STREAM_TARGET = 0.97  # confidential tokens/s / plain tokens/s, at least
JSON = {"content-type": "application/json"}

Variant = Literal["plain", "atoma-v1", "veil-v3"]
VARIANTS: tuple[Variant, ...] = ("plain", "atoma-v1", "veil-v3")
SUITES: tuple[Variant, ...] = ("atoma-v1", "veil-v3")


class Failed(Exception):
    """A request failed or its answer did not verify; ``code`` names why, for the report."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# -- the node ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    url: str
    pid: int
    keys: NodeKeys


def describe_node(http: httpx.Client, url: str, pid: int) -> Node:
    """The node's current X25519 key, its key id and its Ed25519 signing key, from /v1/keys."""
    keys = http.get(f"{url}/v1/keys")
    if keys.status_code != 200:
        raise Failed(f"HTTP_{keys.status_code}", "GET /v1/keys failed")
    try:
        return Node(url, pid, NodeKeys.from_keys_document(keys.json()))
    except ValueError as exc:
        raise Failed("BAD_KEYS", str(exc)) from None


@contextlib.contextmanager
def start_node(tmp: Path, models_dir: Path) -> Iterator[tuple[str, int]]:
    """``veil node`` in a session of its own; stopped (whole session) however the block ends."""
    port, log = free_port(), tmp / "node.log"
    args = ["node", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp / "node"),
            "--models-dir", str(models_dir), "--log-level", "warning",
            "--insecure-no-gateway"]  # fmt: skip
    # The benchmark talks to the node directly, without a gateway and its tickets.
    with veil_process(args, log, child_env(models_dir)) as process:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log)  # polls /health, bounded; raises with the log's tail
        yield url, process.pid


# -- one request of each kind ----------------------------------------------------------------------


def seal(
    node: Node, suite: Variant, kind: Literal["chat", "embeddings"], body: dict[str, Any]
) -> SealedRequest:
    """The envelope for ``body`` sealed to ``node`` in ``suite``, and the opener of its answer."""
    if suite == "plain":
        raise ValueError("the plain route is not sealed")
    return seal_to(
        node.keys, body, suite=suite, endpoint=kind, stack_small_id=STACK_SMALL_ID,
        units=UNITS[body["model"]],
    )  # fmt: skip


def refused(response: httpx.Response) -> Failed:
    """A non-200 answer as a failure with the node's error code and message (never plaintext)."""
    try:
        body: Any = json.loads(response.read())
    except ValueError:
        body = None
    error = api_error(response.status_code, body)
    return Failed(error.code, f"HTTP {response.status_code}: {error.message}")


def embed_once(http: httpx.Client, node: Node, variant: Variant) -> tuple[float, list[float]]:
    """One embeddings request: (seconds, the vector)."""
    started = time.perf_counter()
    body = {"model": EMBED, "input": EMBED_INPUT}
    confidential = variant != "plain"
    url = node.url + (confidential_path if confidential else plain_path)("embeddings")
    if confidential:
        sealed = seal(node, variant, "embeddings", body)
        response = http.post(url, content=sealed.content, headers=JSON)
        if response.status_code != 200:
            raise refused(response)
        document = sealed.open(response.content)
        usage = sealed.usage
        prompt_tokens = usage.prompt_tokens if usage is not None else 0
    else:
        response = http.post(url, content=json.dumps(body).encode(), headers=JSON)
        if response.status_code != 200:
            raise refused(response)
        document = response.json()
        prompt_tokens = int((document.get("usage") or {}).get("prompt_tokens") or 0)
    seconds = time.perf_counter() - started
    try:
        vector = [float(x) for x in document["data"][0]["embedding"]]
    except (KeyError, IndexError, TypeError, ValueError):
        raise Failed("MALFORMED", "the answer carries no embedding") from None
    if not vector or prompt_tokens <= 0:
        raise Failed("MALFORMED", "empty embedding or no usage")
    return seconds, vector


@dataclass(frozen=True)
class StreamSample:
    seconds: float  # before the request was built -> stream ended, every chunk checked
    first_event: float  # before the request was built -> first event read (and opened)
    completion_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds


def stream_once(http: httpx.Client, node: Node, variant: Variant, max_tokens: int) -> StreamSample:
    """One streamed chat completion, read to its end."""
    started = time.perf_counter()
    deadline = started + OP_TIMEOUT
    body = {"model": CHAT, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "seed": 7, "stream": True}  # fmt: skip
    confidential = variant != "plain"
    url = node.url + (confidential_path if confidential else plain_path)("chat")
    first: float | None = None
    if confidential:
        sealed = seal(node, variant, "chat", body)
        with http.stream("POST", url, content=sealed.content, headers=JSON) as response:
            if response.status_code != 200:
                raise refused(response)
            for _ in sealed.chunks(response):  # opens + checks each one
                if first is None:
                    first = time.perf_counter() - started
                if time.perf_counter() > deadline:
                    raise Failed("TIMEOUT", f"stream not done within {OP_TIMEOUT:.0f} s")
        usage = sealed.usage  # the signed usage of the final chunk
        completion = usage.completion_tokens if usage is not None else 0
    else:
        completion = -1
        done = False
        with http.stream("POST", url, content=json.dumps(body).encode(), headers=JSON) as response:
            if response.status_code != 200:
                raise refused(response)
            for data in event_data(response):
                if time.perf_counter() > deadline:
                    raise Failed("TIMEOUT", f"stream not done within {OP_TIMEOUT:.0f} s")
                if first is None:
                    first = time.perf_counter() - started
                if data.strip() == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk and "choices" not in chunk:
                    raise Failed("ENGINE_ERROR", "the plain stream ended with an error event")
                if isinstance(chunk.get("usage"), dict):
                    completion = int(chunk["usage"].get("completion_tokens") or 0)
        if not done or completion < 0:
            raise Failed("TRUNCATED", "the plain stream ended without its usage chunk or [DONE]")
    seconds = time.perf_counter() - started
    if completion <= 0 or first is None:
        raise Failed("MALFORMED", "the stream reported no completion tokens")
    return StreamSample(seconds, first, completion)


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Results:
    embeddings: dict[Variant, list[float]] = field(
        default_factory=lambda: {v: [] for v in VARIANTS}
    )
    streams: dict[Variant, list[StreamSample]] = field(
        default_factory=lambda: {v: [] for v in VARIANTS}
    )
    failures: Counter[str] = field(default_factory=Counter)
    first_messages: dict[str, str] = field(default_factory=dict)


def attempt(results: Results, label: str, call: Callable[[], Any]) -> Any:
    """``call()``, or None after counting its failure under ``label``."""
    try:
        return call()
    except Failed as exc:
        code, message = exc.code, exc.message
    except VeilClientError as exc:  # an answer that did not verify, or a sealed error
        code, message = type(exc).__name__, exc.message
    except httpx.HTTPError as exc:
        code, message = type(exc).__name__, str(exc)[:200]
    except (ValueError, KeyError, TypeError) as exc:  # an answer that is not what it should be
        code, message = "MALFORMED", type(exc).__name__
    key = f"{label}: {code}"
    results.failures[key] += 1
    results.first_messages.setdefault(key, message)
    return None


def rotated(round_number: int) -> tuple[Variant, ...]:
    """The variants in this round's order: the one that goes first changes every round."""
    shift = round_number % len(VARIANTS)
    return VARIANTS[shift:] + VARIANTS[:shift]


def same_vector(a: list[float], b: list[float]) -> bool:
    return (
        len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) <= EMBED_TOLERANCE
    )


def run_embeddings(
    http: httpx.Client, node: Node, rounds: int, reference: list[float], results: Results
) -> None:
    for r in range(rounds):
        for variant in rotated(r):
            label = f"embeddings {variant}"
            answer = attempt(results, label, partial(embed_once, http, node, variant))
            if answer is None:
                continue
            seconds, vector = answer
            if not same_vector(vector, reference):
                key = f"{label}: ANSWER_DIFFERS"
                results.failures[key] += 1
                results.first_messages.setdefault(key, "the vector differs from the plain route's")
                continue
            results.embeddings[variant].append(seconds)


def run_streams(
    http: httpx.Client, node: Node, rounds: int, max_tokens: int, results: Results
) -> None:
    for r in range(rounds):
        for variant in rotated(r):
            sample = attempt(
                results,
                f"streamed chat {variant}",
                partial(stream_once, http, node, variant, max_tokens),
            )
            if sample is not None:
                results.streams[variant].append(sample)


def warm_up(http: httpx.Client, node: Node, max_tokens: int, results: Results) -> list[float]:
    """Each variant of each kind a few times, unmeasured; the plain route's vector, the
    reference every later answer must match. Raises ``Failed`` if any of it fails."""
    reference: list[float] | None = None
    for _ in range(3):
        for variant in VARIANTS:
            answer = attempt(results, f"warm-up embeddings {variant}",
                             partial(embed_once, http, node, variant))  # fmt: skip
            if answer is not None and variant == "plain" and reference is None:
                reference = answer[1]
    for variant in VARIANTS:
        attempt(results, f"warm-up streamed chat {variant}",
                partial(stream_once, http, node, variant, max_tokens))  # fmt: skip
    if results.failures or reference is None:
        raise Failed("WARM_UP", "; ".join(f"{k}: {results.first_messages.get(k, '')}"
                                          for k in results.failures))  # fmt: skip
    return reference


# -- main -------------------------------------------------------------------------------------------


def _terminate(signum: int, _: object) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C does, so the node's session is stopped on the way out."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.node_overhead",
        description="Confidential against plain routes of one node: latency, tokens/s, RSS.",
    )
    parser.add_argument("--quick", action="store_true", help="few rounds (about a minute)")
    parser.add_argument("--embedding-rounds", type=int, default=None, help="default 150 (quick 15)")
    parser.add_argument("--chat-rounds", type=int, default=None, help="default 20 (quick 5)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    parser.add_argument("--json", type=Path, default=None, help="write the run as JSON here")
    args = parser.parse_args(argv)
    from benchmarks.node_overhead_report import DESCRIPTION, TITLE, report_node

    report = Report("node_overhead", TITLE, DESCRIPTION, sys.argv[1:] if argv is None else argv)
    embed_default, chat_default = (15, 5) if args.quick else (150, 20)
    embed_rounds = embed_default if args.embedding_rounds is None else args.embedding_rounds
    chat_rounds = chat_default if args.chat_rounds is None else args.chat_rounds
    if embed_rounds < 1 or chat_rounds < 1 or args.max_tokens < 1:
        parser.error("rounds and --max-tokens must be positive")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)

    models_dir = TEST_MODEL_DIR
    load = os.getloadavg()[0]
    results = Results()
    memory: dict[str, Memory] = {}
    print("starting `veil node` on the embedded models...", file=sys.stderr, flush=True)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="veil-node-overhead-") as scratch,
            start_node(Path(scratch), models_dir) as (url, pid),
            httpx.Client(timeout=httpx.Timeout(OP_TIMEOUT, connect=10.0)) as http,
        ):
            node = describe_node(http, url, pid)
            reference = warm_up(http, node, args.max_tokens, results)
            memory["after warm-up"] = node_memory(pid)
            print(f"embeddings: {embed_rounds} rounds x {len(VARIANTS)} variants...",
                  file=sys.stderr, flush=True)  # fmt: skip
            run_embeddings(http, node, embed_rounds, reference, results)
            print(f"streamed chat: {chat_rounds} rounds x {len(VARIANTS)} variants...",
                  file=sys.stderr, flush=True)  # fmt: skip
            run_streams(http, node, chat_rounds, args.max_tokens, results)
            memory["after the run"] = node_memory(pid)
    except (Failed, RuntimeError, OSError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report_node(report, results, memory, (embed_rounds, chat_rounds), args.max_tokens, load)
    return report.emit(args.json, ok=not results.failures)


if __name__ == "__main__":
    # Run the importable module, not this ``__main__`` copy: the report module imports it.
    from benchmarks.node_overhead import main as run

    raise SystemExit(run())
