"""The gateway's own cost, measured: ``python -m benchmarks.gateway [--quick]``.

One ``veil node`` on the embedded models, and in front of it one ``veil gateway`` per ledger
database, one after the other: first on SQLite (a file in a temporary directory), then on a fresh
PostgreSQL database (created here and dropped afterwards). Every part is its own process on
loopback, started here from the ``veil`` command. Every request is a confidential embeddings
request (one short sentence, sealed with **veil-v3**, 128 units per lock). The latency rounds use
the node's second embeddings model, an upstream served by the vLLM stand-in
(``benchmarks/upstream_standin.py``: a stand-in for vLLM on a GPU, which answers in about a
millisecond), so that what is measured is the gateway (authentication, ledger writes, tickets,
receipts, one more hop) and not the jitter of a CPU model, which moves a request by several
milliseconds from one round to the next and would swamp a p99 of differences. The load uses the
embedded model ``all-minilm-l6-v2``, real work on this CPU.

1. **Latency the gateway adds.** Round by round, interleaved (the order alternates each round), the
   same request sent (a) through the gateway, lock then request, and (b) straight to the same node
   process. The node is started trusting the tickets of both gateways and of a key this benchmark
   generates, so the direct requests carry a ticket signed here exactly as the gateway builds one
   (``tests.harness.sign_ticket``, from ``veil.wire.tickets``' pieces), and their signed
   usage receipts are checked. Client crypto (seal, open, signature checks) and ticket signing
   for the direct path are outside every timing: only the HTTP exchanges are timed. Reported:
   p50/p95/p99 of the direct request, of the gateway's request leg and of lock + request; the
   **overhead** is p50(gateway request leg) - p50(direct), **target <= 3 ms**; at the tail, the
   p99 over the rounds of (request leg - direct request of the same round), **target <= 6 ms**.
   The baseline, the direct request, is measured in the same run, against the same node, in the
   same rounds.
2. **Lock + request throughput**: 32 concurrent clients (one asyncio loop, one ``httpx.AsyncClient``
   pool) each looping lock -> seal -> request -> open and verify (AEAD, response hash, the node's
   Ed25519 signature, clear usage == sealed usage) for T seconds; requests/s, p50/p95 latency and
   errors by code, per ledger database; the ratio PostgreSQL/SQLite is from the same run. After
   each run the ledger must balance: units charged == the sum of the signed usage the clients
   opened, nothing left reserved once settled, ``Ledger.reconcile()`` clean. For scale, once (in
   the SQLite run, before its gateway load) the same clients send the same request straight to the
   node for T seconds (no lock, tickets signed here): the node's own ceiling on this machine, so a
   reader can tell whether the gateway or the model limited the gateway's figure.
3. **Gateway memory**: the gateway process's resident set (``VmRSS`` in ``/proc/PID/status``) after
   the load, **target <= 200 MB**.

Defaults: 200 latency rounds per gateway and 3 x 20 s of load (about 2-3 minutes with model
loading); ``--quick``: 40 rounds and 3 x 5 s (under a minute after model loading). ``--json PATH``
writes the run as JSON; the printed report is rendered from it. Exits 0 when the benchmark ran (an
unmet target is reported, not a failure) and 1 if any request failed or did not verify, or a ledger
does not balance.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import signal
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.harness import (
    TEST_MODEL_DIR,
    NodeKeys,
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
    CHAT,
    EMBED,
    FIRST_MESSAGES,
    Books,
    create_user,
    p_ms,
    read_books,
)
from benchmarks.gateway_requests import (
    BREAKDOWN_OPS,
    CLIENTS,
    OVERHEAD_P99_TARGET_MS,
    OVERHEAD_TARGET_MS,
    RSS_TARGET_MB,
    UNITS,
    WARMUP_ROUNDS,
    Direct,
    Latency,
    Throughput,
    bounded,
    gateway_load,
    gateway_timings,
    http_client,
    latency_rounds,
    node_keys,
    node_load,
    percentile_or_nan,
    straight_to_node,
    timing_delta,
    via_gateway,
)
from benchmarks.memory import rss_mb
from benchmarks.report import Report
from benchmarks.standin_deploy import standin_server
from benchmarks.upstream_standin import EMBED_MODEL as LATENCY_MODEL
from veil.gateway.identity import load_or_create_gateway_key, public_b64

TITLE = "Gateway: the latency it adds, lock + request throughput, memory"
DESCRIPTION = (
    "One `veil node` and one `veil gateway` per ledger database (SQLite, then a fresh PostgreSQL "
    "database); confidential veil-v3 embeddings requests. 1) Latency of the request leg through "
    "the gateway against the same request sent straight to the node with a ticket the benchmark "
    "signs, rounds interleaved, on the node's upstream embeddings model (the vLLM stand-in, about "
    "a millisecond a request, so that the gateway and not a CPU model's jitter is measured); "
    "2) 32 clients looping lock + request (the embedded all-minilm-l6-v2) for T seconds "
    "(requests/s, p50/p95, errors by code, the ledger afterwards); 3) the gateway's RSS after "
    "the load."
)


# -- one gateway, both measurements -----------------------------------------------------------


@dataclass
class Run:
    label: str
    latency: Latency
    alone: Throughput | None  # the node without a gateway, same clients and seconds
    load: Throughput
    books: Books
    rss_before_mb: float
    rss_after_mb: float
    log_errors: int  # ERROR / Traceback lines in the gateway's log

    @property
    def overhead_ms(self) -> float:
        return (
            percentile_or_nan(self.latency.request, 50) - percentile_or_nan(self.latency.direct, 50)
        ) * 1000

    @property
    def overhead_p99_ms(self) -> float:
        """p99 of what each round's request leg took over that round's direct request (a
        difference of two p99s of a few dozen noisy samples says little, and can go negative)."""
        paired = [g - d for g, d in zip(self.latency.request, self.latency.direct, strict=False)]
        return percentile_or_nan(paired, 99) * 1000

    @property
    def failed(self) -> bool:
        alone = self.alone.errors if self.alone else None
        return bool(self.latency.errors or self.load.errors or alone) or not self.books.balanced


async def measure(
    gateway: str,
    api_key: str,
    node: str,
    ticket_key: Ed25519PrivateKey,
    rounds: int,
    clients: int,
    seconds: float,
    pid: int,
    seen: Counter[int],
    node_alone: bool,
) -> tuple[Latency, Throughput | None, Throughput, float]:
    keys = await node_keys(node)
    current = NodeKeys.from_keys_document(keys)
    auth = {"authorization": f"Bearer {api_key}"}
    async with http_client(None, 8) as http:  # the API key goes to the gateway only
        # Warm-up (charged, so counted in ``seen``); its first lock names the stack and node ids
        # a direct ticket carries, as the gateway's would.
        _, _, lock = await bounded(via_gateway(http, gateway, auth, seen, LATENCY_MODEL))
        direct = Direct(
            url=node,
            lock={
                "public_key": base64.b64encode(current.public_key).decode(),
                "key_id": current.key_id,
                "kem_public_key": base64.b64encode(current.kem_public_key or b"").decode(),
                "kem_key_id": current.kem_key_id,
                "node_signing_public_key": keys["signing_public_key"],
                "stack_small_id": lock["stack_small_id"],
            },
            node_small_id=int(lock["node_small_id"]),
            ticket_key=ticket_key,
            node_signer=current.signing_key,
        )
        for _ in range(WARMUP_ROUNDS):
            await bounded(via_gateway(http, gateway, auth, seen, LATENCY_MODEL))
            await bounded(straight_to_node(http, direct, LATENCY_MODEL))
            await bounded(via_gateway(http, gateway, auth, seen))  # the load's model, warm too
        scraped = await gateway_timings(gateway)
        latency = await latency_rounds(http, gateway, auth, direct, rounds, seen, LATENCY_MODEL)
        latency.breakdown = timing_delta(scraped, await gateway_timings(gateway))
    rss_before = rss_mb(pid)
    alone = await node_load(direct, clients, seconds) if node_alone else None
    load = await gateway_load(gateway, api_key, clients, seconds, seen)
    return latency, alone, load, rss_before


@dataclass
class Setup:
    tmp: Path
    models_dir: Path
    node: str
    ticket_key: Ed25519PrivateKey
    rounds: int
    clients: int
    seconds: float


def run_gateway(
    setup: Setup, label: str, data_dir: Path, database_url: str, *, node_alone: bool
) -> Run:
    user, api_key = asyncio.run(create_user(database_url, (CHAT, EMBED, LATENCY_MODEL)))
    port, log = free_port(), setup.tmp / f"gateway-{label}.log"
    args = ["gateway", "--port", str(port), "--data-dir", str(data_dir),
            "--database-url", database_url, "--node", setup.node, "--log-level", "warning"]  # fmt: skip
    print(f"starting `veil gateway` on {label}...", file=sys.stderr, flush=True)
    with veil_process(args, log, child_env(setup.models_dir)) as process:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log)
        seen: Counter[int] = Counter()
        latency, alone, load, rss_before = asyncio.run(
            measure(url, api_key, setup.node, setup.ticket_key, setup.rounds, setup.clients,
                    setup.seconds, process.pid, seen, node_alone)
        )  # fmt: skip
        rss_after = rss_mb(process.pid)
        books = asyncio.run(read_books(database_url, user, seen))
    return Run(label, latency, alone, load, books, rss_before, rss_after, error_lines(log))


def error_lines(log: Path) -> int:
    """Lines of a process log that report an error (the processes log at level warning)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if "ERROR" in line or "Traceback" in line)


# -- the report --------------------------------------------------------------------------------


def report_gateway(
    report: Report, runs: list[Run], rounds: int, clients: int, seconds: float
) -> None:
    direct = report.baseline(
        "direct to the node",
        "the same request sent directly to the same node process in the same rounds, with a "
        "ticket signed here; overhead = p50 via gateway - p50 direct.",
    )
    sqlite = report.baseline(
        "SQLite ledger",
        "the gateway on a SQLite ledger, measured in the same run: ratio = PostgreSQL req/s / "
        "SQLite req/s; the node alone under the same clients, for scale.",
    )
    latency = report.table(
        f"1. Latency the gateway adds: {rounds} rounds per gateway, one request through the "
        "gateway (lock, then request) and one straight to the node, order alternating",
        [("path", ""), ("n", "d"), ("p50 ms", ".2f"), ("p95 ms", ".2f"), ("p99 ms", ".2f")],
        notes=f"Every request: confidential embeddings ({LATENCY_MODEL}, the node's upstream on "
        f"the vLLM stand-in, one short sentence), veil-v3, {UNITS} units per lock. Timed: the "
        "HTTP exchanges only (client crypto and ticket signing excluded from both paths).",
    )
    for r in runs:
        lat = r.latency
        for name, values in (
            (f"direct to the node (baseline), {r.label} run", lat.direct),
            (f"via gateway, request leg, {r.label} ledger", lat.request),
            (f"via gateway, lock + request, {r.label} ledger", lat.lock_request),
        ):
            latency.row(name, len(values), p_ms(values, 50), p_ms(values, 95), p_ms(values, 99))
        for key, count in lat.errors.items():
            report.fail(f"{r.label} latency {key}", count)
    overhead = report.table(
        "p50 over direct, and where the request leg's time goes (the gateway's own histograms "
        "veil_gateway_ledger_seconds and veil_gateway_node_seconds over the latency rounds: mean "
        "ms per call; authenticate runs on the lock and on the request)",
        [("ledger", ""), ("request leg ms", ".1f"), ("lock + request ms", ".1f"),
         *[(f"{op} ms", ".2f") for op in (*BREAKDOWN_OPS, "node hop")],
         ("ledger calls ms", ".2f")],
    )  # fmt: skip
    for r in runs:
        parts = r.latency.breakdown
        lock_over = (
            percentile_or_nan(r.latency.lock_request, 50) - percentile_or_nan(r.latency.direct, 50)
        ) * 1000
        means = [
            parts[op][0] * 1000 if op in parts else None for op in (*BREAKDOWN_OPS, "node hop")
        ]
        ledger_ms = sum(parts[n][0] for n in BREAKDOWN_OPS if n in parts) * 1000
        overhead.row(r.label, r.overhead_ms, lock_over, *means, ledger_ms)

    throughput = report.table(
        f"2. Lock + request throughput: {clients} concurrent clients x {seconds:.0f} s per gateway",
        [("setup", ""), ("ok", "d"), ("req/s", ".1f"), ("p50 ms", ".2f"), ("p95 ms", ".2f"),
         ("errors", "")],
        notes="Each client loops lock -> seal -> request -> open and verify. req/s = requests "
        "completed OK / time until the last in-flight one ended; latency = lock to verified answer.",
    )  # fmt: skip
    rows = [("node alone (request only, no lock)", r.alone) for r in runs if r.alone]
    rows += [(f"gateway, {r.label} ledger", r.load) for r in runs]
    for name, t in rows:
        errors = ", ".join(f"{c} x{n}" for c, n in sorted(t.errors.items())) or "none"
        throughput.row(name, len(t.latencies), t.rate, p_ms(t.latencies, 50),
                       p_ms(t.latencies, 95), errors)  # fmt: skip
        for code, count in t.errors.items():
            report.fail(f"{name}: {code}", count)
    books = report.table(
        "Ledger after each gateway's run (latency rounds + load; in-flight settlement awaited)",
        BOOKS_COLUMNS,
    )
    for r in runs:
        books.row(*r.books.row(r.label))
        for problem in r.books.problems[:5]:
            report.note(f"{r.label}: {problem}")
    for code, message in sorted(FIRST_MESSAGES.items()):
        report.note(f"first message for {code}: {message}")
    memory = report.table(
        "3. Gateway memory (VmRSS of the `veil gateway` process)",
        [("ledger", ""), ("after the latency rounds MB", ".0f"), ("after the load MB", ".0f")],
    )
    for r in runs:
        memory.row(r.label, r.rss_before_mb, r.rss_after_mb)

    for r in runs:  # one headline per ledger (stable ids: benchmarks/report.py KNOWN_IDS)
        report.measure(
            "latency the gateway adds to a confidential embeddings request (p50, request leg "
            f"against the same request sent to the node directly), {r.label} ledger",
            r.overhead_ms, "ms", baseline=direct, target=("<=", OVERHEAD_TARGET_MS),
        )  # fmt: skip
        report.measure(
            "p99 latency the gateway adds to a confidential embeddings request (p99 over the "
            f"rounds of request leg - direct in the same round), {r.label} ledger",
            r.overhead_p99_ms, "ms", baseline=direct, target=("<=", OVERHEAD_P99_TARGET_MS),
        )  # fmt: skip
    rates = {r.label: r.load.rate for r in runs}
    alone = next((r.alone.rate for r in runs if r.alone), None)
    if "SQLite" in rates and "PostgreSQL" in rates:
        detail = f"SQLite {rates['SQLite']:.1f} req/s, PostgreSQL {rates['PostgreSQL']:.1f} req/s"
        if alone:
            detail += f"; the node alone, same clients: {alone:.1f} req/s"
        report.ratio(
            f"lock + request through the gateway, {clients} clients, PostgreSQL / SQLite",
            rates["PostgreSQL"], rates["SQLite"], baseline=sqlite, unit="req/s", detail=detail,
        )  # fmt: skip
    if runs:
        report.measure(
            "gateway memory after the load (RSS, the larger of the gateways)",
            max(r.rss_after_mb for r in runs), "MB", target=("<=", RSS_TARGET_MB), fmt=".0f",
        )  # fmt: skip
        report.measure(
            "ledgers that balance exactly after the gateway runs (charged == signed usage, 0 "
            "reserved, reconcile clean)", sum(r.books.balanced for r in runs), f"of {len(runs)}",
            fmt="d", target=("==", len(runs)),
        )  # fmt: skip


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: processes and database go


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gateway",
        description="Latency the gateway adds, lock+request throughput on SQLite and PostgreSQL, "
        "and the gateway's memory.",
    )
    parser.add_argument("--quick", action="store_true", help="40 rounds and 5 s of load")
    parser.add_argument("--rounds", type=int, default=200, help="latency rounds per gateway")
    parser.add_argument("--seconds", type=float, default=20.0, help="load seconds per gateway")
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--json", type=Path, default=None, help="write the run as JSON here")
    parser.add_argument(
        "--postgres-url",
        default=postgres_url_setting(),
        help="a database on the server where this creates (and drops) its own database",
    )
    args = parser.parse_args(argv)
    rounds, seconds = (40, 5.0) if args.quick else (args.rounds, args.seconds)
    if rounds < 1 or seconds <= 0 or args.clients < 1:
        parser.error("--rounds, --seconds and --clients must be positive")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    report = Report("gateway", TITLE, DESCRIPTION, sys.argv[1:] if argv is None else argv)

    from veil.engines import prepare_embedded_models

    admin = postgres_admin_url(args.postgres_url)  # fail before starting anything
    models_dir = TEST_MODEL_DIR
    prepare_embedded_models(models_dir, progress=False)
    runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory(prefix="veil-bench-gateway-") as scratch,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(scratch)
        sqlite_dir, postgres_dir = tmp / "gateway-sqlite", tmp / "gateway-postgres"
        ticket_key = Ed25519PrivateKey.generate()  # this benchmark's own "gateway" key
        trusted = [
            public_b64(load_or_create_gateway_key(sqlite_dir)),
            public_b64(load_or_create_gateway_key(postgres_dir)),
            public_b64(ticket_key),
        ]
        port, log = free_port(), tmp / "node.log"
        upstream, _ = stack.enter_context(standin_server(tmp, 0.0, True))
        node_args = ["node", "--port", str(port), "--data-dir", str(tmp / "node"),
                     "--models-dir", str(models_dir), "--log-level", "warning",
                     "--upstream", f"embeddings:{LATENCY_MODEL}={upstream}"]  # fmt: skip
        for key in trusted:
            node_args += ["--gateway-key", key]
        print("starting `veil node` (embedded models)...", file=sys.stderr, flush=True)
        with veil_process(node_args, log, child_env(models_dir)) as node_process:
            node = f"http://127.0.0.1:{port}"
            wait_healthy(node, node_process, log)
            setup = Setup(tmp, models_dir, node, ticket_key, rounds, args.clients, seconds)
            sqlite_url = f"sqlite+aiosqlite:///{sqlite_dir / 'ledger.db'}"
            runs.append(run_gateway(setup, "SQLite", sqlite_dir, sqlite_url, node_alone=True))
            with fresh_postgres_database(admin, "veil_gw_") as postgres_url:
                runs.append(
                    run_gateway(setup, "PostgreSQL", postgres_dir, postgres_url, node_alone=False)
                )
            node_errors = error_lines(log)
    report_gateway(report, runs, rounds, args.clients, seconds)
    logs = ", ".join(f"{r.label} gateway {r.log_errors}" for r in runs)
    report.note(f"error lines in the process logs: node {node_errors}, {logs}")
    return report.emit(args.json, ok=not any(r.failed for r in runs))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
