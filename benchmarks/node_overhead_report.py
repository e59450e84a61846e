"""The node-overhead benchmark's report (``benchmarks/node_overhead.py``), as its JSON document."""

from __future__ import annotations

import os
import statistics

from benchmarks.confidential import p_ms
from benchmarks.memory import Memory
from benchmarks.node_overhead import (
    CHAT,
    EMBED,
    EMBED_INPUT,
    EMBED_TARGET,
    RSS_TARGET,
    STREAM_TARGET,
    SUITES,
    VARIANTS,
    Results,
)
from benchmarks.report import Report

TITLE = "Node: confidential routes against the plain routes of the same node"
DESCRIPTION = (
    "One `veil node` (embedded models, no gateway): 1) latency (p50/p95) of one embeddings "
    "request sealed with atoma-v1 and with veil-v3 to /v1/confidential/embeddings, client-side "
    "from building/sealing to the opened, signature-checked answer; 2) tokens/s of the same "
    "streamed chat (max_tokens 32, temperature 0) through /v1/confidential/chat/completions "
    "(both suites), from the usage the node reports; 3) the node's RSS with both models loaded."
)


def report_node(
    report: Report,
    results: Results,
    memory: dict[str, Memory],
    rounds: tuple[int, int],
    max_tokens: int,
    load: float,
) -> None:
    embed_rounds, chat_rounds = rounds
    plain = report.baseline(
        "plain routes",
        "the plain routes (/v1/embeddings, /v1/chat/completions, streamed) of the same node in "
        "the same run, variants interleaved round by round. Ratios = confidential / plain.",
    )
    report.note(f"1-minute load average at start: {load:.2f} on {os.cpu_count()} cores")
    embeddings = report.table(
        f"1. Embeddings ({EMBED}, one input of {len(EMBED_INPUT)} characters), {embed_rounds} "
        "rounds",
        [("operation", ""), ("n", "d"), ("p50 ms", ".1f"), ("p95 ms", ".1f"), ("ratio", ".2f")],
        notes="Latency: before the body is built (and sealed) -> answer read, opened, checked.",
    )
    base = results.embeddings["plain"]
    base_p50 = p_ms(base, 50)
    embed_p50 = {}
    for variant in VARIANTS:
        values = results.embeddings[variant]
        name = "plain /v1/embeddings (baseline)" if variant == "plain" else (
            f"confidential, {variant}"
        )  # fmt: skip
        p50 = embed_p50[variant] = p_ms(values, 50)
        ratio = p50 / base_p50 if p50 is not None and base_p50 else None
        embeddings.row(name, len(values), p50, p_ms(values, 95), ratio)

    streams = report.table(
        f"2. Streamed chat ({CHAT}, max_tokens {max_tokens}, temperature 0), {chat_rounds} rounds",
        [("operation", ""), ("n", "d"), ("tokens", ""), ("first ms", ".0f"), ("total ms", ".0f"),
         ("tok/s", ".1f"), ("ratio", ".2f")],
        notes="tokens/s = completion tokens in the node's usage / (before the request is built -> "
        "stream ended, every chunk checked); median per variant. first = median time to the "
        "first event.",
    )  # fmt: skip
    rates: dict[str, float | None] = {}
    for variant in VARIANTS:
        samples = results.streams[variant]
        name = "plain /v1/chat/completions (baseline)" if variant == "plain" else (
            f"confidential, {variant}"
        )  # fmt: skip
        if not samples:
            rates[variant] = None
            streams.row(name, 0, None, None, None, None, None)
            continue
        counts = sorted({s.completion_tokens for s in samples})
        tokens = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        rate = rates[variant] = statistics.median(s.tokens_per_second for s in samples)
        plain_rate = rates.get("plain")
        streams.row(
            name, len(samples), tokens,
            statistics.median(s.first_event for s in samples) * 1000,
            statistics.median(s.seconds for s in samples) * 1000,
            rate, rate / plain_rate if plain_rate else None,
        )  # fmt: skip

    rss = report.table(
        "3. Node RSS: VmRSS of the node process + its children, MB = 10^6 bytes",
        [("reading", ""), ("processes", "d"), ("RSS MB", ".0f")],
    )
    for when, reading in memory.items():
        rss.row(f"node RSS {when}", reading.processes, reading.rss / 1e6)
    if memory:
        peak = max(m.peak for m in memory.values())
        rss.row("node process peak (VmHWM), information", 1, peak / 1e6)
    for key, count in sorted(results.failures.items()):
        report.fail(key, count)
        if why := results.first_messages.get(key):
            report.note(f"{key}: {why}")

    for variant in SUITES:
        report.ratio(
            f"node, embeddings p50 latency, confidential {variant} / plain route of the same node",
            embed_p50[variant], base_p50, baseline=plain, unit="ms",
            target=("<=", EMBED_TARGET),
        )  # fmt: skip
    for variant in SUITES:
        report.ratio(
            f"node, streamed chat tokens/s, confidential {variant} / plain route of the same node",
            rates.get(variant), rates.get("plain"), baseline=plain, unit="tokens/s",
            target=(">=", STREAM_TARGET),
        )  # fmt: skip
    if memory:
        report.measure(
            "node RSS with both embedded models loaded", max(m.rss for m in memory.values()) / 1e6,
            "MB", target=("<=", RSS_TARGET / 1e6), fmt=".0f",
        )  # fmt: skip
