"""The rate limiter's cost: ``python -m benchmarks.ratelimit [--requests 400] [--rounds 5]``.

The same request, ``GET /v1/stacks`` (authenticate + one ledger read), through real uvicorn
gateways on one SQLite ledger, three ways, interleaved round by round in one run:

- **baseline**: an admin key, which the limiter does not count (the same route and query);
- **in process**: a user key on a gateway with no Redis (``MemoryLimiter``);
- **Redis**: a user key on a gateway sharing limits through Redis (one Lua script per admission,
  one ZREM per release).

Reports the median latency per request of each and the ratio to the baseline, plus the limiter's
own cost per admission + release measured directly. Timings are reported, never asserted.
``--json PATH`` writes the run as JSON; the printed report is rendered from it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from tests.harness import ServerThread

from benchmarks.report import Report
from veil.config import GatewaySettings
from veil.gateway.app import create_gateway_app
from veil.gateway.identity import load_or_create_gateway_key
from veil.gateway.ledger import Ledger
from veil.gateway.ratelimit import Limits, MemoryLimiter, RedisLimiter

REDIS_URL = os.environ.get("VEIL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
HUGE = 2**31 - 1  # limits never reached: the cost is measured, not the refusals


TITLE = "Gateway: what the per-user rate limiter costs"
DESCRIPTION = (
    "The same authenticated `GET /v1/stacks` through a gateway, three ways, rounds interleaved: "
    "an admin key (not limited), a user limited in process, and a user limited through Redis "
    "(limits set far above the load, so every request is admitted); then the limiter's own "
    "admit + release in a loop, without HTTP."
)


def serve(settings: GatewaySettings, key_dir: Path, admin: list[str]) -> ServerThread:
    app = create_gateway_app(
        settings, load_or_create_gateway_key(key_dir), on_admin_key=admin.append
    )
    return ServerThread(app)


def timed(http: httpx.Client, url: str, key: str, n: int) -> list[float]:
    headers = {"authorization": f"Bearer {key}"}
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = http.get(f"{url}/v1/stacks", headers=headers)
        out.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    return out


async def limiter_cost(n: int, prefix: str) -> dict[str, float]:
    """Seconds per admit + release, called directly (no HTTP, no ledger)."""
    limits = Limits(HUGE, HUGE)
    result = {}
    for name, limiter in (
        ("in process", MemoryLimiter(60.0)),
        ("Redis", RedisLimiter(REDIS_URL, 60.0, prefix=prefix + "direct:")),
    ):
        try:
            started = time.perf_counter()
            for _ in range(n):
                await (await limiter.admit(1, limits)).release()
            result[name] = (time.perf_counter() - started) / n
        finally:
            await limiter.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the run as JSON here")
    args = parser.parse_args(argv)
    report = Report("ratelimit", TITLE, DESCRIPTION, sys.argv[1:] if argv is None else argv)
    prefix = f"veil:bench:rl:{secrets.token_hex(6)}:"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = f"sqlite+aiosqlite:///{root / 'ledger.db'}"
        admin: list[str] = []
        common: dict[str, Any] = {"database_url": url, "nodes": [], "rate_limit_prefix": prefix}
        servers = contextlib.ExitStack()
        memory = servers.enter_context(
            serve(GatewaySettings(data_dir=root / "a", **common), root, admin)
        )
        shared = servers.enter_context(
            serve(GatewaySettings(data_dir=root / "b", redis_url=REDIS_URL, **common), root, admin)
        )
        memory_url, redis_url = memory.url, shared.url

        async def make_user() -> str:
            ledger = await Ledger.open(url)
            try:
                user, key = await ledger.create_user(
                    "bench", requests_per_minute=HUGE, concurrency=HUGE
                )
                await ledger.create_stack(user.name, "m", 1000)
                await ledger.create_stack("admin", "m", 1000)  # the same one-row read for both
                return key
            finally:
                await ledger.close()

        user_key = asyncio.run(make_user())
        variants = {
            "baseline (no limiter)": (memory_url, admin[0]),
            "in process": (memory_url, user_key),
            "Redis": (redis_url, user_key),
        }
        samples: dict[str, list[float]] = {name: [] for name in variants}
        with httpx.Client(timeout=30) as http:
            for where, key in variants.values():  # warm up connections and caches
                timed(http, where, key, 20)
            for _ in range(args.rounds):
                for name, (where, key) in variants.items():
                    samples[name] += timed(http, where, key, args.requests)
        servers.close()
        direct = asyncio.run(limiter_cost(args.requests * args.rounds, prefix))
    baseline = report.baseline(
        "admin key",
        "the admin key's requests to the same gateway in the same rounds (the limiter does not "
        "count them). Ratio = median latency of the variant / median latency of the baseline.",
    )
    base = statistics.median(samples["baseline (no limiter)"])
    table = report.table(
        f"Rate limiter cost: GET /v1/stacks, {args.rounds} x {args.requests} per variant",
        [("variant", ""), ("median ms", ".3f"), ("ratio", ".3f"), ("limiter alone us", ".1f")],
    )
    for name, values in samples.items():
        median = statistics.median(values)
        alone = direct[name] * 1e6 if name in direct else None
        table.row(name, median * 1e3, median / base, alone)
        if name in direct:
            report.ratio(
                f"rate limiter {name}: request median latency / the unlimited baseline",
                median * 1e3, base * 1e3, baseline=baseline, unit="ms", fmt=".3f",
                detail=f"limiter alone {direct[name] * 1e6:.1f} µs",
            )  # fmt: skip
    return report.emit(args.json)


if __name__ == "__main__":
    sys.exit(main())
