"""Prometheus metrics of one node. Labels carry routes, codes and model ids, never request content."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "veil_node_requests",
            "Requests answered, by route and wire code (OK for success).",
            ["route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "veil_node_request_seconds",
            "Time from request to response headers (streams: to the first chunk).",
            ["route"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "veil_node_tokens",
            "Tokens (images: pixels) processed, by model and direction.",
            ["model", "direction"],
            registry=self.registry,
        )
        self.stream_chunks = Counter(
            "veil_node_stream_chunks",
            "Sealed stream chunks sent.",
            ["route"],
            registry=self.registry,
        )

    def count_usage(self, model: str, usage: dict[str, int] | None) -> None:
        if not usage:
            return
        self.tokens.labels(model, "prompt").inc(usage.get("prompt_tokens", 0))
        self.tokens.labels(model, "completion").inc(usage.get("completion_tokens", 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
