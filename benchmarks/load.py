"""Load, measured: ``python -m benchmarks.load [--clients 64] [--seconds 60] [--quick]``.

N concurrent clients for T seconds, each looping: lock -> seal -> confidential request -> open
and check every message (AEAD tag, response hash, the node's Ed25519 signature, clear usage equal
to the sealed usage). The mix rotates per client: embeddings, short chat (``max_tokens`` 4) and
streamed chat (``max_tokens`` 8), alternating the atoma-v1 and veil-v2 suites. Clients are one
asyncio process with one bounded ``httpx.AsyncClient`` pool; every call is bounded in time.

Two setups, each started here from the ``veil`` command, every part its own process on loopback:

(a) ``veil serve``: one gateway (SQLite ledger) and one node on the embedded models. The baseline.
(b) two ``veil gateway`` on one fresh PostgreSQL database (dropped afterwards) in front of two
    ``veil node`` that keep v2 replay state in one Redis; the clients spread their HTTP calls over
    the gateways round-robin, as a load balancer would, so a lock and its request often go
    through different gateways.

After each run, once in-flight settlement is done, the ledger must balance: units charged to the
clients' stacks == the sum of the signed usage the clients opened, nothing left reserved, and
``Ledger.reconcile()`` clean. Prints one table (throughput ratio against (a), measured in the same
run) and a latency table per request kind. Exits 1 if any request failed or the ledger does not
balance.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from veil.gateway.identity import load_or_create_gateway_key, public_b64
from veil.gateway.ledger import Ledger
from veil.hazmat import v1, v2
from veil.wire.envelopes import ConfidentialComputeRequest, ConfidentialComputeResponse
from veil.wire.errors import DecryptionFailed

ROOT = Path(__file__).resolve().parent.parent
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
UNITS = {CHAT: 256, EMBED: 128}  # what each lock holds; prompt + completion fit well inside
STACK_UNITS = 10**9
OP_TIMEOUT = 240.0  # one lock + request, end to end (below the gateway's 300 s node timeout)
START_TIMEOUT = 600.0  # a node loading its models on a busy machine
SETTLE_TIMEOUT = 60.0
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PROMPT = [{"role": "user", "content": "Write one short sentence about the sea."}]

Kind = Literal["embeddings", "chat", "stream"]
Suite = Literal["v1", "v2"]
KINDS: tuple[Kind, ...] = ("embeddings", "chat", "stream")
SUITES: tuple[Suite, ...] = ("v1", "v2")
PATHS: dict[Kind, str] = {
    "embeddings": "/v1/confidential/embeddings",
    "chat": "/v1/confidential/chat/completions",
    "stream": "/v1/confidential/chat/completions",
}


class IntegrityFailure(Exception):
    """An answer failed a client-side check (never expected; counted as INTEGRITY)."""


# -- one confidential request ------------------------------------------------------------------


def request_body(kind: Kind) -> dict[str, Any]:
    if kind == "embeddings":
        return {"model": EMBED, "input": "a short private sentence"}
    if kind == "chat":
        return {"model": CHAT, "messages": PROMPT, "max_tokens": 4}
    return {"model": CHAT, "messages": PROMPT, "max_tokens": 8, "stream": True}


class Opener:
    """Opens one answer of either suite, checking the node's signature on every message."""

    def __init__(self, session: v1.Session | v2.ClientSession, signer: Ed25519PublicKey) -> None:
        self.session = session
        self.signer = signer

    def open(self, document: Any) -> tuple[dict[str, Any], ConfidentialComputeResponse]:
        try:
            sealed = ConfidentialComputeResponse.model_validate(document)
            if isinstance(self.session, v1.Session):
                plaintext = v1.open_response(self.session, sealed)
            else:
                plaintext = self.session.open(sealed)
            if sealed.signature is None or sealed.response_hash is None:
                raise IntegrityFailure("unsigned message")
            self.signer.verify(sealed.signature, sealed.response_hash)
            return json.loads(plaintext), sealed
        except (DecryptionFailed, InvalidSignature, ValueError) as exc:
            raise IntegrityFailure(type(exc).__name__) from None

    def finish(self) -> None:
        if isinstance(self.session, v2.ClientSession):
            try:
                self.session.finish()
            except DecryptionFailed as exc:
                raise IntegrityFailure("truncated stream") from exc


def units_of(plaintext: dict[str, Any], sealed: ConfidentialComputeResponse, kind: Kind) -> int:
    """Units the signed usage says, after checking that the clear usage is the sealed one."""
    inside, clear = plaintext.get("usage"), sealed.usage
    if not isinstance(inside, dict) or clear is None:
        raise IntegrityFailure("no usage")
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        if getattr(clear, name) != inside.get(name, 0):
            raise IntegrityFailure("clear usage differs from the sealed usage")
    return clear.prompt_tokens if kind == "embeddings" else clear.total_tokens


def seal(
    kind: Kind, suite: Suite, lock: dict[str, Any], body: dict[str, Any], units: int
) -> tuple[ConfidentialComputeRequest, Opener]:
    """Seal ``body`` to the node of ``lock`` in ``suite`` (v2 carries ``units`` as its
    authenticated ``num_compute_units``), and the opener for its answer."""
    node_key = _b64(lock["public_key"])
    signer = Ed25519PublicKey.from_public_bytes(_b64(lock["node_signing_public_key"]))
    raw = json.dumps(body).encode()
    stream = None if kind == "embeddings" else kind == "stream"
    session: v1.Session | v2.ClientSession
    if suite == "v1":
        envelope, session = v1.seal_request(
            node_key, raw, model_name=body["model"], stack_small_id=lock["stack_small_id"],
            stream=stream,
        )  # fmt: skip
    else:
        envelope, session = v2.seal_request(
            node_key, lock["key_id"], raw, endpoint=PATHS[kind], model_name=body["model"],
            stack_small_id=lock["stack_small_id"], num_compute_units=units, stream=stream,
        )  # fmt: skip
    return envelope, Opener(session, signer)


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


FIRST_MESSAGES: dict[str, str] = {}
"""The first error message seen for each error code (for the report: why it failed)."""


def error_code(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError):
        code, message = f"HTTP_{response.status_code}", response.text[:200]
    FIRST_MESSAGES.setdefault(code, message)
    return code


async def read_stream(response: httpx.Response, opener: Opener, kind: Kind) -> int:
    last: tuple[dict[str, Any], ConfidentialComputeResponse] | None = None
    async for line in response.aiter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            last = opener.open(json.loads(line[len("data: ") :]))
    opener.finish()
    if last is None:
        raise IntegrityFailure("empty stream")
    return units_of(*last, kind)


async def one_request(
    http: httpx.AsyncClient, pick: Callable[[], str], kind: Kind, suite: Suite, seen: Counter[int]
) -> tuple[str, int | None]:
    """Lock, seal, send, open, check. Returns "OK" or an error code, and the node the lock chose;
    adds the usage to ``seen``."""
    model = EMBED if kind == "embeddings" else CHAT
    node: int | None = None
    try:
        async with asyncio.timeout(OP_TIMEOUT):
            locked = await http.post(
                f"{pick()}/v1/nodes/lock", json={"model": model, "max_num_tokens": UNITS[model]}
            )
            if locked.status_code != 200:
                return error_code(locked), node
            lock = locked.json()
            node = int(lock["node_small_id"])
            envelope, opener = seal(kind, suite, lock, request_body(kind), UNITS[model])
            content = envelope.model_dump_json()
            url = f"{pick()}{PATHS[kind]}"
            headers = {"content-type": "application/json"}
            if kind == "stream":
                async with http.stream("POST", url, content=content, headers=headers) as response:
                    if response.status_code != 200:
                        await response.aread()
                        return error_code(response), node
                    units = await read_stream(response, opener, kind)
            else:
                response = await http.post(url, content=content, headers=headers)
                if response.status_code != 200:
                    return error_code(response), node
                plaintext, sealed = opener.open(response.json())
                opener.finish()
                units = units_of(plaintext, sealed, kind)
    except TimeoutError:
        return "TIMEOUT", node
    except httpx.HTTPError as exc:
        return type(exc).__name__, node
    except IntegrityFailure:
        return "INTEGRITY", node
    seen[lock["stack_small_id"]] += units
    return "OK", node


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


# -- the ledger after the run ----------------------------------------------------------------------


@dataclass
class Books:
    charged: int
    seen: int
    per_stack_equal: bool
    reserved: int
    problems: list[str]
    waited: float

    @property
    def balanced(self) -> bool:
        return self.per_stack_equal and self.reserved == 0 and not self.problems


async def create_user(database_url: str) -> tuple[str, str]:
    ledger = await Ledger.open(database_url)
    try:
        # One key drives every client: limits far above any load this machine can make, so the
        # benchmark measures throughput, not the rate limiter (benchmarks/ratelimit.py does).
        user, key = await ledger.create_user(
            f"load-{secrets.token_hex(4)}", requests_per_minute=2**31 - 1, concurrency=100_000
        )
        for model in (CHAT, EMBED):
            await ledger.create_stack(user.name, model, STACK_UNITS)
        return user.name, key
    finally:
        await ledger.close()


async def read_books(database_url: str, user: str, seen: Counter[int]) -> Books:
    """Wait (bounded) for in-flight settlement, then compare the ledger with what clients saw."""
    ledger = await Ledger.open(database_url)
    try:
        started = time.monotonic()
        stacks = await ledger.list_stacks(user)
        while any(s.reserved_units for s in stacks) and time.monotonic() - started < SETTLE_TIMEOUT:
            await asyncio.sleep(0.25)
            stacks = await ledger.list_stacks(user)
        return Books(
            charged=sum(s.used_units for s in stacks),
            seen=sum(seen.values()),
            per_stack_equal=all(s.used_units == seen.get(s.id, 0) for s in stacks)
            and set(seen) <= {s.id for s in stacks},
            reserved=sum(s.reserved_units for s in stacks),
            problems=await ledger.reconcile(),
            waited=time.monotonic() - started,
        )
    finally:
        await ledger.close()


# -- the deployments -------------------------------------------------------------------------------


@dataclass
class Deployment:
    name: str
    gateways: list[str]
    database_url: str
    logs: list[Path] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def veil_process(
    args: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """``veil ARGS`` as a child process in a session of its own (output to ``log``); on exit the
    whole session is stopped, so the node ``veil serve`` starts as its own child goes too, whatever
    happens to ``veil serve`` itself."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "veil.cli", *args],
            stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        stop_session(process)


def stop_session(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's session (process group), then SIGKILL if it is still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _group_alive(process.pid):
                time.sleep(0.1)
        if not _group_alive(process.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{log.name} exited with {process.returncode}:\n{tail}")
        if healthy(url):
            return
        time.sleep(0.25)
    raise RuntimeError(f"{url} not healthy after {START_TIMEOUT:.0f}s (see {log})")


def child_env(models_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "VEIL_MODELS_DIR": str(models_dir),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


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
    with fresh_database(postgres_admin) as database_url, contextlib.ExitStack() as running:
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


async def _admin(url: URL, statement: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def postgres_admin_url(raw: str) -> URL:
    """The first of ``raw`` (and, without a user in it, ``raw`` as ``postgres``) that connects."""
    url = make_url(raw)
    candidates = [url] if url.username else [url, url.set(username="postgres")]
    failures = []
    for candidate in candidates:
        try:
            asyncio.run(_admin(candidate, "SELECT 1"))
            return candidate
        except Exception as exc:
            failures.append(f"{candidate.render_as_string(hide_password=True)}: {exc!r}")
    raise RuntimeError("PostgreSQL is unreachable: " + "; ".join(failures))


@contextlib.contextmanager
def fresh_database(admin: URL) -> Iterator[str]:
    name = f"veil_load_{secrets.token_hex(6)}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.0f}" if values else "-"


def report(results: list[Result], clients: int, seconds: float) -> None:
    print(
        f"\nLoad: {clients} concurrent clients x {seconds:.0f} s. One request = lock + sealed "
        "request + open and verify.\nMix per client: embeddings, chat (max_tokens 4), streamed "
        "chat (max_tokens 8); atoma-v1 and veil-v2 alternating.\nreq/s = requests completed OK "
        "/ time from the first request until the last in-flight one ended;\nlatency = from the "
        "lock to the last byte, checked.\n"
    )
    baseline = results[0].throughput if results else 0.0
    head = (f"{'setup':<36} {'ok':>6} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
            f"{'ratio':>7}  errors")  # fmt: skip
    print(head)
    print("-" * len(head))
    for i, r in enumerate(results):
        latencies = [s.seconds for s in r.ok]
        ratio = r.throughput / baseline if baseline else 0.0
        errors = ", ".join(f"{code} x{n}" for code, n in sorted(r.errors.items())) or "none"
        note = " (baseline)" if i == 0 else ""
        print(f"{r.label:<36} {len(r.ok):>6} {r.throughput:>7.2f} {ms(latencies, 50):>7} "
              f"{ms(latencies, 95):>7} {ms(latencies, 99):>7} {ratio:>6.2f}x  {errors}{note}")  # fmt: skip

    print(f"\nLatency by request kind, ms (p50 / p95)\n\n{'setup':<36} " + " ".join(
        f"{kind:>16}" for kind in KINDS
    ))  # fmt: skip
    for r in results:
        cells = []
        for kind in KINDS:
            values = [s.seconds for s in r.ok if s.kind == kind]
            cells.append(f"{ms(values, 50) + ' / ' + ms(values, 95):>16}")
        print(f"{r.label:<36} " + " ".join(cells))

    print("\nRequests served per node (node_small_id: count)\n")
    for r in results:
        per_node = Counter(s.node for s in r.ok if s.node is not None)
        print(f"{r.label:<36} " + ", ".join(f"{n}: {c}" for n, c in sorted(per_node.items())))

    print("\nLedger after the run (in-flight settlement awaited)\n")
    for r in results:
        b = r.books
        print(
            f"{r.label:<36} charged {b.charged} units == signed usage seen by clients "
            f"{b.seen}: {'yes' if b.per_stack_equal else 'NO'}; reserved after: {b.reserved}; "
            f"reconcile(): {'clean' if not b.problems else f'{len(b.problems)} problem(s)'} "
            f"(settled within {b.waited:.1f} s)"
        )
        for problem in b.problems[:5]:
            print(f"    {problem}")
    if FIRST_MESSAGES:
        print("\nFirst message per error code\n")
        for code, message in sorted(FIRST_MESSAGES.items()):
            print(f"{code}: {message}")
    if len(results) == 2:
        print(
            f"\nthroughput ratio, (b) 2 gateways x 2 nodes / (a) single gateway + node: "
            f"{results[1].throughput / baseline if baseline else 0.0:.2f}x"
        )


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
        default=os.environ.get("VEIL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="a database on the server where (b) creates and drops its own database",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("VEIL_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    )
    args = parser.parse_args(argv)
    clients, seconds = (8, 10.0) if args.quick else (args.clients, args.seconds)
    if clients < 1 or seconds <= 0:
        parser.error("--clients and --seconds must be positive")

    from veil.engines import prepare_embedded_models

    models_dir = Path(os.environ.get("VEIL_TEST_MODEL_DIR", ROOT / ".cache/test-models"))
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
    report(results, clients, seconds)
    failed = any(r.errors or not r.books.balanced for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
