"""The gateway's own cost, measured: ``python -m benchmarks.gateway [--quick]``.

One ``veil node`` on the embedded models, and in front of it one ``veil gateway`` per ledger
database, one after the other: first on SQLite (a file in a temporary directory), then on a fresh
PostgreSQL database (created here and dropped afterwards). Every part is its own process on
loopback, started here from the ``veil`` command. Every request is a confidential embeddings
request (model ``all-minilm-l6-v2``, one short sentence, sealed with **veil-v2**, 128 units per
lock): cheap on purpose, so that what is measured is the gateway (authentication, ledger writes,
tickets, receipts, one more hop), not the model.

1. **Latency the gateway adds.** Round by round, interleaved (the order alternates each round), the
   same request sent (a) through the gateway, lock then request, and (b) straight to the same node
   process. The node is started trusting the tickets of both gateways and of a key this benchmark
   generates, so the direct requests carry a ticket signed here exactly as the gateway builds one
   (``veil.wire.tickets``: ``Ticket``, ``envelope_digest``, ``sign_token``), and their signed
   usage receipts are checked. Client crypto (seal, open, signature checks) and ticket signing
   for the direct path are outside every timing: only the HTTP exchanges are timed. Reported:
   p50/p95 of the direct request, of the gateway's request leg and of lock + request; the
   **overhead** is p50(gateway request leg) - p50(direct), **target <= 3 ms**. The baseline, the
   direct request, is measured in the same run, against the same node, in the same rounds.
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
loading); ``--quick``: 40 rounds and 3 x 5 s (under a minute after model loading). Exits 0 when the benchmark ran (an unmet target is reported, not a
failure) and 1 if any request failed or did not verify, or a ledger does not balance.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.load import (
    DEFAULT_POSTGRES_URL,
    EMBED,
    FIRST_MESSAGES,
    OP_TIMEOUT,
    Books,
    IntegrityFailure,
    child_env,
    create_user,
    error_code,
    free_port,
    fresh_database,
    one_request,
    percentile,
    postgres_admin_url,
    read_books,
    seal,
    units_of,
    veil_process,
    wait_healthy,
)
from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.wire.tickets import (
    RECEIPT_HEADER,
    TICKET_HEADER,
    SignatureInvalid,
    Ticket,
    UsageReceipt,
    envelope_digest,
    sign_token,
    verify_token,
)

ROOT = Path(__file__).resolve().parent.parent
PATH = "/v1/confidential/embeddings"
BODY: dict[str, Any] = {"model": EMBED, "input": "a short private sentence"}
UNITS = 128  # what each lock holds and each v2 envelope authorises (load.py's figure)
TICKET_SECONDS = 300.0  # a direct ticket's lifetime: the gateway's default node timeout
WARMUP_ROUNDS = 5
CLIENTS = 32
OVERHEAD_TARGET_MS = 3.0
RSS_TARGET_MB = 200.0


class RequestFailed(Exception):
    """A request answered with an error status (or not at all); ``code`` names it."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# -- 1. one request each way, timed --------------------------------------------------------------


@dataclass(frozen=True)
class Direct:
    """What a client needs to use the node directly, and what the gateway would put in a ticket."""

    url: str
    lock: dict[str, Any]  # lock-shaped: public_key, key_id, node_signing_public_key, stack id
    node_small_id: int
    ticket_key: Ed25519PrivateKey  # trusted by the node (--gateway-key)
    node_signer: Ed25519PublicKey


async def via_gateway(
    http: httpx.AsyncClient, gateway: str, auth: dict[str, str], seen: Counter[int]
) -> tuple[float, float, dict[str, Any]]:
    """Lock and request through the gateway; (lock seconds, request seconds, the lock)."""
    started = time.perf_counter()
    locked = await http.post(
        f"{gateway}/v1/nodes/lock", json={"model": EMBED, "max_num_tokens": UNITS}, headers=auth
    )
    lock_seconds = time.perf_counter() - started
    if locked.status_code != 200:
        raise RequestFailed(error_code(locked))
    lock = locked.json()
    envelope, opener = seal("embeddings", "v2", lock, BODY, UNITS)
    content = envelope.model_dump_json().encode()
    started = time.perf_counter()
    response = await http.post(
        f"{gateway}{PATH}", content=content, headers={**auth, "content-type": "application/json"}
    )
    request_seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RequestFailed(error_code(response))
    plaintext, sealed = opener.open(response.json())
    opener.finish()
    seen[lock["stack_small_id"]] += units_of(plaintext, sealed, "embeddings")
    return lock_seconds, request_seconds, lock


def direct_ticket(direct: Direct, content: bytes, request_id: str) -> str:
    """The ticket the gateway's ``Forwarder.ticket`` would sign for this envelope."""
    ticket = Ticket(
        ticket_id=request_id,
        stack_small_id=direct.lock["stack_small_id"],
        node_small_id=direct.node_small_id,
        units=UNITS,
        expires_at=time.time() + TICKET_SECONDS,
        envelope_sha256=envelope_digest(content),
    )
    return sign_token(ticket, direct.ticket_key)


async def straight_to_node(http: httpx.AsyncClient, direct: Direct) -> float:
    """The same request sent to the node itself with our own ticket; the request's seconds."""
    envelope, opener = seal("embeddings", "v2", direct.lock, BODY, UNITS)
    content = envelope.model_dump_json().encode()
    request_id = uuid.uuid4().hex
    headers = {"content-type": "application/json", TICKET_HEADER: direct_ticket(direct, content, request_id)}  # fmt: skip
    started = time.perf_counter()
    response = await http.post(f"{direct.url}{PATH}", content=content, headers=headers)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RequestFailed(error_code(response))
    plaintext, sealed = opener.open(response.json())
    opener.finish()
    units = units_of(plaintext, sealed, "embeddings")
    try:  # what the gateway would check before charging
        receipt = verify_token(
            response.headers.get(RECEIPT_HEADER, ""), UsageReceipt, [direct.node_signer]
        )
    except SignatureInvalid:
        raise IntegrityFailure("usage receipt") from None
    if receipt.ticket_id != request_id or receipt.compute_units != units:
        raise IntegrityFailure("usage receipt does not match the request")
    return seconds


@dataclass
class Latency:
    direct: list[float] = field(default_factory=list)
    request: list[float] = field(default_factory=list)  # the gateway's request leg
    lock_request: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    # the gateway's own timings over these rounds: name -> (mean seconds per call, calls)
    breakdown: dict[str, tuple[float, int]] = field(default_factory=dict)


async def bounded(work: Any) -> Any:
    async with asyncio.timeout(OP_TIMEOUT):
        return await work


def failure_code(exc: BaseException) -> str:
    if isinstance(exc, RequestFailed):
        return exc.code
    if isinstance(exc, IntegrityFailure):
        return "INTEGRITY"
    if isinstance(exc, TimeoutError):
        return "TIMEOUT"
    return type(exc).__name__


async def latency_rounds(
    http: httpx.AsyncClient,
    gateway: str,
    auth: dict[str, str],
    direct: Direct,
    rounds: int,
    seen: Counter[int],
) -> Latency:
    out = Latency()
    for i in range(rounds):
        order = (0, 1) if i % 2 == 0 else (1, 0)  # alternate who goes first
        for which in order:
            try:
                if which == 0:
                    lock_s, request_s, _ = await bounded(via_gateway(http, gateway, auth, seen))
                    out.request.append(request_s)
                    out.lock_request.append(lock_s + request_s)
                else:
                    out.direct.append(await bounded(straight_to_node(http, direct)))
            except (RequestFailed, IntegrityFailure, TimeoutError, httpx.HTTPError) as exc:
                out.errors[("gateway " if which == 0 else "direct ") + failure_code(exc)] += 1
    return out


# -- 2. throughput ---------------------------------------------------------------------------


@dataclass
class Throughput:
    latencies: list[float]
    errors: Counter[str]
    elapsed: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


async def throughput(one: Callable[[], Awaitable[str]], clients: int, seconds: float) -> Throughput:
    """``clients`` loops of ``one()`` (returns "OK" or an error code) until ``seconds`` passed."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:  # each request is bounded (OP_TIMEOUT)
            begun = time.perf_counter()
            code = await one()
            if code == "OK":
                latencies.append(time.perf_counter() - begun)
            else:
                errors[code] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Throughput(latencies, errors, time.perf_counter() - started)


async def gateway_load(
    gateway: str, api_key: str, clients: int, seconds: float, seen: Counter[int]
) -> Throughput:
    """Lock + request through the gateway (``load.one_request``: veil-v2 embeddings)."""
    async with http_client(api_key, clients + 4) as http:

        async def one() -> str:
            code, _ = await one_request(http, lambda: gateway, "embeddings", "v2", seen)
            return code

        return await throughput(one, clients, seconds)


async def node_load(direct: Direct, clients: int, seconds: float) -> Throughput:
    """The same request straight to the node (tickets signed here): the node's own ceiling."""
    async with http_client(None, clients + 4) as http:

        async def one() -> str:
            try:
                await bounded(straight_to_node(http, direct))
            except (RequestFailed, IntegrityFailure, TimeoutError, httpx.HTTPError) as exc:
                return failure_code(exc)
            return "OK"

        return await throughput(one, clients, seconds)


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
        return (_p(self.latency.request, 50) - _p(self.latency.direct, 50)) * 1000

    @property
    def failed(self) -> bool:
        alone = self.alone.errors if self.alone else None
        return bool(self.latency.errors or self.load.errors or alone) or not self.books.balanced


def _p(values: list[float], q: float) -> float:
    return percentile(values, q) if values else float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def http_client(api_key: str | None, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.AsyncClient(
        timeout=httpx.Timeout(OP_TIMEOUT, connect=10.0), limits=limits, headers=headers
    )


BREAKDOWN_OPS = ("authenticate", "claim", "settle")


async def gateway_timings(url: str) -> dict[str, tuple[float, float]]:
    """The gateway's own histograms: ``{name: (sum seconds, count)}`` for each ledger operation
    (``veil_gateway_ledger_seconds``) and for the node hop (``veil_gateway_node_seconds``)."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        text = (await http.get(f"{url}/metrics")).text
    labels = {"veil_gateway_ledger_seconds": "op", "veil_gateway_node_seconds": "route"}
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in labels:
            continue
        for sample in family.samples:
            index = {"_sum": 0, "_count": 1}.get(sample.name.removeprefix(family.name))
            if index is None:
                continue
            name = sample.labels[labels[family.name]]
            name = "node hop" if family.name == "veil_gateway_node_seconds" else name
            found.setdefault(name, [0.0, 0.0])[index] += sample.value
    return {name: (v[0], v[1]) for name, v in found.items()}


def timing_delta(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, int]]:
    """Mean seconds per call and number of calls between two scrapes."""
    out = {}
    for name, (total, count) in after.items():
        total0, count0 = before.get(name, (0.0, 0.0))
        if count > count0:
            out[name] = ((total - total0) / (count - count0), int(count - count0))
    return out


async def node_keys(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        response = await http.get(f"{url}/v1/keys")
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document


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
    current = next(k for k in keys["keys"] if k["status"] == "current")
    auth = {"authorization": f"Bearer {api_key}"}
    async with http_client(None, 8) as http:  # the API key goes to the gateway only
        # Warm-up (charged, so counted in ``seen``); its first lock names the stack and node ids
        # a direct ticket carries, as the gateway's would.
        _, _, lock = await bounded(via_gateway(http, gateway, auth, seen))
        direct = Direct(
            url=node,
            lock={
                "public_key": current["public_key"],
                "key_id": current["key_id"],
                "node_signing_public_key": keys["signing_public_key"],
                "stack_small_id": lock["stack_small_id"],
            },
            node_small_id=int(lock["node_small_id"]),
            ticket_key=ticket_key,
            node_signer=Ed25519PublicKey.from_public_bytes(
                base64.b64decode(keys["signing_public_key"], validate=True)
            ),
        )
        for _ in range(WARMUP_ROUNDS):
            await bounded(via_gateway(http, gateway, auth, seen))
            await bounded(straight_to_node(http, direct))
        scraped = await gateway_timings(gateway)
        latency = await latency_rounds(http, gateway, auth, direct, rounds, seen)
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
    user, api_key = asyncio.run(create_user(database_url))
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


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.2f}" if values else "-"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(runs: list[Run], rounds: int, clients: int, seconds: float) -> None:
    print(
        "\nGateway benchmark: one `veil node` (embedded models) and one `veil gateway` per ledger "
        "database, every process on loopback.\nEvery request: confidential embeddings "
        f"({EMBED}, one short sentence), veil-v2, {UNITS} units per lock: cheap on purpose,\nso "
        "the gateway, not the model, is what is measured.\n"
    )
    print(
        f"1. Latency the gateway adds: {rounds} rounds per gateway, each one request through the "
        "gateway\n   (lock, then request) and one straight to the same node with a ticket signed "
        "here, order alternating.\n   Timed: the HTTP exchanges only (client crypto and ticket "
        "signing excluded from both paths).\n"
    )
    head = f"{'path':<52} {'n':>5} {'p50 ms':>8} {'p95 ms':>8}"
    print(head)
    print("-" * len(head))
    for r in runs:
        lat = r.latency
        for name, values in (
            (f"direct to the node (baseline), {r.label} run", lat.direct),
            (f"via gateway, request leg, {r.label} ledger", lat.request),
            (f"via gateway, lock + request, {r.label} ledger", lat.lock_request),
        ):
            print(f"{name:<52} {len(values):>5} {ms(values, 50):>8} {ms(values, 95):>8}")
    print()
    for i, r in enumerate(runs):
        name = "gateway p50 overhead" if i == 0 else f"gateway p50 overhead, {r.label} ledger"
        note = f"   [request leg - direct, {r.label} ledger]" if i == 0 else ""
        print(
            f"{name}: {r.overhead_ms:.1f} ms (target <= {OVERHEAD_TARGET_MS:.0f} ms: "
            f"{verdict(r.overhead_ms <= OVERHEAD_TARGET_MS)}){note}"
        )
    extra = ", ".join(
        f"{r.label} {(_p(r.latency.lock_request, 50) - _p(r.latency.direct, 50)) * 1000:.1f} ms"
        for r in runs
    )
    print(f"lock + request p50 over direct: {extra}")
    print(
        "\nWhere the request leg's time goes, from the gateway's own histograms over the latency "
        "rounds\n(veil_gateway_ledger_seconds, veil_gateway_node_seconds; mean ms per call, and "
        "calls;\nauthenticate runs on the lock and on the request):\n"
    )
    for r in runs:
        parts = r.latency.breakdown
        shown = ", ".join(
            f"{name} {parts[name][0] * 1000:.2f} ms x{parts[name][1]}"
            for name in (*BREAKDOWN_OPS, "node hop")
            if name in parts
        )
        ledger_ms = sum(parts[n][0] for n in BREAKDOWN_OPS if n in parts) * 1000
        print(f"{r.label:<12} {shown}")
        print(
            f"{'':<12} ledger calls of one request leg (authenticate + claim + settle): "
            f"{ledger_ms:.2f} ms of the {r.overhead_ms:.1f} ms p50 overhead"
        )

    print(
        f"\n2. Lock + request throughput: {clients} concurrent clients x {seconds:.0f} s per "
        "gateway, each looping lock -> seal -> request -> open and verify.\n   req/s = requests "
        "completed OK / time until the last in-flight one ended; latency = lock to verified "
        "answer.\n"
    )
    head = f"{'setup':<34} {'ok':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8}  errors"
    print(head)
    print("-" * len(head))
    rows = [("node alone (request only, no lock)", r.alone) for r in runs if r.alone]
    rows += [(f"gateway, {r.label} ledger", r.load) for r in runs]
    for name, t in rows:
        errors = ", ".join(f"{c} x{n}" for c, n in sorted(t.errors.items())) or "none"
        print(
            f"{name:<34} {len(t.latencies):>7} {t.rate:>8.1f} "
            f"{ms(t.latencies, 50):>8} {ms(t.latencies, 95):>8}  {errors}"
        )
    print()
    rates = {r.label: r.load.rate for r in runs}
    if "SQLite" in rates and "PostgreSQL" in rates:
        ratio = rates["PostgreSQL"] / rates["SQLite"] if rates["SQLite"] else 0.0
        print(
            f"lock+request throughput, {clients} clients: SQLite {rates['SQLite']:.1f} req/s, "
            f"PostgreSQL {rates['PostgreSQL']:.1f} req/s (PostgreSQL/SQLite {ratio:.2f}x)"
        )
    else:
        print(
            f"lock+request throughput, {clients} clients: "
            + ", ".join(f"{label} {rate:.1f} req/s" for label, rate in rates.items())
        )
    for r in runs:
        if r.alone and r.alone.rate:
            print(
                f"node alone, {clients} clients: {r.alone.rate:.1f} req/s (the model's ceiling on "
                f"this machine; {r.label} gateway / node alone: {r.load.rate / r.alone.rate:.2f}x)"
            )

    print(
        "\nLedger after each gateway's run (latency rounds + load; in-flight settlement awaited)\n"
    )
    for r in runs:
        b = r.books
        print(
            f"{r.label:<12} charged {b.charged} units == signed usage seen by clients {b.seen}: "
            f"{'yes' if b.per_stack_equal else 'NO'}; reserved after: {b.reserved}; reconcile(): "
            f"{'clean' if not b.problems else f'{len(b.problems)} problem(s)'}"
        )
        for problem in b.problems[:5]:
            print(f"    {problem}")
    latency_errors = Counter[str]()
    for r in runs:
        latency_errors.update({f"{r.label} {k}": v for k, v in r.latency.errors.items()})
    if latency_errors:
        print("\nFailed latency requests: " + ", ".join(f"{k} x{v}" for k, v in sorted(latency_errors.items())))  # fmt: skip
    if FIRST_MESSAGES:
        print("\nFirst message per error code\n")
        for code, message in sorted(FIRST_MESSAGES.items()):
            print(f"{code}: {message}")

    print("\n3. Gateway memory (VmRSS of the `veil gateway` process)\n")
    for r in runs:
        print(
            f"{r.label:<12} {r.rss_before_mb:.0f} MB after the latency rounds, "
            f"{r.rss_after_mb:.0f} MB after the load"
        )
    if runs:
        worst = max(r.rss_after_mb for r in runs)
        print(
            f"\ngateway RSS after load: {worst:.0f} MB (target <= {RSS_TARGET_MB:.0f} MB: "
            f"{verdict(worst <= RSS_TARGET_MB)})   [the larger of the gateways]"
        )


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
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("VEIL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="a database on the server where this creates (and drops) its own database",
    )
    args = parser.parse_args(argv)
    rounds, seconds = (40, 5.0) if args.quick else (args.rounds, args.seconds)
    if rounds < 1 or seconds <= 0 or args.clients < 1:
        parser.error("--rounds, --seconds and --clients must be positive")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    from veil.engines import prepare_embedded_models

    admin = postgres_admin_url(args.postgres_url)  # fail before starting anything
    models_dir = Path(os.environ.get("VEIL_TEST_MODEL_DIR", ROOT / ".cache/test-models"))
    prepare_embedded_models(models_dir, progress=False)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="veil-bench-gateway-") as scratch:
        tmp = Path(scratch)
        sqlite_dir, postgres_dir = tmp / "gateway-sqlite", tmp / "gateway-postgres"
        ticket_key = Ed25519PrivateKey.generate()  # this benchmark's own "gateway" key
        trusted = [
            public_b64(load_or_create_gateway_key(sqlite_dir)),
            public_b64(load_or_create_gateway_key(postgres_dir)),
            public_b64(ticket_key),
        ]
        port, log = free_port(), tmp / "node.log"
        node_args = ["node", "--port", str(port), "--data-dir", str(tmp / "node"),
                     "--models-dir", str(models_dir), "--log-level", "warning"]  # fmt: skip
        for key in trusted:
            node_args += ["--gateway-key", key]
        print("starting `veil node` (embedded models)...", file=sys.stderr, flush=True)
        with veil_process(node_args, log, child_env(models_dir)) as node_process:
            node = f"http://127.0.0.1:{port}"
            wait_healthy(node, node_process, log)
            setup = Setup(tmp, models_dir, node, ticket_key, rounds, args.clients, seconds)
            sqlite_url = f"sqlite+aiosqlite:///{sqlite_dir / 'ledger.db'}"
            runs.append(run_gateway(setup, "SQLite", sqlite_dir, sqlite_url, node_alone=True))
            with fresh_database(admin) as postgres_url:
                runs.append(
                    run_gateway(setup, "PostgreSQL", postgres_dir, postgres_url, node_alone=False)
                )
            node_errors = error_lines(log)
    report(runs, rounds, args.clients, seconds)
    logs = ", ".join(f"{r.label} gateway {r.log_errors}" for r in runs)
    print(f"\nerror lines in the process logs: node {node_errors}, {logs}")
    return 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    raise SystemExit(130)
