"""Load, measured: ``python -m benchmarks.load [--clients 64] [--seconds 60] [--quick]``.

N concurrent clients for T seconds, each looping: lock -> seal -> confidential request -> open
and check every message (AEAD tag, response hash, the node's Ed25519 signature, clear usage equal
to the sealed usage). The mix rotates per client: embeddings, short chat (``max_tokens`` 4) and
streamed chat (``max_tokens`` 8), alternating the atoma-v1 and veil-v3 suites. Clients are one
asyncio process with one bounded ``httpx.AsyncClient`` pool; every call is bounded in time.

Two setups, each started here from the ``veil`` command, every part its own process on loopback:

(a) ``veil serve``: one gateway (SQLite ledger) and one node on the embedded models. The baseline.
(b) two ``veil gateway`` on one fresh PostgreSQL database (dropped afterwards) in front of two
    ``veil node`` that keep v3 replay state in one Redis; the clients spread their HTTP calls over
    the gateways round-robin, as a load balancer would, so a lock and its request often go
    through different gateways.

After each run, once in-flight settlement is done, the ledger must balance: units charged to the
clients' stacks == the sum of the signed usage the clients opened, nothing left reserved, and
``Ledger.reconcile()`` clean. Reports one table (throughput ratio against (a), measured in the same
run) and a latency table per request kind, as JSON with ``--json PATH`` and as text rendered from
it (``benchmarks/report.py``). Exits 1 if any request failed or the ledger does not balance.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy.engine import URL
from tests.harness import (
    TEST_MODEL_DIR,
    Suite,
    child_env,
    free_port,
    fresh_postgres_database,
    postgres_admin_url,
    postgres_url_setting,
    veil_process,
    wait_healthy,
)

from benchmarks.confidential import (
    BOOKS_COLUMNS,
    FIRST_MESSAGES,
    KINDS,
    OP_TIMEOUT,
    SUITES,
    Books,
    Kind,
    create_user,
    one_request,
    p_ms,
    read_books,
)
from benchmarks.report import Report
from veil.gateway.identity import load_or_create_gateway_key, public_b64

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TITLE = "Load: concurrent clients against one and against several gateways"
DESCRIPTION = (
    "N concurrent clients, each looping lock + sealed request + open/verify over a mix of "
    "embeddings, short chat and streamed chat (atoma-v1 and veil-v3), for T seconds; "
    "requests/s, latency percentiles, errors by code, and the ledger afterwards."
)


# -- the load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    kind: Kind
    suite: Suite
    code: str
    seconds: float
    node: int | None  # node_small_id the lock chose


@dataclass
class Load:
    samples: list[Sample]
    seen: Counter[int]
    elapsed: float


async def drive(gateways: list[str], api_key: str, clients: int, seconds: float) -> Load:
    turn = itertools.count()

    def pick() -> str:  # round-robin over the gateways, call by call, like a load balancer
        return gateways[next(turn) % len(gateways)]

    seen: Counter[int] = Counter()
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(OP_TIMEOUT, connect=10.0),
        limits=limits,
        headers={"authorization": f"Bearer {api_key}"},
    ) as http:
        for kind in KINDS:  # warm-up, one of each (charged, so counted in ``seen``)
            for suite in SUITES:
                code, _ = await one_request(http, pick, kind, suite, seen)
                if code != "OK":
                    why = FIRST_MESSAGES.get(code, "")
                    raise RuntimeError(f"warm-up {kind}/{suite} failed: {code}: {why}")
        started = time.perf_counter()
        deadline = started + seconds

        async def client(i: int) -> None:
            for j in itertools.count():  # ends at the deadline; each request is bounded in time
                if time.perf_counter() >= deadline:
                    return
                kind, suite = KINDS[(i + j) % len(KINDS)], SUITES[(i + j) % len(SUITES)]
                begun = time.perf_counter()
                code, node = await one_request(http, pick, kind, suite, seen)
                samples.append(Sample(kind, suite, code, time.perf_counter() - begun, node))

        await asyncio.gather(*(client(i) for i in range(clients)))
        return Load(samples, seen, time.perf_counter() - started)


# -- the deployments -------------------------------------------------------------------------------


@dataclass
class Deployment:
    name: str
    gateways: list[str]
    database_url: str
    logs: list[Path] = field(default_factory=list)


@contextlib.contextmanager
def single(tmp: Path, models_dir: Path) -> Iterator[Deployment]:
    """(a) ``veil serve``: gateway + one node, SQLite ledger in the data directory."""
    port, node_port = free_port(), free_port()
    data = tmp / "serve"
    log = tmp / "serve.log"
    args = ["serve", "--port", str(port), "--node-port", str(node_port), "--data-dir", str(data),
            "--log-level", "warning"]  # fmt: skip
    with veil_process(args, log, child_env(models_dir)) as process:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log)
        yield Deployment("single", [url], f"sqlite+aiosqlite:///{data / 'ledger.db'}", [log])


@contextlib.contextmanager
def cluster(
    tmp: Path, models_dir: Path, postgres_admin: URL, redis_url: str
) -> Iterator[Deployment]:
    """(b) two gateways on one PostgreSQL database, two nodes sharing Redis for replay state."""
    env = child_env(models_dir)
    with (
        fresh_postgres_database(postgres_admin, "veil_load_") as database_url,
        contextlib.ExitStack() as running,
    ):
        # Each gateway signs tickets with its own key; every node trusts both.
        trusted = [public_b64(load_or_create_gateway_key(tmp / f"gateway-{g}")) for g in range(2)]
        nodes: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        for n in range(2):
            port, log = free_port(), tmp / f"node-{n}.log"
            args = ["node", "--port", str(port), "--data-dir", str(tmp / f"node-{n}"),
                    "--models-dir", str(models_dir), "--replay-cache", redis_url,
                    "--log-level", "warning"]  # fmt: skip
            for key in trusted:
                args += ["--gateway-key", key]
            process = running.enter_context(veil_process(args, log, env))
            nodes.append((f"http://127.0.0.1:{port}", process, log))
        for url, process, log in nodes:
            wait_healthy(url, process, log)
        gateways: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        for g in range(2):  # started together: migrations run under an advisory lock
            port, log = free_port(), tmp / f"gateway-{g}.log"
            args = ["gateway", "--port", str(port), "--data-dir", str(tmp / f"gateway-{g}"),
                    "--database-url", database_url, "--log-level", "warning"]  # fmt: skip
            for url, _, _ in nodes:
                args += ["--node", url]
            process = running.enter_context(veil_process(args, log, env))
            gateways.append((f"http://127.0.0.1:{port}", process, log))
        for url, process, log in gateways:
            wait_healthy(url, process, log)
        yield Deployment(
            "cluster",
            [url for url, _, _ in gateways],
            database_url,
            [log for _, _, log in nodes + gateways],
        )


# -- one run and the report ------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    load: Load
    books: Books

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.load.samples if s.code == "OK"]

    @property
    def errors(self) -> Counter[str]:
        return Counter(s.code for s in self.load.samples if s.code != "OK")

    @property
    def throughput(self) -> float:
        return len(self.ok) / self.load.elapsed if self.load.elapsed else 0.0


def run(deployment: Deployment, label: str, clients: int, seconds: float) -> Result:
    user, key = asyncio.run(create_user(deployment.database_url))
    load = asyncio.run(drive(deployment.gateways, key, clients, seconds))
    books = asyncio.run(read_books(deployment.database_url, user, load.seen))
    return Result(label, load, books)


def report_load(report: Report, results: list[Result], clients: int, seconds: float) -> None:
    baseline = report.baseline(
        "(a) veil serve",
        "`veil serve` (one gateway, SQLite ledger, one node), started and measured in the same "
        "run. Ratio = (b) requests/s / (a) requests/s.",
    )
    table = report.table(
        f"Load: {clients} concurrent clients x {seconds:.0f} s",
        [
            ("setup", ""),
            ("ok", "d"),
            ("req/s", ".2f"),
            ("p50 ms", ".0f"),
            ("p95 ms", ".0f"),
            ("p99 ms", ".0f"),
            ("ratio", ".2f"),
            ("errors", ""),
        ],
        notes="One request = lock + sealed request + open and verify. Mix per client: "
        "embeddings, chat (max_tokens 4), streamed chat (max_tokens 8); atoma-v1 and veil-v3 "
        "alternating. req/s = requests completed OK / time from the first request until the last "
        "in-flight one ended; latency = from the lock to the last byte, checked.",
    )
    first = results[0].throughput if results else 0.0
    for r in results:
        latencies = [s.seconds for s in r.ok]
        errors = ", ".join(f"{code} x{n}" for code, n in sorted(r.errors.items())) or "none"
        table.row(r.label, len(r.ok), r.throughput, p_ms(latencies, 50), p_ms(latencies, 95),
                  p_ms(latencies, 99), r.throughput / first if first else None, errors)  # fmt: skip
        for code, count in r.errors.items():
            report.fail(f"{r.label}: {code}", count)
    kinds = report.table(
        "Latency by request kind, ms (p50 / p95)",
        [("setup", "")] + [(f"{kind} {q}", ".0f") for kind in KINDS for q in ("p50", "p95")],
    )
    for r in results:
        cells = []
        for kind in KINDS:
            values = [s.seconds for s in r.ok if s.kind == kind]
            cells += [p_ms(values, 50), p_ms(values, 95)]
        kinds.row(r.label, *cells)
    nodes = report.table("Requests served per node", [("setup", ""), ("node_small_id: count", "")])
    for r in results:
        per_node = Counter(s.node for s in r.ok if s.node is not None)
        nodes.row(r.label, ", ".join(f"{n}: {c}" for n, c in sorted(per_node.items())))
    books = report.table("Ledger after the run (in-flight settlement awaited)", BOOKS_COLUMNS)
    for r in results:
        books.row(*r.books.row(r.label))
        for problem in r.books.problems[:5]:
            report.note(f"{r.label}: {problem}")
    for code, message in sorted(FIRST_MESSAGES.items()):
        report.note(f"first message for {code}: {message}")

    if results and results[0].label.startswith("(a)"):
        report.measure("load, `veil serve` (1 gateway + 1 node)", results[0].throughput,
                       "requests/s", baseline=baseline, detail="the baseline")  # fmt: skip
    if len(results) == 2:
        report.ratio(
            "load, 2 gateways x 2 nodes on PostgreSQL / `veil serve`, requests/s",
            results[1].throughput, first, baseline=baseline, unit="requests/s",
            detail="on the same 2 cores",
        )  # fmt: skip
    if results:
        exact = all(r.books.balanced for r in results)
        report.measure(
            "ledger setups that balance exactly after load (charged == signed usage, 0 reserved, "
            "reconcile clean)", sum(r.books.balanced for r in results), "of "
            f"{len(results)}", fmt="d", target=("==", len(results)),
            detail="exact in every setup" if exact else "does NOT balance: see the table",
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description="Load: N clients for T seconds."
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="8 clients x 10 s")
    parser.add_argument("--only", choices=["single", "cluster"], default=None)
    parser.add_argument(
        "--postgres-url",
        default=postgres_url_setting(),
        help="a database on the server where (b) creates and drops its own database",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("VEIL_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    )
    parser.add_argument("--json", type=Path, default=None, help="write the run as JSON here")
    args = parser.parse_args(argv)
    clients, seconds = (8, 10.0) if args.quick else (args.clients, args.seconds)
    if clients < 1 or seconds <= 0:
        parser.error("--clients and --seconds must be positive")
    report = Report("load", TITLE, DESCRIPTION, sys.argv[1:] if argv is None else argv)

    from veil.engines import prepare_embedded_models

    models_dir = TEST_MODEL_DIR
    prepare_embedded_models(models_dir, progress=False)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="veil-load-") as scratch:
        tmp = Path(scratch)
        if args.only in (None, "single"):
            print("(a) starting `veil serve` (gateway + node, SQLite)...", file=sys.stderr)
            (tmp / "a").mkdir()
            with single(tmp / "a", models_dir) as deployment:
                results.append(
                    run(deployment, "(a) veil serve: 1 gateway + 1 node", clients, seconds)
                )
        if args.only in (None, "cluster"):
            admin = postgres_admin_url(args.postgres_url)
            print("(b) starting 2 nodes + 2 gateways on PostgreSQL...", file=sys.stderr)
            (tmp / "b").mkdir()
            with cluster(tmp / "b", models_dir, admin, args.redis_url) as deployment:
                label = "(b) 2 gateways x 2 nodes, PostgreSQL"
                results.append(run(deployment, label, clients, seconds))
    report_load(report, results, clients, seconds)
    return report.emit(args.json, ok=all(r.books.balanced for r in results))


if __name__ == "__main__":
    raise SystemExit(main())
