"""Run every benchmark and write the report: ``python -m benchmarks [--quick] [--out PATH]``.

Each benchmark in this directory runs as its own process (``python -m benchmarks.NAME``, quick
arguments with ``--quick``), its standard output captured whole. The report (default
``docs/BENCHMARKS.md``) gives, for each table: the machine, the date, what was measured, the
baseline it is compared against *in the same run*, the headline ratio read from the output, and the
output itself. A benchmark that fails is reported as failed, with the end of its error output, and
the others still run. Exits 1 if any benchmark exited non-zero.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "BENCHMARKS.md"
BENCH_TIMEOUT = 3600.0  # per benchmark; the load benchmark at full size takes a few minutes


def _find(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1) if match else None


def crypto_headline(output: str) -> list[str]:
    request = _find(r"^request: request total\s+\S+\s+\S+\s+(\S+x)", output)
    chunk = _find(r"^chunk \(seal\+sign\+open\+verify\)\s+\S+\s+\S+\s+(\S+x)", output)
    lines = []
    if request:
        verdict = _find(r"^request: request total.*?(met|NOT MET)\s*$", output) or "?"
        lines.append(
            f"veil-v2 / atoma-v1 crypto per request: **{request}** (target <= 1.5x: {verdict})"
        )
    if chunk:
        verdict = _find(r"^chunk \(seal\+sign\+open\+verify\).*?(met|NOT MET)\s*$", output) or "?"
        lines.append(
            f"veil-v2 / atoma-v1 crypto per stream chunk: **{chunk}** (target <= 1.2x: {verdict})"
        )
    atoma = _find(r"^2 KiB request: total\s+\S+\s+\S+\s+(\S+x)", output)
    if atoma:
        verdict = _find(r"^2 KiB request: total.*?(met|NOT MET)\s*$", output) or "?"
        lines.append(
            f"Veil (atoma-v1) / atoma-sdk 0.1.3 crypto per 2 KiB request: **{atoma}** "
            f"(target <= 1.0x: {verdict})"
        )
    if faster := _find(r"\(veil (\S+x) faster; target >= 10x", output):
        verdict = _find(r"faster; target >= 10x\s+(met|NOT MET)\)", output) or "?"
        lines.append(
            f"opening 200 B chunks, atoma-sdk's `decrypt_message` / Veil's: **{faster}** faster "
            f"(target >= 10x: {verdict})"
        )
    if gcm := _find(r"AES-256-GCM throughput ratio, veil/openssl: (\S+x)", output):
        verdict = _find(r"AES-256-GCM throughput ratio.*\(target >= 0.7x: (met|NOT MET)\)", output)
        lines.append(
            f"AES-256-GCM on 1 MiB, Veil's calls / `openssl speed`: **{gcm}** "
            f"(target >= 0.7x: {verdict or '?'})"
        )
    return lines


def client_headline(output: str) -> list[str]:
    lines = []
    if ratio := _find(r"like-for-like ratio: (\S+x)", output):
        verdict = _find(r"like-for-like ratio: .*\(target >= 10x: (met|NOT met)\)", output) or "?"
        lines.append(
            f"opening a 500-chunk stream, atoma-sdk's per-chunk decrypt / Veil's: **{ratio}** "
            f"faster (target >= 10x: {verdict})"
        )
    if share := _find(r"largest crypto share: (\S+%)", output):
        verdict = _find(r"largest crypto share: .*\(target < 1%: (met|NOT met)\)", output) or "?"
        lines.append(
            f"client crypto as a share of a real request's time: at most **{share}** "
            f"(target < 1%: {verdict})"
        )
    return lines


def load_headline(output: str) -> list[str]:
    lines = []
    single = _find(r"^\(a\) .*?\s+\d+\s+(\S+)\s+\d+\s+\d+\s+\d+\s+\S+x", output)
    cluster = _find(r"^\(b\) .*?\s+\d+\s+(\S+)\s+\d+\s+\d+\s+\d+\s+\S+x", output)
    ratio = _find(r"^throughput ratio, .*: (\S+x)", output)
    if single:
        lines.append(f"load, `veil serve` (1 gateway + 1 node): **{single} requests/s** (baseline)")
    if cluster and ratio:
        lines.append(
            f"load, 2 gateways x 2 nodes on PostgreSQL: **{cluster} requests/s = {ratio}** the "
            "baseline, on the same 2 cores"
        )
    balanced = re.findall(r"signed usage seen by clients \d+: (yes|NO); reserved after: (\d+); "
                          r"reconcile\(\): (\S+)", output)  # fmt: skip
    if balanced:
        exact = all(b[0] == "yes" and b[1] == "0" and b[2] == "clean" for b in balanced)
        lines.append(
            "ledger after load: "
            + ("**exact** in every setup (charged == signed usage, 0 reserved, reconcile clean)"
               if exact else "**does NOT balance** (see the table)")
        )  # fmt: skip
    return lines


def node_overhead_headline(output: str) -> list[str]:
    lines = []
    for suite in ("atoma-v1", "veil-v2"):
        line = _find(rf"^(embeddings p50 ratio, confidential/plain \({suite}\): .*)$", output)
        ratio = _find(r": (\S+x) \(", line or "")
        verdict = _find(r"\(target <= 1\.10: (met|NOT MET)\)", line or "") or "?"
        if ratio:
            lines.append(
                f"node, embeddings p50 latency, confidential {suite} / plain route of the same "
                f"node: **{ratio}** (target <= 1.10x: {verdict})"
            )
    for suite in ("atoma-v1", "veil-v2"):
        line = _find(
            rf"^(streamed chat tokens/s ratio, confidential/plain \({suite}\): .*)$", output
        )
        ratio = _find(r": (\S+x) \(", line or "")
        verdict = _find(r"\(target >= 0\.97: (met|NOT MET)\)", line or "") or "?"
        if ratio:
            lines.append(
                f"node, streamed chat tokens/s, confidential {suite} / plain route of the same "
                f"node: **{ratio}** (target >= 0.97x: {verdict})"
            )
    line = _find(r"^(node RSS with both models loaded: .*)$", output)
    rss = _find(r": (\d+ MB) \(", line or "")
    verdict = _find(r"\(target <= 1\.5 GB: (met|NOT MET)\)", line or "") or "?"
    if rss:
        lines.append(
            f"node RSS with both embedded models loaded: **{rss}** (target <= 1.5 GB: {verdict})"
        )
    return lines


def gateway_headline(output: str) -> list[str]:
    lines = []
    if overhead := _find(r"^gateway p50 overhead: (\S+ ms)", output):
        verdict = _find(r"^gateway p50 overhead: .*\(target <= 3 ms: (met|NOT met)\)", output)
        postgres = _find(r"^gateway p50 overhead, PostgreSQL ledger: (\S+ ms)", output)
        lines.append(
            "latency the gateway adds to a confidential embeddings request (p50, request leg "
            f"against the same request sent to the node directly): **{overhead}** on SQLite"
            + (f", {postgres} on PostgreSQL" if postgres else "")
            + f" (target <= 3 ms: {verdict or '?'})"
        )
    rates = re.search(
        r"^lock\+request throughput, (\d+) clients: SQLite (\S+) req/s, PostgreSQL (\S+) req/s "
        r"\(PostgreSQL/SQLite (\S+x)\)",
        output,
        re.MULTILINE,
    )
    if rates:
        clients, sqlite, postgres, ratio = rates.groups()
        ceiling = _find(r"^node alone, \d+ clients: (\S+) req/s", output)
        lines.append(
            f"lock + request through the gateway, {clients} clients: **SQLite {sqlite} req/s, "
            f"PostgreSQL {postgres} req/s** (PostgreSQL/SQLite {ratio})"
            + (f"; the node alone, same clients: {ceiling} req/s" if ceiling else "")
        )
    if rss := _find(r"^gateway RSS after load: (\S+ MB)", output):
        verdict = _find(r"^gateway RSS after load: .*\(target <= 200 MB: (met|NOT met)\)", output)
        lines.append(
            f"gateway memory after the load: **{rss}** RSS (target <= 200 MB: {verdict or '?'})"
        )
    books = re.findall(r"signed usage seen by clients \d+: (yes|NO); reserved after: (\d+); "
                       r"reconcile\(\): (\S+)", output)  # fmt: skip
    if books:
        exact = all(b == ("yes", "0", "clean") for b in books)
        lines.append(
            "ledger after the gateway runs: "
            + ("**exact** on SQLite and PostgreSQL (charged == signed usage, 0 reserved, "
               "reconcile clean)" if exact else "**does NOT balance** (see the output)")
        )  # fmt: skip
    return lines


def ratelimit_headline(output: str) -> list[str]:
    lines = []
    for name in ("in process", "Redis"):
        row = re.search(rf"^{name}\s+(\S+)\s+(\S+)\s+(\S+)", output, re.MULTILINE)
        if row:
            median, ratio, alone = row.groups()
            lines.append(
                f"rate limiter {name}: request median {median} ms, **{ratio}x** the unlimited "
                f"baseline (limiter alone {alone} µs)"
            )
    return lines


def ledger_headline(output: str) -> list[str]:
    lines = []
    rates = re.search(
        r"^ledger reserve\+settle, (\d+) tasks: SQLite (\S+) ops/s, PostgreSQL (\S+) ops/s "
        r"\(PostgreSQL/SQLite (\S+x)\)",
        output,
        re.MULTILINE,
    )
    if rates:
        tasks, sqlite, postgres, ratio = rates.groups()
        lines.append(
            f"ledger reserve + settle, {tasks} concurrent tasks: **SQLite {sqlite} ops/s, "
            f"PostgreSQL {postgres} ops/s** (PostgreSQL/SQLite {ratio})"
        )
    if (overspend := _find(r"^overspend: (\d+) units", output)) is not None:
        checks = _find(r"^ledger checks: (passed|FAILED.*)$", output) or "?"
        lines.append(
            f"ledger overspend under contention: **{overspend} units** (must be 0; every stack "
            f"balanced and reconcile clean: {checks})"
        )
    return lines


@dataclass(frozen=True)
class Benchmark:
    module: str
    title: str
    measures: str
    baseline: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    headline: Callable[[str], list[str]]


BENCHMARKS = (
    Benchmark(
        "crypto",
        "Protocol crypto: atoma-v1 against veil-v2",
        "CPU time of each cryptographic step of one request (client seal, node open, node "
        "seal + sign, client open + verify) and of one stream chunk, for both suites on the same "
        "payloads and the same Ed25519 key; then Veil's atoma-v1 suite against the published "
        "atoma-sdk 0.1.3 on a 2 KiB request and on 200-byte stream chunks; then AES-256-GCM "
        "throughput on 1 MiB.",
        "1) atoma-v1 (Atoma-compatible suite) measured in the same process, rounds interleaved "
        "with veil-v2; ratio = v2 time / v1 time (lower is better). 2) atoma-sdk 0.1.3's own "
        "`crypto_utils` in its own venv, rounds alternating with Veil's on identical inputs; "
        "ratio = Veil time / atoma-sdk time. 3) `openssl speed -evp aes-256-gcm` run in the same "
        "benchmark; ratio = Veil's MB/s / OpenSSL's.",
        (),
        ("--iterations", "100", "--rounds", "5"),
        crypto_headline,
    ),
    Benchmark(
        "node_overhead",
        "Node: confidential routes against the plain routes of the same node",
        "One `veil node` (embedded models, no gateway): 1) latency (p50/p95) of one embeddings "
        "request sealed with atoma-v1 and with veil-v2 to /v1/confidential/embeddings, client-side "
        "from building/sealing to the opened, signature-checked answer; 2) tokens/s of the same "
        "streamed chat (max_tokens 32, temperature 0) through /v1/confidential/chat/completions "
        "(both suites), from the usage the node reports; 3) the node's RSS with both models loaded.",
        "The plain routes (/v1/embeddings, /v1/chat/completions, streamed) of the same node in the "
        "same run, variants interleaved round by round. Ratios = confidential / plain: embeddings "
        "p50 (target <= 1.10x), chat tokens/s (target >= 0.97x); RSS target <= 1.5 GB.",
        (),
        ("--quick",),
        node_overhead_headline,
    ),
    Benchmark(
        "client",
        "Client: opening streams, and crypto's share of a real request",
        "1) Opening a 500-chunk sealed stream on the client. 2) Client crypto time per request "
        "against the whole request time, through a real gateway + node on the embedded models.",
        "1) atoma-sdk 0.1.3's per-chunk `decrypt_message` (X25519 + HKDF + AES-GCM setup per "
        "chunk), re-implemented operation for operation, in the same run. Ratio = baseline time / "
        "Veil time (higher is better). 2) the request's own total time.",
        (),
        ("--rounds", "3"),
        client_headline,
    ),
    Benchmark(
        "gateway",
        "Gateway: the latency it adds, lock + request throughput, memory",
        "One `veil node` and one `veil gateway` per ledger database (SQLite, then a fresh "
        "PostgreSQL database); confidential veil-v2 embeddings requests, cheap so that the gateway "
        "and not the model is measured. 1) Latency of the request leg through the gateway against "
        "the same request sent straight to the node with a ticket the benchmark signs, rounds "
        "interleaved; 2) 32 clients looping lock + request for T seconds (requests/s, p50/p95, "
        "errors by code, the ledger afterwards); 3) the gateway's RSS after the load.",
        "1) The same request sent directly to the same node process in the same rounds; overhead = "
        "p50 via gateway - p50 direct (target <= 3 ms). 2) SQLite measured in the same run: ratio "
        "= PostgreSQL req/s / SQLite req/s; the node alone under the same clients, for scale. "
        "3) Target <= 200 MB.",
        (),
        ("--quick",),
        gateway_headline,
    ),
    Benchmark(
        "ledger",
        "Ledger: reserve + settle under contention, SQLite against PostgreSQL",
        "`Ledger` itself in one process: 64 asyncio tasks looping reserve -> settle (a random part "
        "of the reservation; some ask for more, which must be capped) for T seconds on 4 shared "
        "stacks, one kept so tight that reservations are refused for lack of units; ops/s, "
        "latency per call, refusals by error, and every stack checked afterwards (overspend, "
        "nothing reserved, used == settled, reconcile clean).",
        "SQLite (a file) measured in the same run with the same workload and seeds. Ratio = "
        "PostgreSQL ops/s / SQLite ops/s (above 1 means PostgreSQL is faster). Overspend must be 0.",
        (),
        ("--quick",),
        ledger_headline,
    ),
    Benchmark(
        "load",
        "Load: concurrent clients against one and against several gateways",
        "N concurrent clients, each looping lock + sealed request + open/verify over a mix of "
        "embeddings, short chat and streamed chat (atoma-v1 and veil-v2), for T seconds; "
        "requests/s, latency percentiles, errors by code, and the ledger afterwards.",
        "(a) `veil serve` (one gateway, SQLite ledger, one node), started and measured in the same "
        "run. Ratio = (b) requests/s / (a) requests/s.",
        (),
        ("--quick",),
        load_headline,
    ),
    Benchmark(
        "ratelimit",
        "Gateway: what the per-user rate limiter costs",
        "The same authenticated `GET /v1/stacks` through a gateway, three ways, rounds "
        "interleaved: an admin key (not limited), a user limited in process, and a user limited "
        "through Redis (limits set far above the load, so every request is admitted); then the "
        "limiter's own admit + release in a loop, without HTTP.",
        "The admin key's requests to the same gateway in the same rounds. Ratio = median latency "
        "of the variant / median latency of the unlimited baseline.",
        (),
        ("--requests", "100", "--rounds", "3"),
        ratelimit_headline,
    ),
)


@dataclass
class Outcome:
    benchmark: Benchmark
    command: str
    seconds: float
    returncode: int
    stdout: str
    stderr_tail: str
    load_before: float  # 1-minute load average when it started: other work skews timings


def run(benchmark: Benchmark, quick: bool) -> Outcome:
    args = benchmark.quick_args if quick else benchmark.args
    command = [sys.executable, "-m", f"benchmarks.{benchmark.module}", *args]
    shown = " ".join(["python", "-m", f"benchmarks.{benchmark.module}", *args])
    print(f"running: {shown}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT, check=False
        )
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout if isinstance(exc.stdout, str) else ""
        stderr, code = f"timed out after {BENCH_TIMEOUT:.0f} s", -1
    seconds = time.monotonic() - started
    print(f"  exit {code} after {seconds:.0f} s", file=sys.stderr, flush=True)
    return Outcome(benchmark, shown, seconds, code, stdout, stderr[-3000:], load_before)


def machine() -> dict[str, str]:
    cpu = "unknown"
    ram = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "RAM": ram,
        "GPU / TEE": "none / none (CPU only; attestation 'none')",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "commit": git_revision(),
    }


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (with uncommitted changes)" if dirty else head


def render(outcomes: list[Outcome], quick: bool, when: datetime.datetime) -> str:
    mode = (
        "**quick mode** (`--quick`: fewer iterations, 8 clients x 10 s of load)"
        if quick
        else "full mode (each benchmark's defaults: 64 clients x 60 s of load)"
    )
    total = sum(o.seconds for o in outcomes)
    cores = os.cpu_count() or 1
    # Only the first start says whether *other* work was running: later load averages include the
    # previous benchmarks' own processes (a 1-minute average decays slowly).
    before = outcomes[0].load_before if outcomes else 0.0
    busy = (
        f" **Other work was running on this machine when the run started** (1-minute load "
        f"average {before:.1f} on {cores} cores): absolute times are inflated and the ratios "
        "noisier than on an idle machine."
        if before > cores / 2
        else f" The machine was otherwise idle when the run started (1-minute load average "
        f"{before:.2f} on {cores} cores); the load average printed for each later benchmark "
        "includes the tail of the benchmarks before it."
    )
    out = [
        "# Benchmarks",
        "",
        f"Generated by `python -m benchmarks{' --quick' if quick else ''}` (or `veil bench`) on "
        f"{when:%Y-%m-%d %H:%M} UTC in {mode}; the whole run took {total / 60:.1f} minutes. "
        "Do not edit by hand: rerun to refresh. Every ratio compares two things measured in the "
        f"same run on the same machine.{busy}",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in machine().items()],
        "",
        "Everything ran on this one machine over loopback: the clients, the gateways, the nodes, "
        "PostgreSQL, Redis and the models (SmolLM2-135M-Instruct Q4_1 on llama.cpp, all-MiniLM-L6-v2 on "
        "CPU torch). There is no TEE and no GPU here, so these numbers say how Veil's own work "
        "(crypto, routing, ledger) compares with its baselines, not how fast a production "
        "deployment is (see `docs/SCALING.md`).",
        "",
        "## Headlines",
        "",
    ]
    for outcome in outcomes:
        lines = outcome.benchmark.headline(outcome.stdout) if outcome.returncode == 0 else []
        if outcome.returncode != 0:
            lines = [
                f"`benchmarks/{outcome.benchmark.module}.py` FAILED (exit {outcome.returncode})"
            ]
            lines += outcome.benchmark.headline(outcome.stdout)
        out += [f"- {line}" for line in lines or [f"{outcome.benchmark.title}: see below"]]
    for number, outcome in enumerate(outcomes, 1):
        b = outcome.benchmark
        out += [
            "",
            f"## {number}. {b.title} (`benchmarks/{b.module}.py`)",
            "",
            f"- **Measures:** {b.measures}",
            f"- **Baseline (same run):** {b.baseline}",
            f"- **Command:** `{outcome.command}` - {outcome.seconds:.0f} s, exit {outcome.returncode}",
            f"- **Date:** {when:%Y-%m-%d} - **machine:** as above; 1-minute load average when it "
            f"started: {outcome.load_before:.2f} on {os.cpu_count()} cores",
            "",
            "```text",
            outcome.stdout.strip() or "(no output)",
            "```",
        ]
        if outcome.returncode != 0:
            out += ["", "Error output (end):", "", "```text", outcome.stderr_tail.strip(), "```"]
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run every benchmark and write the report."
    )
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick arguments")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the Markdown report")
    parser.add_argument(
        "--only", action="append", choices=[b.module for b in BENCHMARKS], help="repeatable"
    )
    args = parser.parse_args(argv)
    when = datetime.datetime.now(datetime.UTC)
    chosen = [b for b in BENCHMARKS if not args.only or b.module in args.only]
    outcomes = [run(benchmark, args.quick) for benchmark in chosen]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(outcomes, args.quick, when))
    print(f"wrote {args.out}", file=sys.stderr)
    for outcome in outcomes:
        for line in outcome.benchmark.headline(outcome.stdout):
            print(f"- {line}")
    return 0 if all(o.returncode == 0 for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
