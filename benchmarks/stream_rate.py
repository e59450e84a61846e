"""Streaming at GPU rates: ``python -m benchmarks.stream_rate [--quick]``.

No GPU runs here, so the upstream is a **stand-in for vLLM on a GPU**
(``benchmarks/upstream_standin.py``): a real OpenAI-compatible HTTP server on loopback that streams
a fixed token sequence, one token per chunk, at an aggregate rate set for each point and shared by
every open stream. In front of it, each its own process: ``veil node --no-embedded --upstream
chat:standin-chat=URL`` and ``veil gateway`` (SQLite ledger), as ``benchmarks/standin_deploy.py``
starts them; the stand-in answers ``/tokenize`` as vLLM does (``--no-tokenize``: 404, and the
node counts one token a chunk). This process is the client: ``--concurrency`` streams at a time, each one request
after another of ``--tokens`` tokens.

- **plain**: ``POST /v1/chat/completions`` through the gateway, every SSE chunk parsed as JSON;
- **veil-v3**: lock through the gateway, seal with veil-v3 (hybrid KEM) bound to the lock's
  reservation, ``POST /v1/confidential/chat/completions``, and every chunk opened and checked by
  the client's own ``StreamChecker`` (tag, place, running hash, the one signature at the end).

For each offered rate (1,000, 5,000 and 20,000 chunks/s, then the stand-in unthrottled to find
where each saturates) the two modes alternate over ``--rounds`` windows each, and the median
window is the point: after ``--warm`` seconds, the content chunks the client receives in
``--seconds`` give the delivered chunks/s (the stand-in's tokens, one per chunk as it sends them,
counted in what the client reads), and ``/proc`` gives each process's CPU over the same window;
each window's open streams then end as they would before the next starts. Target: veil-v3 >= 0.95x plain up to 5,000 chunks/s. Then the peak
memory (VmHWM) of the gateway and node (targets 200 MB and 1.5 GB), and, where py-spy installs
(in a venv of its own, ``benchmarks/stream_profile.py``), a profile of node and gateway during a
veil-v3 run at 5,000 chunks/s, summarised in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from benchmarks import stream_profile
from benchmarks.report import Report
from benchmarks.standin_deploy import Deployment, cpu_seconds, deployment, memory_mb
from benchmarks.upstream_standin import MODEL
from veil.client.opening import V3ResponseOpener
from veil.client.receipt import Receipt
from veil.client.streaming import StreamChecker, aevent_data
from veil.hazmat import v3
from veil.wire.envelopes import RESERVATION_HEADER, b64decode
from veil.wire.routes import ROUTES

RATES = (1000, 5000, 20000)
MODES = ("plain", "veil-v3")
TARGET = 0.95  # veil-v3 / plain delivered chunks/s, at least, up to 5,000 offered
GATEWAY_RSS_MB, NODE_RSS_MB = 200.0, 1500.0
PROMPT = [{"role": "user", "content": "Stream the stand-in's tokens."}]
DRAIN_SECONDS = 60.0  # after a window, for the open streams to end
PROMPT_UNITS = 64  # what a lock holds beyond the completion: the prompt's tokens fit in it


@dataclass
class Point:
    mode: str
    offered: int  # chunks/s; 0: unthrottled
    delivered: float = 0.0
    streams: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  # process -> cores busy in the window
    windows: list[float] = field(default_factory=list)  # delivered in each window of the point


class Client:
    def __init__(self, deployed: Deployment, http: httpx.AsyncClient, tokens: int) -> None:
        assert deployed.gateway is not None
        self.gateway = deployed.gateway
        self.http = http
        self.tokens = tokens
        self.chunks = 0
        self.streams = 0

    async def plain(self) -> None:
        body = {"model": MODEL, "messages": PROMPT, "max_tokens": self.tokens, "stream": True}
        url = f"{self.gateway}{ROUTES['chat'].plain}"
        async with self.http.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(failure("", response.status_code, await response.aread()))
            async for data in aevent_data(response):
                if data == "[DONE]":
                    break
                self.chunks += tokens_in(json.loads(data))
        self.streams += 1

    async def confidential(self) -> None:
        units = self.tokens + PROMPT_UNITS
        locked = await self.http.post(
            f"{self.gateway}/v1/nodes/lock", json={"model": MODEL, "max_num_tokens": units}
        )
        if locked.status_code != 200:
            raise RuntimeError(failure("lock ", locked.status_code, locked.content))
        lock = locked.json()
        kem_public = b64decode(lock["kem_public_key"], field="kem_public_key")
        signing = b64decode(lock["node_signing_public_key"], field="node_signing_public_key")
        raw = json.dumps(
            {"model": MODEL, "messages": PROMPT, "max_tokens": self.tokens, "stream": True}
        ).encode()
        route = ROUTES["chat"].confidential
        envelope, session = v3.seal_request(
            kem_public, lock["kem_key_id"], raw, node_signing_key=signing, endpoint=route,
            model_name=MODEL, stack_small_id=lock["stack_small_id"],
            num_compute_units=units, stream=True, reservation_id=lock["reservation_id"],
        )  # fmt: skip
        receipt = Receipt("chat", MODEL, lock["node_small_id"], lock["kem_key_id"],
                          lock["stack_small_id"], units)  # fmt: skip
        opener = V3ResponseOpener(session, session_key(signing), receipt)
        checker = StreamChecker(opener)
        headers = {"content-type": "application/json",
                   RESERVATION_HEADER: lock["reservation_id"]}  # fmt: skip
        async with self.http.stream(
            "POST", f"{self.gateway}{route}", content=envelope.model_dump_json(), headers=headers
        ) as response:
            if response.status_code != 200:
                raise RuntimeError(failure("", response.status_code, await response.aread()))
            async for data in aevent_data(response):
                opened = checker.event(data)
                if opened is not None:
                    self.chunks += tokens_in(opened[1])
        checker.end()
        self.streams += 1


def failure(what: str, status: int, body: bytes) -> str:
    """``HTTP_503: no healthy node ...``: the status and the gateway's own error message."""
    try:
        message = str(json.loads(body)["error"]["message"])[:70]
    except (ValueError, KeyError, TypeError):
        message = ""
    return f"{what}HTTP_{status}: {message}" if message else f"{what}HTTP_{status}"


def tokens_in(chunk: dict[str, object]) -> int:
    """The stand-in's tokens in one chunk (one a chunk as it sends them; counted, not assumed,
    in case a hop merges chunks)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return 0
    text = "".join(str((c.get("delta") or {}).get("content") or "") for c in choices)
    return text.count(" tok")


def session_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


async def measure(deployed: Deployment, mode: str, offered: int, args: argparse.Namespace) -> Point:
    point = Point(mode, offered)
    deployed.set_rate(offered)
    limits = httpx.Limits(max_connections=args.concurrency * 2 + 8)
    headers = {"authorization": f"Bearer {deployed.api_key}"}
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as http:
        client = Client(deployed, http, args.tokens)
        one = client.plain if mode == "plain" else client.confidential
        stop = False

        async def loop() -> None:
            while not stop:
                try:
                    await one()
                except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                    point.errors[str(exc)[:90] or type(exc).__name__] += 1
                    await asyncio.sleep(0.1)

        tasks = [asyncio.create_task(loop()) for _ in range(args.concurrency)]
        await asyncio.sleep(args.warm)
        before = {name: cpu_seconds(pid) for name, pid in deployed.pids.items()}
        own, chunks, streams = time.process_time(), client.chunks, client.streams
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        elapsed = time.monotonic() - started
        point.delivered = (client.chunks - chunks) / elapsed
        point.streams = client.streams - streams
        point.cpu = {n: (cpu_seconds(p) - before[n]) / elapsed for n, p in deployed.pids.items()}
        point.cpu["client"] = (time.process_time() - own) / elapsed
        stop = True  # each stream ends as it would (a cut stream would hold its reservation)
        _, late = await asyncio.wait(tasks, timeout=DRAIN_SECONDS)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if late:
        point.errors[f"cut after {DRAIN_SECONDS:.0f} s of drain"] += len(late)
    await asyncio.to_thread(deployed.settle)
    return point


def run_points(deployed: Deployment, args: argparse.Namespace) -> list[Point]:
    """Each offered rate: ``--rounds`` windows per mode, the modes alternating window by window
    (so load from outside hits both alike); the point is the median window (its CPU figures
    are that window's)."""
    points = []
    for offered in (*args.rates, 0):
        windows: dict[str, list[Point]] = {mode: [] for mode in MODES}
        for turn in range(args.rounds):
            for mode in MODES if turn % 2 == 0 else MODES[::-1]:
                shown = f"{offered} chunks/s" if offered else "unthrottled"
                print(f"  {mode} at {shown}, window {turn + 1}...", file=sys.stderr, flush=True)
                windows[mode].append(asyncio.run(measure(deployed, mode, offered, args)))
        for mode in MODES:
            ordered = sorted(windows[mode], key=lambda p: p.delivered)
            middle = ordered[len(ordered) // 2]
            for other in ordered:
                if other is not middle:
                    middle.errors.update(other.errors)
            middle.windows = [p.delivered for p in windows[mode]]
            middle.delivered = statistics.median(middle.windows)  # with two: their mean
            points.append(middle)
    return points


def profile(deployed: Deployment, args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    """py-spy on node and gateway during a veil-v3 run at 5,000 chunks/s (or why not)."""
    py_spy, origin = stream_profile.ensure_py_spy()
    if py_spy is None:
        return {"origin": origin}
    window = args.warm + args.seconds
    recordings = {
        name: (tmp / f"{name}.spy", stream_profile.start(py_spy, deployed.pids[name], window,
                                                         tmp / f"{name}.spy"))
        for name in ("node", "gateway")
    }  # fmt: skip
    asyncio.run(measure(deployed, "veil-v3", 5000, args))
    found: dict[str, object] = {"origin": origin}
    for name, (raw, process) in recordings.items():
        error = stream_profile.finish(process)
        found[name] = error if error else stream_profile.summary(raw)
    return found


TITLE = "Streaming at GPU rates: veil-v3 against plain chunks through gateway and node"
DESCRIPTION = (
    "Delivered chunks/s through `veil gateway` -> `veil node` -> a stand-in for vLLM on a GPU (a "
    "real OpenAI-compatible server on loopback streaming a fixed token sequence at a set "
    "aggregate rate), confidential veil-v3 streams (lock, seal, open and check every chunk) "
    "against plain streams, at 1,000, 5,000 and 20,000 chunks/s offered and unthrottled; the "
    "CPU of each process, the gateway's and node's peak memory, and a py-spy profile."
)


def report_run(report: Report, args: argparse.Namespace, points: list[Point],
               memory: dict[str, tuple[float, float]], idle: dict[str, float],
               found: dict[str, object]) -> None:  # fmt: skip
    plain = report.baseline(
        "plain streams",
        "the same stand-in, gateway and node, plain `/v1/chat/completions` streams through the "
        "gateway at the same offered rate, measured in turn with the veil-v3 streams in this run; "
        "ratio = veil-v3 delivered chunks/s / plain delivered chunks/s.",
    )
    names = ["client", "gateway", "node", "stand-in"]
    table = report.table(
        f"Delivered chunks/s, {args.concurrency} concurrent streams of {args.tokens} tokens "
        f"(median of {args.rounds} windows of {args.seconds:.0f} s after {args.warm:.0f} s of "
        "warm-up, the modes alternating); CPU in cores busy in the median window",
        [("offered", ""), ("mode", ""), ("delivered /s", ".0f"), ("windows", ""),
         ("streams", "d"),
         ("errors", "d"), *[(f"{n} CPU", ".2f") for n in names]],
        notes="the stand-in for vLLM on a GPU streams one token per chunk; 2 cores in all, "
        "shared by the client, gateway, node and stand-in",
    )  # fmt: skip
    by = {(p.mode, p.offered): p for p in points}
    for p in points:
        offered = f"{p.offered}" if p.offered else "unthrottled"
        each = " / ".join(f"{w:.0f}" for w in p.windows)
        table.row(offered, p.mode, p.delivered, each, p.streams, sum(p.errors.values()),
                  *[p.cpu.get(n, 0.0) for n in names])  # fmt: skip
        for error, count in p.errors.items():
            report.note(f"{p.mode} at {offered}: {count} x {error}")
    for offered in args.rates:
        a, b = by[("veil-v3", offered)].delivered, by[("plain", offered)].delivered
        report.ratio(
            f"streamed chunks/s at {offered:,} offered, veil-v3 / plain (gateway + node, "
            "vLLM stand-in)", a, b, baseline=plain, unit="chunks/s",
            target=(">=", TARGET) if offered <= 5000 else None,
            id=f"stream_confidential_vs_plain_{offered}",
        )  # fmt: skip
    top_plain, top_v3 = by[("plain", 0)].delivered, by[("veil-v3", 0)].delivered
    report.measure(
        "saturation: veil-v3 chunks/s with the stand-in unthrottled", top_v3, "chunks/s",
        baseline=plain, fmt=".0f", id="stream_saturation_v3_chunks_s",
        compared={"numerator": top_v3, "denominator": top_plain, "unit": "chunks/s"},
        detail=f"plain saturates at {top_plain:.0f} chunks/s",
    )  # fmt: skip
    started = report.baseline(
        "memory before the load",
        "each process's VmRSS once started, before the first point, in this run; ratio = peak "
        "under the load / that.",
    )
    rss = report.table(
        "Memory of the processes (MB): started, after every point, and the peak",
        [("process", ""), ("VmRSS started", ".0f"), ("VmRSS after", ".0f"),
         ("VmHWM (peak)", ".0f")],
    )  # fmt: skip
    for name, (now, peak) in memory.items():
        rss.row(name, idle[name], now, peak)
    for name, limit in (("gateway", GATEWAY_RSS_MB), ("node", NODE_RSS_MB)):
        report.measure(
            f"{name} peak memory (VmHWM) under streaming load", memory[name][1], "MB",
            baseline=started, target=("<=", limit), fmt=".0f", id=f"stream_{name}_peak_rss_mb",
            compared={"numerator": memory[name][1], "denominator": idle[name], "unit": "MB"},
        )  # fmt: skip
    report_profile(report, found)


def report_profile(report: Report, found: dict[str, object]) -> None:
    if set(found) == {"origin"}:
        report.note(f"not profiled: {found['origin']}")
        return
    for name in ("node", "gateway"):
        result = found.get(name)
        if not isinstance(result, tuple):
            report.note(f"{name} not profiled: py-spy said: {result}")
            continue
        samples, leaves, parts = result
        table = report.table(
            f"py-spy flame summary, `veil {name}`, veil-v3 at 5,000 chunks/s offered ({samples} "
            f"samples at {stream_profile.RATE_HZ} Hz; {found['origin']})",
            [("where (inclusive: any frame; self: the leaf)", ""), ("% of samples", ".1f")],
        )
        for part, share in parts:
            table.row(f"under: {part}", share)
        for leaf, share in leaves:
            table.row(f"self: {leaf}", share)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 windows of 3 s per point")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warm", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="windows per mode and rate")
    parser.add_argument("--no-profile", action="store_true", help="leave py-spy out")
    parser.add_argument(
        "--no-tokenize",
        action="store_true",
        help="the stand-in answers /tokenize with 404 (default: it tokenizes, as vLLM does)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the run as JSON here")
    args = parser.parse_args(argv)
    args.rates = RATES
    if args.quick:
        args.seconds, args.warm, args.rounds = 3.0, 2.0, 2
    report = Report("stream_rate", TITLE, DESCRIPTION, sys.argv[1:] if argv is None else argv)
    print("starting the vLLM stand-in, `veil node` and `veil gateway`...", file=sys.stderr)
    with (
        tempfile.TemporaryDirectory(prefix="veil-bench-stream-") as scratch,
        deployment(Path(scratch), gateway=True, tokenize=not args.no_tokenize) as deployed,
    ):
        idle = {name: memory_mb(pid)[0] for name, pid in deployed.pids.items()}
        points = run_points(deployed, args)
        found: dict[str, object] = {"origin": "--no-profile"}
        if not args.no_profile:
            found = profile(deployed, args, Path(scratch))
        memory = {name: memory_mb(pid) for name, pid in deployed.pids.items()}
    report_run(report, args, points, memory, idle, found)
    return report.emit(args.json)


if __name__ == "__main__":
    raise SystemExit(main())
