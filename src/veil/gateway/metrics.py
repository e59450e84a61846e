"""Prometheus metrics of one gateway: routes, codes, models and units; never request content."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "veil_gateway_requests",
            "Requests answered, by route and wire code (OK for success).",
            ["route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "veil_gateway_request_seconds",
            "Time to response headers (streams: to the first byte).",
            ["route"],
            registry=self.registry,
        )
        self.units_charged = Counter(
            "veil_gateway_units_charged",
            "Compute units charged to stacks from signed node receipts.",
            ["model"],
            registry=self.registry,
        )
        self.ledger_latency = Histogram(
            "veil_gateway_ledger_seconds",
            "Time spent in ledger database calls, by operation.",
            ["op"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )
        self.node_latency = Histogram(
            "veil_gateway_node_seconds",
            "Time from forwarding a request to a node until its response headers.",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0),
        )
        self.expired = Counter(
            "veil_gateway_reservations_expired",
            "Reservations released because they expired.",
            registry=self.registry,
        )
        self.recovered = Counter(
            "veil_gateway_reservations_recovered",
            "Orphaned in-flight reservations (their gateway gone) charged from the node's kept "
            "receipt instead of released.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
